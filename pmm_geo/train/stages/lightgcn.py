r"""The :obj:`lightgcn` baseline: the student's architecture trained
alone."""
import torch

from pmm_geo.nn.conv import FrozenItemGraph
from pmm_geo.nn.models.student import LightGCNStudent

from ..config import TrainConfig
from .base import BPRStage, ModelSpec, StageContext


def build_student(config: TrainConfig, ctx: StageContext,
                  item_graph: bool = False) -> LightGCNStudent:
    r"""A freshly initialized student (also the :obj:`lightgcn`
    baseline); with :obj:`item_graph`, with FREEDOM's frozen item-item
    graph built from the item features (:obj:`student_knn_k` neighbours per
    modality, FREEDOM's mix)."""
    graph = None
    if item_graph:
        graph = FrozenItemGraph.from_features(
            ctx.features, config.student_knn_k,
            layout=config.layout).to(torch.get_default_dtype())
    return LightGCNStudent(ctx.num_users, ctx.num_items,
                           embedding_dim=config.student_dim,
                           num_layers=config.student_layers,
                           layout=config.layout,
                           item_graph=graph).to(ctx.graph.device)


class LightGCNStage(BPRStage):
    r"""The :obj:`lightgcn` baseline: the student's architecture (width
    :obj:`student_dim`, :obj:`student_layers` layers, :obj:`student_lr`)
    trained alone with BPR, so that it differs from the distilled student
    by the distillation only."""
    name = 'lightgcn'
    skips_parameters = False  # Its two tables, both read by every step.

    def build(self, previous):
        self.modules = {self.name: build_student(self.config, self.ctx)}

    @property
    def lr(self) -> float:
        return self.config.student_lr

    def num_hops(self):
        return self.config.student_layers


SPEC = ModelSpec('lightgcn', (LightGCNStage, ), needs_features=False,
                 description='the student architecture trained alone with '
                 'BPR (no distillation)')
