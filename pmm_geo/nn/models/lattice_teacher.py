from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import ModuleDict

from pmm_geo.data.adjacency import BipartiteAdjacency, as_adjacency
from pmm_geo.nn.knn import DEFAULT_BLOCK_SIZE
from pmm_geo.nn.models._args import init_args
from pmm_geo.nn.projector import PromptedProjector
from pmm_geo.nn.prompt import PromptLearner

from .lattice import LATTICE
from .teacher_api import TeacherMixin, TeacherOutput, feature_keys


class _FrozenCache(NamedTuple):
    adj: BipartiteAdjacency
    feature_keys: Dict[str, tuple]
    projected: Dict[str, Tensor]  # W_m X_m + b_m
    user: Tensor  # The fused output, fixed once the graph is frozen.
    item: Tensor
    versions: Tuple[int, ...]


class LATTICETeacher(TeacherMixin, LATTICE):
    r"""LATTICE as a PromptMM teacher: :class:`~pmm_geo.nn.LATTICE` whose
    feature projections are prompt-conditioned
    (:class:`~pmm_geo.nn.PromptedProjector`, the soft prompts of the
    :class:`~pmm_geo.nn.PromptLearner` :obj:`teacher.prompt`), with one
    ranking branch per modality for the modality-aware distillation.

    Per modality :math:`m` the prompted projection

    .. math::
        \mathbf{Z}_m = \mathbf{W}_m \left(\mathbf{X}_m + \beta \cdot
        \mathrm{rownorm}(\mathbf{P}_i \mathbf{P}_i^{\top} \mathbf{X}_m)
        \right) + \mathbf{b}_m

    feeds LATTICE's learned kNN item graph (the fused output is LATTICE's
    :math:`(\mathbf{u}, \mathbf{i} + \mathbf{h} / \|\mathbf{h}\|)`) and a
    modality branch smoothed over the user-item graph, as in
    :class:`~pmm_geo.nn.MultimodalTeacher`:

    .. math::
        \mathbf{h}_u^m = \hat{\mathbf{A}} \mathbf{Z}_m, \qquad
        \mathbf{h}_i^m = \hat{\mathbf{A}}^{\top} \mathbf{h}_u^m

    Stage 1 trains everything on :meth:`loss` (BPR on the fused output plus
    :obj:`modality_weight` times the BPR of each branch, so each branch is a
    ranker). The learned graph follows LATTICE's schedule: in train mode it
    is rebuilt with gradient on the first forward after :meth:`train` (the
    engine calls it once per epoch) and reused, detached, until the next
    one; in eval mode every forward rebuilds it (LATTICE's evaluation).
    Stage 2 (:meth:`freeze`, :meth:`cache_frozen`) freezes the graph built
    with the stage-1 prompt: the fused output is then fixed, and the tuned
    prompt moves the modality branches. Full-graph training only (the
    learned graph spans all items).

    Args:
        num_users (int): Number of users :math:`U`.
        num_items (int): Number of items :math:`I`.
        features (Dict[str, torch.Tensor]): Raw item features per modality.
        embedding_dim (int, optional): Width :math:`d` of the embeddings,
            projections and prompts. (default: :obj:`64`)
        num_layers (int, optional): LightGCN layers. (default: :obj:`2`)
        knn_k (int, optional): Neighbours per item. (default: :obj:`10`)
        lambda_coeff (float, optional): Weight of LATTICE's frozen graph.
            (default: :obj:`0.9`)
        item_graph_layers (int, optional): Item-graph steps.
            (default: :obj:`1`)
        beta (float, optional): Weight :math:`\beta` of the prompt term of
            the projections. (default: :obj:`0.1`)
        dropout (float, optional): Dropout on the projections.
            (default: :obj:`0.`)
        modality_weight (float, optional): Weight of the branches' BPR in
            :meth:`loss`. (default: :obj:`0.5`)
        lambda_reg (float, optional): :math:`L_2` weight on the batch's id
            embeddings in :meth:`loss`. (default: :obj:`1e-4`)
        prompt_dropout (float, optional): Dropout on the soft prompts.
            (default: :obj:`0.`)
        knn_block_size (int, optional): Query rows per kNN block.
            (default: :obj:`2048`)
        layout (str, optional): Adjacency layout.
            (default: :obj:`"edge_index_fused"`)
    """
    def __init__(
        self,
        num_users: int,
        num_items: int,
        features: Dict[str, Tensor],
        embedding_dim: int = 64,
        num_layers: int = 2,
        knn_k: int = 10,
        lambda_coeff: float = 0.9,
        item_graph_layers: int = 1,
        beta: float = 0.1,
        dropout: float = 0.,
        modality_weight: float = 0.5,
        lambda_reg: float = 1e-4,
        prompt_dropout: float = 0.,
        knn_block_size: int = DEFAULT_BLOCK_SIZE,
        layout: str = 'edge_index_fused',
    ):
        for name, value in (('modality_weight', modality_weight),
                            ('lambda_reg', lambda_reg)):
            if not value >= 0:
                raise ValueError(f"'{name}' must be non-negative, got "
                                 f"{value!r}")
        super().__init__(num_users, num_items, features, embedding_dim,
                         num_layers, knn_k, lambda_coeff,
                         feat_embed_dim=embedding_dim,
                         item_graph_layers=item_graph_layers,
                         knn_block_size=knn_block_size, layout=layout)
        # LATTICE's learned modality mix is the Parameter modality_weight.
        self.modality_loss_weight = float(modality_weight)
        self.lambda_reg = float(lambda_reg)
        self.projections = ModuleDict({
            m: PromptedProjector(dim, embedding_dim, dropout, beta)
            for m, dim in self.feature_dims.items()
        })
        self.prompt = PromptLearner(num_users, num_items, embedding_dim,
                                    prompt_dropout)
        self._rebuild = True
        self._cache: Optional[_FrozenCache] = None
        self.reset_parameters()

    def reset_parameters(self):
        r"""Resets all learnable parameters (hard tokens and frozen graphs
        are data, kept)."""
        super().reset_parameters()
        if 'prompt' in self._modules:  # Not yet during LATTICE.__init__.
            self.prompt.reset_parameters()
        self.clear_cache()

    def _adjacency(self, graph) -> BipartiteAdjacency:
        adj = as_adjacency(graph, self.num_users, self.num_items,
                           self.user_embedding.weight.device, 'teacher')
        if adj is not adj.root:
            raise ValueError("the LATTICE teacher's item graph spans all "
                             "items; train with batching='full'")
        return adj

    @torch.no_grad()
    def init_prompt(self, graph, features: Mapping[str, Tensor]):
        r"""Computes the prompt's hard tokens (PCA of each modality) once;
        call it before the first forward pass."""
        self._check_features(features)
        self.prompt.init_tokens(self._adjacency(graph), features, self.layout)
        self.clear_cache()
        return self

    def train(self, mode: bool = True):
        if mode:  # LATTICE's schedule: one graph rebuild per epoch.
            self._rebuild = True
        return super().train(mode)

    def _project(self, features: Mapping[str, Tensor],
                 projected: Optional[Dict[str, Tensor]] = None
                 ) -> Dict[str, Tensor]:
        _, item_prompt = self.prompt()
        out = {}
        for m in self.modalities:
            x = features[m]
            z = self.projections[m](x, item_prompt, None if projected is None
                                    else projected[m])
            # Items without the modality: no learned neighbours (LATTICE).
            out[m] = z * (x != 0).any(dim=1, keepdim=True).to(z.dtype)
        return out

    def _fused(self, adj, features, z) -> Tuple[Tensor, Tensor]:
        if self.training and not self._rebuild and \
                self.item_graph_index is not None:
            item_graph = (self.item_graph_index, self.item_graph_weight)
        else:
            item_graph = self.item_graph(features, z)
            self.item_graph_index = item_graph[0]
            self.item_graph_weight = item_graph[1].detach()
            self._rebuild = False
        h = self.propagate_items(item_graph)
        user, item = self._lightgcn(adj)
        return user, item + F.normalize(h, p=2, dim=1)

    def forward(self, graph, features: Mapping[str, Tensor]
                ) -> TeacherOutput:
        r"""Returns the fused and per-modality embeddings.

        Args:
            graph (HeteroData or BipartiteAdjacency): The train graph.
            features (Mapping[str, torch.Tensor]): Raw item features, as at
                construction.
        """
        adj = self._adjacency(graph)
        self._check_features(features)
        cache = self._valid_cache(adj, features)
        z = self._project(features, None if cache is None else
                          cache.projected)
        if cache is None:
            user, item = self._fused(adj, features, z)
        else:
            user, item = cache.user, cache.item
        to_user, to_item = adj.item_to_user(self.layout), \
            adj.user_to_item(self.layout)
        modal_user = {m: self.conv(z[m], *to_user) for m in self.modalities}
        modal_item = {m: self.conv(modal_user[m], *to_item)
                      for m in self.modalities}
        return TeacherOutput(user, item, modal_user, modal_item)

    @torch.no_grad()
    def cache_frozen(self, graph, features: Mapping[str, Tensor]):
        r"""Stage 2: builds the item graph once with the current prompt and
        keeps the fused output and :math:`\mathbf{W}_m \mathbf{X}_m +
        \mathbf{b}_m`; later forward passes recompute only the
        prompt-dependent modality branches."""
        self._check_freezable()
        adj = self._adjacency(graph)
        self._check_features(features)
        self._cache = None
        projected = {m: self.projections[m].lin(features[m])
                     for m in self.modalities}
        user, item = self._fused(adj, features,
                                 self._project(features, projected))
        self._cache = _FrozenCache(adj, feature_keys(features), projected,
                                   user, item, self._versions())
        return self

    def clear_cache(self):
        r"""Drops the cache of :meth:`cache_frozen`."""
        self._cache = None

    def init_args(self) -> Dict[str, Any]:
        r"""The constructor arguments of this teacher (what
        :func:`pmm_geo.load_model` rebuilds it from)."""
        projector = next(iter(self.projections.values()))
        return init_args(self, features=dict(self.feature_dims),
                         beta=projector.beta, dropout=projector.dropout.p,
                         modality_weight=self.modality_loss_weight,
                         prompt_dropout=self.prompt.dropout.p)

