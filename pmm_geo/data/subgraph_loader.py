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
    """
    def __init__(self, data, fanouts: Sequence[int], num_hops: int,
                 adjacency: Optional[BipartiteAdjacency] = None):
        require_neighbor_sampling()
        fanouts = check_fanouts(fanouts)
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
        graph = SampledAdjacency(
            self.adjacency, batch[USER].n_id, batch[ITEM].n_id,
            user_to_item=batch[EDGE_TYPE].edge_index,
            item_to_user=batch[REV_EDGE_TYPE].edge_index.flip(0))
        # Pairs come back in order: a user is the source of its row's pairs.
        first = local[0][:items[0].numel()].view(users.numel(), -1)[:, 0]
        out, start = [], 0
        for tensor in items:
            out.append(local[1][start:start + tensor.numel()].view_as(tensor))
            start += tensor.numel()
        return SampledBatch(graph, first, tuple(out))

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(fanouts={self.fanouts}, '
                f'num_hops={self.num_hops})')


__all__ = ['SubgraphLoader', 'SampledBatch', 'require_neighbor_sampling',
           'check_fanouts']
