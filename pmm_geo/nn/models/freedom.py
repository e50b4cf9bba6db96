from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Linear, ModuleDict

from pmm_geo.data.adjacency import LAYOUTS, BipartiteAdjacency, as_adjacency
from pmm_geo.nn.conv import FrozenItemGraph, modality_mix_weights
from pmm_geo.nn._checks import (
    check_feature,
    check_item_graph_model,
    feature_widths,
)
from pmm_geo.nn.functional import bpr_scores
from pmm_geo.nn.knn import DEFAULT_BLOCK_SIZE
from pmm_geo.nn.losses import BPRLoss
from pmm_geo.nn.models._args import init_args

from .student import LightGCNStudent


def degree_sensitive_prune(adj: BipartiteAdjacency, ratio: float,
                           generator: Optional[torch.Generator] = None
                           ) -> BipartiteAdjacency:
    r"""FREEDOM's degree-sensitive edge pruning: keeps
    :math:`\lfloor |\mathcal{E}| (1 - \rho) \rfloor` of the user-item edges
    (at least one), drawn without replacement with probability proportional
    to their normalized weight

    .. math::
        p_{ui} \propto \hat{a}_{ui} = \frac{1}{\sqrt{d_u d_i}},

    so edges between popular nodes are dropped first, and returns the kept
    graph re-normalized with its own degrees. The draw is the exponential
    race (the :math:`k` smallest :math:`E_{ui} / \hat{a}_{ui}`,
    :math:`E_{ui} \sim \mathrm{Exp}(1)`), which has the distribution of
    MMRec's :obj:`torch.multinomial(values, k)` without its
    :math:`2^{24}`-category limit. :obj:`ratio=0` returns :obj:`adj` itself.

    Args:
        adj (BipartiteAdjacency): The full train graph.
        ratio (float): Fraction :math:`\rho \in [0, 1)` of edges to drop.
        generator (torch.Generator, optional): Random generator of the draw.
    """
    if not 0. <= ratio < 1.:
        raise ValueError(f"'ratio' must be in [0, 1), got {ratio!r}")
    if ratio == 0.:
        return adj
    num_keep = max(1, int(adj.num_edges * (1. - ratio)))
    race = torch.empty(adj.num_edges, device=adj.device,
                       dtype=adj.edge_weight.dtype).exponential_(
                           generator=generator)
    keep = (race / adj.edge_weight).topk(num_keep, largest=False).indices
    keep = keep.sort().values  # Same edge order as the full graph.
    return BipartiteAdjacency(adj.edge_index[:, keep], adj.num_users,
                              adj.num_items)


class FREEDOM(torch.nn.Module):
    r"""The FREEDOM model from the `"A Tale of Two Graphs: Freezing and
    Denoising Graph Structures for Multimodal Recommendation"
    <https://arxiv.org/abs/2211.06924>`_ paper (Zhou et al., ACM MM 2023),
    as MMRec implements it, sparse throughout.

    *Freezing*: one item-item graph, built once from the raw features
    (:class:`~pmm_geo.nn.FrozenItemGraph`: per modality a binary kNN graph
    on the cosine similarity, :math:`k = 10`, self included, normalized with
    its row sums, mixed with weights :math:`w_m`: image 0.1 / text 0.9 for
    an image + text pair, equal weights for any other set, see
    :func:`~pmm_geo.nn.conv.modality_mix_weights`):

    .. math::
        \mathbf{S} = \sum_m w_m \mathbf{D}_m^{-1/2} \mathbf{A}_m
        \mathbf{D}_m^{-1/2}, \qquad \mathbf{h} = \mathbf{S}^{L_I}
        \mathbf{E}_I

    *Denoising*: each training epoch propagates over a pruned user-item
    graph :math:`\tilde{\mathbf{A}}` (:func:`degree_sensitive_prune`: a
    fraction :math:`\rho` of the edges dropped, low-degree edges more
    likely kept, re-normalized); evaluation uses the full graph
    :math:`\hat{\mathbf{A}}`. A LightGCN over that graph gives

    .. math::
        \mathbf{u} = \frac{1}{L+1} \sum_{l=0}^{L} \mathbf{u}^{(l)}, \qquad
        \mathbf{i} = \frac{1}{L+1} \sum_{l=0}^{L} \mathbf{i}^{(l)} +
        \mathbf{h}

    (:math:`\mathbf{h}` added without normalization, unlike LATTICE), and
    the loss (:meth:`loss`) adds to the BPR of :math:`\mathbf{u}^{\top}
    \mathbf{i}` a BPR of the user embeddings against the projected raw
    features of each modality:

    .. math::
        \mathcal{L} = \mathcal{L}_{BPR}(\mathbf{u}, \mathbf{i}) + \mu
        \sum_m \mathcal{L}_{BPR}(\mathbf{u}, \mathbf{W}_m \mathbf{x}^m +
        \mathbf{b}_m)

    The features therefore reach the scores only through :math:`\mathbf{S}`
    and through what this term teaches the user embeddings.

    Defaults follow MMRec's FREEDOM.yaml (64-d, 2 user-item layers, one
    item-graph layer, :math:`k = 10`, image weight 0.1); where MMRec searches
    a grid, :math:`\rho \in \{0.8, 0.9\}` and
    :math:`\mu \in \{0, 10^{-5}, 10^{-4}, 10^{-3}\}`, the defaults
    :math:`\rho = 0.8`, :math:`\mu = 10^{-3}` are the grid point with the
    best validation Recall@20 on Amazon Scientific (docs/results.md).
    Differences from MMRec, on purpose: the raw features are inputs, not trainable parameters (MMRec
    wraps them in :obj:`nn.Embedding.from_pretrained(freeze=False)`), an
    item whose feature row is all zero gets no kNN neighbours in that
    modality (MMRec: NaN), and the pruned edges are drawn by the exponential
    race (same distribution as :obj:`torch.multinomial`, no size limit).

    Args:
        num_users (int): Number of users :math:`U`.
        num_items (int): Number of items :math:`I`.
        features (Dict[str, torch.Tensor]): Raw item features per modality,
            each :math:`(I, d_m)`: used here to build the frozen graph and
            size the projections, and passed again to :meth:`loss`. To
            rebuild a saved model, the widths :math:`d_m` (ints) do: the
            graph is then left empty for :meth:`load_state_dict`.
        embedding_dim (int, optional): Width of the embeddings and of the
            feature projections. (default: :obj:`64`)
        num_layers (int, optional): User-item LightGCN layers :math:`L`.
            (default: :obj:`2`)
        knn_k (int, optional): Neighbours per item, self included.
            (default: :obj:`10`)
        modality_weights (Mapping[str, float], optional): :math:`w_m`
            (default: :func:`~pmm_geo.nn.conv.modality_mix_weights`).
        item_graph_layers (int, optional): Item-graph steps :math:`L_I`.
            (default: :obj:`1`)
        prune_ratio (float, optional): Fraction :math:`\rho` of the
            user-item edges dropped each epoch (MMRec's :obj:`dropout`).
            (default: :obj:`0.8`)
        feature_weight (float, optional): Weight :math:`\mu` of the feature
            BPR terms (MMRec's :obj:`reg_weight`). (default: :obj:`1e-3`)
        knn_block_size (int, optional): Query rows per kNN block.
            (default: :obj:`2048`)
        layout (str, optional): Adjacency layout of the propagation.
            (default: :obj:`"edge_index_fused"`)

    Shapes:
        - **input:** :obj:`graph` a :class:`~pmm_geo.data.BipartiteAdjacency`
          or the :class:`~torch_geometric.data.HeteroData`
        - **output:** user embeddings :math:`(U, d)`, item embeddings
          :math:`(I, d)`
    """
    def __init__(
        self,
        num_users: int,
        num_items: int,
        features: Dict[str, Tensor],
        embedding_dim: int = 64,
        num_layers: int = 2,
        knn_k: int = 10,
        modality_weights: Optional[Mapping[str, float]] = None,
        item_graph_layers: int = 1,
        prune_ratio: float = 0.8,
        feature_weight: float = 1e-3,
        knn_block_size: int = DEFAULT_BLOCK_SIZE,
        layout: str = 'edge_index_fused',
    ):
        super().__init__()
        check_item_graph_model(num_users, num_items, embedding_dim,
                               num_layers, knn_k, item_graph_layers,
                               knn_block_size, min_item_graph_layers=1)
        if not 0. <= prune_ratio < 1.:
            raise ValueError(f"'prune_ratio' must be in [0, 1), got "
                             f"{prune_ratio!r}")
        if not feature_weight >= 0.:
            raise ValueError(f"'feature_weight' must be non-negative, got "
                             f"{feature_weight!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"Unknown 'layout' {layout!r} (expected one of "
                             f"{LAYOUTS})")
        # Tables, or widths alone to load a saved graph.
        feature_dims = feature_widths(features, num_items)
        if knn_k > num_items:
            raise ValueError(f"'knn_k' ({knn_k}) must not exceed "
                             f"'num_items' ({num_items})")

        self.num_users = num_users
        self.num_items = num_items
        self.embedding_dim = embedding_dim
        self.num_layers = num_layers
        self.knn_k = knn_k
        self.prune_ratio = float(prune_ratio)
        self.feature_weight = float(feature_weight)
        self.layout = layout
        self.modalities: List[str] = list(features)
        self.feature_dims = feature_dims
        if modality_weights is None:
            modality_weights = modality_mix_weights(self.modalities)
        self.modality_weights = dict(modality_weights)
        self.item_graph_layers = item_graph_layers
        self.knn_block_size = knn_block_size

        # The LightGCN backbone: id embeddings and user-item propagation.
        self.backbone = LightGCNStudent(num_users, num_items, embedding_dim,
                                        num_layers, layout=layout)
        if all(isinstance(x, Tensor) for x in features.values()):
            self.item_graph = FrozenItemGraph.from_features(
                features, knn_k, self.modality_weights, weighted=False,
                num_layers=item_graph_layers, block_size=knn_block_size,
                layout=layout).to(self.item_embedding.weight.dtype)
        else:  # k entries per item and modality, filled by a state dict.
            self.item_graph = FrozenItemGraph.empty(
                len(features) * num_items * knn_k, num_items,
                item_graph_layers, layout)
        self.projections = ModuleDict({
            m: Linear(dim, embedding_dim)
            for m, dim in self.feature_dims.items()
        })
        self.reset_parameters()

    @property
    def user_embedding(self) -> torch.nn.Embedding:
        return self.backbone.user_embedding

    @property
    def item_embedding(self) -> torch.nn.Embedding:
        return self.backbone.item_embedding

    def reset_parameters(self):
        r"""Resets all learnable parameters (Xavier-uniform embeddings, as
        MMRec); the frozen item graph is kept."""
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        for projection in self.projections.values():
            projection.reset_parameters()

    def _adjacency(self, graph) -> BipartiteAdjacency:
        return as_adjacency(graph, self.num_users, self.num_items,
                            self.user_embedding.weight.device, 'FREEDOM')

    def prune(self, graph, generator: Optional[torch.Generator] = None
              ) -> BipartiteAdjacency:
        r"""The graph of one training epoch: :func:`degree_sensitive_prune`
        of the full train graph with :obj:`prune_ratio`."""
        return degree_sensitive_prune(self._adjacency(graph),
                                      self.prune_ratio, generator)

    def forward(self, graph) -> Tuple[Tensor, Tensor]:
        r"""Returns the user and item embeddings propagated over
        :obj:`graph` (the pruned graph of :meth:`prune` in training, the
        full train graph for evaluation).

        Args:
            graph (BipartiteAdjacency or HeteroData): The user-item graph.
        """
        user, item = self.backbone.get_embedding(self._adjacency(graph))
        return user, item + self.item_graph(self.item_embedding.weight)

    def get_embedding(self, graph) -> Tuple[Tensor, Tensor]:
        r"""Returns :obj:`(user, item)` over the full graph (evaluation)."""
        return self(graph)

    def loss(self, user: Tensor, item: Tensor, users: Tensor, pos: Tensor,
             neg: Tensor, features: Mapping[str, Tensor]) -> Tensor:
        r"""The FREEDOM loss: BPR on the embeddings plus :obj:`feature_weight`
        times the BPR of the users against each modality's projected
        features (no :math:`L_2` term, as MMRec).

        Args:
            user (torch.Tensor): User embeddings from :meth:`forward`.
            item (torch.Tensor): Item embeddings from :meth:`forward`.
            users (torch.Tensor): User ids :obj:`[B]`.
            pos (torch.Tensor): Positive item ids :obj:`[B]`.
            neg (torch.Tensor): Negative item ids :obj:`[B]`.
            features (Mapping[str, torch.Tensor]): Raw item features, as at
                construction.
        """
        if users.dim() != 1 or pos.shape != users.shape or \
                neg.shape != users.shape:
            raise ValueError(f"Expected 'users', 'pos' and 'neg' of one shape "
                             f"[B], got {list(users.shape)}, "
                             f"{list(pos.shape)} and {list(neg.shape)}")
        bpr = BPRLoss()
        loss = bpr(*bpr_scores(user, item, users, pos, neg))
        if self.feature_weight == 0.:
            return loss
        u = user[users]
        for m in self.modalities:
            if m not in features:
                raise ValueError(f"'features' lacks modality '{m}' (expected "
                                 f"{self.modalities})")
            check_feature(m, features[m], self.num_items,
                          self.feature_dims[m])
            projection = self.projections[m]
            x = features[m].to(projection.weight.dtype)
            # Only the batch's rows: the same values as projecting all items.
            loss = loss + self.feature_weight * bpr(
                (u * projection(x[pos])).sum(-1),
                (u * projection(x[neg])).sum(-1))
        return loss

    def init_args(self) -> Dict[str, Any]:
        r"""The constructor arguments of this model (what
        :func:`pmm_geo.load_model` rebuilds it from): the features by their
        widths, the frozen graph is in the :obj:`state_dict`."""
        return init_args(self, features=dict(self.feature_dims))

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.num_users}, '
                f'{self.num_items}, {self.embedding_dim}, '
                f'modalities={self.modalities}, knn_k={self.knn_k}, '
                f'prune_ratio={self.prune_ratio})')
