from typing import Dict, NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torch_geometric import EdgeIndex
from torch_geometric.typing import WITH_TORCH_SPARSE, Adj, OptTensor, SparseTensor
from torch_geometric.utils import degree

from .cache import DATA_CACHE
from .hetero import EDGE_TYPE

LAYOUTS = ('edge_index', 'edge_index_fused', 'csr', 'sparse_tensor')


class AdjacencyView(NamedTuple):
    r"""One propagation direction of a bipartite adjacency, ready to unpack
    into :class:`pmm_geo.nn.BipartiteConv`:
    :obj:`conv(x_src, *view)` computes :obj:`x_dst`."""
    adj: Adj
    edge_weight: OptTensor
    size: Optional[Tuple[int, int]]


class BipartiteAdjacency:
    r"""The symmetric-normalized user-item adjacency of LightGCN, built once
    and cached in every layout the propagation layers accept.

    .. math::
        \hat{\mathbf{A}} = \mathbf{D}_u^{-1/2} \mathbf{R}
        \mathbf{D}_i^{-1/2}

    where :math:`\mathbf{R} \in \{0, 1\}^{U \times I}` holds the train
    interactions. Users aggregate items through :math:`\hat{\mathbf{A}}` and
    items aggregate users through :math:`\hat{\mathbf{A}}^{\top}` (the
    correct bipartite layout; the original PromptMM student swapped the two
    blocks).

    Layouts (argument :obj:`layout` of :meth:`item_to_user` /
    :meth:`user_to_item`):

    - :obj:`"edge_index"`: a plain :obj:`[2, E]` tensor plus edge weights
      (gather/scatter, the slow but universal fallback);
    - :obj:`"edge_index_fused"`: a column-sorted
      :class:`torch_geometric.EdgeIndex` (fused sparse matmul, default);
    - :obj:`"csr"`: a :obj:`torch.sparse_csr` transposed adjacency;
    - :obj:`"sparse_tensor"`: a :class:`torch_sparse.SparseTensor`
      (only when :obj:`torch-sparse` is installed).

    A model propagates over the whole graph or over a sampled part of it
    (:class:`pmm_geo.data.SampledAdjacency`, the same interface); it reads
    its layer-0 rows through :meth:`select_users` / :meth:`select_items`,
    which are the identity here.

    Args:
        edge_index (torch.Tensor): Train interactions :obj:`[2, E]`, row 0
            user ids, row 1 item ids, without duplicates.
        num_users (int): Number of users :math:`U`.
        num_items (int): Number of items :math:`I`.
        edge_weight (torch.Tensor, optional): Weights :obj:`[E]` to use
            instead of :math:`\hat{a}_{u,i} = 1 / \sqrt{\deg(u)
            \deg(i)}` (a sampled subgraph carries the full graph's).
            (default: :obj:`None`)
    """
    #: Global ids of the users / items (:obj:`None`: all, in order).
    user_id: Optional[Tensor] = None
    item_id: Optional[Tensor] = None

    def __init__(self, edge_index: Tensor, num_users: int, num_items: int,
                 edge_weight: Optional[Tensor] = None):
        self.edge_index = edge_index.long().contiguous()
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        user, item = self.edge_index
        self.user_degree = degree(user, self.num_users)
        self.item_degree = degree(item, self.num_items)
        if edge_weight is None:
            edge_weight = self.weight(user, item)
        self.edge_weight = edge_weight
        self._cache: Dict[Tuple[str, str], AdjacencyView] = {}

    def weight(self, user: Tensor, item: Tensor) -> Tensor:
        r"""The normalized weights :math:`1 / \sqrt{\deg(u) \deg(i)}` of
        interactions :obj:`(user, item)` of this graph."""
        # Every endpoint of an edge has degree >= 1: no zero division here.
        return self.user_degree[user].rsqrt() * self.item_degree[item].rsqrt()

    @property
    def root(self) -> 'BipartiteAdjacency':
        r"""The full graph (this one; a sampled subgraph's parent)."""
        return self

    def select_users(self, x: Tensor) -> Tensor:
        r"""The rows of a per-user tensor :obj:`[U, ...]` for this graph's
        users (all of them here)."""
        return x

    def select_items(self, x: Tensor) -> Tensor:
        r"""The rows of a per-item tensor :obj:`[I, ...]` for this graph's
        items (all of them here)."""
        return x

    def global_users(self, index: Tensor) -> Tensor:
        r"""Global ids of this graph's users :obj:`index` (the same here)."""
        return index

    def global_items(self, index: Tensor) -> Tensor:
        r"""Global ids of this graph's items :obj:`index` (the same here)."""
        return index

    @property
    def num_edges(self) -> int:
        return self.edge_index.size(1)

    @property
    def device(self) -> torch.device:
        return self.edge_index.device

    def to(self, device) -> 'BipartiteAdjacency':
        r"""Returns the adjacency on :obj:`device` (a new cache)."""
        if torch.device(device) == self.device:
            return self
        return BipartiteAdjacency(self.edge_index.to(device), self.num_users,
                                  self.num_items, self.edge_weight.to(device))

    def to_dense(self) -> Tensor:
        r"""Returns the dense :math:`U \times I` matrix (tests only)."""
        out = torch.zeros(self.num_users, self.num_items,
                          device=self.device)
        out[self.edge_index[0], self.edge_index[1]] = self.edge_weight
        return out

    def item_to_user(self, layout: str = 'edge_index_fused') -> AdjacencyView:
        r"""The adjacency that maps item features to user outputs."""
        return self._view('item_to_user', layout)

    def user_to_item(self, layout: str = 'edge_index_fused') -> AdjacencyView:
        r"""The adjacency that maps user features to item outputs."""
        return self._view('user_to_item', layout)

    def _view(self, direction: str, layout: str) -> AdjacencyView:
        if layout not in LAYOUTS:
            raise ValueError(f"Unknown adjacency layout '{layout}' "
                             f"(expected one of {LAYOUTS})")
        key = (direction, layout)
        if key not in self._cache:
            self._cache[key] = self._build(direction, layout)
        return self._cache[key]

    def _build(self, direction: str, layout: str) -> AdjacencyView:
        user, item = self.edge_index
        if direction == 'item_to_user':
            return adjacency_view(item, user, self.edge_weight,
                                  (self.num_items, self.num_users), layout)
        return adjacency_view(user, item, self.edge_weight,
                              (self.num_users, self.num_items), layout)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_users={self.num_users}, '
                f'num_items={self.num_items}, num_edges={self.num_edges})')


def adjacency_view(src: Tensor, dst: Tensor, weight: Tensor,
                   size: Tuple[int, int], layout: str) -> AdjacencyView:
    r"""Builds the :class:`AdjacencyView` of the weighted edges
    :obj:`src -> dst` between :obj:`size = (num_src, num_dst)` nodes in one
    of :obj:`LAYOUTS` (shared by :class:`BipartiteAdjacency` and the frozen
    item-item graphs of :class:`pmm_geo.nn.FrozenItemGraph`)."""
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown adjacency layout '{layout}' "
                         f"(expected one of {LAYOUTS})")
    if layout == 'edge_index':
        return AdjacencyView(torch.stack([src, dst]), weight, size)

    if layout == 'edge_index_fused':
        index = EdgeIndex(torch.stack([src, dst]).contiguous(),
                          sparse_size=size)
        index, perm = index.sort_by('col')
        index.fill_cache_()  # CSC for forward, CSR for backward.
        return AdjacencyView(index, weight[perm], None)

    # Sparse layouts hold the *transposed* adjacency (rows = targets).
    if layout == 'csr':
        adj_t = torch.sparse_coo_tensor(torch.stack([dst, src]), weight,
                                        (size[1], size[0]),
                                        check_invariants=False)
        from pmm_geo.nn._sparse import to_csr
        return AdjacencyView(to_csr(adj_t.coalesce()), None, None)

    if not WITH_TORCH_SPARSE:
        raise ImportError("The 'sparse_tensor' layout needs torch-sparse "
                          "(pip install 'pmm_geo[sparse]')")
    adj_t = SparseTensor(row=dst, col=src, value=weight,
                         sparse_sizes=(size[1], size[0]))
    return AdjacencyView(adj_t, None, None)


def get_adjacency(data) -> BipartiteAdjacency:
    r"""Returns the :class:`BipartiteAdjacency` of a pmm_geo
    :class:`~torch_geometric.data.HeteroData`, built on first use and cached
    on the data object (message passing sees train edges only)."""
    store = data[EDGE_TYPE]
    return DATA_CACHE.get(
        data, 'adjacency', (store.edge_index, data['user'].num_nodes,
                            data['item'].num_nodes),
        lambda: BipartiteAdjacency(store.edge_index, data['user'].num_nodes,
                                   data['item'].num_nodes))


def as_adjacency(graph, num_users: Optional[int] = None,
                 num_items: Optional[int] = None,
                 device: Optional[torch.device] = None,
                 owner: str = 'model') -> BipartiteAdjacency:
    r"""Accepts a :class:`BipartiteAdjacency` or a pmm_geo
    :class:`~torch_geometric.data.HeteroData` and returns the (cached)
    :class:`BipartiteAdjacency`.

    Args:
        graph: The adjacency or the data.
        num_users (int, optional): If given, the number of users the caller
            was built for; a different graph raises :class:`ValueError`.
        num_items (int, optional): The same for items.
        device (torch.device, optional): If given, the caller's device; a
            graph elsewhere raises :class:`ValueError` (rebuilding the cached
            layouts on every call would be silently slow).
        owner (str, optional): What the caller is, for error messages.
    """
    if hasattr(graph, 'item_to_user') and hasattr(graph, 'root'):
        adj = graph  # A BipartiteAdjacency or a SampledAdjacency.
    elif hasattr(graph, 'edge_types') and EDGE_TYPE in graph.edge_types:
        adj = get_adjacency(graph)
    else:
        raise TypeError(f"Expected a BipartiteAdjacency or a HeteroData with "
                        f"a {EDGE_TYPE} edge type, got "
                        f"'{type(graph).__name__}'")
    root = adj.root  # A sampled subgraph is checked against its full graph.
    if num_users is not None and num_items is not None and (
            root.num_users, root.num_items) != (num_users, num_items):
        raise ValueError(f'The graph has {root.num_users} users and '
                         f'{root.num_items} items, but the {owner} was built '
                         f'for {num_users} users and {num_items} items')
    if device is not None and adj.device != torch.device(device):
        raise ValueError(f'The graph is on {adj.device} but the {owner} is '
                         f'on {device}; move the data (or call '
                         f'adjacency.to(device)) once beforehand')
    return adj
