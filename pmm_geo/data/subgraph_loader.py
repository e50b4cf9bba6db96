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


def thin_to_budget(new: Tensor, budget: int) -> Tuple[Tensor, float]:
    r"""Keeps at most :obj:`budget` of the :math:`n` nodes :obj:`new`,
    uniformly at random (torch's global random state), and returns them
    with the probability :math:`\pi = \min(1, \text{budget} / n)` that
    each was kept. Draws nothing when the budget does not bind."""
    if new.numel() <= budget:
        return new, 1.0
    keep = torch.randperm(new.numel(), device=new.device)[:budget]
    return new[keep], budget / new.numel()


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

    With a :obj:`node_budget`, the hops are sampled one at a time with
    PyG's :class:`~torch_geometric.sampler.NeighborSampler`, and between
    them at most that many of the new nodes of each type are kept
    (:func:`thin_to_budget`, uniformly); only the kept ones form the next
    hop's frontier, so dropped nodes are never expanded and the sampler's
    own work stays within :math:`\text{budget} \cdot \text{fanout}` draws
    per type and hop however large the graph. The sampled edges between
    kept nodes carry inclusion weights
    (:class:`~pmm_geo.data.SampledAdjacency`), so that each destination's
    aggregation stays an approximately unbiased (ratio) estimate over a
    subgraph of at most :math:`\text{seeds} + L \cdot \text{budget}` nodes
    per type. With :obj:`torch-sparse`, a budget that never binds gives the
    subgraph and the random state of :obj:`node_budget=0` exactly (the
    same draws, hop by hop); :obj:`pyg-lib` draws its random numbers in
    blocks per call, so there it gives another sample of the same law.

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
        # With a budget, one hop per call (its fanout set before each).
        self.sampler = NeighborSampler(
            self.graph, num_neighbors=self.fanouts[:1]
            if self.node_budget else self.fanouts)
        # Local id of every global node met by the running sample(): -1
        # not met, -2 dropped; reset after each call (only what it set).
        self._local = [torch.full((n, ), -1, dtype=torch.long) for n in
                       (self.adjacency.num_users, self.adjacency.num_items)
                       ] if self.node_budget else []

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
        prob: List[Optional[Tensor]] = [None, None]
        if self.node_budget:
            local, node_id, edges, prob = self._sample_hopwise(pairs)
        else:
            local, node_id, edges = self._sample_all(pairs)
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

    def _sample_all(self, pairs: Tensor):
        loader = LinkNeighborLoader(self.graph, self.fanouts,
                                    edge_label_index=(EDGE_TYPE, pairs),
                                    neighbor_sampler=self.sampler)
        batch = loader(torch.arange(pairs.size(1)))
        edges = [batch[REV_EDGE_TYPE].edge_index.flip(0),
                 batch[EDGE_TYPE].edge_index]  # Into users, into items.
        return (batch[EDGE_TYPE].edge_label_index,
                [batch[USER].n_id, batch[ITEM].n_id], edges)

    def _sample_hopwise(self, pairs: Tensor):
        # Seeds are the endpoints of the batch's pairs, as the loader's.
        frontier = [pairs[0].unique(), pairs[1].unique()]
        node_id = [[seeds] for seeds in frontier]
        prob = [[torch.ones(seeds.numel())] for seeds in frontier]
        met = [[seeds] for seeds in frontier]
        edges = [[pairs.new_empty(2, 0)] for _ in range(2)]
        count = [seeds.numel() for seeds in frontier]
        binds = False
        for t in (0, 1):
            self._local[t][frontier[t]] = torch.arange(count[t])
        try:
            for fanout in self.fanouts:
                found, sampled = self._hop(fanout, frontier)
                for t in (0, 1):
                    new, kept, p = self._admit(t, found[t], count[t])
                    binds |= p < 1
                    count[t] += kept.numel()
                    node_id[t].append(kept)
                    prob[t].append(torch.full((kept.numel(), ), p))
                    met[t].append(new)
                    frontier[t] = kept
                for t, (user, item) in enumerate(sampled):
                    pair = torch.stack([self._local[0][user],
                                        self._local[1][item]])
                    edges[t].append(pair[:, (pair >= 0).all(0)])
            local = torch.stack([self._local[0][pairs[0]],
                                 self._local[1][pairs[1]]])
        finally:
            for t in (0, 1):
                self._local[t][torch.cat(met[t])] = -1
        return (local, [torch.cat(ids) for ids in node_id],
                [torch.cat(e, dim=1) for e in edges],
                [torch.cat(p) for p in prob] if binds else [None, None])

    def _admit(self, t: int, found: Tensor, start: int):
        # The nodes of type t (0: users, 1: items) among `found` not met
        # before, thinned to the budget: the kept get local ids from
        # `start` on, the dropped are marked so no later hop adds them.
        new = found[self._local[t][found] == -1]
        kept, p = thin_to_budget(new, self.node_budget)
        self._local[t][new] = -2
        self._local[t][kept] = torch.arange(start, start + kept.numel())
        return new, kept, p

    def _hop(self, fanout: int, frontier: List[Tensor]):
        # One hop of PyG's sampler from the frontier of both types: the
        # global nodes it reached per type (users, items) and the sampled
        # global (user, item) edges into users and into items.
        # The public sample_from_nodes() seeds one node type per call (a
        # NodeSamplerInput has one input_type), and two calls draw in
        # another order than the op does within a hop (torch-sparse visits
        # the edge types in its own dict order), so a budget that never
        # binds would no longer replay node_budget=0's draws. Hence one
        # call per hop to NeighborSampler._sample (private), the function
        # through which PyG's sampler runs the torch-sparse / pyg-lib op
        # for a seed dict, rather than a copy of its backend dispatch.
        self.sampler.num_neighbors = [fanout]
        out = self.sampler._sample({USER: frontier[0], ITEM: frontier[1]})
        found = [out.node[USER], out.node[ITEM]]
        sampled = []
        for edge_type in (REV_EDGE_TYPE, EDGE_TYPE):  # Into users, items.
            src = out.node[edge_type[0]][out.row[edge_type]]
            dst = out.node[edge_type[-1]][out.col[edge_type]]
            sampled.append((dst, src) if edge_type == REV_EDGE_TYPE else
                           (src, dst))
        return found, sampled

    def __repr__(self) -> str:
        budget = f', node_budget={self.node_budget}' \
            if self.node_budget else ''
        return (f'{self.__class__.__name__}(fanouts={self.fanouts}, '
                f'num_hops={self.num_hops}{budget})')


__all__ = ['SubgraphLoader', 'SampledBatch', 'require_neighbor_sampling',
           'check_fanouts', 'check_node_budget', 'thin_to_budget']
