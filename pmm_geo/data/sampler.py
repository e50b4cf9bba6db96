from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor

from .hetero import EDGE_TYPE, ITEM, USER

# Up to this many user-item cells, membership is also kept as a dense table
# of U * I bools (16 MiB at most): one lookup per draw instead of a binary
# search over the E sorted keys, with the same answers.
DENSE_MEMBERSHIP_MAX_CELLS = 1 << 24


class NegativeSampler:
    r"""Uniform sampler of *true* negatives for implicit-feedback training:
    for a user :math:`u` with train positives :math:`\mathcal{N}(u)`, every
    negative is drawn uniformly from :math:`\mathcal{I} \setminus
    \mathcal{N}(u)`, never from the user's positives (unlike
    :func:`torch_geometric.utils.structured_negative_sampling`, which is not
    bipartite-aware).

    Sampling is vectorized: the positives are kept as sorted keys
    :math:`u \cdot |\mathcal{I}| + i`, candidates are drawn uniformly over all
    items, hits are found with one :func:`torch.searchsorted` (on graphs of
    at most :obj:`DENSE_MEMBERSHIP_MAX_CELLS` user-item cells, read from a
    dense :math:`|\mathcal{U}| \times |\mathcal{I}|` table instead: the
    same answers, so the same draws, for less work), and only the rejected
    slots are redrawn until none is left. Rejection keeps the draw exactly
    uniform over the true negatives; the expected number of rounds is
    :math:`O(\log(Bn) / \log(1/\rho))` for the densest requested user's
    density :math:`\rho`, i.e. one or two rounds on real recommendation data.

    Args:
        edge_index (torch.Tensor): Train interactions :obj:`[2, E]`, row 0
            user ids, row 1 item ids. Duplicates are allowed (each one is a
            separate triplet in :meth:`epoch_batches`).
        num_users (int): Number of users.
        num_items (int): Number of items.
    """
    def __init__(self, edge_index: Tensor, num_users: int, num_items: int):
        if (not isinstance(edge_index, Tensor) or edge_index.dim() != 2
                or edge_index.size(0) != 2):
            shape = (list(edge_index.shape) if isinstance(edge_index, Tensor)
                     else type(edge_index).__name__)
            raise ValueError(f"'edge_index' must be a [2, E] tensor, got "
                             f"{shape}")
        if edge_index.is_floating_point() or edge_index.is_complex():
            raise ValueError(f"'edge_index' must hold integer ids, got dtype "
                             f"{edge_index.dtype}")
        if int(num_users) <= 0 or int(num_items) <= 0:
            raise ValueError(f"'num_users' and 'num_items' must be positive, "
                             f"got {num_users} and {num_items}")
        self.num_users, self.num_items = int(num_users), int(num_items)
        self.edge_index = edge_index.long().contiguous()
        if self.edge_index.numel() > 0:
            users, items = self.edge_index
            if int(users.min()) < 0 or int(users.max()) >= self.num_users:
                bad = int(users[(users < 0) | (users >= num_users)][0])
                raise ValueError(f"'edge_index' holds user id {bad}, out of "
                                 f"range for num_users={self.num_users}")
            if int(items.min()) < 0 or int(items.max()) >= self.num_items:
                bad = int(items[(items < 0) | (items >= num_items)][0])
                raise ValueError(f"'edge_index' holds item id {bad}, out of "
                                 f"range for num_items={self.num_items}")
        # Sorted unique keys u * I + i: membership is one searchsorted.
        self.pos_keys = torch.unique(self.edge_index[0] * self.num_items +
                                     self.edge_index[1])
        self.num_positives = torch.bincount(self.pos_keys // self.num_items,
                                            minlength=self.num_users)
        self.pos_table: Optional[Tensor] = None
        cells = self.num_users * self.num_items
        if cells <= DENSE_MEMBERSHIP_MAX_CELLS:
            self.pos_table = torch.zeros(cells, dtype=torch.bool,
                                         device=self.device)
            self.pos_table[self.pos_keys] = True

    @classmethod
    def from_data(cls, data) -> 'NegativeSampler':
        r"""Builds the sampler from the train edges of a pmm_geo
        :class:`~torch_geometric.data.HeteroData`."""
        return cls(data[EDGE_TYPE].edge_index, data[USER].num_nodes,
                   data[ITEM].num_nodes)

    @property
    def num_edges(self) -> int:
        return self.edge_index.size(1)

    @property
    def device(self) -> torch.device:
        return self.pos_keys.device

    def to(self, device) -> 'NegativeSampler':
        r"""Moves the sampler's index tensors to :obj:`device` (pass a
        :class:`torch.Generator` of the same device when sampling)."""
        self.edge_index = self.edge_index.to(device)
        self.pos_keys = self.pos_keys.to(device)
        self.num_positives = self.num_positives.to(device)
        if self.pos_table is not None:
            self.pos_table = self.pos_table.to(device)
        return self

    def is_positive(self, users: Tensor, items: Tensor) -> Tensor:
        r"""Returns a boolean tensor, :obj:`True` where :obj:`(users, items)`
        is a train interaction (broadcasting :obj:`users` against
        :obj:`items`)."""
        keys = users * self.num_items + items
        if self.pos_table is not None:
            return self.pos_table[keys]
        if self.pos_keys.numel() == 0:
            return torch.zeros_like(keys, dtype=torch.bool)
        pos = torch.searchsorted(self.pos_keys, keys)
        pos = pos.clamp_(max=self.pos_keys.numel() - 1)
        return self.pos_keys[pos] == keys

    def sample_negatives(self, users: Tensor, num_negatives: int = 1,
                         generator: Optional[torch.Generator] = None
                         ) -> Tensor:
        r"""Draws :obj:`num_negatives` true negatives per user, uniformly and
        with replacement from the user's non-interacted items.

        Args:
            users (torch.Tensor): User ids :obj:`[B]`.
            num_negatives (int): Negatives per user :math:`n`.
                (default: :obj:`1`)
            generator (torch.Generator, optional): Random source, for
                repeatable draws. (default: :obj:`None`)

        Returns:
            :obj:`[B, n]` item ids; entry :obj:`[b, j]` is never a train
            positive of :obj:`users[b]`.
        """
        users = self._check_users(users, 'users')
        num_negatives = int(num_negatives)
        if num_negatives < 0:
            raise ValueError(f"'num_negatives' must be >= 0, got "
                             f"{num_negatives}")
        full = self.num_positives[users] >= self.num_items
        if bool(full.any()):
            bad = int(users[full][0])
            raise ValueError(f"User {bad} interacted with all "
                             f"{self.num_items} items in train: it has no "
                             f"negative item to sample")
        users = users.view(-1, 1).expand(-1, num_negatives)
        neg = self._randint((users.size(0), num_negatives), generator)
        rejected = self.is_positive(users, neg).nonzero(as_tuple=True)
        while rejected[0].numel() > 0:  # Redraw only the rejected slots.
            redraw = self._randint((rejected[0].numel(), ), generator)
            neg[rejected] = redraw
            still = self.is_positive(users[rejected], redraw)
            rejected = (rejected[0][still], rejected[1][still])
        return neg

    def epoch_batches(self, batch_size: int,
                      generator: Optional[torch.Generator] = None,
                      drop_last: bool = False, num_shards: int = 1,
                      shard: int = 0
                      ) -> Iterator[Tuple[Tensor, Tensor, Tensor]]:
        r"""One interaction-uniform pass over the train edges, in shuffled
        order, as BPR triplets.

        Every train interaction appears exactly once per epoch, paired with a
        freshly drawn true negative of its user. The shuffle and the
        negatives are drawn when this is called (the batches are slices).

        Args:
            batch_size (int): Triplets per batch.
            generator (torch.Generator, optional): Random source for the
                shuffle and the negatives. (default: :obj:`None`)
            drop_last (bool): Drop the last incomplete batch.
                (default: :obj:`False`)
            num_shards (int): Split the epoch's triplets into this many
                equal shards, one per process of a distributed run: each
                process draws the same epoch (the same :obj:`generator`
                state) and takes its shard, so the shards partition it
                (the at most :obj:`num_shards - 1` triplets left over are
                skipped this epoch). (default: :obj:`1`)
            shard (int): The shard to yield. (default: :obj:`0`)

        Returns:
            An iterator of :obj:`(users, pos_items, neg_items)`, three
            LongTensors of shape :obj:`[batch_size]` (the last one may be
            shorter).
        """
        batch_size = int(batch_size)
        if batch_size <= 0:
            raise ValueError(f"'batch_size' must be positive, got "
                             f"{batch_size}")
        num_shards, shard = int(num_shards), int(shard)
        if num_shards < 1 or not 0 <= shard < num_shards:
            raise ValueError(f"'shard' must be in 0..{num_shards - 1}, got "
                             f'{shard}')
        perm = torch.randperm(self.num_edges, generator=generator,
                              device=self.device)
        users, pos_items = self.edge_index[:, perm]
        # One vectorized draw for the whole epoch, sliced per batch.
        neg_items = self.sample_negatives(users, 1, generator).view(-1)
        size = self.num_edges // num_shards
        if num_shards > 1:
            keep = slice(shard, shard + size * num_shards, num_shards)
            users, pos_items, neg_items = (users[keep], pos_items[keep],
                                           neg_items[keep])
        stop = size - (size % batch_size if drop_last else 0)
        return ((users[start:start + batch_size],
                 pos_items[start:start + batch_size],
                 neg_items[start:start + batch_size])
                for start in range(0, stop, batch_size))

    def num_batches(self, batch_size: int, drop_last: bool = False,
                    num_shards: int = 1) -> int:
        r"""Number of batches :meth:`epoch_batches` yields (per shard)."""
        size = self.num_edges // int(num_shards)
        if drop_last:
            return size // int(batch_size)
        return -(-size // int(batch_size))

    def candidate_lists(self, users: Tensor, pos_items: Tensor,
                        num_negatives: int,
                        generator: Optional[torch.Generator] = None
                        ) -> Tensor:
        r"""Candidate lists for listwise distillation: column 0 holds the
        positive, columns :obj:`1..n` uniform true negatives of the same user.

        The negatives are drawn with replacement, so a list may repeat a
        negative (rare when :math:`n \ll` the user's negatives; the listwise
        softmax stays well defined either way).

        Args:
            users (torch.Tensor): User ids :obj:`[B]`.
            pos_items (torch.Tensor): The positive item of each user
                :obj:`[B]`.
            num_negatives (int): Negatives per list :math:`n`.
            generator (torch.Generator, optional): Random source.
                (default: :obj:`None`)

        Returns:
            :obj:`[B, 1 + n]` item ids.
        """
        users = self._check_users(users, 'users')
        pos_items = torch.as_tensor(pos_items, device=self.device)
        if pos_items.shape != users.shape:
            raise ValueError(f"'pos_items' must have the shape of 'users' "
                             f"({list(users.shape)}), got "
                             f"{list(pos_items.shape)}")
        neg = self.sample_negatives(users, num_negatives, generator)
        return torch.cat([pos_items.long().view(-1, 1), neg], dim=1)

    def _randint(self, size: Tuple[int, ...],
                 generator: Optional[torch.Generator]) -> Tensor:
        return torch.randint(self.num_items, size, generator=generator,
                             device=self.device)

    def _check_users(self, users: Tensor, name: str) -> Tensor:
        users = torch.as_tensor(users, device=self.device)
        if users.dim() != 1:
            raise ValueError(f"'{name}' must be a 1-D tensor of user ids, got "
                             f"shape {list(users.shape)}")
        if users.is_floating_point() or users.dtype == torch.bool:
            raise ValueError(f"'{name}' must hold integer user ids, got "
                             f"dtype {users.dtype}")
        users = users.long()
        if users.numel() > 0:
            out = (users < 0) | (users >= self.num_users)
            if bool(out.any()):
                raise ValueError(f"'{name}' holds user id "
                                 f"{int(users[out][0])}, out of range for "
                                 f"num_users={self.num_users}")
        return users

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_users={self.num_users}, '
                f'num_items={self.num_items}, num_edges={self.num_edges})')
