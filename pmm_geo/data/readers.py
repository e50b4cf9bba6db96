r"""Readers for the on-disk formats multimodal recommenders already use.

- :func:`read_promptmm`: the LATTICE / MMSSL / PromptMM format,
  :obj:`train.json`, :obj:`val.json`, :obj:`test.json` as
  :obj:`{"<user>": [items]}` plus one :obj:`<modality>_feat.npy` per modality.
- :func:`read_mmrec`: the MMRec format, :obj:`<name>.inter` (tab-separated,
  columns :obj:`userID`, :obj:`itemID`, :obj:`x_label` with 0/1/2 =
  train/validation/test) plus the same :obj:`*_feat.npy` files.

Both return the :class:`~torch_geometric.data.HeteroData` of
:func:`pmm_geo.data.from_arrays`, and raise
:class:`pmm_geo.data.DataFormatError` (naming the file, the field and the
offending value) for malformed input. :func:`write_promptmm` and
:func:`write_mmrec` write a dataset back in either format.
"""
import json
import os
import os.path as osp
from glob import escape, glob
from itertools import chain
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
from torch_geometric.data import HeteroData

from .hetero import (
    EDGE_TYPE,
    SPLITS,
    DataFormatError,
    from_arrays,
    modalities,
    split_edge_index,
)
from .tables import read_table

FEATURE_SUFFIX = '_feat.npy'
# Conventional order of the usual modalities; any other name follows,
# alphabetically.
_MODALITY_ORDER = ('image', 'text', 'audio')
# Names that would clash with node-store attributes of HeteroData.
_RESERVED_NAMES = ('num_nodes', 'x', 'node_type', 'batch', 'ptr')
_X_LABELS = {0: 'train', 1: 'val', 2: 'test'}
PathLike = Union[str, os.PathLike]


def read_promptmm(root: PathLike) -> HeteroData:
    r"""Reads a dataset in the LATTICE / MMSSL / PromptMM on-disk format.

    :obj:`root` holds :obj:`train.json`, :obj:`val.json` and
    :obj:`test.json`, each a JSON object :obj:`{"<user id>": [item ids]}`
    (0-based integer ids; users with empty lists are allowed), and
    optionally one :obj:`<modality>_feat.npy` per item modality
    (e.g. :obj:`image_feat.npy`, :obj:`text_feat.npy`, :obj:`audio_feat.npy`;
    any name), a float array :obj:`[num_items, dim]` whose row :obj:`i`
    describes item :obj:`i`. Modalities come in the order image, text,
    audio, then any others alphabetically.

    The number of users is the largest user key over the three files plus
    one; the number of items is the number of feature rows (every feature
    file must agree), or the largest item id plus one when there are no
    feature files. Duplicate interactions are merged with a warning;
    all-zero feature rows are kept with a warning.

    Args:
        root (str or os.PathLike): The dataset folder.

    Raises:
        DataFormatError: For a missing or malformed file, ids that are not
            non-negative integers or exceed the feature rows, feature files
            that disagree in row count or hold NaN/inf values, an empty
            train split, or a held-out positive that is also a train
            interaction.
    """
    root = _check_folder(root)
    splits, sources, max_user = {}, {}, -1
    for split in SPLITS:
        path = osp.join(root, f'{split}.json')
        users, items, split_max_user = _read_json_split(path, split)
        splits[split] = np.stack([users, items])
        sources[split] = path
        max_user = max(max_user, split_max_user)

    features, feature_sources = _read_features(root)
    sources.update(feature_sources)
    if max_user < 0:
        raise DataFormatError(sources['train'], 'train',
                              'no users in any split')
    return from_arrays(splits['train'], splits['val'], splits['test'],
                       features=features, num_users=max_user + 1,
                       sources=sources)


def read_mmrec(root: PathLike, name: str) -> HeteroData:
    r"""Reads a dataset in the `MMRec <https://github.com/enoche/MMRec>`_
    format.

    :obj:`root` holds :obj:`<name>.inter`, a tab-separated file whose header
    names at least the columns :obj:`userID`, :obj:`itemID` and
    :obj:`x_label` (in any order; other columns such as :obj:`rating` and
    :obj:`timestamp` are ignored; RecBole-style type suffixes such as
    :obj:`userID:token` are accepted), with :obj:`x_label` 0, 1 or 2 for a
    train, validation or test interaction, plus optionally one
    :obj:`<modality>_feat.npy` per item modality, as in
    :func:`read_promptmm`.

    The number of users is the largest :obj:`userID` plus one; the number
    of items is the number of feature rows, or the largest :obj:`itemID`
    plus one without feature files.

    Args:
        root (str or os.PathLike): The dataset folder.
        name (str): The dataset name, i.e. the stem of the :obj:`.inter`
            file (e.g. :obj:`"baby"` for :obj:`baby.inter`).

    Raises:
        DataFormatError: As :func:`read_promptmm`, plus a missing column or
            an :obj:`x_label` outside 0, 1, 2.
    """
    root = _check_folder(root)
    path = osp.join(root, f'{name}.inter')
    users, items, labels = _read_inter(path)
    splits = {split: np.stack([users[labels == label],
                               items[labels == label]])
              for label, split in _X_LABELS.items()}
    features, sources = _read_features(root)
    sources.update({split: f'{path} (x_label={label})'
                    for label, split in _X_LABELS.items()})
    num_users = int(users.max()) + 1 if users.size else None
    return from_arrays(splits['train'], splits['val'], splits['test'],
                       features=features, num_users=num_users,
                       sources=sources)


#: The on-disk formats :func:`read_dataset` tells apart.
FORMATS = ('auto', 'promptmm', 'mmrec')


def detect_format(root: PathLike) -> Tuple[str, Optional[str]]:
    r"""Tells the format of a dataset folder: :obj:`('promptmm', None)` when
    it holds :obj:`train.json`, :obj:`('mmrec', name)` when it holds one
    :obj:`<name>.inter` with an :obj:`x_label` column.

    Raises:
        DataFormatError: When it is neither, with a hint at what to do
            (:obj:`pmm-geo prepare` turns raw interactions into a folder).
    """
    root = _check_folder(root)
    if osp.isfile(osp.join(root, 'train.json')):
        return 'promptmm', None
    inter = sorted(glob(osp.join(escape(root), '*.inter')))
    prepare = ("; to build a dataset folder from raw interactions (CSV, "
               "TSV, Parquet, RecBole .inter), run 'pmm-geo prepare "
               "INTERACTIONS --out DIR'")
    if not inter:
        raise DataFormatError(root, 'format', f"no train.json (PromptMM / "
                              f"LATTICE format) and no <name>.inter (MMRec "
                              f"format) in '{root}'{prepare}")
    if len(inter) > 1:
        names = [osp.basename(p) for p in inter]
        raise DataFormatError(root, 'format', f'no train.json and several '
                              f'.inter files {names}: keep the MMRec one'
                              f'{prepare}')
    with open(inter[0], 'r', encoding='utf-8', errors='replace') as f:
        header = [c.strip().split(':')[0] for c in f.readline().split('\t')]
    if 'x_label' not in header:
        raise DataFormatError(inter[0], 'x_label', f'no train.json, and '
                              f'{osp.basename(inter[0])} has no x_label '
                              f'column, so it is not an MMRec split'
                              f'{prepare}')
    return 'mmrec', osp.basename(inter[0])[:-len('.inter')]


def read_dataset(root: PathLike, format: str = 'auto',
                 name: Optional[str] = None) -> HeteroData:
    r"""Reads a dataset folder in either format: :func:`read_promptmm` or
    :func:`read_mmrec` (with :obj:`format='auto'`, told apart by
    :func:`detect_format`).

    Args:
        root (str or os.PathLike): The dataset folder.
        format (str): :obj:`"auto"`, :obj:`"promptmm"` or :obj:`"mmrec"`.
            (default: :obj:`"auto"`)
        name (str, optional): MMRec only: the stem of the :obj:`.inter`
            file (default: the folder's only :obj:`.inter` file).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got '{format}'")
    if format == 'promptmm':
        return read_promptmm(root)
    if format == 'auto' or name is None:
        found, detected = detect_format(root)
        if format == 'auto' and found == 'promptmm':
            return read_promptmm(root)
        name = name or detected
    return read_mmrec(root, name)


def write_promptmm(data: HeteroData, root: PathLike) -> None:
    r"""Writes :obj:`data` in the format :func:`read_promptmm` reads:
    :obj:`train.json`, :obj:`val.json`, :obj:`test.json` (every user a key,
    possibly with an empty list) and one :obj:`<modality>_feat.npy` per
    item modality. Without features, reading back gives the largest item
    id plus one items.

    Args:
        data (HeteroData): A pmm_geo dataset.
        root (str or os.PathLike): The folder to write into (created if
            needed).
    """
    os.makedirs(root, exist_ok=True)
    num_users = data['user'].num_nodes
    for split in SPLITS:
        lists: List[List[int]] = [[] for _ in range(num_users)]
        if _has_split(data, split):
            for user, item in split_edge_index(data, split).t().tolist():
                lists[user].append(item)
        with open(osp.join(root, f'{split}.json'), 'w') as f:
            json.dump({str(u): items for u, items in enumerate(lists)}, f)
    _write_features(data, root)


def write_mmrec(data: HeteroData, root: PathLike, name: str) -> None:
    r"""Writes :obj:`data` in the format :func:`read_mmrec` reads:
    :obj:`<name>.inter` with columns :obj:`userID`, :obj:`itemID`,
    :obj:`x_label` and one :obj:`<modality>_feat.npy` per item modality.

    Args:
        data (HeteroData): A pmm_geo dataset.
        root (str or os.PathLike): The folder to write into (created if
            needed).
        name (str): The dataset name (the stem of the :obj:`.inter` file).
    """
    os.makedirs(root, exist_ok=True)
    lines = ['userID\titemID\tx_label']
    for label, split in _X_LABELS.items():
        if _has_split(data, split):
            lines.extend(f'{user}\t{item}\t{label}' for user, item in
                         split_edge_index(data, split).t().tolist())
    with open(osp.join(root, f'{name}.inter'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    _write_features(data, root)


def _has_split(data: HeteroData, split: str) -> bool:
    key = 'edge_index' if split == 'train' else f'{split}_edge_index'
    return key in data[EDGE_TYPE]


def _write_features(data: HeteroData, root: str) -> None:
    for name in modalities(data):
        np.save(osp.join(root, name + FEATURE_SUFFIX),
                data['item'][name].detach().cpu().numpy())


# JSON splits #################################################################


def _check_folder(root: PathLike) -> str:
    root = os.fspath(root)
    if not osp.isdir(root):
        raise DataFormatError(root, 'root',
                              f"dataset folder '{root}' does not exist")
    return root


def _read_json_split(path: str,
                     split: str) -> Tuple[np.ndarray, np.ndarray, int]:
    r"""Returns the (user, item) arrays of one JSON split and the largest
    user key (users with empty lists count)."""
    if not osp.isfile(path):
        root = osp.dirname(path)
        hint = (" (this folder holds a .inter file: read it with "
                "read_mmrec / 'pmm-geo train --format mmrec')"
                if glob(osp.join(escape(root), '*.inter')) else
                " (from raw interactions, 'pmm-geo prepare' writes them)")
        raise DataFormatError(path, split, f"missing file '{path}' (the "
                              f"format has train.json, val.json and "
                              f"test.json){hint}")
    try:
        with open(path, 'r', encoding='utf-8') as f:
            obj = json.load(f, object_pairs_hook=_unique_keys(path))
    except json.JSONDecodeError as e:
        raise DataFormatError(path, split, f'malformed JSON at line '
                              f'{e.lineno}, column {e.colno}: {e.msg}'
                              ) from None
    except UnicodeDecodeError as e:
        raise DataFormatError(path, split, f'not UTF-8 text: {e}') from None
    if not isinstance(obj, dict):
        raise DataFormatError(path, split, f'expected a JSON object '
                              f'{{"<user id>": [item ids]}}, got a '
                              f'{type(obj).__name__}')

    keys = [_parse_user_key(key, path) for key in obj]
    lists = list(obj.values())
    for key, value in zip(obj, lists):
        if not isinstance(value, list):
            raise DataFormatError(path, f'user "{key}"', f'expected a list '
                                  f'of item ids, got {value!r}')
    lengths = np.fromiter((len(v) for v in lists), dtype=np.int64,
                          count=len(lists))
    flat = list(chain.from_iterable(lists))
    # `bool` is a subclass of `int`: reject it like any other non-integer.
    if not all(type(item) is int for item in flat):
        _raise_bad_item(obj, path, lambda item: type(item) is not int,
                        'is not an integer item id')
    try:
        items = np.array(flat, dtype=np.int64) if flat else np.empty(
            0, dtype=np.int64)
    except OverflowError:
        _raise_bad_item(obj, path, lambda item: abs(item) >= 2**63,
                        'does not fit a 64-bit integer')
    if (items < 0).any():
        _raise_bad_item(obj, path, lambda item: item < 0,
                        'is a negative item id')
    users = np.repeat(np.array(keys, dtype=np.int64), lengths)
    return users, items, max(keys, default=-1)


def _unique_keys(path: str):
    # json keeps the last of repeated keys silently: a user's list would
    # vanish.
    def hook(pairs):
        obj = dict(pairs)
        if len(obj) < len(pairs):
            seen = set()
            key = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise DataFormatError(path, 'user key', f'"{key}" appears more '
                                  f'than once')
        return obj
    return hook


def _parse_user_key(key: str, path: str) -> int:
    # JSON object keys are always strings: accept only plain decimal ones.
    if not (key.isascii() and key.isdigit()):
        what = 'a negative' if key.lstrip('-').isdigit() else 'not an integer'
        raise DataFormatError(path, 'user key', f'"{key}" is {what} user id')
    if len(key.lstrip('0')) > 18:
        raise DataFormatError(path, 'user key', f'"{key}" does not fit a '
                              f'64-bit integer')
    return int(key)


def _raise_bad_item(obj: dict, path: str, is_bad, what: str) -> None:
    for key, value in obj.items():
        for item in value:
            if is_bad(item):
                raise DataFormatError(path, f'user "{key}"',
                                      f'{json.dumps(item)} {what}')


# MMRec .inter ################################################################

_INTER_COLUMNS = ('userID', 'itemID', 'x_label')


def _read_inter(path: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Returns the userID, itemID and x_label columns of an MMRec
    :obj:`.inter` file (tab-separated; RecBole headers carry types, e.g.
    :obj:`userID:token`, which :func:`read_table` strips)."""
    table = read_table(path, sep='\t')
    for col in _INTER_COLUMNS:
        if not table.has(col):
            raise DataFormatError(path, col, f"missing column '{col}' in "
                                  f'the tab-separated header {table.header}')
    line_nos = table.line_nos
    out = [_int_column(path, col, table.column(col, allow_empty=True),
                       line_nos) for col in _INTER_COLUMNS]
    users, items, labels = out
    bad = ~np.isin(labels, list(_X_LABELS))
    if bad.any():
        i = int(bad.nonzero()[0][0])
        raise DataFormatError(path, 'x_label', f'value {labels[i]} on line '
                              f'{line_nos[i]} (expected 0 = train, '
                              f'1 = validation or 2 = test)')
    return users, items, labels


def _is_int(value: str) -> bool:
    value = value.strip()
    value = value[1:] if value.startswith('-') else value
    # Up to 18 significant digits always fits int64.
    return (value.isascii() and value.isdigit() and
            len(value.lstrip('0')) <= 18)


def _int_column(path: str, col: str, values: List[str],
                line_nos: List[int]) -> np.ndarray:
    bad = next((i for i, v in enumerate(values) if not _is_int(v)), None)
    if bad is not None:
        raise DataFormatError(path, col, f'{values[bad]!r} on line '
                              f'{line_nos[bad]} is not a 64-bit integer')
    out = np.array([int(v) for v in values], dtype=np.int64)
    if (out < 0).any():
        i = int((out < 0).nonzero()[0][0])
        raise DataFormatError(path, col, f'negative id {out[i]} on line '
                              f'{line_nos[i]}')
    return out


# Features ####################################################################


def _modality_sort_key(name: str) -> Tuple[int, str]:
    if name in _MODALITY_ORDER:
        return (_MODALITY_ORDER.index(name), name)
    return (len(_MODALITY_ORDER), name)


def _read_features(
        root: str) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    r"""Loads every :obj:`<modality>_feat.npy` in :obj:`root`."""
    paths = {}
    for path in glob(osp.join(escape(root), '*' + FEATURE_SUFFIX)):
        name = osp.basename(path)[:-len(FEATURE_SUFFIX)]
        if not name.isidentifier() or name in _RESERVED_NAMES:
            raise DataFormatError(path, 'modality', f"'{name}' is not a "
                                  f"usable modality name (file names must "
                                  f"be '<modality>{FEATURE_SUFFIX}' with a "
                                  f"Python identifier, not one of "
                                  f"{_RESERVED_NAMES})")
        paths[name] = path
    features, sources = {}, {}
    for name in sorted(paths, key=_modality_sort_key):
        features[name] = _load_npy(paths[name], name)
        sources[name] = paths[name]
    return features, sources


def _load_npy(path: str, name: str) -> np.ndarray:
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataFormatError(path, name, f'cannot read the array: '
                              f'{e}') from None
    if not isinstance(x, np.ndarray) or x.dtype.kind not in 'fiub':
        dtype = getattr(x, 'dtype', type(x).__name__)
        raise DataFormatError(path, name, f'expected a numeric array, got '
                              f'dtype {dtype}')
    if x.dtype.kind != 'f':
        x = x.astype(np.float32)
    return x
