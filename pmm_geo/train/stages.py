r"""The training stages the engine runs: the multimodal teacher (PromptMM
stage 1), the distilled student (PromptMM stage 2), and the :obj:`lightgcn`
and :obj:`lattice` baselines. Each stage builds its modules, its optimizer,
a loss per batch and the embeddings it is evaluated on; the epoch loop,
model selection and checkpoints live in :class:`pmm_geo.train.Trainer`."""
from typing import Dict, List, Tuple

import torch
from torch import Tensor
from torch.nn import Module

from pmm_geo.nn.losses import BPRLoss
from pmm_geo.nn.objective import PromptMMObjective, bpr_loss
from pmm_geo.nn.models.lattice import LATTICE
from pmm_geo.nn.models.student import LightGCNStudent
from pmm_geo.nn.models.teacher import MultimodalTeacher

from .config import TrainConfig

Parts = Dict[str, float]


def count_parameters(module: Module) -> int:
    r"""Number of parameters of :obj:`module` (trainable or not; buffers
    such as hard tokens or kNN graphs are not parameters)."""
    return sum(p.numel() for p in module.parameters())


class Stage:
    r"""One training stage.

    Attributes:
        name (str): The stage's name, also its key in :obj:`metrics.json`.
        modules (Dict[str, Module]): Every module whose state is
            checkpointed and restored at the selected epoch.
        served (str): The key in :obj:`modules` of the model this stage
            produces (the one counted and exported).
    """
    name: str = ''
    served: str = ''

    def __init__(self, context: 'StageContext'):
        self.ctx = context
        self.config: TrainConfig = context.config
        self.modules: Dict[str, Module] = {}

    def build(self, previous: Dict[str, Module]) -> None:
        r"""Creates the stage's modules (fresh initialization; the caller
        has seeded the RNG). :obj:`previous` holds the modules of the
        stages already run (the trained teacher for the student)."""
        raise NotImplementedError

    def after_load(self) -> None:
        r"""Called after the modules' states were (re)loaded."""

    def optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def train_mode(self) -> None:
        self.modules[self.served].train()

    def step(self, users: Tensor, pos: Tensor, neg: Tensor,
             batch: int) -> Tuple[Tensor, Parts]:
        r"""Returns the loss of one batch of BPR triplets (and its parts,
        as floats, for the log); :obj:`batch` counts from 0 in each
        epoch."""
        raise NotImplementedError

    def embeddings(self) -> Tuple[Tensor, Tensor]:
        r"""The user and item embeddings evaluation ranks with (in eval
        mode, without gradients)."""
        raise NotImplementedError

    def num_params(self) -> int:
        return count_parameters(self.modules[self.served])


class StageContext:
    r"""What every stage reads: the config, the data, its cached adjacency,
    the item features, the sampler and its random generator."""
    def __init__(self, config: TrainConfig, data, graph, features, sampler,
                 generator: torch.Generator):
        self.config = config
        self.data = data
        self.graph = graph
        self.features = features
        self.sampler = sampler
        self.generator = generator
        self.num_users = data['user'].num_nodes
        self.num_items = data['item'].num_nodes


def _adam(groups: List[dict], config: TrainConfig) -> torch.optim.Adam:
    groups = [g for g in groups if len(g['params']) > 0]
    return torch.optim.Adam(groups, weight_decay=config.weight_decay)


def _tables(model: Module) -> Tuple[Tensor, Tensor]:
    # The layer-0 id tables whose batch rows the BPR's L2 term penalizes.
    return model.user_embedding.weight, model.item_embedding.weight


def build_objective(config: TrainConfig,
                    modalities: List[str]) -> PromptMMObjective:
    r"""The student objective of :obj:`config` (its distillation weights,
    temperatures and embedding-KD heads)."""
    return PromptMMObjective(
        modalities, config.student_dim, config.embedding_dim,
        pair_weight=config.kd_pair_weight, list_weight=config.kd_list_weight,
        emb_weight=config.kd_emb_weight, lambda_reg=config.reg_weight,
        pair_tau=config.pair_tau, list_tau=config.list_tau,
        list_alpha=config.list_alpha, list_beta=config.list_beta,
        list_reweight=config.list_reweight, emb_alpha=config.emb_alpha)


def build_teacher(config: TrainConfig, ctx: StageContext
                  ) -> MultimodalTeacher:
    r"""The teacher of :obj:`config` for the data of :obj:`ctx` (hard
    tokens computed)."""
    dims = {m: x.size(1) for m, x in ctx.features.items()}
    teacher = MultimodalTeacher(
        ctx.num_users, ctx.num_items, dims,
        embedding_dim=config.embedding_dim, num_layers=config.num_layers,
        dropout=config.teacher_dropout, beta=config.teacher_beta,
        gamma=config.teacher_gamma, fusion_weight=config.teacher_lambda,
        modality_weight=config.teacher_modality_weight,
        lambda_reg=config.reg_weight, layout=config.layout)
    teacher.to(ctx.graph.device)
    return teacher.init_prompt(ctx.graph, ctx.features)


def build_student(config: TrainConfig, ctx: StageContext) -> LightGCNStudent:
    r"""A freshly initialized student (also the :obj:`lightgcn`
    baseline)."""
    return LightGCNStudent(ctx.num_users, ctx.num_items,
                           embedding_dim=config.student_dim,
                           num_layers=config.student_layers,
                           layout=config.layout).to(ctx.graph.device)


class TeacherStage(Stage):
    r"""PromptMM stage 1: teacher and prompt trained together on BPR over
    the fused embeddings plus BPR over each modality branch."""
    name = served = 'teacher'

    def build(self, previous):
        self.modules = {'teacher': build_teacher(self.config, self.ctx)}

    def optimizer(self):
        return _adam([{'params': list(self.modules['teacher'].parameters()),
                       'lr': self.config.lr}], self.config)

    def step(self, users, pos, neg, batch):
        teacher = self.modules['teacher']
        out = teacher(self.ctx.graph, self.ctx.features)
        return teacher.loss(out, users, pos, neg), {}

    @torch.no_grad()
    def embeddings(self):
        teacher = self.modules['teacher']
        teacher.eval()
        return teacher.get_embedding(self.ctx.graph, self.ctx.features)


class DistillStage(Stage):
    r"""PromptMM stage 2: a fresh LightGCN student trained on

    .. math::
        \mathcal{L}_{BPR} + \lambda_{pair} \mathcal{L}_{pair}
        + \lambda_{list} \sum_m \mathcal{L}_{list}^m
        + \lambda_{emb} \sum_m \mathcal{L}_{emb}^m

    against the frozen teacher (eval mode: no dropout on the targets). With
    :obj:`prompt_tuning`, the teacher's forward runs with gradients so the
    prompt keeps learning from the student's loss; the teacher's weights
    stay fixed (no gradient, not in the optimizer) and what does not depend
    on the prompt is computed once (:meth:`MultimodalTeacher.cache_frozen`).
    Without it, the teacher's outputs are computed once. The student
    starts from random tables or, with :obj:`student_init="teacher"`, from
    the teacher's final fused embeddings."""
    name = served = 'student'

    def build(self, previous):
        cfg = self.config
        teacher = previous['teacher']
        student = build_student(cfg, self.ctx)
        if cfg.student_init == 'teacher':
            self._init_from_teacher(student, teacher)
        objective = build_objective(cfg, teacher.modalities)
        objective.to(self.ctx.graph.device)
        self.objective = objective
        self.modules = {'student': student, 'objective': objective,
                        'teacher': teacher}
        self.after_load()

    @torch.no_grad()
    def _init_from_teacher(self, student: LightGCNStudent,
                           teacher: MultimodalTeacher) -> None:
        # The teacher's final fused embeddings (eval mode, stage-1 prompt)
        # become the student's layer-0 tables.
        teacher.eval()
        user, item = teacher.get_embedding(self.ctx.graph, self.ctx.features)
        student.user_embedding.weight.copy_(user)
        student.item_embedding.weight.copy_(item)

    def after_load(self):
        teacher = self.modules['teacher']
        teacher.clear_cache()
        teacher.freeze(train_prompt=self.config.prompt_tuning)
        # Only the prompt changes from here on: cache the rest.
        teacher.cache_frozen(self.ctx.graph, self.ctx.features)
        self._fixed_targets = None
        if not self.config.prompt_tuning:
            with torch.no_grad():
                self._fixed_targets = teacher(self.ctx.graph,
                                              self.ctx.features)

    def optimizer(self):
        cfg = self.config
        prompt = [p for p in self.modules['teacher'].prompt.parameters()
                  if p.requires_grad]
        return _adam([
            {'params': list(self.modules['student'].parameters()) +
             list(self.objective.parameters()),
             'lr': cfg.student_lr},
            {'params': prompt, 'lr': cfg.prompt_lr},
        ], cfg)

    def train_mode(self):
        self.modules['student'].train()
        self.objective.train()
        self.modules['teacher'].eval()  # Frozen: no dropout on targets.

    def teacher_targets(self):
        if self._fixed_targets is not None:
            return self._fixed_targets
        return self.modules['teacher'](self.ctx.graph, self.ctx.features)

    def step(self, users, pos, neg, batch):
        ctx, objective = self.ctx, self.objective
        student = self.modules['student']
        user, item = student.get_embedding(ctx.graph)
        teacher = self.teacher_targets() if objective.uses_teacher else None
        lists = None
        if objective.uses_lists:
            lists = ctx.sampler.candidate_lists(
                users, pos, self.config.num_list_negatives,
                generator=ctx.generator)
        loss, parts = objective(user, item, teacher, users, pos, neg, lists,
                                input_emb=_tables(student))
        return loss, {name: part.item() for name, part in parts.items()}

    @torch.no_grad()
    def embeddings(self):
        student = self.modules['student']
        student.eval()
        return student.get_embedding(self.ctx.graph)


class LightGCNStage(Stage):
    r"""The :obj:`lightgcn` baseline: the student's architecture (width
    :obj:`student_dim`, :obj:`student_layers` layers, :obj:`student_lr`)
    trained alone with BPR, so that it differs from the distilled student
    by the distillation only."""
    name = served = 'lightgcn'

    def build(self, previous):
        self.modules = {'lightgcn': build_student(self.config, self.ctx)}
        self.bpr = BPRLoss(self.config.reg_weight)

    def optimizer(self):
        return _adam([{'params': list(self.modules['lightgcn'].parameters()),
                       'lr': self.config.student_lr}], self.config)

    def step(self, users, pos, neg, batch):
        model = self.modules['lightgcn']
        user, item = model.get_embedding(self.ctx.graph)
        return bpr_loss(self.bpr, user, item, users, pos, neg,
                        _tables(model))[0], {}

    @torch.no_grad()
    def embeddings(self):
        model = self.modules['lightgcn']
        model.eval()
        return model.get_embedding(self.ctx.graph)


class LatticeStage(Stage):
    r"""The LATTICE baseline, trained with BPR; the learned item graph is
    rebuilt with gradient on the first batch of each epoch (LATTICE's
    schedule) and reused, detached, by the other batches."""
    name = served = 'lattice'

    def build(self, previous):
        cfg = self.config
        self.modules = {'lattice': LATTICE(
            self.ctx.num_users, self.ctx.num_items, dict(self.ctx.features),
            embedding_dim=cfg.embedding_dim, num_layers=cfg.lattice_layers,
            knn_k=cfg.lattice_knn_k, lambda_coeff=cfg.lattice_lambda,
            item_graph_layers=cfg.lattice_item_layers,
            layout=cfg.layout).to(self.ctx.graph.device)}
        self.bpr = BPRLoss(cfg.reg_weight)

    def optimizer(self):
        return _adam([{'params': list(self.modules['lattice'].parameters()),
                       'lr': self.config.lr}], self.config)

    def step(self, users, pos, neg, batch):
        model = self.modules['lattice']
        user, item = model(self.ctx.graph, self.ctx.features,
                           build_item_graph=batch == 0)
        return bpr_loss(self.bpr, user, item, users, pos, neg,
                        _tables(model))[0], {}

    @torch.no_grad()
    def embeddings(self):
        model = self.modules['lattice']
        model.eval()
        return model.get_embedding(self.ctx.graph, self.ctx.features)


#: The stages each model runs, in order.
STAGES = {
    'promptmm': (TeacherStage, DistillStage),
    'lightgcn': (LightGCNStage, ),
    'lattice': (LatticeStage, ),
}

__all__ = ['Stage', 'StageContext', 'TeacherStage', 'DistillStage',
           'LightGCNStage', 'LatticeStage', 'STAGES', 'count_parameters',
           'build_teacher', 'build_student']
