r"""What every training stage shares: the :class:`Stage` interface, the
:class:`StageContext` it reads and the :class:`ModelSpec` a model registers
with (see :mod:`pmm_geo.train.registry`)."""
from dataclasses import dataclass
from typing import (Any, Dict, List, NamedTuple, Optional, Sequence, Tuple,
                    Type)

import torch
from torch import Tensor
from torch.nn import Module, Parameter

from pmm_geo.nn.losses import BPRLoss
from pmm_geo.nn.models.freedom import degree_sensitive_prune
from pmm_geo.nn.objective import bpr_loss
from pmm_geo.train.checkpoint import save_checkpoint
from pmm_geo.train.config import TrainConfig

Parts = Dict[str, float]


def count_parameters(module: Module) -> int:
    r"""Number of parameters of :obj:`module` (trainable or not; buffers
    such as hard tokens or kNN graphs are not parameters)."""
    return sum(p.numel() for p in module.parameters())


@dataclass
class StageContext:
    r"""What every stage reads.

    Args:
        config (TrainConfig): The run's hyperparameters.
        data (torch_geometric.data.HeteroData): The dataset.
        graph (pmm_geo.data.BipartiteAdjacency): Its cached normalized
            train adjacency.
        features (Dict[str, torch.Tensor]): The item features per modality.
        sampler (pmm_geo.data.NegativeSampler): The triplet sampler.
        generator (torch.Generator): The sampler's random source.
    """
    config: TrainConfig
    data: Any
    graph: Any
    features: Dict[str, Tensor]
    sampler: Any
    generator: torch.Generator

    @property
    def num_users(self) -> int:
        return self.data['user'].num_nodes

    @property
    def num_items(self) -> int:
        return self.data['item'].num_nodes


class Stage:
    r"""One training stage: it builds its modules and optimizer, gives the
    loss of a batch and the embeddings it is evaluated on, and exports the
    model it trains. The epoch loop, model selection and checkpoints live
    in :class:`pmm_geo.train.Trainer`.

    Attributes:
        name (str): The stage's name: its key in :obj:`metrics.json` and
            its checkpoint :obj:`<name>.pt`.
        served (str): The key in :obj:`modules` of the model the stage
            trains, counted and exported (default: :obj:`name`).
        needs_features (bool): Whether that model reads the item features
            to compute its embeddings (also when serving).
        modules (Dict[str, Module]): Every module whose state is
            checkpointed and restored at the selected epoch.
        skips_parameters (bool): Whether a step may leave a trainable
            parameter without gradient (LATTICE's graph learner between
            rebuilds, the prompt between refreshes or with distillation
            off, a branch whose loss weight is 0): distributed training then
            looks for such parameters at every step (see
            :meth:`~pmm_geo.train.distributed.Distributed.wrap_stage`).
    """
    name: str = ''
    served: str = ''
    needs_features: bool = False
    skips_parameters: bool = True

    def __init__(self, context: StageContext):
        self.ctx = context
        self.config: TrainConfig = context.config
        self.modules: Dict[str, Module] = {}
        #: The :class:`~pmm_geo.data.SubgraphLoader` of sampled batching
        #: (:obj:`None`: every step sees the full graph).
        self.loader = None

    @property
    def model(self) -> Module:
        r"""The model the stage trains (:obj:`modules[served]`)."""
        return self.modules[self.served or self.name]

    def build(self, previous: Dict[str, Module]) -> None:
        r"""Creates the stage's modules (fresh initialization; the caller
        has seeded the RNG). :obj:`previous` holds the modules of the
        stages already run (the trained teacher for the student)."""
        raise NotImplementedError

    def after_load(self) -> None:
        r"""Called after the modules' states were (re)loaded."""

    @property
    def lr(self) -> float:
        r"""The learning rate of the model's parameters."""
        return self.config.lr

    def optimizer(self) -> torch.optim.Optimizer:
        r"""Adam over the model's parameters at :obj:`lr` (the
        :meth:`sparse_tables` with :class:`torch.optim.SparseAdam`)."""
        return adam([{'params': list(self.model.parameters()),
                      'lr': self.lr}], self.config, self.sparse_tables())

    def train_mode(self) -> None:
        self.model.train()

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
        rows only, so a step's cost does not grow with the tables). By
        default the model's id tables when sampling."""
        if self.loader is None:
            return []
        return [self.model.user_embedding.weight,
                self.model.item_embedding.weight]

    @classmethod
    def model_embeddings(cls, model: Module, graph,
                         features: Dict[str, Tensor]
                         ) -> Tuple[Tensor, Tensor]:
        r"""The final user and item embeddings of a model of this stage:
        every forward computation it needs at serving time."""
        if cls.needs_features:
            return model.get_embedding(graph, dict(features))
        return model.get_embedding(graph)

    @torch.no_grad()
    def embeddings(self) -> Tuple[Tensor, Tensor]:
        r"""The user and item embeddings evaluation ranks with (in eval
        mode, without gradients)."""
        self.model.eval()
        return self.model_embeddings(self.model, self.ctx.graph,
                                     self.ctx.features)

    def evaluated(self, score: float, improved: bool) -> Optional[str]:
        r"""Called after each validation pass with the validation
        Recall@20 (:obj:`improved`: a new best). A stage that changes its
        objective then returns a description of the change (logged); the
        early-stopping count and the optimizer's state (e.g. Adam's moments)
        then restart. Otherwise :obj:`None`."""
        return None

    def num_params(self) -> int:
        return count_parameters(self.model)

    def checkpoint(self) -> Dict[str, Any]:
        r"""What :obj:`<name>.pt` holds about the model: its class (a
        class of :mod:`pmm_geo.nn`), constructor arguments and weights, so
        that :func:`pmm_geo.load_model` rebuilds it without the config."""
        model = self.model
        return {'kind': 'model', 'name': self.name,
                'class': type(model).__name__, 'init': model.init_args(),
                'needs_features': self.needs_features,
                'state_dict': model.state_dict()}

    def export(self, run, checkpoint: Dict[str, Any]) -> None:
        r"""Writes the stage's checkpoint :obj:`checkpoint` (the engine has
        added the final embeddings, the train interactions, the config and
        the metrics to :meth:`checkpoint`) into the
        :class:`~pmm_geo.train.RunDir` :obj:`run`."""
        save_checkpoint(checkpoint, run.model_file(self.name))


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


class EpochPruning:
    r"""FREEDOM's denoising for a stage's training graph: one
    degree-sensitively pruned copy of the full train graph
    (:func:`~pmm_geo.nn.models.freedom.degree_sensitive_prune`) per epoch,
    drawn on the epoch's first batch from the run's generator, so a resumed
    run draws the same graphs.

    Args:
        context (StageContext): The stage's context (its full graph and
            the run's generator).
        ratio (float): Fraction of the edges each epoch drops.
    """
    def __init__(self, context: StageContext, ratio: float):
        self.context = context
        self.ratio = float(ratio)
        self._graph = None

    def graph(self, batch: Batch):
        r"""The pruned graph of :obj:`batch`'s epoch."""
        if batch.index == 0 or self._graph is None:
            self._graph = degree_sensitive_prune(
                self.context.graph, self.ratio, self.context.generator)
        return self._graph


class BPRStage(Stage):
    r"""A model trained alone with BPR on its final embeddings, plus
    :math:`L_2` on the batch's layer-0 rows (the baselines)."""
    def __init__(self, context: StageContext):
        super().__init__(context)
        self.bpr = BPRLoss(self.config.reg_weight)

    def propagate(self, batch: Batch) -> Tuple[Tensor, Tensor]:
        r"""The model's user and item embeddings on the batch's graph, with
        gradient."""
        return self.model.get_embedding(batch.graph)

    def step(self, batch):
        user, item = self.propagate(batch)
        return bpr_loss(self.bpr, user, item, batch.users, batch.pos,
                        batch.neg, input_tables(self.model, batch.graph))[0], {}


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


def clear_optimizer_state(optimizer) -> None:
    r"""Forgets the running statistics (Adam's moments and step counts) of
    an optimizer or of every optimizer in an :class:`Optimizers`."""
    for sub in getattr(optimizer, 'optimizers', [optimizer]):
        sub.state.clear()


def adam(groups: List[dict], config: TrainConfig,
         sparse: Sequence[Parameter] = ()):
    r"""Adam over the parameter groups, with the config's weight decay;
    the :obj:`sparse` tables (sampled batching) get
    :class:`torch.optim.SparseAdam`: Adam's update on the rows a step
    touched (a "lazy" Adam: other rows keep their moments)."""
    sparse_ids = {id(p) for p in sparse}
    dense, lazy = [], []
    for group in groups:
        params = [p for p in group['params'] if id(p) not in sparse_ids]
        rows = [p for p in group['params'] if id(p) in sparse_ids]
        if params:
            dense.append({**group, 'params': params})
        if rows:
            lazy.append({**group, 'params': rows})
    optimizers = []
    if dense or not lazy:
        optimizers.append(torch.optim.Adam(
            dense, weight_decay=config.weight_decay))
    if not lazy:
        return optimizers[0]
    # A model made of tables only (LightGCN) has no dense parameters.
    return Optimizers(optimizers + [torch.optim.SparseAdam(lazy)])


def input_tables(model: Module, graph) -> Tuple[Tensor, Tensor]:
    r"""The layer-0 rows of the graph's nodes, whose batch rows the BPR's
    :math:`L_2` term penalizes (all rows on the full graph)."""
    return (graph.select_users(model.user_embedding.weight),
            graph.select_items(model.item_embedding.weight))


@dataclass(frozen=True)
class ModelSpec:
    r"""A model the engine trains (:obj:`TrainConfig.model`, :obj:`pmm-geo
    train --model`), as registered in :mod:`pmm_geo.train.registry`.

    Args:
        name (str): The model's name.
        stages (Tuple[Type[Stage], ...]): The stages it runs, in order;
            each builds its modules from the :class:`TrainConfig` and
            exports :obj:`<stage.name>.pt`.
        needs_features (bool): Whether training reads item features.
        description (str): One line for :obj:`--help`.
    """
    name: str
    stages: Tuple[Type[Stage], ...]
    needs_features: bool
    description: str = ''

    @property
    def served(self) -> str:
        r"""The model :obj:`pmm-geo recommend` serves: the last stage's."""
        return self.stages[-1].name

    @property
    def outputs(self) -> Tuple[str, ...]:
        r"""The names of the models a run writes (one per stage)."""
        return tuple(stage.name for stage in self.stages)

    def stage(self, name: str) -> Optional[Type[Stage]]:
        return next((s for s in self.stages if s.name == name), None)


__all__ = ['Stage', 'BPRStage', 'Batch', 'Optimizers', 'StageContext',
           'ModelSpec', 'count_parameters', 'adam', 'input_tables']
