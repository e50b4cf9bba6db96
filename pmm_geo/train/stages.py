r"""The training stages the engine runs: the multimodal teacher (PromptMM
stage 1), the distilled student (PromptMM stage 2), and the :obj:`lightgcn`
and :obj:`lattice` baselines. Each stage builds its modules, its optimizer,
a loss per batch and the embeddings it is evaluated on; the epoch loop,
model selection and checkpoints live in :class:`pmm_geo.train.Trainer`."""
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn import Module, Parameter

from pmm_geo.nn.losses import BPRLoss
from pmm_geo.nn.objective import PromptMMObjective, bpr_loss
from pmm_geo.nn.models.lattice import LATTICE
from pmm_geo.nn.models.student import LightGCNStudent
from pmm_geo.nn.models.teacher import MultimodalTeacher, TeacherOutput

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
        #: The :class:`~pmm_geo.data.SubgraphLoader` of sampled batching
        #: (:obj:`None`: every step sees the full graph).
        self.loader = None

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

    def num_hops(self) -> int:
        r"""The propagation depth of the stage's models: how many hops of
        a batch's neighbourhood sampled batching needs."""
        raise NotImplementedError

    def candidates(self, users: Tensor, pos: Tensor) -> Optional[Tensor]:
        r"""Items beyond the triplets a step reads, :obj:`[B, n]` global
        ids (stage 2: the listwise KD's candidate lists), drawn before a
        batch's subgraph is sampled so that they are in it."""
        return None

    def batch(self, users: Tensor, pos: Tensor, neg: Tensor,
              index: int = 0) -> 'Batch':
        r"""The :class:`Batch` of the triplets :obj:`(users, pos, neg)`
        (global ids): on the full graph, or with :attr:`loader` set, on
        their sampled neighbourhood with local ids."""
        lists = self.candidates(users, pos)
        if self.loader is None:
            return Batch(self.ctx.graph, users, pos, neg, lists, index)
        items = (pos, neg) if lists is None else (pos, neg, lists)
        sampled = self.loader.sample(users, *items)
        return Batch(sampled.graph, sampled.users, *sampled.items[:2],
                     sampled.items[2] if lists is not None else None, index)

    def step(self, batch: 'Batch') -> Tuple[Tensor, Parts]:
        r"""Returns the loss of one :class:`Batch` (and its parts, as
        floats, for the log)."""
        raise NotImplementedError

    def sparse_tables(self) -> List[Parameter]:
        r"""The embedding tables a sampled step reads only through the
        subgraph's :meth:`select_users` / :meth:`select_items` (sparse
        gradients: :class:`torch.optim.SparseAdam` updates their touched
        rows only, so a step's cost does not grow with the tables)."""
        return []

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


class Batch(NamedTuple):
    r"""One training step's input: the graph it propagates over (the full
    :class:`~pmm_geo.data.BipartiteAdjacency`, or a batch's
    :class:`~pmm_geo.data.SampledAdjacency`), the BPR triplets and (stage
    2) candidate lists as ids of that graph's nodes, and the step's index
    in its epoch."""
    graph: Any
    users: Tensor
    pos: Tensor
    neg: Tensor
    lists: Optional[Tensor] = None
    index: int = 0


class Optimizers:
    r"""Several torch optimizers stepped as one (Adam for dense
    parameters, :class:`torch.optim.SparseAdam` for the tables a sampled
    step updates row-wise), with one state dict."""
    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]):
        self.optimizers = list(optimizers)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> Dict[str, Any]:
        return {'optimizers': [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for optimizer, sub in zip(self.optimizers, state['optimizers']):
            optimizer.load_state_dict(sub)


def _adam(groups: List[dict], config: TrainConfig,
          sparse: Sequence[Parameter] = ()):
    # Sparse tables (sampled batching) get SparseAdam: Adam's update on the
    # rows a step touched (a "lazy" Adam: other rows keep their moments).
    sparse_ids = {id(p) for p in sparse}
    dense, lazy = [], []
    for group in groups:
        params = [p for p in group['params'] if id(p) not in sparse_ids]
        rows = [p for p in group['params'] if id(p) in sparse_ids]
        if params:
            dense.append({**group, 'params': params})
        if rows:
            lazy.append({**group, 'params': rows})
    optimizers = [torch.optim.Adam(dense,
                                   weight_decay=config.weight_decay)]
    if not lazy:
        return optimizers[0]
    return Optimizers(optimizers + [torch.optim.SparseAdam(lazy)])


def _tables(model: Module, graph) -> Tuple[Tensor, Tensor]:
    # The layer-0 rows of the graph's nodes, whose batch rows the BPR's L2
    # term penalizes (all rows on the full graph).
    return (graph.select_users(model.user_embedding.weight),
            graph.select_items(model.item_embedding.weight))


def _id_tables(model: Module) -> List[Parameter]:
    return [model.user_embedding.weight, model.item_embedding.weight]


def select_output(out: TeacherOutput, graph) -> TeacherOutput:
    r"""The rows of a full-graph :class:`TeacherOutput` for the nodes of
    :obj:`graph` (all of them for the full graph)."""
    if graph is graph.root:
        return out
    return TeacherOutput(
        graph.select_users(out.user), graph.select_items(out.item),
        {m: graph.select_users(x) for m, x in out.modal_user.items()},
        {m: graph.select_items(x) for m, x in out.modal_item.items()})


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
                       'lr': self.config.lr}], self.config,
                     self.sparse_tables())

    def num_hops(self):
        # The id branch has num_layers layers, a modality branch two.
        return max(self.config.num_layers, 2)

    def sparse_tables(self):
        return _id_tables(self.modules['teacher']) if self.loader else []

    def step(self, batch):
        teacher = self.modules['teacher']
        out = teacher(batch.graph, self.ctx.features)
        return teacher.loss(out, batch.users, batch.pos, batch.neg,
                            graph=batch.graph), {}

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
        self._fixed_targets = self._stale_targets = None
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
        ], cfg, self.sparse_tables())

    def num_hops(self):
        hops = self.config.student_layers
        if self.objective.uses_teacher and self.config.prompt_tuning:
            # The teacher runs on the subgraph too.
            hops = max(hops, self.config.num_layers, 2)
        return hops

    def sparse_tables(self):
        return _id_tables(self.modules['student']) if self.loader else []

    def candidates(self, users, pos):
        if not self.objective.uses_lists:
            return None
        return self.ctx.sampler.candidate_lists(
            users, pos, self.config.num_list_negatives,
            generator=self.ctx.generator)

    def train_mode(self):
        self.modules['student'].train()
        self.objective.train()
        self.modules['teacher'].eval()  # Frozen: no dropout on targets.

    def teacher_targets(self, batch: Optional[Batch] = None
                        ) -> TeacherOutput:
        r"""The teacher's outputs for the batch's graph (default: the full
        graph): computed once without prompt tuning; on a sampled subgraph,
        by the teacher on the subgraph (gradient to the prompt); on the full
        graph, recomputed with gradient to the prompt every
        :obj:`teacher_refresh` steps of an epoch and reused, detached, in
        between."""
        if batch is None:
            batch = Batch(self.ctx.graph, *(None, ) * 4)
        if self._fixed_targets is not None:
            return select_output(self._fixed_targets, batch.graph)
        teacher = self.modules['teacher']
        if batch.graph is not batch.graph.root:
            return teacher(batch.graph, self.ctx.features)
        if (self._stale_targets is None
                or batch.index % self.config.teacher_refresh == 0):
            out = teacher(batch.graph, self.ctx.features)
            self._stale_targets = TeacherOutput(
                out.user.detach(), out.item.detach(),
                {m: x.detach() for m, x in out.modal_user.items()},
                {m: x.detach() for m, x in out.modal_item.items()})
            return out
        return self._stale_targets

    def step(self, batch):
        objective = self.objective
        student = self.modules['student']
        user, item = student.get_embedding(batch.graph)
        teacher = self.teacher_targets(batch) if objective.uses_teacher \
            else None
        loss, parts = objective(user, item, teacher, batch.users, batch.pos,
                                batch.neg, batch.lists,
                                input_emb=_tables(student, batch.graph))
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
                       'lr': self.config.student_lr}], self.config,
                     self.sparse_tables())

    def num_hops(self):
        return self.config.student_layers

    def sparse_tables(self):
        return _id_tables(self.modules['lightgcn']) if self.loader else []

    def step(self, batch):
        model = self.modules['lightgcn']
        user, item = model.get_embedding(batch.graph)
        return bpr_loss(self.bpr, user, item, batch.users, batch.pos,
                        batch.neg, _tables(model, batch.graph))[0], {}

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
                       'lr': self.config.lr}], self.config,
                     self.sparse_tables())

    def num_hops(self):
        return self.config.lattice_layers

    def sparse_tables(self):
        # The item table also feeds the item-item graph over all items.
        return [self.modules['lattice'].user_embedding.weight] \
            if self.loader else []

    def step(self, batch):
        model = self.modules['lattice']
        user, item = model(batch.graph, self.ctx.features,
                           build_item_graph=batch.index == 0)
        return bpr_loss(self.bpr, user, item, batch.users, batch.pos,
                        batch.neg, _tables(model, batch.graph))[0], {}

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

__all__ = ['Stage', 'StageContext', 'Batch', 'Optimizers', 'TeacherStage',
           'DistillStage', 'LightGCNStage', 'LatticeStage', 'STAGES',
           'count_parameters', 'build_teacher', 'build_student',
           'select_output']
