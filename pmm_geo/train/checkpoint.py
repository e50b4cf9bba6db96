r"""Checkpoint I/O: atomic writes, safe loads (:obj:`weights_only=True`) and a
fingerprint of the data a model was trained on."""
import contextlib
import hashlib
import os
import pickle
import signal
import tempfile
import threading
from typing import Any, Dict, Iterator, Optional

import torch
from torch import Tensor

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    r"""Raised when a checkpoint is missing, unreadable, of another format
    version, or was trained on different data."""


def _new_file_mode() -> int:
    r"""The mode :func:`open` gives a new file: :obj:`0o666` less the
    umask (read from /proc on Linux; setting and restoring the umask
    elsewhere)."""
    try:
        with open('/proc/self/status', encoding='ascii') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    r"""Holds Ctrl-C and SIGTERM while a file is written and delivers them
    after: their handlers raise, and an exception raised inside
    :func:`torch.save`'s writer callback left the zip writer broken (an
    error or an abort instead of the interrupted run's clean exit)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received, previous = [], {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not None:  # None: set outside Python.
            previous[sig] = signal.signal(
                sig, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in received:
            signal.raise_signal(sig)


def _atomic_write(path: str, write) -> None:
    # A temporary file in the same directory, then os.replace: a reader (or a
    # run killed mid-write) sees either the old file or the new one, never a
    # truncated one.
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory,
                               prefix=f'.{os.path.basename(path)}.',
                               suffix='.tmp')
    try:
        if hasattr(os, 'fchmod'):  # mkstemp makes 0600: use the umask.
            os.fchmod(fd, _new_file_mode())
        with _signals_held(), os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    r"""Writes :obj:`text` (UTF-8) to :obj:`path` atomically."""
    _atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def save_checkpoint(obj: Dict[str, Any], path: str) -> None:
    r"""Saves :obj:`obj` (tensors, state dicts and JSON-able values only, so
    that :func:`load_checkpoint` can read it with :obj:`weights_only=True`)
    to :obj:`path` atomically."""
    obj = {'format_version': FORMAT_VERSION, **obj}
    _atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str, fingerprint: Optional[str] = None,
                    what: str = 'checkpoint') -> Dict[str, Any]:
    r"""Loads a checkpoint written by :func:`save_checkpoint` with
    :obj:`torch.load(..., weights_only=True)` onto the CPU.

    Args:
        path (str): The checkpoint file.
        fingerprint (str, optional): The :func:`data_fingerprint` of the data
            the caller is about to use; a checkpoint trained on other data
            raises :class:`CheckpointError`. (default: :obj:`None`)
        what (str): What the file is, for error messages.
            (default: :obj:`"checkpoint"`)
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f'no {what} at {path}')
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError,
            ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error) else ''
        raise CheckpointError(f'cannot read {what} {path}: '
                              f'{type(error).__name__}: {first_line}'
                              ) from None
    if not isinstance(obj, dict) or 'format_version' not in obj:
        raise CheckpointError(f'{path} is not a pmm_geo {what}')
    if obj['format_version'] != FORMAT_VERSION:
        raise CheckpointError(f'{path}: {what} format version '
                              f"{obj['format_version']}, this pmm_geo reads "
                              f'version {FORMAT_VERSION}')
    if fingerprint is not None:
        check_fingerprint(obj, fingerprint, path)
    return obj


def check_fingerprint(obj: Dict[str, Any], fingerprint: str,
                      path: str) -> None:
    r"""Raises :class:`CheckpointError` when the checkpoint :obj:`obj` (read
    from :obj:`path`) was trained on data other than :obj:`fingerprint`."""
    saved = obj.get('fingerprint')
    if saved != fingerprint:
        raise CheckpointError(
            f'{path} was trained on different data (data fingerprint '
            f'{str(saved)[:12]}, the given data has {fingerprint[:12]}): '
            f'use the data of that run, or start a new run')


def _update_tensor(h, tensor: Tensor) -> None:
    tensor = tensor.detach().cpu().contiguous()
    h.update(f'{tensor.dtype}:{list(tensor.shape)}'.encode())
    h.update(tensor.numpy().tobytes())


def data_fingerprint(data) -> str:
    r"""A sha256 fingerprint of a pmm_geo
    :class:`~torch_geometric.data.HeteroData`: the node counts, the train,
    validation and test edges (exactly), and per modality its name, shape, a
    float64 column sum and up to 256 evenly spaced rows (a cheap checksum:
    wide feature matrices are not hashed in full)."""
    from pmm_geo.data import EDGE_TYPE, modalities

    h = hashlib.sha256()
    h.update(f"users={data['user'].num_nodes};"
             f"items={data['item'].num_nodes}".encode())
    store = data[EDGE_TYPE]
    for key in ('edge_index', 'val_edge_index', 'test_edge_index'):
        h.update(key.encode())
        if key in store:
            _update_tensor(h, store[key].long())
    for name in modalities(data):
        x = data['item'][name]
        h.update(f'modality={name}'.encode())
        _update_tensor(h, x.double().sum(dim=0))
        rows = torch.linspace(0, x.size(0) - 1, min(256, x.size(0))).long()
        _update_tensor(h, x[rows].float())
    return h.hexdigest()


__all__ = ['CheckpointError', 'save_checkpoint', 'load_checkpoint',
           'check_fingerprint', 'data_fingerprint', 'atomic_write_text']
