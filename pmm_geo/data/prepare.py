r"""From raw interactions to a PromptMM dataset folder: read, k-core filter,
split chronologically per user, index, write.

- :func:`read_interactions` reads a CSV / TSV / Parquet table of
  (user, item[, timestamp]) records, or RecBole :obj:`.inter` files, atomic
  (:obj:`user_id:token item_id:token timestamp:float`) or sequential
  (:obj:`user_id:token item_id_list:token_seq item_id:token`, where a row's
  list plus its item is the user's time-ordered history so far).
- :func:`k_core` keeps the users and items with at least :obj:`k` distinct
  partners, repeatedly, until both hold.
- :func:`chronological_split` orders each user's interactions by time and
  holds out the latest ones (leave-one-out, or ratios).
- :func:`prepare` chains them and writes :obj:`train.json`, :obj:`val.json`,
  :obj:`test.json`, :obj:`user2id.json`, :obj:`item2id.json` and
  :obj:`prepare.json` (what was done, with the counts).
"""
import json
import math
import os
import os.path as osp
from glob import escape, glob
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from .hetero import SPLITS, DataFormatError, from_arrays
from .readers import write_promptmm
from .tables import Table, read_table

#: The per-user split that holds out the last interaction for test and the
#: one before it for validation.
LOO = 'loo'
SplitSpec = Union[str, Tuple[float, float, float]]
#: Files :func:`prepare` writes besides the splits.
USER_MAP, ITEM_MAP, REPORT = 'user2id.json', 'item2id.json', 'prepare.json'
# RecBole's suffix of the history column of sequential files.
_LIST_SUFFIX = '_list'


class InteractionLog(NamedTuple):
    r"""Interactions as integer codes into the original ids.

    :obj:`user[j]`, :obj:`item[j]` index :obj:`user_ids` / :obj:`item_ids`
    (codes in order of first appearance in the input); :obj:`time[j]` orders
    a user's interactions (the timestamp, the position in a sequence, or the
    row number when there is no time column); ties keep the input order.
    """
    user: np.ndarray
    item: np.ndarray
    time: np.ndarray
    user_ids: List[str]
    item_ids: List[str]
    source: str
    kind: str  #: 'table', 'recbole-atomic' or 'recbole-sequential'.
    notes: List[str]

    @property
    def size(self) -> int:
        r"""The number of interactions."""
        return int(self.user.size)


class Prepared(NamedTuple):
    r"""What :func:`prepare` did: the counts, also written as
    :obj:`prepare.json`."""
    report: Dict
    user_ids: List[str]  #: Original user id of each index.
    item_ids: List[str]  #: Original item id of each index.


# Reading #####################################################################


def parse_split(text: SplitSpec) -> SplitSpec:
    r"""Parses :obj:`'loo'` or three ratios :obj:`'0.8,0.1,0.1'` (train,
    validation, test; normalized to sum to one)."""
    if isinstance(text, str) and text.strip().lower() == LOO:
        return LOO
    parts = text.split(',') if isinstance(text, str) else list(text)
    try:
        ratios = tuple(float(p) for p in parts)
    except ValueError:
        ratios = ()
    if len(ratios) != 3 or not all(math.isfinite(r) and r > 0
                                   for r in ratios):
        raise ValueError(f"--split must be 'loo' or three positive ratios "
                         f"'train,val,test' such as 0.8,0.1,0.1, got "
                         f'{text!r}')
    total = sum(ratios)
    return tuple(r / total for r in ratios)


def read_interactions(path: str, user_col: str = 'user_id',
                      item_col: str = 'item_id',
                      time_col: Optional[str] = 'timestamp',
                      sep: Optional[str] = None,
                      time_required: bool = False) -> InteractionLog:
    r"""Reads raw interactions.

    :obj:`path` is a CSV / TSV file (header required; separator sniffed
    unless :obj:`sep`), a Parquet file, a RecBole :obj:`.inter` file, or a
    folder of one dataset's :obj:`<name>*.inter` files (read together:
    sequential rows of a user are prefixes of one history, the longest is
    kept). Next to RecBole files, :obj:`<name>.user2index` and
    :obj:`<name>.item2index` (:obj:`original id<TAB>token`, as MISSRec and
    UniSRec ship them) translate the tokens back to the original ids.

    Args:
        path (str): The file or folder.
        user_col (str): The user id column. (default: :obj:`"user_id"`)
        item_col (str): The item id column. (default: :obj:`"item_id"`)
        time_col (str, optional): The timestamp column (numbers or ISO 8601
            dates); without it, the input order is the time order.
            (default: :obj:`"timestamp"`)
        sep (str, optional): The separator of text files (default: sniffed).
        time_required (bool): A missing :obj:`time_col` is an error rather
            than falling back to the input order. (default: :obj:`False`)
    """
    path = os.fspath(path)
    files = _inter_files(path) if osp.isdir(path) else [path]
    logs = [_read_one(f, user_col, item_col, time_col, sep, time_required)
            for f in files]
    return logs[0] if len(logs) == 1 else _merge(logs, path)


def _inter_files(root: str) -> List[str]:
    files = sorted(glob(osp.join(escape(root), '*.inter')))
    if not files:
        raise DataFormatError(root, 'INTERACTIONS', 'the folder holds no '
                              '.inter file (give a CSV, TSV, Parquet or '
                              '.inter file)')
    stems = sorted({_stem(f) for f in files})
    if len(stems) > 1:
        raise DataFormatError(root, 'INTERACTIONS', f'.inter files of '
                              f'several datasets {stems}: give one file')
    return files


def _stem(path: str) -> str:
    return osp.basename(path).split('.')[0]


def _read_one(path: str, user_col: str, item_col: str,
              time_col: Optional[str], sep: Optional[str],
              time_required: bool) -> InteractionLog:
    recbole = path.lower().endswith('.inter')
    table = read_table(path, sep='\t' if recbole and sep is None else sep)
    if len(table) == 0:
        raise DataFormatError(path, 'rows', 'no interactions (only a '
                              'header)')
    notes = []
    maps = _recbole_maps(path) if recbole else {}
    if table.has(item_col + _LIST_SUFFIX):
        users, seqs = _sequences(table, user_col, item_col, maps)
        kind = 'recbole-sequential'
        notes.append(f'sequential rows: each user\'s longest '
                     f'{item_col}{_LIST_SUFFIX} + {item_col} is the history')
        user = np.repeat(np.arange(len(users)), [len(s) for s in seqs])
        time = np.concatenate([np.arange(len(s), dtype=np.float64)
                               for s in seqs])
        user_ids = users
        flat = [i for s in seqs for i in s]
    else:
        kind = 'recbole-atomic' if recbole else 'table'
        raw_users = _translate(table, user_col, '--user-col',
                               maps.get('user'))
        flat = _translate(table, item_col, '--item-col', maps.get('item'))
        user_ids, user = _codes(raw_users)
        time = _times(table, time_col, time_required, notes)
    item_ids, item = _codes(flat)
    notes.extend(f'{what} ids translated through {osp.basename(p)}'
                 for what, (p, _) in maps.items())
    return InteractionLog(np.asarray(user, dtype=np.int64), item, time,
                          user_ids, item_ids, path, kind, notes)


def _codes(values: Sequence[str]) -> Tuple[List[str], np.ndarray]:
    r"""Codes in order of first appearance."""
    index: Dict[str, int] = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values),
                        dtype=np.int64, count=len(values))
    return list(index), codes


def _times(table: Table, time_col: Optional[str], required: bool,
           notes: List[str]) -> np.ndarray:
    if time_col is None or (not table.has(time_col) and not required):
        notes.append((f"no '{time_col}' column: " if time_col else '') +
                     'the row order is the time order')
        return np.arange(len(table), dtype=np.float64)
    values = table.column(time_col, option='--time-col')
    try:
        times = np.array(values, dtype=np.float64)
    except ValueError:
        times = np.array([_parse_time(table, time_col, j, v)
                          for j, v in enumerate(values)], dtype=np.float64)
    bad = ~np.isfinite(times)
    if bad.any():
        j = int(bad.nonzero()[0][0])
        raise DataFormatError(table.path, time_col, f'{values[j]!r} on '
                              f'{table.where(j)} is not a finite timestamp')
    return times


def _parse_time(table: Table, col: str, j: int, value: str) -> float:
    from datetime import datetime, timezone
    try:
        return float(value)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(value.strip())
    except ValueError:
        raise DataFormatError(table.path, col, f'{value!r} on '
                              f'{table.where(j)} is neither a number nor an '
                              f'ISO 8601 date') from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def _recbole_maps(path: str) -> Dict[str, Tuple[str, Dict[str, str]]]:
    r"""Reads :obj:`<name>.user2index` / :obj:`<name>.item2index` beside a
    RecBole file: token -> original id."""
    maps = {}
    for what in ('user', 'item'):
        map_path = osp.join(osp.dirname(path), f'{_stem(path)}.{what}2index')
        if osp.isfile(map_path):
            maps[what] = (map_path, _read_index_map(map_path))
    return maps


def _read_index_map(path: str) -> Dict[str, str]:
    from .tables import _read_text
    out: Dict[str, str] = {}
    for line_no, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split('\t')
        if len(fields) != 2 or not fields[0] or not fields[1].strip():
            raise DataFormatError(path, f'line {line_no}', f'expected '
                                  f"'original id<TAB>index', got {line!r}")
        token = fields[1].strip()
        if token in out:
            raise DataFormatError(path, f'line {line_no}', f'index {token} '
                                  f'is given twice')
        out[token] = fields[0]
    return out


def _translate(table: Table, col: str, option: str,
               mapping: Optional[Tuple[str, Dict[str, str]]]) -> List[str]:
    values = [v.strip() for v in table.column(col, option=option)]
    if mapping is None:
        return values
    return [_lookup(mapping, table, col, j, v) for j, v in enumerate(values)]


def _lookup(mapping, table: Table, col: str, j: int, token: str) -> str:
    map_path, tokens = mapping
    try:
        return tokens[token]
    except KeyError:
        raise DataFormatError(table.path, col, f'token {token!r} on '
                              f'{table.where(j)} is not in {map_path}'
                              ) from None


def _sequences(table: Table, user_col: str, item_col: str,
               maps) -> Tuple[List[str], List[List[str]]]:
    r"""Each user's history from RecBole sequential rows: the longest
    :obj:`<item>_list + [item]`; the other rows must be prefixes of it."""
    list_col = item_col + _LIST_SUFFIX
    users = _translate(table, user_col, '--user-col', maps.get('user'))
    targets = table.column(item_col, option='--item-col')
    lists = table.column(list_col, allow_empty=True)
    item_map = maps.get('item')
    best: Dict[str, Tuple[int, List[str]]] = {}
    for j, (user, hist, target) in enumerate(zip(users, lists, targets)):
        seq = hist.split() + [target.strip()]
        if item_map is not None:
            seq = [_lookup(item_map, table, list_col, j, t) for t in seq]
        old = best.get(user)
        if old is not None:
            n = min(len(seq), len(old[1]))
            if seq[:n] != old[1][:n]:
                raise DataFormatError(table.path, list_col, f'the history '
                                      f'of user {user!r} on '
                                      f'{table.where(j)} disagrees with '
                                      f'{table.where(old[0])}')
        if old is None or len(seq) > len(old[1]):
            best[user] = (j, seq)
    return list(best), [seq for _, seq in best.values()]


def _merge(logs: List[InteractionLog], source: str) -> InteractionLog:
    kinds = {log.kind for log in logs}
    if len(kinds) > 1:
        raise DataFormatError(source, 'INTERACTIONS', f'the .inter files mix '
                              f'formats {sorted(kinds)}')
    if kinds == {'recbole-sequential'}:
        # Per user the longest history (the other files hold prefixes).
        longest: Dict[str, List[str]] = {}
        for log in logs:
            for u, seq in _histories(log).items():
                old = longest.get(u, [])
                if seq[:len(old)] != old and old[:len(seq)] != seq:
                    raise DataFormatError(log.source, 'item_id_list',
                                          f'the history of user {u!r} '
                                          f'disagrees with another file')
                if len(seq) > len(old):
                    longest[u] = seq
        user_ids = list(longest)
        lengths = [len(s) for s in longest.values()]
        item_ids, item = _codes([i for s in longest.values() for i in s])
        user = np.repeat(np.arange(len(user_ids)), lengths)
        time = np.concatenate([np.arange(n, dtype=np.float64)
                               for n in lengths])
    else:
        users = [log.user_ids[u] for log in logs for u in log.user.tolist()]
        items = [log.item_ids[i] for log in logs for i in log.item.tolist()]
        user_ids, user = _codes(users)
        item_ids, item = _codes(items)
        time = np.concatenate([log.time for log in logs])
    notes = [f'read together: {", ".join(osp.basename(g.source) for g in logs)}'
             ] + logs[0].notes
    return InteractionLog(user, item, time, user_ids, item_ids, source,
                          logs[0].kind, notes)


def _histories(log: InteractionLog) -> Dict[str, List[str]]:
    order = np.lexsort((log.time, log.user))
    out: Dict[str, List[str]] = {}
    for j in order.tolist():
        out.setdefault(log.user_ids[log.user[j]], []).append(
            log.item_ids[log.item[j]])
    return out


# Filtering and splitting #####################################################


def k_core(log: InteractionLog, k: int) -> InteractionLog:
    r"""Keeps the interactions of users and items that have at least
    :obj:`k` distinct partners, repeating until both hold (the :obj:`k`-core
    of the bipartite graph). Repeated (user, item) records count once."""
    if k <= 1 or log.size == 0:
        return log
    keep = np.ones(log.size, dtype=bool)
    pair = log.user * len(log.item_ids) + log.item
    _, first = np.unique(pair, return_index=True)
    distinct = np.zeros(log.size, dtype=bool)
    distinct[first] = True
    while True:
        live = keep & distinct
        user_deg = np.bincount(log.user[live], minlength=len(log.user_ids))
        item_deg = np.bincount(log.item[live], minlength=len(log.item_ids))
        ok = (user_deg[log.user] >= k) & (item_deg[log.item] >= k)
        if (ok | ~keep).all():
            break
        keep &= ok
    return log._replace(user=log.user[keep], item=log.item[keep],
                        time=log.time[keep])


def _ratio_counts(n: int, ratios: Tuple[float, float, float]) -> List[int]:
    # RecBole's group-by-user ratio split: floors, but a positive share below
    # one interaction still gets one while train keeps more than one.
    counts = [int(r * n) for r in ratios]
    counts[0] = n - sum(counts[1:])
    for i in (1, 2):
        if counts[0] <= 1:
            break
        if 0 < ratios[-i] * n < 1:
            counts[-i] += 1
            counts[0] -= 1
    return counts


def chronological_split(log: InteractionLog, split: SplitSpec = LOO
                        ) -> Tuple[Dict[str, np.ndarray], Dict[str, int],
                                   np.ndarray, np.ndarray]:
    r"""Splits each user's interactions by time.

    - :obj:`'loo'` (leave-one-out): the last interaction is the test item,
      the one before it the validation item, the rest train; users with
      fewer than three interactions keep them all in train.
    - :obj:`(train, val, test)` ratios: per user the earliest share is train,
      then validation, then test (RecBole's rounding: floors, but a positive
      share under one interaction gets one while train keeps two or more).

    A held-out interaction with an item the user already had (earlier in
    time, in any split) is dropped, so no train item repeats in validation
    or test and no item is held out twice; repeated train records are merged.

    Returns:
        The :obj:`[2, E]` (user index, item index) arrays per split, the
        counts of what was dropped or kept back, and the original user and
        item code of each index (users in order of first appearance in the
        input, items in order of first appearance along the users' time
        lines).
    """
    order = np.lexsort((np.arange(log.size), log.time, log.user))
    user, item = log.user[order], log.item[order]
    kept_users = np.unique(user)
    user_index = np.full(len(log.user_ids), -1, dtype=np.int64)
    user_index[kept_users] = np.arange(kept_users.size)
    _, first_seen = np.unique(item, return_index=True)
    items_in_order = item[np.sort(first_seen)]
    item_index = np.full(len(log.item_ids), -1, dtype=np.int64)
    item_index[items_in_order] = np.arange(items_in_order.size)
    user, item = user_index[user], item_index[item]

    counts = np.bincount(user, minlength=kept_users.size)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(user.size) - start[user]
    n = counts[user]
    if split == LOO:
        label = np.where(n >= 3, np.clip(pos - (n - 3), 0, 2), 0)
        short = int((counts < 3).sum())
    else:
        sizes, inverse = np.unique(counts, return_inverse=True)
        parts = np.array([_ratio_counts(int(m), split) for m in sizes])
        train_end = parts[inverse, 0]
        val_end = train_end + parts[inverse, 1]
        label = ((pos >= train_end[user]).astype(np.int64) +
                 (pos >= val_end[user]))
        short = int((train_end == counts).sum())
    pair = user * max(1, items_in_order.size) + item
    _, first = np.unique(pair, return_index=True)
    is_first = np.zeros(user.size, dtype=bool)
    is_first[first] = True
    stats = {'merged_repeats': int((~is_first & (label == 0)).sum()),
             'dropped_heldout_repeats': int((~is_first & (label > 0)).sum()),
             'train_only_users': short}
    splits = {name: np.stack([user[is_first & (label == k)],
                              item[is_first & (label == k)]])
              for k, name in enumerate(SPLITS)}
    return splits, stats, kept_users, items_in_order


# Writing #####################################################################


def prepare(interactions: str, out: str, user_col: str = 'user_id',
            item_col: str = 'item_id', time_col: Optional[str] = 'timestamp',
            sep: Optional[str] = None, min_count: int = 1,
            split: SplitSpec = LOO,
            time_required: bool = False) -> Prepared:
    r"""Turns raw interactions into a dataset folder that
    :func:`~pmm_geo.data.read_promptmm` and :obj:`pmm-geo train` read.

    Reads :obj:`interactions` (:func:`read_interactions`), keeps the
    :obj:`min_count`-core (:func:`k_core`), splits each user's interactions
    by time (:func:`chronological_split`), numbers users and items from 0
    and writes :obj:`train.json`, :obj:`val.json`, :obj:`test.json`, the
    maps :obj:`user2id.json` / :obj:`item2id.json` (original id -> index)
    and :obj:`prepare.json` (the options and counts) into :obj:`out`.

    Args:
        interactions (str): A CSV / TSV / Parquet / RecBole :obj:`.inter`
            file, or a folder of one dataset's :obj:`.inter` files.
        out (str): The dataset folder to write (must not hold a dataset).
        user_col, item_col, time_col, sep: See :func:`read_interactions`.
        min_count (int): Keep the :obj:`min_count`-core (1: keep all).
            (default: :obj:`1`)
        split (str or tuple): :obj:`'loo'` or :obj:`(train, val, test)`
            ratios. (default: :obj:`'loo'`)
    """
    out = os.fspath(out)
    split = parse_split(split)
    if int(min_count) < 1:
        raise ValueError(f'--min-count must be >= 1, got {min_count}')
    existing = [f for f in (*(f'{s}.json' for s in SPLITS), ITEM_MAP)
                if osp.exists(osp.join(out, f))]
    if existing:
        raise DataFormatError(out, '--out', f'the folder already holds a '
                              f'dataset ({", ".join(existing)}): choose '
                              f'another --out or remove it')
    log = read_interactions(interactions, user_col, item_col, time_col, sep,
                            time_required)
    read = {'interactions': log.size, 'users': len(log.user_ids),
            'items': len(log.item_ids)}
    log = k_core(log, int(min_count))
    if log.size == 0:
        raise DataFormatError(log.source, '--min-count', f'no interaction '
                              f'is left in the {min_count}-core')
    splits, stats, users, items = chronological_split(log, split)
    for name in ('val', 'test'):
        if splits[name].shape[1] == 0:
            raise DataFormatError(log.source, name, f'the {name} split is '
                                  f'empty (too few interactions per user '
                                  f'for --split {_split_name(split)})')
    user_ids = [log.user_ids[u] for u in users.tolist()]
    item_ids = [log.item_ids[i] for i in items.tolist()]
    data = from_arrays(splits['train'], splits['val'], splits['test'],
                       num_users=len(user_ids), num_items=len(item_ids),
                       sources={s: log.source for s in SPLITS})
    os.makedirs(out, exist_ok=True)
    write_promptmm(data, out)
    _write_json(osp.join(out, USER_MAP), {u: i for i, u in
                                          enumerate(user_ids)})
    _write_json(osp.join(out, ITEM_MAP), {v: i for i, v in
                                          enumerate(item_ids)})
    report = {
        'source': osp.abspath(log.source), 'format': log.kind,
        'notes': log.notes,
        'options': {'user_col': user_col, 'item_col': item_col,
                    'time_col': time_col, 'min_count': int(min_count),
                    'split': _split_name(split)},
        'read': read,
        'kept': {'interactions': log.size, 'users': len(user_ids),
                 'items': len(item_ids)},
        'splits': {s: int(splits[s].shape[1]) for s in SPLITS},
        **stats,
    }
    _write_json(osp.join(out, REPORT), report, indent=2)
    return Prepared(report, user_ids, item_ids)


def _split_name(split: SplitSpec) -> str:
    return split if split == LOO else ','.join(f'{r:g}' for r in split)


def _write_json(path: str, obj, indent: Optional[int] = None) -> None:
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write('\n')


def read_id_map(root: str, name: str = ITEM_MAP,
                required: bool = True) -> Optional[Dict[str, int]]:
    r"""Reads :obj:`user2id.json` / :obj:`item2id.json` of a prepared
    folder: original id -> index, checked to be a bijection onto
    :obj:`0..n-1`."""
    path = osp.join(os.fspath(root), name)
    if not osp.isfile(path):
        if not required:
            return None
        raise DataFormatError(path, name, f"missing file '{path}' (made by "
                              f"'pmm-geo prepare')")
    try:
        with open(path, encoding='utf-8') as f:
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataFormatError(path, name, f'not valid JSON: {error}'
                              ) from None
    if not isinstance(obj, dict):
        raise DataFormatError(path, name, f'expected a JSON object '
                              f'{{"<original id>": index}}, got a '
                              f'{type(obj).__name__}')
    bad = next((k for k, v in obj.items() if type(v) is not int), None)
    if bad is not None:
        raise DataFormatError(path, f'"{bad}"', f'index {obj[bad]!r} is not '
                              f'an integer')
    if sorted(obj.values()) != list(range(len(obj))):
        raise DataFormatError(path, name, f'the indices are not 0..'
                              f'{len(obj) - 1}, each once')
    return obj


__all__ = ['prepare', 'read_interactions', 'k_core', 'chronological_split',
           'parse_split', 'read_id_map', 'InteractionLog', 'Prepared', 'LOO',
           'USER_MAP', 'ITEM_MAP', 'REPORT']
