r"""PromptMM's two stages: the multimodal teacher and its prompt (stage 1),
then the student distilled from the frozen teacher (stage 2)."""
from typing import List, Optional

import torch

from pmm_geo.evaluation import evaluate
from pmm_geo.nn.models.lattice_teacher import LATTICETeacher
from pmm_geo.nn.models.student import LightGCNStudent
from pmm_geo.nn.models.teacher import MultimodalTeacher
from pmm_geo.nn.models.teacher_api import TeacherOutput, check_teacher
from pmm_geo.nn.objective import PromptMMObjective

from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import TrainConfig
from ..kd_schedule import KDSchedule
from .base import (Batch, EpochPruning, ModelSpec, Stage, StageContext,
                   adam, input_tables)
from .lightgcn import build_student


def build_teacher(config: TrainConfig, ctx: StageContext):
    r"""The teacher of :obj:`config` (:obj:`config.teacher`) for the data
    of :obj:`ctx` (hard tokens computed): any model with the teacher
    interface (:class:`~pmm_geo.nn.models.TeacherMixin`)."""
    if config.teacher == 'lattice':
        teacher = LATTICETeacher(
            ctx.num_users, ctx.num_items, dict(ctx.features),
            embedding_dim=config.embedding_dim,
            num_layers=config.lattice_layers, knn_k=config.lattice_knn_k,
            lambda_coeff=config.lattice_lambda,
            item_graph_layers=config.lattice_item_layers,
            beta=config.teacher_beta,
            modality_weight=config.teacher_modality_weight,
            lambda_reg=config.reg_weight, layout=config.layout)
    else:
        teacher = _promptmm_teacher(config, ctx)
    check_teacher(teacher)
    teacher.to(ctx.graph.device)
    return teacher.init_prompt(ctx.graph, ctx.features)


def _promptmm_teacher(config: TrainConfig, ctx: StageContext
                      ) -> MultimodalTeacher:
    dims = {m: x.size(1) for m, x in ctx.features.items()}
    return MultimodalTeacher(
        ctx.num_users, ctx.num_items, dims,
        embedding_dim=config.embedding_dim, num_layers=config.num_layers,
        dropout=config.teacher_dropout, beta=config.teacher_beta,
        gamma=config.teacher_gamma, fusion_weight=config.teacher_lambda,
        modality_weight=config.teacher_modality_weight,
        lambda_reg=config.reg_weight, layout=config.layout,
        item_graph=config.teacher_item_graph, knn_k=config.teacher_knn_k)


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
        list_reweight=config.list_reweight, emb_alpha=config.emb_alpha,
        list_target=config.kd_list_target, one_sided=config.kd_one_sided)


class TeacherStage(Stage):
    r"""PromptMM stage 1: teacher and prompt trained together on BPR over
    the fused embeddings plus BPR over each modality branch (the teacher of
    :obj:`config.teacher`, see :func:`build_teacher`). With
    :obj:`config.teacher_prune_ratio` each full-graph epoch propagates over
    a freshly pruned user-item graph (FREEDOM's degree-sensitive pruning,
    drawn on the first batch from the run's generator, so a resumed run
    draws the same ones); evaluation and stage 2 use the full graph."""
    name = 'teacher'
    needs_features = True

    def build(self, previous):
        self.modules = {self.name: build_teacher(self.config, self.ctx)}
        self._pruning = EpochPruning(self.ctx, self.config.teacher_prune_ratio)

    def num_hops(self):
        # The id branch has num_layers layers, a modality branch two.
        return max(_teacher_layers(self.config), 2)

    def _train_graph(self, batch: Batch):
        if self._pruning.ratio == 0. or batch.graph is not batch.graph.root:
            return batch.graph  # Sampled subgraphs: already edge-sampled.
        return self._pruning.graph(batch)

    def step(self, batch):
        graph = self._train_graph(batch)
        out = self.model(graph, self.ctx.features)
        return self.model.loss(out, batch.users, batch.pos, batch.neg,
                               graph=graph), {}


class DistillStage(Stage):
    r"""PromptMM stage 2: a fresh LightGCN student trained on the
    :class:`~pmm_geo.nn.PromptMMObjective`

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
    the teacher's final fused embeddings. The three distillation weights
    follow a :class:`~pmm_geo.train.KDSchedule` (:obj:`kd_schedule`): by
    default they fade while the student beats the teacher on validation
    by more than :obj:`kd_fade_margin` and switch off where early stopping
    would have ended the stage, so the student finishes on BPR alone."""
    name = 'student'

    def build(self, previous):
        cfg = self.config
        teacher = previous['teacher']
        student = build_student(cfg, self.ctx, cfg.student_item_graph)
        if cfg.student_init == 'teacher':
            self._init_from_teacher(student, teacher)
        self.objective = build_objective(cfg, teacher.modalities).to(
            self.ctx.graph.device)
        self.schedule = KDSchedule(cfg.kd_schedule,
                                   cfg.kd_patience or cfg.patience)
        self.modules = {self.name: student, 'objective': self.objective,
                        'teacher': teacher, 'kd_schedule': self.schedule}
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
        #: The validation Recall@20 of the teacher's fused embeddings (the
        #: schedule's reference).
        self.teacher_score = self._teacher_score()
        self._apply_schedule()

    @torch.no_grad()
    def _teacher_score(self) -> float:
        out = self.teacher_targets()
        self._stale_targets = None
        return evaluate(out.user, out.item, self.ctx.data, 'val',
                        ks=(20, ))['recall@20']

    def _apply_schedule(self) -> None:
        # The objective skips a term whose weight is the number 0 (and the
        # teacher's forward when all three are).
        cfg, scale = self.config, self.schedule.scale
        self.objective.pair_weight = cfg.kd_pair_weight * scale
        self.objective.list_weight = cfg.kd_list_weight * scale
        self.objective.emb_weight = cfg.kd_emb_weight * scale

    def evaluated(self, score, improved):
        bar = (1 + self.config.kd_fade_margin) * self.teacher_score
        caught_up = score >= bar
        if not self.schedule.step(improved, caught_up):
            return None
        self._apply_schedule()
        scale = self.schedule.scale
        why = (f"validation {score:.4f} >= {bar:.4f}, "
               f"{1 + self.config.kd_fade_margin:g} x the teacher's "
               f'{self.teacher_score:.4f}' if caught_up else
               f'no new best in {self.schedule.patience} evaluations')
        head = (f'distillation weights x{scale:g}' if scale > 0 else
                'distillation off, BPR alone from here')
        return f'{head} ({why})'

    def optimizer(self):
        cfg = self.config
        prompt = [p for p in self.modules['teacher'].prompt.parameters()
                  if p.requires_grad]
        return adam([
            {'params': list(self.model.parameters()) +
             list(self.objective.parameters()), 'lr': cfg.student_lr},
            {'params': prompt, 'lr': cfg.prompt_lr},
        ], cfg, self.sparse_tables())

    def num_hops(self):
        hops = self.config.student_layers
        if self.objective.uses_teacher and self.config.prompt_tuning:
            # The teacher runs on the subgraph too.
            hops = max(hops, _teacher_layers(self.config), 2)
        return hops

    def candidates(self, users, pos):
        if not self.objective.uses_lists:
            return None
        return self.ctx.sampler.candidate_lists(
            users, pos, self.config.num_list_negatives,
            generator=self.ctx.generator)

    def train_mode(self):
        self.model.train()
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
        objective, student = self.objective, self.model
        user, item = student.get_embedding(batch.graph)
        teacher = self.teacher_targets(batch) if objective.uses_teacher \
            else None
        loss, parts = objective(user, item, teacher, batch.users, batch.pos,
                                batch.neg, batch.lists,
                                input_emb=input_tables(student, batch.graph))
        return loss, {name: part.item() for name, part in parts.items()}

    def export(self, run, checkpoint):
        # Stage 2 tuned the prompt: record it next to the stage-1 teacher.
        path = run.model_file(TeacherStage.name)
        teacher = load_checkpoint(path, what='teacher checkpoint')
        teacher.pop('format_version')
        teacher['tuned_prompt_state_dict'] = \
            self.modules['teacher'].prompt.state_dict()
        save_checkpoint(teacher, path)
        super().export(run, checkpoint)


def _teacher_layers(config: TrainConfig) -> int:
    return config.lattice_layers if config.teacher == 'lattice' else \
        config.num_layers


def select_output(out: TeacherOutput, graph) -> TeacherOutput:
    r"""The rows of a full-graph :class:`TeacherOutput` for the nodes of
    :obj:`graph` (all of them for the full graph)."""
    if graph is graph.root:
        return out
    return TeacherOutput(
        graph.select_users(out.user), graph.select_items(out.item),
        {m: graph.select_users(x) for m, x in out.modal_user.items()},
        {m: graph.select_items(x) for m, x in out.modal_item.items()})


SPEC = ModelSpec('promptmm', (TeacherStage, DistillStage),
                 needs_features=True,
                 description='the multimodal teacher and its prompt, then '
                 'the distilled LightGCN student (default)')
