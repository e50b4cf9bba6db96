from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.utils import degree, scatter

from .adjacency import AdjacencyView, BipartiteAdjacency


def _rows(x: Tensor, index: Tensor) -> Tensor:
    # A trainable table (a leaf) gets a sparse gradient; a computed tensor
    # passes a dense one back through the ops that made it.
    if x.dim() == 2 and x.requires_grad and x.is_leaf:
        return F.embedding(index, x, sparse=True)
    return x.index_select(0, index)


class SampledAdjacency:
    r"""A sampled part of a :class:`~pmm_geo.data.BipartiteAdjacency`: the
    users :obj:`user_id` and items :obj:`item_id` of a mini-batch's
    neighbourhood, numbered locally, and for each propagation direction the
    sampled edges into each destination (as a
    :class:`~torch_geometric.loader.LinkNeighborLoader` returns them, per
    edge type).

    A sampled edge into destination :math:`v` keeps the full graph's
    normalized weight, rescaled by the share of :math:`v`'s edges that were
    sampled:

    .. math::
        \tilde{a}_{u,v} = \frac{\deg(v)}{|\mathcal{S}(v)|}
        \frac{1}{\sqrt{\deg(u) \deg(v)}}

    so that :math:`\sum_{u \in \mathcal{S}(v)} \tilde{a}_{u,v}
    \mathbf{x}_u` is an unbiased estimate of the full aggregation
    :math:`\sum_{u \in \mathcal{N}(v)} \hat{a}_{u,v} \mathbf{x}_u` under
    uniform sampling, and equals it when every neighbour was sampled. With
    all neighbours sampled to the models' depth, a model's outputs for the
    seed nodes are then exactly its full-graph outputs (the tests check
    it).

    When a node budget (:class:`~pmm_geo.data.SubgraphLoader`) kept each
    local node :math:`u` only with probability :math:`\pi_u`
    (:obj:`user_prob`, :obj:`item_prob`) between hops, and dropped nodes
    were never expanded (the subgraph holds only edges sampled from kept
    destinations to kept sources), the kept edges into :math:`v` are
    reweighted as a ratio (Hajek) estimator with inclusion weights
    :math:`1 / \pi_u`:

    .. math::
        \tilde{a}_{u,v} = \frac{\deg(v)}{\sum_{w \in \mathcal{K}(v)}
        \pi_w^{-1}} \frac{\pi_u^{-1}}{\sqrt{\deg(u) \deg(v)}}

    over the kept sampled neighbours :math:`\mathcal{K}(v)`, which is the
    rule above when every :math:`\pi_u = 1`. It is not exactly unbiased:
    a ratio estimator's bias shrinks as :math:`1 / |\mathcal{K}(v)|`, and
    across hops the keep draws are not independent (a node kept at hop
    :math:`h` was reached from a kept node of hop :math:`h - 1`, since only
    kept nodes are expanded); the tests bound the bias on a small graph.
    Without the weights, the neighbours the budget never drops (seeds,
    nodes of earlier hops) would outweigh the thinned new ones.

    It has the interface the models read from a
    :class:`~pmm_geo.data.BipartiteAdjacency`: :obj:`num_users`,
    :obj:`num_items`, :meth:`item_to_user`, :meth:`user_to_item`, and
    :meth:`select_users` / :meth:`select_items` to gather the layer-0 rows
    of its nodes from full tables.

    Args:
        root (BipartiteAdjacency): The full graph.
        user_id (torch.Tensor): Global ids of the local users :obj:`[U']`.
        item_id (torch.Tensor): Global ids of the local items :obj:`[I']`.
        user_to_item (torch.Tensor): Sampled edges along which items
            aggregate users, :obj:`[2, E1]` local :obj:`(user, item)`.
        item_to_user (torch.Tensor): Sampled edges along which users
            aggregate items, :obj:`[2, E2]` local :obj:`(user, item)`.
        user_prob (torch.Tensor, optional): Probability :math:`\pi_u` that
            each local user was kept by a node budget :obj:`[U']`.
            (default: :obj:`None`: all kept)
        item_prob (torch.Tensor, optional): The same for the local items
            :obj:`[I']`. (default: :obj:`None`)
    """
    def __init__(self, root: BipartiteAdjacency, user_id: Tensor,
                 item_id: Tensor, user_to_item: Tensor, item_to_user: Tensor,
                 user_prob: Optional[Tensor] = None,
                 item_prob: Optional[Tensor] = None):
        self._root = root
        self.user_id = user_id.long()
        self.item_id = item_id.long()
        self.num_users = self.user_id.numel()
        self.num_items = self.item_id.numel()
        self._to_item = self._direction(user_to_item, 1, user_prob)
        self._to_user = self._direction(item_to_user, 0, item_prob)

    def _direction(self, edge_index: Tensor, dst: int,
                   src_prob: Optional[Tensor]) -> BipartiteAdjacency:
        edge_index = edge_index.long()
        user, item = self.user_id[edge_index[0]], self.item_id[edge_index[1]]
        weight = self._root.weight(user, item)
        local = edge_index[dst]
        size = self.num_users if dst == 0 else self.num_items
        full = (self._root.user_degree[self.user_id] if dst == 0 else
                self._root.item_degree[self.item_id])
        if src_prob is None:
            sampled = degree(local, size)
        else:  # Inclusion weights of the kept sources (Hajek).
            inverse = src_prob.to(weight.dtype).reciprocal()[
                edge_index[1 - dst]]
            sampled = scatter(inverse, local, dim_size=size, reduce='sum')
            weight = weight * inverse
        weight = weight * (full / sampled.clamp_min(1))[local]
        return BipartiteAdjacency(edge_index, self.num_users, self.num_items,
                                  edge_weight=weight)

    @property
    def root(self) -> BipartiteAdjacency:
        r"""The full graph this subgraph was sampled from."""
        return self._root

    @property
    def device(self) -> torch.device:
        return self.user_id.device

    @property
    def num_edges(self) -> int:
        return self._to_item.num_edges + self._to_user.num_edges

    def item_to_user(self, layout: str = 'edge_index_fused') -> AdjacencyView:
        r"""The sampled adjacency that maps item features to user outputs."""
        return self._to_user.item_to_user(layout)

    def user_to_item(self, layout: str = 'edge_index_fused') -> AdjacencyView:
        r"""The sampled adjacency that maps user features to item outputs."""
        return self._to_item.user_to_item(layout)

    def select_users(self, x: Tensor) -> Tensor:
        r"""The rows of a per-user tensor :obj:`[U, ...]` (all users) for
        this subgraph's users, in local order. The gradient of a trainable
        table is sparse (its rows only), so that an optimizer step costs
        what the subgraph touched (:class:`torch.optim.SparseAdam`)."""
        return _rows(x, self.user_id)

    def select_items(self, x: Tensor) -> Tensor:
        r"""The rows of a per-item tensor :obj:`[I, ...]` for this
        subgraph's items, in local order (sparse gradient, as
        :meth:`select_users`)."""
        return _rows(x, self.item_id)

    def global_users(self, index: Tensor) -> Tensor:
        r"""Global ids of the local users :obj:`index`."""
        return self.user_id[index]

    def global_items(self, index: Tensor) -> Tensor:
        r"""Global ids of the local items :obj:`index`."""
        return self.item_id[index]

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_users={self.num_users}, '
                f'num_items={self.num_items}, num_edges={self.num_edges}, '
                f'of {self._root})')


__all__ = ['SampledAdjacency']
