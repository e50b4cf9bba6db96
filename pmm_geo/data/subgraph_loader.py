from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch_geometric.typing
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.loader import LinkNeighborLoader
from torch_geometric.sampler import NeighborSampler

from .adjacency import BipartiteAdjacency, get_adjacency
from .hetero import EDGE_TYPE, ITEM, REV_EDGE_TYPE, USER
from .subgraph import SampledAdjacency


class SampledBatch(NamedTuple):
    r"""A mini-batch on its sampled subgraph: :obj:`users` and each tensor
    of :obj:`items` hold local ids of :obj:`graph` (in the shapes they were
    given)."""
    graph: SampledAdjacency
    users: Tensor
    items: Tuple[Tensor, ...]


def require_neighbor_sampling() -> None:
    r"""Raises :class:`ImportError` naming the extra to install when neither
    :obj:`pyg-lib` nor :obj:`torch-sparse` provides PyG's neighbour
    sampling."""
    if not (torch_geometric.typing.WITH_PYG_LIB
            or torch_geometric.typing.WITH_TORCH_SPARSE):
        raise ImportError("sampled batching needs PyG's neighbour sampling "
                          "from torch-sparse or pyg-lib; install the sparse "
                          "extra: pip install 'pmm_geo[sparse]'")


def check_fanouts(fanouts: Sequence[int]) -> Tuple[int, ...]:
    r"""Validates neighbour fanouts: positive counts, or :obj:`-1` for all
    neighbours."""
    fanouts = tuple(int(f) for f in fanouts)
    if not fanouts or any(f == 0 or f < -1 for f in fanouts):
        raise ValueError(f"'fanouts' must be a non-empty list of positive "
                         f"neighbour counts or -1 (all), got {list(fanouts)}")
    return fanouts


def check_node_budget(node_budget: int) -> int:
    r"""Validates a per-hop node budget: :obj:`0` (none) or a positive
    count."""
    if isinstance(node_budget, bool) or int(node_budget) != node_budget \
            or node_budget < 0:
        raise ValueError(f"'node_budget' must be an integer >= 0 (0: no "
                         f'budget), got {node_budget!r}')
    return int(node_budget)


def thin_to_budget(sizes: Tuple[int, int], seeds: Tuple[Tensor, Tensor],
                   edges: Tuple[Tensor, Tensor], num_hops: int,
                   budget: int) -> Tuple[List[Tensor], List[Tensor]]:
    r"""Keeps at most :obj:`budget` new nodes per type and hop of a sampled
    neighbourhood, and returns per type (users, items) the mask of kept
    local nodes and the probability :math:`\pi_u` that each was kept.

    Hop :math:`h` of a node is its distance from the seeds along the
    sampled edges, from each destination to its sampled neighbours (the
    hop in which the sampler first reached it). At hop :math:`h` the
    candidates of a type are its new nodes with a sampled edge into a kept
    node of hop :math:`h - 1` (the others no longer reach the seeds); when
    there are :math:`n > \text{budget}` of them, :obj:`budget` are kept
    uniformly at random (torch's global random state), each with
    :math:`\pi_u = \text{budget} / n`. Seeds are always kept
    (:math:`\pi_u = 1`).

    Args:
        sizes (Tuple[int, int]): Number of local users and items.
        seeds (Tuple[Tensor, Tensor]): Local ids of the seed users and
            items.
        edges (Tuple[Tensor, Tensor]): The sampled local :obj:`(user, item)`
            edges into users and into items.
        num_hops (int): Depth of the neighbourhood.
        budget (int): New nodes kept per type and hop.
    """
    device = edges[0].device
    hop = [torch.full((n, ), -1, device=device) for n in sizes]
    keep = [torch.zeros(n, dtype=torch.bool, device=device) for n in sizes]
    prob = [torch.ones(n, device=device) for n in sizes]
    for t in (0, 1):
        hop[t][seeds[t]] = 0
        keep[t][seeds[t]] = True
    for h in range(1, num_hops + 1):
        found = []
        for t in (0, 1):  # Destinations of type t reach sources of 1 - t.
            dst, src = edges[t][t], edges[t][1 - t]
            new = (hop[t][dst] == h - 1) & (hop[1 - t][src] == -1)
            found.append((1 - t, src[new], src[new & keep[t][dst]]))
        for s, reached, candidates in found:
            hop[s][reached] = h
            candidates = candidates.unique()
            if candidates.numel() > budget:
                prob[s][candidates] = budget / candidates.numel()
                candidates = candidates[torch.randperm(
                    candidates.numel(), device=device)[:budget]]
            keep[s][candidates] = True
    return keep, prob


class SubgraphLoader:
    r"""Samples the :obj:`num_hops`-hop neighbourhood of a mini-batch of
    user-item pairs with PyG's
    :class:`~torch_geometric.loader.LinkNeighborLoader` over the
    :class:`~torch_geometric.data.HeteroData`, and returns it as a
    :class:`~pmm_geo.data.SampledAdjacency` the models propagate over, so
    that a training step's cost depends on the batch and the fanouts, not
    on the size of the graph.

    Every user of the batch and every item it names (positives, negatives,
    candidate lists) is a seed; hop :math:`l` samples up to
    :obj:`fanouts[l]` neighbours of each node first reached at hop
    :math:`l - 1` (users from items along :obj:`('user', 'interacts',
    'item')`, items from users along the reverse type). Neighbour sampling
    runs in :obj:`pyg-lib` or :obj:`torch-sparse` (the :obj:`sparse` extra)
    and draws from torch's global random state.

    With a :obj:`node_budget`, at most that many new nodes per type are
    kept at each hop beyond the seeds (:func:`thin_to_budget`, uniformly
    among the new nodes still linked to the kept ones), the edges of the
    dropped nodes are removed, and the kept edges carry inclusion weights
    (:class:`~pmm_geo.data.SampledAdjacency`), so that each destination's
    aggregation stays an approximately unbiased (ratio) estimate, now
    over a subgraph of at most :math:`\text{seeds} + L \cdot
    \text{budget}` nodes per type however large the graph. The budget is
    a filter on the sampler's output: the sampler still draws the full
    fanouts first, so its own cost still grows with the neighbourhood;
    what shrinks is everything after it (weights, propagation, the
    optimizer's rows).

    Args:
        data (torch_geometric.data.HeteroData): The pmm_geo dataset (its
            train interactions).
        fanouts (Sequence[int]): Neighbours sampled per node at each hop,
            :obj:`-1` for all; a deeper :obj:`num_hops` repeats the last
            entry.
        num_hops (int): Depth of the neighbourhood (the models' number of
            propagation layers).
        adjacency (BipartiteAdjacency, optional): The full graph's cached
            adjacency. (default: :obj:`get_adjacency(data)`)
        node_budget (int, optional): New nodes kept per type and hop,
            :obj:`0` for all. (default: :obj:`0`)
    """
    def __init__(self, data, fanouts: Sequence[int], num_hops: int,
                 adjacency: Optional[BipartiteAdjacency] = None,
                 node_budget: int = 0):
        require_neighbor_sampling()
        fanouts = check_fanouts(fanouts)
        self.node_budget = check_node_budget(node_budget)
        if int(num_hops) < 1:
            raise ValueError(f"'num_hops' must be >= 1, got {num_hops}")
        self.num_hops = int(num_hops)
        self.fanouts = list(fanouts[:self.num_hops]) + \
            [fanouts[-1]] * max(0, self.num_hops - len(fanouts))
        self.adjacency = adjacency if adjacency is not None else \
            get_adjacency(data)
        # Only the structure: the models gather whatever rows they need.
        edge_index = self.adjacency.edge_index
        self.graph = HeteroData()
        self.graph[USER].num_nodes = self.adjacency.num_users
        self.graph[ITEM].num_nodes = self.adjacency.num_items
        self.graph[EDGE_TYPE].edge_index = edge_index
        self.graph[REV_EDGE_TYPE].edge_index = edge_index.flip(0)
        self.sampler = NeighborSampler(self.graph,
                                       num_neighbors=self.fanouts)

    def sample(self, users: Tensor, *items: Tensor) -> SampledBatch:
        r"""The subgraph around :obj:`users` :obj:`[B]` and the items
        :obj:`[B]` or :obj:`[B, n]` of each tensor in :obj:`items` (row
        :math:`b` belongs to :obj:`users[b]`), with all ids made local."""
        users = users.view(-1)
        if not items:
            raise ValueError('sample() needs at least one item tensor')
        rows: List[Tensor] = []
        for tensor in items:
            if tensor.size(0) != users.numel():
                raise ValueError(f'every item tensor needs one row per user '
                                 f'({users.numel()}), got '
                                 f'{list(tensor.shape)}')
            width = tensor[0].numel() if tensor.numel() else 0
            rows.append(users.view(-1, 1).expand(-1, width).reshape(-1))
        pairs = torch.stack([torch.cat(rows),
                             torch.cat([t.reshape(-1) for t in items])])
        loader = LinkNeighborLoader(self.graph, self.fanouts,
                                    edge_label_index=(EDGE_TYPE, pairs),
                                    neighbor_sampler=self.sampler)
        batch = loader(torch.arange(pairs.size(1)))
        local = batch[EDGE_TYPE].edge_label_index
        node_id = [batch[USER].n_id, batch[ITEM].n_id]
        edges = [batch[REV_EDGE_TYPE].edge_index.flip(0),
                 batch[EDGE_TYPE].edge_index]  # Into users, into items.
        prob: List[Optional[Tensor]] = [None, None]
        if self.node_budget:
            local, node_id, edges, prob = self._thin(local, node_id, edges)
        graph = SampledAdjacency(self.adjacency, node_id[0], node_id[1],
                                 user_to_item=edges[1],
                                 item_to_user=edges[0], user_prob=prob[0],
                                 item_prob=prob[1])
        # Pairs come back in order: a user is the source of its row's pairs.
        first = local[0][:items[0].numel()].view(users.numel(), -1)[:, 0]
        out, start = [], 0
        for tensor in items:
            out.append(local[1][start:start + tensor.numel()].view_as(tensor))
            start += tensor.numel()
        return SampledBatch(graph, first, tuple(out))

    def _thin(self, local: Tensor, node_id: List[Tensor],
              edges: List[Tensor]):
        # Seeds are the endpoints of the batch's pairs.
        keep, prob = thin_to_budget(
            (node_id[0].numel(), node_id[1].numel()), (local[0], local[1]),
            edges, self.num_hops, self.node_budget)
        if all(bool(mask.all()) for mask in keep):
            return local, node_id, edges, [None, None]
        index = [mask.cumsum(0) - 1 for mask in keep]
        out = []
        for edge_index in edges:
            edge_index = edge_index[:, keep[0][edge_index[0]]
                                    & keep[1][edge_index[1]]]
            out.append(torch.stack([index[0][edge_index[0]],
                                    index[1][edge_index[1]]]))
        local = torch.stack([index[0][local[0]], index[1][local[1]]])
        return (local, [n_id[mask] for n_id, mask in zip(node_id, keep)],
                out, [p[mask] for p, mask in zip(prob, keep)])

    def __repr__(self) -> str:
        budget = f', node_budget={self.node_budget}' \
            if self.node_budget else ''
        return (f'{self.__class__.__name__}(fanouts={self.fanouts}, '
                f'num_hops={self.num_hops}{budget})')


__all__ = ['SubgraphLoader', 'SampledBatch', 'require_neighbor_sampling',
           'check_fanouts', 'check_node_budget', 'thin_to_budget']
