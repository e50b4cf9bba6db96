r"""Item content (text fields or image files) to a :obj:`<modality>_feat.npy`
aligned with a prepared dataset's :obj:`item2id.json`: batched, with a
progress bar, resumable, items without content as zero rows."""
import hashlib
import json
import os
import os.path as osp
import sys
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from pmm_geo.data.hetero import DataFormatError
from pmm_geo.data.prepare import ITEM_MAP, read_id_map
from pmm_geo.data.readers import FEATURE_SUFFIX
from pmm_geo.data.tables import read_table

from .text import join_text

#: Image file extensions looked up for :obj:`<original id>.<ext>`.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
#: Seconds between two writes of the resumable partial file.
_SAVE_EVERY = 30.0


class FeatureReport(NamedTuple):
    r"""What :func:`encode_item_features` wrote."""
    path: str  #: The :obj:`<modality>_feat.npy` written.
    num_items: int  #: Rows (the items of :obj:`item2id.json`).
    dim: int  #: Columns.
    encoded: int  #: Items with content, encoded.
    missing: int  #: Items without content (zero rows).
    unreadable: List[str]  #: Image files that could not be read (zero rows).
    unknown: int  #: Ids in the input that are not items of the dataset.
    resumed_from: int  #: Items already encoded by an interrupted run.


def _content_of_texts(items: str, item_ids: Dict[str, int],
                      text_cols: Sequence[str], id_col: str,
                      sep: Optional[str]):
    table = read_table(items, sep=sep, columns=[id_col, *text_cols])
    ids = table.column(id_col, option='--id-col')
    cols = [table.column(c, option='--text-col', allow_empty=True)
            for c in text_cols]
    content: Dict[int, str] = {}
    first_row: Dict[str, int] = {}
    unknown = 0
    for j, raw in enumerate(ids):
        key = raw.strip()
        if key in first_row:
            raise DataFormatError(table.path, id_col, f'item {key!r} appears '
                                  f'twice ({table.where(first_row[key])} '
                                  f'and {table.where(j)})')
        first_row[key] = j
        index = item_ids.get(key)
        if index is None:
            unknown += 1
            continue
        text = join_text([col[j] for col in cols])
        if text:
            content[index] = text
    return content, unknown


def _content_of_images(image_dir: str, item_ids: Dict[str, int],
                       items: Optional[str], id_col: str,
                       sep: Optional[str]):
    if not osp.isdir(image_dir):
        raise DataFormatError(image_dir, '--image-dir', f"folder "
                              f"'{image_dir}' does not exist")
    wanted = item_ids
    unknown = 0
    if items is not None:  # Only the items the table lists.
        table = read_table(items, sep=sep, columns=[id_col])
        listed = {v.strip() for v in table.column(id_col, option='--id-col')}
        unknown = len(listed - set(item_ids))
        wanted = {k: v for k, v in item_ids.items() if k in listed}
    files = {}
    for name in os.listdir(image_dir):
        stem, ext = osp.splitext(name)
        if ext.lower() in IMAGE_EXTENSIONS:
            if stem in files:
                raise DataFormatError(osp.join(image_dir, name), 'image',
                                      f'item {stem!r} has two images '
                                      f'({files[stem]} and {name})')
            files[stem] = name
    if items is None:
        unknown = len(set(files) - set(item_ids))
    content = {index: osp.join(image_dir, files[key])
               for key, index in wanted.items() if key in files}
    return content, unknown


def _fingerprint(settings: Dict, content: Dict[int, str]) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for index in sorted(content):
        h.update(f'{index}\x00{content[index]}\x01'.encode())
    return h.hexdigest()


class _Partial:
    r"""The resumable state: :obj:`.<name>.partial.npy` (rows so far) and
    :obj:`.<name>.partial.json` (how many items of the content order are
    done, and the fingerprint of the settings and content)."""
    def __init__(self, final: str):
        folder, name = osp.split(final)
        self.npy = osp.join(folder, f'.{name}.partial.npy')
        self.meta = osp.join(folder, f'.{name}.partial.json')

    def load(self, key: str, shape_rows: int) -> Optional[tuple]:
        try:
            with open(self.meta, encoding='utf-8') as f:
                meta = json.load(f)
            if meta.get('key') != key:
                return None
            array = np.load(self.npy, mmap_mode='r+')
        except (OSError, ValueError):
            return None
        if array.shape[0] != shape_rows:
            return None
        return array, int(meta['done']), list(meta.get('unreadable', []))

    def create(self, rows: int, dim: int) -> np.ndarray:
        return np.lib.format.open_memmap(self.npy, mode='w+',
                                         dtype=np.float32,
                                         shape=(rows, dim))

    def save(self, array: np.ndarray, key: str, done: int,
             unreadable: List[str]) -> None:
        array.flush()
        tmp = self.meta + '.tmp'
        with open(tmp, 'w', encoding='utf-8') as f:
            json.dump({'key': key, 'done': done, 'unreadable': unreadable},
                      f)
        os.replace(tmp, self.meta)

    def finish(self, final: str) -> None:
        os.replace(self.npy, final)
        if osp.exists(self.meta):
            os.remove(self.meta)


def encode_item_features(
    data_dir: str,
    modality: str,
    encoder: Callable[[List], np.ndarray],
    items: Optional[str] = None,
    text_cols: Optional[Sequence[str]] = None,
    image_dir: Optional[str] = None,
    id_col: str = 'item_id',
    batch_size: int = 64,
    sep: Optional[str] = None,
    overwrite: bool = False,
    progress: bool = True,
    model_name: Optional[str] = None,
) -> FeatureReport:
    r"""Encodes the content of every item of a prepared dataset folder into
    :obj:`<data_dir>/<modality>_feat.npy` (float32, row :obj:`i` = the item
    with index :obj:`i` in :obj:`item2id.json`).

    Text: :obj:`items` is a table (CSV / TSV / Parquet, e.g. RecBole's
    :obj:`<name>.text`) with the :obj:`id_col` column of original item ids;
    an item's text is its non-empty :obj:`text_cols` joined by spaces.
    Images: :obj:`image_dir` holds :obj:`<original id>.jpg` (or
    :obj:`.jpeg`, :obj:`.png`); with :obj:`items` only the ids it lists are
    encoded. Items without content get a zero row (counted in the report).

    Batches of :obj:`batch_size` go through :obj:`encoder` (a
    :class:`~pmm_geo.content.TextEncoder`, an
    :class:`~pmm_geo.content.ImageEncoder` or any callable mapping a list
    of texts, or of loaded images, to an array :obj:`[B, d]`). The rows are
    kept in a hidden partial file, saved every 30 seconds: an interrupted
    run continues where it stopped when called again with the same
    settings.

    Args:
        data_dir (str): The dataset folder (with :obj:`item2id.json`).
        modality (str): The modality name (the file stem), e.g.
            :obj:`"text"`.
        encoder (callable): The encoder.
        items (str, optional): The item table.
        text_cols (list of str, optional): The text columns.
        image_dir (str, optional): The image folder.
        id_col (str): The id column of :obj:`items`.
            (default: :obj:`"item_id"`)
        batch_size (int): Items per encoder call. (default: :obj:`64`)
        sep (str, optional): Separator of :obj:`items` (default: sniffed).
        overwrite (bool): Replace an existing feature file.
            (default: :obj:`False`)
        progress (bool): Show a progress bar on stderr.
            (default: :obj:`True`)
        model_name (str, optional): The encoder's name, part of the settings
            a resumed run must share (default: its :obj:`name` attribute,
            else its class name).
    """
    from pmm_geo.data.readers import _RESERVED_NAMES
    if (text_cols is None) == (image_dir is None):
        raise ValueError('give either text columns or an image folder')
    if not modality.isidentifier() or modality in _RESERVED_NAMES:
        raise ValueError(f"--modality '{modality}' must be a Python "
                         f'identifier, not one of {_RESERVED_NAMES}')
    if batch_size < 1:
        raise ValueError(f'--batch-size must be >= 1, got {batch_size}')
    data_dir = os.fspath(data_dir)
    if not osp.isdir(data_dir):
        raise DataFormatError(data_dir, '--data', f"dataset folder "
                              f"'{data_dir}' does not exist")
    item_ids = read_id_map(data_dir, ITEM_MAP)
    final = osp.join(data_dir, modality + FEATURE_SUFFIX)
    if osp.exists(final) and not overwrite:
        raise DataFormatError(final, modality, 'the feature file exists '
                              '(--overwrite replaces it)')
    if text_cols is not None:
        if items is None:
            raise ValueError('text features need ITEMS, the item table')
        content, unknown = _content_of_texts(items, item_ids, text_cols,
                                             id_col, sep)
        load = None
    else:
        content, unknown = _content_of_images(image_dir, item_ids, items,
                                              id_col, sep)
        load = getattr(encoder, 'load')
    if not content:
        raise DataFormatError(items or image_dir, id_col if text_cols else
                              'image', f'no item of {data_dir} has content '
                              f'here (ids are matched against '
                              f'{ITEM_MAP})')
    order = sorted(content)
    model_name = model_name or getattr(encoder, 'name',
                                       type(encoder).__name__)
    settings = {'modality': modality, 'model': model_name,
                'text_cols': list(text_cols or []), 'items': len(item_ids)}
    key = _fingerprint(settings, content)
    partial = _Partial(final)
    loaded = partial.load(key, len(item_ids))
    array, done, unreadable = loaded if loaded else (None, 0, [])
    resumed_from = done
    bar = _Progress(len(order), done, progress, f'{modality} features')
    last_save = time.monotonic()
    try:
        for start in range(done, len(order), batch_size):
            batch = order[start:start + batch_size]
            inputs, rows = _inputs(batch, content, load, unreadable)
            if inputs:
                out = np.asarray(encoder(inputs), dtype=np.float32)
                if out.ndim != 2 or out.shape[0] != len(inputs):
                    raise ValueError(f'the encoder returned shape '
                                     f'{list(out.shape)} for {len(inputs)} '
                                     f'items (expected [B, d])')
                if array is None:
                    array = partial.create(len(item_ids), out.shape[1])
                array[rows] = out
            done = start + len(batch)
            bar.update(done)
            if time.monotonic() - last_save > _SAVE_EVERY and array is not \
                    None:
                partial.save(array, key, done, unreadable)
                last_save = time.monotonic()
    except BaseException:
        if array is not None:
            partial.save(array, key, done, unreadable)
        raise
    finally:
        bar.close()
    if array is None:
        raise DataFormatError(image_dir or items, 'image', 'no image could '
                              'be read')
    dim = array.shape[1]
    array.flush()
    del array
    partial.finish(final)
    return FeatureReport(final, len(item_ids), dim,
                         len(order) - len(unreadable),
                         len(item_ids) - len(order) + len(unreadable),
                         unreadable, unknown, resumed_from)


def _inputs(batch: List[int], content: Dict[int, str], load,
            unreadable: List[str]):
    if load is None:
        return [content[i] for i in batch], batch
    inputs, rows = [], []
    for index in batch:
        try:
            inputs.append(load(content[index]))
            rows.append(index)
        except (OSError, ValueError, SyntaxError) as error:
            unreadable.append(f'{content[index]} ({type(error).__name__})')
    return inputs, rows


class _Progress:
    r"""A tqdm bar when tqdm is installed, else a line every 10 %."""
    def __init__(self, total: int, done: int, enabled: bool, what: str):
        self.total, self.enabled, self.what = total, enabled, what
        self.bar, self.next_print = None, 0.1
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=done, desc=what,
                            unit='item', file=sys.stderr)
        except ImportError:
            pass

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.n = done
            self.bar.refresh()
        elif self.enabled and done >= self.next_print * self.total:
            print(f'{self.what}: {done:,}/{self.total:,} items',
                  file=sys.stderr, flush=True)
            self.next_print = (int(10 * done / self.total) + 1) / 10

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


__all__ = ['encode_item_features', 'FeatureReport', 'IMAGE_EXTENSIONS']
