r"""Intra-op thread count: a default that never asks for more threads than
the cores this process may run on, and a one-line warning when the user's
setting does (the sparse kernels of propagation then spin and slow down
several-fold, e.g. 61 s instead of 10 s for three epochs on a loaded 2-core
machine)."""
import os
import warnings
from typing import Optional

import torch


class ThreadWarning(RuntimeWarning):
    r"""Warns that the requested threads oversubscribe the available
    cores."""


def available_cores() -> int:
    r"""The number of cores this process may run on: its CPU affinity
    (:func:`os.sched_getaffinity`, which honours :obj:`taskset`, cgroup
    cpusets and batch schedulers), else :func:`os.cpu_count`."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # Not on Linux.
        return max(1, os.cpu_count() or 1)


def default_threads(num_processes: int = 1) -> int:
    r"""The available cores divided among :obj:`num_processes` processes
    (e.g. the DDP ranks on this machine), at least one."""
    return max(1, available_cores() // max(1, int(num_processes)))


def set_threads(threads: Optional[int] = None,
                num_processes: int = 1) -> int:
    r"""Sets :func:`torch.set_num_threads` for one of :obj:`num_processes`
    processes sharing this machine and returns the count.

    Without :obj:`threads`, :obj:`OMP_NUM_THREADS` if set, else
    :func:`default_threads`. A count that, times :obj:`num_processes`,
    exceeds :func:`available_cores` is honoured but warned about once
    (:class:`ThreadWarning`).

    Args:
        threads (int, optional): Threads of this process.
            (default: :obj:`None`)
        num_processes (int): Processes of this job on this machine, each
            with its own threads. (default: :obj:`1`)
    """
    num_processes = max(1, int(num_processes))
    source = '--threads'
    if threads is None and os.environ.get('OMP_NUM_THREADS', '').isdigit():
        threads, source = int(os.environ['OMP_NUM_THREADS']), \
            'OMP_NUM_THREADS'
    if threads is None:
        threads = default_threads(num_processes)
    threads = int(threads)
    if threads < 1:
        raise ValueError(f"'threads' must be >= 1, got {threads}")
    cores = available_cores()
    if threads * num_processes > cores:
        per = '' if num_processes == 1 else \
            f' x {num_processes} processes'
        warnings.warn(f'{source} {threads}{per} oversubscribes the {cores} '
                      f'cores this process may use (sparse kernels then '
                      f'spin); use {default_threads(num_processes)}',
                      ThreadWarning, stacklevel=2)
    torch.set_num_threads(threads)
    return threads


__all__ = ['available_cores', 'default_threads', 'set_threads',
           'ThreadWarning']
