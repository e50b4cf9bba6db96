import warnings
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

USER = 'user'
ITEM = 'item'
EDGE_TYPE = (USER, 'interacts', ITEM)
REV_EDGE_TYPE = (ITEM, 'rev_interacts', USER)
SPLITS = ('train', 'val', 'test')

ArrayLike = Union[Tensor, np.ndarray, Sequence]
Interactions = Union[ArrayLike, Tuple[ArrayLike, ArrayLike]]


class DataFormatError(ValueError):
    r"""Raised for malformed input data; the message names the file (or
    array), the field and the offending value."""
    def __init__(self, source: str, field: str, message: str):
        self.source, self.field = source, field
        super().__init__(f"{source}: field '{field}': {message}")


def _as_index(interactions: Interactions, source: str, field: str) -> Tensor:
    if isinstance(interactions, tuple) and len(interactions) == 2:
        users, items = (_as_numpy(x).reshape(-1) for x in interactions)
        if users.shape != items.shape:
            raise DataFormatError(source, field, f'{users.size} user ids '
                                  f'but {items.size} item ids')
        arr = np.stack([users, items])
    else:
        arr = _as_numpy(interactions)
    if arr.size == 0:
        return torch.empty(2, 0, dtype=torch.long)
    if arr.ndim != 2 or arr.shape[0] != 2:
        raise DataFormatError(source, field,
                              f'expected shape [2, E], got {list(arr.shape)}')
    if arr.dtype.kind not in 'iu':
        flat = arr.reshape(-1)
        bad = flat[0]
        if arr.dtype.kind == 'f':
            frac = flat[flat != np.round(flat)]  # NaN != NaN: caught too.
            bad = frac[0] if frac.size else bad
        bad = bad.item() if isinstance(bad, np.generic) else bad
        raise DataFormatError(source, field,
                              f'ids must be integers, got {bad!r} '
                              f'(dtype {arr.dtype})')
    for row, what in enumerate(('user', 'item')):
        if (arr[row] < 0).any():
            col = int(np.nonzero(arr[row] < 0)[0][0])
            raise DataFormatError(source, field, f'negative {what} id '
                                  f'{int(arr[row, col])} (interaction '
                                  f'{col})')
    return torch.from_numpy(arr.astype(np.int64))


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _dedup(edge_index: Tensor, num_items: int, source: str,
           field: str) -> Tensor:
    key = edge_index[0] * num_items + edge_index[1]
    unique = torch.unique(key)  # Sorted by user, then item.
    if unique.numel() < key.numel():
        warnings.warn(f'{source}: field {field!r}: merged '
                      f'{key.numel() - unique.numel()} duplicated '
                      f'interaction(s)', stacklevel=3)
    return torch.stack([unique // num_items, unique % num_items])


def _as_features(value, source: str, field: str) -> Tensor:
    x = value if isinstance(value, Tensor) else torch.from_numpy(
        np.ascontiguousarray(value))
    if x.dim() != 2:
        raise DataFormatError(source, field, 'features must be 2-D '
                              f'[num_items, dim], got shape {list(x.shape)}')
    if x.size(1) == 0:
        raise DataFormatError(source, field, f'features have no columns '
                              f'(shape {list(x.shape)})')
    if not x.is_floating_point():
        x = x.float()
    # One pass over the (possibly large) matrix: the row-wise max |x| is
    # NaN/inf exactly for rows with a non-finite value and 0 for zero rows.
    row_max = torch.linalg.vector_norm(x, ord=float('inf'), dim=1)
    if not bool(torch.isfinite(row_max).all()):
        row = int((~torch.isfinite(row_max)).nonzero()[0, 0])
        col = int((~torch.isfinite(x[row])).nonzero()[0, 0])
        raise DataFormatError(source, field, f'non-finite value '
                              f'{x[row, col].item()} at row {row}, '
                              f'column {col}')
    zero_rows = int((row_max == 0).sum())
    if zero_rows > 0:
        warnings.warn(f'{source}: field {field!r}: {zero_rows} all-zero '
                      f'feature row(s) (items without this modality); '
                      f'kept as they are', stacklevel=3)
    return x.float().contiguous()


def from_arrays(
    train: Interactions,
    val: Optional[Interactions] = None,
    test: Optional[Interactions] = None,
    features: Optional[Mapping[str, ArrayLike]] = None,
    num_users: Optional[int] = None,
    num_items: Optional[int] = None,
    sources: Optional[Mapping[str, str]] = None,
) -> HeteroData:
    r"""Builds the pmm_geo :class:`~torch_geometric.data.HeteroData` from
    plain arrays.

    The result has node types :obj:`'user'` and :obj:`'item'` (item
    modality features stored as item attributes named after the modality,
    e.g. :obj:`data['item'].image`), the train interactions as
    :obj:`data['user', 'interacts', 'item'].edge_index` with its reverse
    :obj:`('item', 'rev_interacts', 'user')`, and the held-out positives as
    :obj:`val_edge_index` / :obj:`test_edge_index` on the forward edge type,
    apart from the message-passing edges.

    Args:
        train: Train interactions, :obj:`[2, E]` (users, items) or a tuple
            :obj:`(users, items)`.
        val: Validation interactions, same format. (default: :obj:`None`)
        test: Test interactions, same format. (default: :obj:`None`)
        features (Mapping[str, array], optional): Item features per
            modality, row :obj:`i` = item :obj:`i`. (default: :obj:`None`)
        num_users (int, optional): Number of users (default: the largest
            user id + 1).
        num_items (int, optional): Number of items (default: the number of
            feature rows, else the largest item id + 1).
        sources (Mapping[str, str], optional): Names of the files each
            split or modality came from, used in error messages.
    """
    sources = dict(sources or {})
    src = {k: sources.get(k, f"<array '{k}'>")
           for k in list(SPLITS) + list(features or {})}

    splits = {'train': _as_index(train, src['train'], 'train')}
    for name, value in (('val', val), ('test', test)):
        if value is not None:
            splits[name] = _as_index(value, src[name], name)
    if splits['train'].size(1) == 0:
        raise DataFormatError(src['train'], 'train',
                              'the train split has no interactions')

    feats = {name: _as_features(value, src[name], name)
             for name, value in (features or {}).items()}
    num_items = _resolve_num_items(splits, feats, num_items, src)
    num_users = _resolve_num_users(splits, num_users, src)

    for name in list(splits):
        splits[name] = _dedup(splits[name], num_items, src[name], name)
    _check_disjoint(splits, num_items, src)

    data = HeteroData()
    data[USER].num_nodes = num_users
    data[ITEM].num_nodes = num_items
    for name, x in feats.items():
        data[ITEM][name] = x
    store = data[EDGE_TYPE]
    store.edge_index = splits['train']
    for name in ('val', 'test'):
        if name in splits:
            store[f'{name}_edge_index'] = splits[name]
    data[REV_EDGE_TYPE].edge_index = splits['train'].flip(0).contiguous()
    return data


def _resolve_num_items(splits: Dict[str, Tensor], feats: Dict[str, Tensor],
                       num_items: Optional[int],
                       src: Dict[str, str]) -> int:
    rows = {name: x.size(0) for name, x in feats.items()}
    if len(set(rows.values())) > 1:
        name, other = list(rows)[0], list(rows)[1:]
        bad = next(o for o in other if rows[o] != rows[name])
        raise DataFormatError(src[bad], bad, f'{rows[bad]} feature rows, '
                              f'but {src[name]} has {rows[name]}')
    if num_items is None:
        num_items = (next(iter(rows.values())) if rows else
                     1 + max(int(e[1].max()) for e in splits.values()
                             if e.numel() > 0))
    for name, x in feats.items():
        if x.size(0) != num_items:
            raise DataFormatError(src[name], name, f'{x.size(0)} feature '
                                  f'rows, but num_items={num_items}')
    for name, edge_index in splits.items():
        if edge_index.numel() > 0 and int(edge_index[1].max()) >= num_items:
            col = int(edge_index[1].argmax())
            user, bad = edge_index[:, col].tolist()
            what = 'feature rows' if rows else 'num_items'
            raise DataFormatError(src[name], name, f'item id {bad} (user '
                                  f'{user}) is out of range ({what}: '
                                  f'{num_items})')
    return int(num_items)


def _resolve_num_users(splits: Dict[str, Tensor], num_users: Optional[int],
                       src: Dict[str, str]) -> int:
    max_user = max(int(e[0].max()) for e in splits.values() if e.numel() > 0)
    if num_users is None:
        return max_user + 1
    for name, edge_index in splits.items():
        if edge_index.numel() > 0 and int(edge_index[0].max()) >= num_users:
            col = int(edge_index[0].argmax())
            bad, item = edge_index[:, col].tolist()
            raise DataFormatError(src[name], name, f'user id {bad} (item '
                                  f'{item}) is out of range (num_users: '
                                  f'{num_users})')
    return int(num_users)


def _check_disjoint(splits: Dict[str, Tensor], num_items: int,
                    src: Dict[str, str]) -> None:
    train_key = splits['train'][0] * num_items + splits['train'][1]
    for name in ('val', 'test'):
        if name not in splits or splits[name].numel() == 0:
            continue
        key = splits[name][0] * num_items + splits[name][1]
        overlap = torch.isin(key, train_key)
        if bool(overlap.any()):
            user, item = splits[name][:, overlap.nonzero()[0, 0]].tolist()
            raise DataFormatError(src[name], name, f'held-out positive '
                                  f'(user {user}, item {item}) is also a '
                                  f'train interaction')


def modalities(data: HeteroData) -> List[str]:
    r"""Returns the names of the item modality features of :obj:`data`, in
    storage order (e.g. :obj:`['image', 'text']`)."""
    store = data[ITEM]
    return [key for key in store.keys()
            if key != 'num_nodes' and isinstance(store[key], Tensor)
            and store[key].dim() == 2 and store[key].is_floating_point()]


def split_edge_index(data: HeteroData, split: str) -> Tensor:
    r"""Returns the :obj:`[2, E]` (user, item) positives of :obj:`split`
    (:obj:`'train'`, :obj:`'val'` or :obj:`'test'`)."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split '{split}' (expected one of "
                         f"{SPLITS})")
    store = data[EDGE_TYPE]
    key = 'edge_index' if split == 'train' else f'{split}_edge_index'
    if key not in store:
        raise ValueError(f"The data has no '{split}' split")
    return store[key]
