from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Embedding, Linear, ModuleDict, Parameter
from torch_geometric.index import index2ptr
from torch_geometric.utils import coalesce

from pmm_geo.data.adjacency import LAYOUTS, as_adjacency
from pmm_geo.nn._sparse import csr_tensor, sparse_mm
from pmm_geo.nn.conv import BipartiteConv
from pmm_geo.nn.functional import lightgcn_propagate
from pmm_geo.nn.models._args import init_args
from pmm_geo.nn._checks import (
    check_feature,
    check_item_graph_model,
    feature_widths,
)
from pmm_geo.nn.knn import (
    DEFAULT_BLOCK_SIZE,
    cosine_knn,
    edge_cosine,
    knn_item_graph,
    symmetric_normalize,
)

ItemGraph = Tuple[Tensor, Tensor]  # (edge_index [2, E] row-sorted, weight [E])


def _csr(row: Tensor, col: Tensor, value: Tensor, num_nodes: int) -> Tensor:
    return csr_tensor(index2ptr(row, num_nodes), col, value,
                      (num_nodes, num_nodes))


class _ItemGraphMatmul(torch.autograd.Function):
    r"""`A @ x` for a row-sorted sparse `A` given as `(edge_index, value)`,
    differentiable in both `value` (the learned graph) and `x`. Autograd
    through gather/scatter would keep two `[E, d]` buffers alive; here the
    value gradient is a chunked sampled product and the `x` gradient a
    sparse `Aᵀ @ grad`."""
    CHUNK = 1 << 16

    @staticmethod
    def forward(ctx, edge_index: Tensor, value: Tensor, x: Tensor) -> Tensor:
        num_nodes = x.size(0)
        ctx.save_for_backward(edge_index, value, x)
        return sparse_mm(_csr(edge_index[0], edge_index[1], value,
                               num_nodes), x)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        edge_index, value, x = ctx.saved_tensors
        row, col = edge_index
        grad_value = grad_x = None
        if ctx.needs_input_grad[1]:
            grad_value = torch.empty_like(value)
            for start in range(0, value.numel(), _ItemGraphMatmul.CHUNK):
                end = start + _ItemGraphMatmul.CHUNK
                grad_value[start:end] = (grad_out[row[start:end]] *
                                         x[col[start:end]]).sum(dim=-1)
        if ctx.needs_input_grad[2]:
            perm = torch.argsort(col * x.size(0) + row)
            grad_x = sparse_mm(
                _csr(col[perm], row[perm], value[perm], x.size(0)), grad_out)
        return None, grad_value, grad_x


class LATTICE(torch.nn.Module):
    r"""The LATTICE baseline from the `"Mining Latent Structures for
    Multimedia Recommendation" <https://arxiv.org/abs/2104.09036>`_ paper
    (Zhang et al., ACM MM 2021), sparse throughout.

    Per modality :math:`m`, items are linked to their :math:`k` nearest
    neighbours (cosine, self included) twice: on the learned projections
    :math:`\mathbf{W}_m \mathbf{x}^m_i + \mathbf{b}_m` (the *learned* graph
    :math:`\mathbf{A}_m`, rebuilt with gradient) and on the raw features
    (the *frozen* graph :math:`\mathbf{A}^0_m`, built once at
    construction). With softmax modality weights
    :math:`\mathbf{w} = \mathrm{softmax}(\boldsymbol{\omega})` and
    :math:`\mathcal{L}(\mathbf{A}) = \mathbf{D}^{-1/2} \mathbf{A}
    \mathbf{D}^{-1/2}`, :math:`\mathbf{D}` the row sums:

    .. math::
        \mathbf{S} = (1 - \lambda) \, \mathcal{L}\Big(\sum_m w_m
        \mathbf{A}_m\Big) + \lambda \sum_m w_m \mathcal{L}(\mathbf{A}^0_m)

    (the learned graph is mixed then normalized, the frozen one normalized
    then mixed, as LATTICE codes it). Item id embeddings
    :math:`\mathbf{E}_I` are propagated over :math:`\mathbf{S}` and added,
    L2-normalized, to the output of a LightGCN over the symmetric-normalized
    user-item graph :math:`\hat{\mathbf{A}}`:

    .. math::
        \mathbf{h} = \mathbf{S}^{L_I} \mathbf{E}_I, \qquad
        \mathbf{u} = \frac{1}{L+1} \sum_{l=0}^{L} \mathbf{u}^{(l)}, \qquad
        \mathbf{i} = \frac{1}{L+1} \sum_{l=0}^{L} \mathbf{i}^{(l)} +
        \frac{\mathbf{h}}{\|\mathbf{h}\|_2}

    with :math:`\mathbf{u}^{(l+1)} = \hat{\mathbf{A}} \mathbf{i}^{(l)}`,
    :math:`\mathbf{i}^{(l+1)} = \hat{\mathbf{A}}^{\top} \mathbf{u}^{(l)}`;
    scores are :math:`\mathbf{u}^{\top} \mathbf{i}`.

    No :math:`I \times I` dense matrix is ever formed: the kNN is an exact
    blocked top-:math:`k` (:func:`pmm_geo.nn.knn.cosine_knn`, memory
    :math:`O(B \cdot I)`), whose selected cosines are recomputed with
    gradient (:func:`pmm_geo.nn.knn.edge_cosine`, the same gradient as the
    dense :obj:`topk`), and :math:`\mathbf{S}` holds at most
    :math:`2 M I k` edges for :math:`M` modalities.

    Differences from the original code, on purpose:

    - any number of modalities :math:`M \ge 1` (the original is hard-wired
      to image + text);
    - the raw features are inputs, not trainable parameters (the original
      wraps them in :obj:`nn.Embedding.from_pretrained(freeze=False)`,
      82M extra parameters for a 20k x 4096 image table);
    - the CF backbone is the plain LightGCN with the symmetric
      :math:`\mathbf{D}_u^{-1/2} \mathbf{R} \mathbf{D}_i^{-1/2}`, not the
      original's row-normalized :math:`\mathbf{D}^{-1}(\mathbf{A} +
      \mathbf{I})`;
    - an item whose raw feature row of modality :math:`m` is all zero (no
      such modality) gets cosine 0 with every item in both graphs of
      :math:`m`, so its rows there carry weight 0 (no neighbours) instead of
      the original's NaN; its projection (the bias alone) is zeroed too, so
      such items do not form a clique of identical vectors;
    - a non-positive row sum is mapped to :math:`D^{-1/2} = 0` (the original
      maps 0 to 0 and a negative sum to NaN).

    Graph schedule: :obj:`forward(..., build_item_graph=True)` rebuilds the
    learned graph with gradient and caches a detached copy of
    :math:`\mathbf{S}`; :obj:`build_item_graph=False` reuses that copy, so
    the graph learner (projections and modality weights) gets no gradient.
    LATTICE rebuilds on the first batch of every epoch only (pass
    :obj:`build_item_graph=(batch == 0)`); it also rebuilds, without
    gradient, before evaluation (:meth:`get_embedding` under
    :func:`torch.no_grad`).

    Args:
        num_users (int): Number of users :math:`U`.
        num_items (int): Number of items :math:`I`.
        features (Dict[str, torch.Tensor]): Raw item features per modality,
            each :math:`(I, d_m)`; used here to build the frozen graphs and
            to size the projections, and passed again to :meth:`forward`.
            To rebuild a saved model, the widths :math:`d_m` (ints) do:
            the frozen graphs are then left empty for
            :meth:`load_state_dict` (see :meth:`init_args`).
        embedding_dim (int, optional): Width of the user and item id
            embeddings. (default: :obj:`64`)
        num_layers (int, optional): Number of LightGCN layers :math:`L`.
            (default: :obj:`2`)
        knn_k (int, optional): Neighbours per item, self included.
            (default: :obj:`10`)
        lambda_coeff (float, optional): Weight :math:`\lambda` of the frozen
            graph. (default: :obj:`0.9`)
        feat_embed_dim (int, optional): Width of the feature projections the
            learned graph is built on; :obj:`None` means
            :obj:`embedding_dim`. (default: :obj:`None`)
        item_graph_layers (int, optional): Number of item-graph propagations
            :math:`L_I`. (default: :obj:`1`)
        knn_block_size (int, optional): Query rows per kNN block; peak
            memory of a graph build grows as :obj:`knn_block_size * I`.
            (default: :obj:`2048`)
        layout (str, optional): Layout of the user-item adjacency, see
            :class:`pmm_geo.data.BipartiteAdjacency`.
            (default: :obj:`"edge_index_fused"`)

    Shapes:
        - **input:** :obj:`graph` a :class:`pmm_geo.data.BipartiteAdjacency`
          or the :class:`~torch_geometric.data.HeteroData`,
          :obj:`features` :math:`\{m: (I, d_m)\}`
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
        lambda_coeff: float = 0.9,
        feat_embed_dim: Optional[int] = None,
        item_graph_layers: int = 1,
        knn_block_size: int = DEFAULT_BLOCK_SIZE,
        layout: str = 'edge_index_fused',
    ):
        super().__init__()
        check_item_graph_model(num_users, num_items, embedding_dim,
                               num_layers, knn_k, item_graph_layers,
                               knn_block_size)
        if knn_k > num_items:
            raise ValueError(f"'knn_k' ({knn_k}) must not exceed "
                             f"'num_items' ({num_items})")
        if not 0.0 <= lambda_coeff <= 1.0:
            raise ValueError(f"'lambda_coeff' must be in [0, 1], got "
                             f"{lambda_coeff!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"Unknown adjacency layout '{layout}' "
                             f"(expected one of {LAYOUTS})")
        if not isinstance(features, dict) or len(features) == 0:
            raise ValueError("'features' must be a non-empty dict "
                             "{modality: [num_items, dim] tensor or dim}")
        feat_embed_dim = embedding_dim if feat_embed_dim is None else \
            feat_embed_dim

        self.num_users = num_users
        self.num_items = num_items
        self.embedding_dim = embedding_dim
        self.num_layers = num_layers
        self.knn_k = knn_k
        self.lambda_coeff = float(lambda_coeff)
        self.feat_embed_dim = feat_embed_dim
        self.item_graph_layers = item_graph_layers
        self.knn_block_size = knn_block_size
        self.layout = layout
        self.modalities: List[str] = list(features)
        # Tables, or widths alone to load saved graphs.
        self.feature_dims = feature_widths(features, num_items)

        self.user_embedding = Embedding(num_users, embedding_dim)
        self.item_embedding = Embedding(num_items, embedding_dim)
        self.projections = ModuleDict({
            m: Linear(dim, feat_embed_dim)
            for m, dim in self.feature_dims.items()
        })
        self.modality_weight = Parameter(torch.empty(len(self.modalities)))
        self.conv = BipartiteConv()

        # Frozen graphs: normalized per modality once, mixed at every build
        # (so the modality weights still get their gradient).
        for j, m in enumerate(self.modalities):
            index, weight = self._frozen_graph(features[m])
            self.register_buffer(f'frozen_index_{j}', index)
            self.register_buffer(f'frozen_weight_{j}', weight)
        # The last built item graph, detached (LATTICE's once-per-epoch
        # schedule reuses it); rebuilt from the parameters, so not saved.
        self.register_buffer('item_graph_index', None, persistent=False)
        self.register_buffer('item_graph_weight', None, persistent=False)

        self.reset_parameters()

    def reset_parameters(self):
        r"""Resets all learnable parameters (and drops the cached item
        graph); the frozen graphs are kept."""
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        for projection in self.projections.values():
            projection.reset_parameters()
        # Equal weights, as LATTICE's [0.5, 0.5].
        with torch.no_grad():
            self.modality_weight.fill_(1.0 / len(self.modalities))
        self.item_graph_index = self.item_graph_weight = None

    # ------------------------------------------------------------------
    # Input checks

    def _check_features(self, features: Dict[str, Tensor]):
        if set(features) != set(self.modalities):
            raise ValueError(f"'features' must hold exactly the modalities "
                             f"{self.modalities} given at construction, got "
                             f"{list(features)}")
        for m in self.modalities:
            check_feature(m, features[m], self.num_items,
                          self.feature_dims[m])

    # ------------------------------------------------------------------
    # Item graph

    def _knn_rows(self) -> Tensor:
        device = self.modality_weight.device
        return torch.arange(self.num_items, device=device).repeat_interleave(
            self.knn_k)

    @torch.no_grad()
    def _frozen_graph(self, x) -> ItemGraph:
        if not isinstance(x, Tensor):  # Only the width: an empty graph of
            # the right shape, for load_state_dict to fill.
            size = self.num_items * self.knn_k
            return (torch.zeros(2, size, dtype=torch.long),
                    torch.zeros(size))
        return knn_item_graph(x, self.knn_k, block_size=self.knn_block_size)

    def frozen_graph(self, modality: str) -> ItemGraph:
        r"""The normalized frozen kNN graph :math:`\mathcal{L}
        (\mathbf{A}^0_m)` of one modality as :obj:`(edge_index,
        edge_weight)`, :obj:`edge_index[0]` the row (the item aggregating),
        :obj:`edge_index[1]` its neighbour."""
        j = self.modalities.index(modality)
        return getattr(self, f'frozen_index_{j}'), getattr(
            self, f'frozen_weight_{j}')

    def project(self, features: Dict[str, Tensor]) -> Dict[str, Tensor]:
        r"""The projections :math:`\mathbf{W}_m \mathbf{x}^m_i +
        \mathbf{b}_m` the learned graph is built on, zero for the items whose
        feature row of :math:`m` is all zero (no such modality)."""
        out = {}
        for m in self.modalities:
            x, projection = features[m], self.projections[m]
            z = projection(x.to(projection.weight.dtype))
            out[m] = z * (x != 0).any(dim=1, keepdim=True).to(z.dtype)
        return out

    def item_graph(self, features: Dict[str, Tensor],
                   projections: Optional[Dict[str, Tensor]] = None
                   ) -> ItemGraph:
        r"""Builds the mixed item-item graph :math:`\mathbf{S}` (coalesced,
        sorted by row) as :obj:`(edge_index, edge_weight)`; the weights are
        differentiable with respect to the projections and the modality
        weights. :obj:`projections` replaces :meth:`project` (a subclass
        that projects otherwise, e.g. with a prompt)."""
        self._check_features(features)
        if projections is None:
            projections = self.project(features)
        weights = F.softmax(self.modality_weight, dim=0)
        row = self._knn_rows()

        # Learned graph: kNN on the projections, mixed, then normalized.
        learned_col, learned_value = [], []
        for j, m in enumerate(self.modalities):
            z = projections[m]
            _, col = cosine_knn(z, self.knn_k, self.knn_block_size)
            learned_col.append(col.view(-1))
            learned_value.append(weights[j] * edge_cosine(z, col).view(-1))
        learned_row = row.repeat(len(self.modalities))
        learned_col = torch.cat(learned_col)
        learned_value = symmetric_normalize(learned_row, learned_col,
                                            torch.cat(learned_value),
                                            self.num_items)

        # Frozen graph: normalized at construction, mixed now.
        frozen_index, frozen_value = [], []
        for j, m in enumerate(self.modalities):
            index, weight = self.frozen_graph(m)
            frozen_index.append(index)
            frozen_value.append(weights[j] * weight.to(weights.dtype))

        edge_index = torch.cat(
            [torch.stack([learned_row, learned_col])] + frozen_index, dim=1)
        edge_weight = torch.cat([(1.0 - self.lambda_coeff) * learned_value] +
                                [self.lambda_coeff * v for v in frozen_value])
        return coalesce(edge_index, edge_weight, self.num_items, reduce='sum')

    def propagate_items(self, item_graph: ItemGraph) -> Tensor:
        r"""Item-graph convolution :math:`\mathbf{S}^{L_I} \mathbf{E}_I`."""
        edge_index, edge_weight = item_graph
        h = self.item_embedding.weight
        for _ in range(self.item_graph_layers):
            h = _ItemGraphMatmul.apply(edge_index, edge_weight, h)
        return h

    # ------------------------------------------------------------------
    # Forward

    def _lightgcn(self, graph) -> Tuple[Tensor, Tensor]:
        adj = as_adjacency(graph, self.num_users, self.num_items,
                           owner='LATTICE model')
        return lightgcn_propagate(self.conv, adj,
                                  adj.select_users(self.user_embedding.weight),
                                  adj.select_items(self.item_embedding.weight),
                                  self.num_layers, self.layout)

    def forward(self, graph, features: Dict[str, Tensor],
                build_item_graph: bool = True) -> Tuple[Tensor, Tensor]:
        r"""Returns the final user and item embeddings.

        Args:
            graph (BipartiteAdjacency or HeteroData): The train interactions.
            features (Dict[str, torch.Tensor]): Raw item features per
                modality, as at construction.
            build_item_graph (bool, optional): Rebuild the item graph with
                gradient; if :obj:`False`, reuse the last built one,
                detached (built now if there is none yet).
                (default: :obj:`True`)
        """
        if build_item_graph or self.item_graph_index is None:
            item_graph = self.item_graph(features)
            self.item_graph_index = item_graph[0]
            self.item_graph_weight = item_graph[1].detach()
        else:
            item_graph = (self.item_graph_index, self.item_graph_weight)
        h = self.propagate_items(item_graph)
        user, item = self._lightgcn(graph)
        # On a sampled subgraph: the rows of its items (the item graph is
        # over all items, O(I k d) per step, independent of the users).
        adj = as_adjacency(graph)
        return user, item + adj.select_items(F.normalize(h, p=2, dim=1))

    def get_embedding(self, graph,
                      features: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
        r"""Returns :obj:`(user, item)` embeddings with a freshly built item
        graph (LATTICE's evaluation; call it under :func:`torch.no_grad`)."""
        return self(graph, features, build_item_graph=True)

    def init_args(self) -> Dict[str, Any]:
        r"""The constructor arguments of this model (what
        :func:`pmm_geo.load_model` rebuilds it from): the feature tables
        are recorded by their widths, the frozen graphs are in the
        :obj:`state_dict`."""
        return init_args(self, features=dict(self.feature_dims))

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.num_users}, '
                f'{self.num_items}, {self.embedding_dim}, '
                f'modalities={self.modalities}, knn_k={self.knn_k})')

