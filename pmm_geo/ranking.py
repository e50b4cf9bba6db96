r"""Full ranking, the one implementation every model, evaluation and
serving path uses: score users against all items in bounded chunks, mask
the items each user must not get, keep the top :math:`k`."""
from typing import Iterator, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

#: Memory budget of one score chunk when :obj:`batch_size=None`: the chunk
#: holds :obj:`batch_size x num_items` scores, so the default batch size is
#: :obj:`DEFAULT_CHUNK_BYTES // (num_items * element_size)` users (about
#: 2,380 users on Amazon Baby's 7,050 items in float32).
DEFAULT_CHUNK_BYTES = 64 * 2**20


class ExcludedItems(NamedTuple):
    r"""The items never to rank for each of :math:`R` ranked rows, as flat
    keys :obj:`row * num_items + item` grouped by row, with a CSR row
    pointer: row :obj:`r` owns :obj:`keys[ptr[r]:ptr[r + 1]]`."""
    ptr: Tensor  # [R + 1]
    keys: Tensor  # [E], grouped by row, ascending rows.


def default_batch_size(num_items: int, dtype: torch.dtype = torch.float32,
                       chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    r"""Users per score chunk such that a chunk of
    :obj:`batch_size x num_items` scores stays within :obj:`chunk_bytes`."""
    element_size = torch.empty((), dtype=dtype).element_size()
    return max(1, chunk_bytes // (max(1, num_items) * element_size))


def excluded_items(rows: Tensor, items: Tensor, num_rows: int,
                   num_items: int) -> ExcludedItems:
    r"""The :class:`ExcludedItems` of the pairs :obj:`(rows[e], items[e])`,
    rows in :obj:`0..num_rows-1` (sorted once here)."""
    keys = torch.sort(rows * num_items + items)[0]
    counts = torch.bincount(keys // num_items, minlength=num_rows)
    ptr = torch.zeros(num_rows + 1, dtype=torch.long, device=keys.device)
    torch.cumsum(counts, dim=0, out=ptr[1:])
    return ExcludedItems(ptr, keys)


def excluded_links(users: Tensor, links: Tensor, num_users: int,
                   num_items: int) -> ExcludedItems:
    r"""The :class:`ExcludedItems` of the ranked rows :obj:`users` (global
    user ids, in any order, repeats allowed) from user-item pairs
    :obj:`links` :obj:`[2, E]`, e.g. the train interactions: each row gets
    the items its user is linked to."""
    user, item = links.long()
    order = torch.argsort(user, stable=True)
    count = torch.bincount(user, minlength=num_users)
    user_ptr = torch.zeros(num_users + 1, dtype=torch.long,
                           device=links.device)
    torch.cumsum(count, dim=0, out=user_ptr[1:])
    start, count = user_ptr[users], count[users]
    ptr = torch.zeros(users.numel() + 1, dtype=torch.long,
                      device=links.device)
    torch.cumsum(count, dim=0, out=ptr[1:])
    row = torch.repeat_interleave(
        torch.arange(users.numel(), device=links.device), count)
    offset = torch.arange(row.numel(), device=links.device) - ptr[row]
    return ExcludedItems(ptr, row * num_items + item[order][start[row] +
                                                            offset])


def masked_scores(user_emb: Tensor, item_emb: Tensor,
                  exclude: Optional[ExcludedItems], batch_size: int
                  ) -> Iterator[Tuple[int, Tensor]]:
    r"""Yields :obj:`(start, scores)` for each chunk of :obj:`batch_size`
    rows of :obj:`user_emb` (the users to rank, :obj:`[R, d]`): the scores
    :math:`\mathbf{e}_u^{\top} \mathbf{e}_i` of rows
    :obj:`start:start + batch_size` over all items :obj:`[chunk, I]`, their
    excluded items set to :obj:`-inf`. The chunk is freed before the next
    one is computed, so at most :obj:`batch_size x I` scores are alive."""
    num_rows, num_items = user_emb.size(0), item_emb.size(0)
    item_t = item_emb.t()
    for start in range(0, num_rows, batch_size):
        end = min(start + batch_size, num_rows)
        scores = user_emb[start:end] @ item_t
        if exclude is not None:
            lo, hi = int(exclude.ptr[start]), int(exclude.ptr[end])
            if hi > lo:  # This chunk's keys as flat offsets into it.
                flat = exclude.keys[lo:hi] - start * num_items
                scores.view(-1).index_fill_(0, flat, float('-inf'))
        yield start, scores
        del scores  # Free the chunk before the next one is allocated.


@torch.no_grad()
def topk_items(user_emb: Tensor, item_emb: Tensor, k: int,
               exclude: Optional[ExcludedItems] = None,
               batch_size: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    r"""The :obj:`k` best items of each row of :obj:`user_emb` by full
    ranking over all items (:func:`masked_scores`, one :func:`torch.topk`
    per chunk written into the result): :obj:`(scores [R, k], items
    [R, k])`, best first; an excluded item has score :obj:`-inf`.

    Args:
        user_emb (torch.Tensor): Embeddings of the users to rank
            :obj:`[R, d]`.
        item_emb (torch.Tensor): Item embeddings :obj:`[I, d]`.
        k (int): Items per row, in :obj:`1..I`.
        exclude (ExcludedItems, optional): Items masked per row.
        batch_size (int, optional): Rows per score chunk (default: as many
            as fit in :obj:`DEFAULT_CHUNK_BYTES` = 64 MiB of scores).
    """
    if batch_size is None:
        batch_size = default_batch_size(item_emb.size(0), user_emb.dtype)
    values = user_emb.new_empty(user_emb.size(0), k)
    indices = torch.empty(user_emb.size(0), k, dtype=torch.long,
                          device=user_emb.device)
    for start, scores in masked_scores(user_emb, item_emb, exclude,
                                       batch_size):
        end = start + scores.size(0)
        torch.topk(scores, k, dim=1, out=(values[start:end],
                                           indices[start:end]))
        del scores  # Else two chunks are alive during the next matmul.
    return values, indices


@torch.no_grad()
def recommend_items(user_emb: Tensor, item_emb: Tensor, k: int,
                    users: Optional[Tensor] = None,
                    exclude: Optional[Tensor] = None,
                    batch_size: Optional[int] = None) -> Tensor:
    r"""The top-:obj:`k` item ids :obj:`[R, k]` of the users :obj:`users`
    (default: all), best first, never an item linked to the user in
    :obj:`exclude` :obj:`[2, E]` (e.g. the train interactions); a row with
    fewer than :obj:`k` items left is padded with :obj:`-1` (as
    :class:`torch_geometric.nn.pool.MIPSKNNIndex` does)."""
    num_users, num_items = user_emb.size(0), item_emb.size(0)
    rows = user_emb
    if users is not None:
        rows = user_emb[users]
    elif exclude is not None:
        users = torch.arange(num_users, device=user_emb.device)
    mask = None if exclude is None else excluded_links(
        users, exclude.to(user_emb.device), num_users, num_items)
    values, indices = topk_items(rows, item_emb, k, mask, batch_size)
    return indices.masked_fill_(values == float('-inf'), -1)


__all__ = ['ExcludedItems', 'excluded_items', 'excluded_links',
           'masked_scores', 'topk_items', 'recommend_items',
           'default_batch_size', 'DEFAULT_CHUNK_BYTES']
