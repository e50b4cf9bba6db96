r"""Full-ranking top-K evaluation of user/item embeddings."""
from typing import Dict, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from .data.cache import DATA_CACHE
from .data.hetero import EDGE_TYPE, ITEM, USER, split_edge_index
from .ranking import (ExcludedItems, default_batch_size, excluded_items,
                      topk_items)

class RankingIndex(NamedTuple):
    r"""What full ranking needs from the data for one split, with users
    renumbered :obj:`0..num_eval_users-1` (only users with held-out items)."""
    users: Tensor  # [V] global ids of the evaluated users, ascending.
    exclude: ExcludedItems  # Masked items of each evaluated user.
    target_keys: Tensor  # Sorted local_user * I + item of held-out items.
    target_count: Tensor  # [V] held-out items per evaluated user.


def ranking_index(data, split: str = 'test') -> RankingIndex:
    r"""Builds the :class:`RankingIndex` of :obj:`split`: the evaluated users
    (those with held-out items), the items to exclude from their rankings
    (train items, plus validation items when :obj:`split='test'`) as CSR,
    and the held-out positives as sorted keys."""
    if split not in ('val', 'test'):
        raise ValueError(f"'split' must be 'val' or 'test', got {split!r}")
    num_users, num_items = data[USER].num_nodes, data[ITEM].num_nodes
    target = split_edge_index(data, split)
    if target.numel() == 0:
        raise ValueError(f"The '{split}' split has no held-out interactions "
                         f"to evaluate")
    users = torch.unique(target[0])
    local = torch.full((num_users, ), -1, dtype=torch.long,
                       device=target.device)
    local[users] = torch.arange(users.numel(), device=target.device)

    excluded = [split_edge_index(data, 'train')]
    if split == 'test' and 'val_edge_index' in data[EDGE_TYPE]:
        excluded.append(split_edge_index(data, 'val'))
    excluded = torch.cat(excluded, dim=1).to(target.device)
    row = local[excluded[0]]
    keep = row >= 0  # Users without held-out items are not ranked at all.
    exclude = excluded_items(row[keep], excluded[1, keep], users.numel(),
                             num_items)

    target_keys = torch.unique(local[target[0]] * num_items + target[1])
    target_count = torch.bincount(target_keys // num_items,
                                  minlength=users.numel())
    return RankingIndex(users, exclude, target_keys, target_count)


def get_ranking_index(data, split: str = 'test',
                      device: Optional[torch.device] = None) -> RankingIndex:
    r"""Returns the :class:`RankingIndex` of :obj:`split` on :obj:`device`,
    built on first use and cached on the data object (evaluation runs every
    epoch; the index only changes when the split tensors are replaced)."""
    store = data[EDGE_TYPE]
    # The split tensors themselves and the node counts identify the data
    # the index was built on.
    sources = [data[USER].num_nodes, data[ITEM].num_nodes] + [
        store[name] if name in store else None
        for name in ('edge_index', 'val_edge_index', 'test_edge_index')
    ]

    def build() -> RankingIndex:
        index = ranking_index(data, split)
        if device is None:
            return index
        exclude = ExcludedItems(*(t.to(device) for t in index.exclude))
        return RankingIndex(index.users.to(device), exclude,
                            index.target_keys.to(device),
                            index.target_count.to(device))

    return DATA_CACHE.get(data, ('ranking_index', split, str(device)),
                          sources, build)


@torch.no_grad()
def evaluate(
    user_emb: Tensor,
    item_emb: Tensor,
    data,
    split: str = 'test',
    ks: Sequence[int] = (10, 20, 50),
    batch_size: Optional[int] = None,
    legacy_ndcg: bool = False,
) -> Dict[str, float]:
    r"""Full-ranking top-:math:`K` evaluation: every user with held-out
    items ranks *all* items by :math:`s_{ui} = \mathbf{e}_u^{\top}
    \mathbf{e}_i`, with the user's train items excluded (and the validation
    items too when :obj:`split='test'`; validation excludes train items
    only).

    For a user :math:`u` with held-out items :math:`T_u` and hit indicator
    :math:`r_j = 1[\textrm{the } j\textrm{-th ranked item} \in T_u]`
    (:math:`j = 0, 1, \ldots`):

    .. math::
        \textrm{Recall@}K = \frac{\sum_{j<K} r_j}{|T_u|}, \quad
        \textrm{Precision@}K = \frac{\sum_{j<K} r_j}{K}, \quad
        \textrm{Hit@}K = 1\left[\sum_{j<K} r_j > 0\right],

    .. math::
        \textrm{NDCG@}K = \frac{\sum_{j<K} r_j / \log_2(j+2)}
        {\sum_{j<\min(|T_u|, K)} 1 / \log_2(j+2)},

    each averaged over the users with :math:`|T_u| > 0` (the others are
    skipped). These match :class:`torch_geometric.metrics.LinkPredRecall`,
    :class:`~torch_geometric.metrics.LinkPredNDCG` and
    :class:`~torch_geometric.metrics.LinkPredPrecision`.

    With :obj:`legacy_ndcg=True` the result also holds
    :obj:`'legacy_ndcg@K'`: the NGCF / LATTICE / PromptMM variant whose
    ideal DCG is computed from the hits *retrieved* in the top
    :math:`\max(ks)`, :math:`\sum_{j<\min(h, K)} 1/\log_2(j+2)` with
    :math:`h = \sum_{j<\max(ks)} r_j`. It is always :math:`\geq`
    NDCG@K, depends on :math:`\max(ks)`, and is only meant for comparison
    with published tables.

    Scores are computed in chunks of :obj:`batch_size` users, so at most
    :obj:`batch_size x num_items` scores are alive at a time, and each chunk
    takes a single :func:`torch.topk` of :math:`\max(ks)`. The exclusion and
    held-out index of each split is built once and cached on :obj:`data`
    (see :func:`get_ranking_index`).

    Args:
        user_emb (torch.Tensor): User embeddings :obj:`[num_users, d]`.
        item_emb (torch.Tensor): Item embeddings :obj:`[num_items, d]`.
        data (torch_geometric.data.HeteroData): The pmm_geo data (train
            edges and held-out :obj:`val_edge_index` / :obj:`test_edge_index`).
        split (str): :obj:`'test'` or :obj:`'val'`. (default: :obj:`'test'`)
        ks (Sequence[int]): Cut-offs :math:`K`. (default: :obj:`(10, 20, 50)`)
        batch_size (int, optional): Users per score chunk (default: as many
            as fit in :obj:`DEFAULT_CHUNK_BYTES` = 64 MiB of scores).
        legacy_ndcg (bool): Also report :obj:`'legacy_ndcg@K'`.
            (default: :obj:`False`)

    Returns:
        A dict of Python floats with keys :obj:`'recall@K'`,
        :obj:`'ndcg@K'`, :obj:`'precision@K'`, :obj:`'hit@K'` (and
        :obj:`'legacy_ndcg@K'`) for each :math:`K` in :obj:`ks`.
    """
    if split not in ('val', 'test'):
        raise ValueError(f"'split' must be 'val' or 'test', got {split!r}")
    num_items = data[ITEM].num_nodes
    _check_embeddings(user_emb, item_emb, data[USER].num_nodes, num_items)
    ks = _check_ks(ks, num_items)
    if batch_size is None:
        batch_size = default_batch_size(num_items, user_emb.dtype)
    if int(batch_size) <= 0:
        raise ValueError(f"'batch_size' must be positive, got {batch_size}")
    batch_size = int(batch_size)

    index = get_ranking_index(data, split, user_emb.device)
    # Per chunk only the matmul, the masking and the top-k; the hit test
    # runs once over all [num_eval_users, max(ks)] results, keeping kernel
    # launches few.
    values, indices = topk_items(_eval_rows(user_emb, index), item_emb.detach(),
                                 max(ks), index.exclude, batch_size)
    hits = _hits(values, indices, index, num_items)
    return _metrics(hits, index.target_count, ks, legacy_ndcg)


def _eval_rows(user_emb: Tensor, index: RankingIndex) -> Tensor:
    if index.users.numel() == user_emb.size(0):  # Everyone: no gather.
        return user_emb.detach()
    # One gather of the evaluated rows ([num_eval, d], small).
    return user_emb.detach().index_select(0, index.users)


def _hits(values: Tensor, indices: Tensor, index: RankingIndex,
          num_items: int) -> Tensor:
    r"""Boolean :obj:`[num_eval_users, k]`: is the ranked item held out?"""
    rows = torch.arange(indices.size(0), device=indices.device)
    keys = indices.add_(rows.view(-1, 1) * num_items)  # In place: no copy.
    pos = torch.searchsorted(index.target_keys, keys)
    pos = pos.clamp_(max=index.target_keys.numel() - 1)
    # An excluded item (score -inf) is never a hit, whatever the data says.
    return (index.target_keys[pos] == keys) & (values > float('-inf'))


def _discount(n: int, device: torch.device) -> Tensor:
    return 1.0 / torch.log2(
        torch.arange(n, device=device, dtype=torch.float64) + 2.0)


def _metrics(hits: Tensor, counts: Tensor, ks: Sequence[int],
             legacy_ndcg: bool) -> Dict[str, float]:
    # float64 so averages over ~1e5 users do not drift in the last digits.
    hits = hits.double()
    counts = counts.double()
    discount = _discount(hits.size(1), hits.device)
    num_hits = hits.cumsum(dim=1)
    dcg = (hits * discount).cumsum(dim=1)
    ideal = discount.cumsum(dim=0)  # ideal[j] = IDCG with j + 1 relevant.
    retrieved = num_hits[:, -1]  # Hits in the top max(ks), for legacy NDCG.
    out: Dict[str, float] = {}
    for k in ks:
        hit_k = num_hits[:, k - 1]
        idcg = ideal[(counts.clamp(max=k) - 1).long()]
        out[f'recall@{k}'] = float((hit_k / counts).mean())
        out[f'ndcg@{k}'] = float((dcg[:, k - 1] / idcg).mean())
        out[f'precision@{k}'] = float((hit_k / k).mean())
        out[f'hit@{k}'] = float((hit_k > 0).double().mean())
        if legacy_ndcg:
            n_ideal = retrieved.clamp(max=k).long()
            legacy_idcg = ideal[(n_ideal - 1).clamp(min=0)]
            legacy = torch.where(n_ideal > 0, dcg[:, k - 1] / legacy_idcg,
                                 torch.zeros_like(legacy_idcg))
            out[f'legacy_ndcg@{k}'] = float(legacy.mean())
    return out


def _check_embeddings(user_emb: Tensor, item_emb: Tensor, num_users: int,
                      num_items: int) -> None:
    for name, emb, rows in (('user_emb', user_emb, num_users),
                            ('item_emb', item_emb, num_items)):
        if not isinstance(emb, Tensor) or emb.dim() != 2:
            shape = (list(emb.shape) if isinstance(emb, Tensor) else
                     type(emb).__name__)
            raise ValueError(f"'{name}' must be a 2-D tensor [{rows}, d], "
                             f"got {shape}")
        if emb.size(0) != rows:
            what = 'users' if name == 'user_emb' else 'items'
            raise ValueError(f"'{name}' has {emb.size(0)} rows, but the data "
                             f"has {rows} {what}")
        if not emb.is_floating_point():
            raise ValueError(f"'{name}' must be floating point, got "
                             f"{emb.dtype}")
        # One reduction instead of an elementwise pass: NaN/inf propagate
        # to the float64 sum, which cannot overflow for float32 inputs.
        if not bool(torch.isfinite(emb.detach().sum(dtype=torch.float64))):
            raise ValueError(f"'{name}' holds NaN or infinite values")
    if user_emb.size(1) != item_emb.size(1):
        raise ValueError(f"'user_emb' and 'item_emb' widths differ "
                         f"({user_emb.size(1)} vs {item_emb.size(1)})")
    if user_emb.dtype != item_emb.dtype:
        raise ValueError(f"'user_emb' and 'item_emb' dtypes differ "
                         f"({user_emb.dtype} vs {item_emb.dtype})")
    if user_emb.device != item_emb.device:
        raise ValueError(f"'user_emb' and 'item_emb' are on different "
                         f"devices ({user_emb.device} vs {item_emb.device})")


def _check_ks(ks: Sequence[int], num_items: int) -> Sequence[int]:
    if isinstance(ks, int):
        ks = (ks, )
    ks = tuple(ks)
    if len(ks) == 0:
        raise ValueError("'ks' must hold at least one cut-off K")
    for k in ks:
        if isinstance(k, bool) or not float(k).is_integer() or k <= 0:
            raise ValueError(f"'ks' must hold positive integers, got {k!r}")
        if k > num_items:
            raise ValueError(f"Cut-off K={k} in 'ks' exceeds the number of "
                             f"items ({num_items})")
    return tuple(int(k) for k in ks)
