r"""Multi-process training on :mod:`torch.distributed`: one process per rank
(started by :obj:`torchrun`, or by :obj:`pmm-geo train --nproc N`), each
training on its shard of the train interactions, with gradients averaged by
:class:`~torch.nn.parallel.DistributedDataParallel`; rank 0 evaluates, logs
and writes the run directory."""
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch.nn import Module


class Distributed:
    r"""The process group this process belongs to (a single process when
    :obj:`world_size == 1`: every collective is then a no-op).

    Args:
        rank (int): This process's rank. (default: :obj:`0`)
        world_size (int): Number of processes. (default: :obj:`1`)
    """
    def __init__(self, rank: int = 0, world_size: int = 1):
        self.rank = int(rank)
        self.world_size = int(world_size)

    @classmethod
    def from_env(cls, device='cpu') -> 'Distributed':
        r"""Joins the process group that :obj:`torchrun` describes in the
        environment (:obj:`RANK`, :obj:`WORLD_SIZE`, :obj:`MASTER_ADDR`,
        ...): gloo on CPU, nccl on CUDA. Without :obj:`WORLD_SIZE` > 1, a
        single process."""
        world_size = int(os.environ.get('WORLD_SIZE', '1'))
        if world_size <= 1:
            return cls()
        if not dist.is_available():
            raise RuntimeError('WORLD_SIZE > 1 but this torch build has no '
                               'torch.distributed')
        if not dist.is_initialized():
            cuda = torch.device(device).type == 'cuda'
            dist.init_process_group('nccl' if cuda else 'gloo')
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        r"""Whether this process evaluates, logs and writes files."""
        return self.rank == 0

    def wrap(self, module: Module) -> Module:
        r""":class:`~torch.nn.parallel.DistributedDataParallel` around
        :obj:`module` (unchanged for a single process). Parameters a step
        may leave without gradient (the prompt between refreshes, LATTICE's
        graph learner after the first batch) are allowed."""
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(module, find_unused_parameters=True)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        r"""Rank :obj:`src`'s :obj:`obj` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def broadcast_modules(self, modules: Dict[str, Module],
                          src: int = 0) -> None:
        r"""Copies every parameter and buffer of :obj:`modules` from rank
        :obj:`src` (e.g. the best state it restored) to every rank."""
        if not self.enabled:
            return
        with torch.no_grad():
            for name in sorted(modules):
                for tensor in modules[name].state_dict().values():
                    if isinstance(tensor, torch.Tensor):
                        dist.broadcast(tensor, src=src)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(rank={self.rank}, '
                f'world_size={self.world_size})')


def launch(nproc: int, module_args: Sequence[str],
           threads: Optional[int] = None) -> int:
    r"""Runs :obj:`python -m torch.distributed.run --standalone
    --nproc-per-node nproc -m pmm_geo <module_args>` (what :obj:`pmm-geo
    train --nproc N` does) and returns its exit status.

    Args:
        nproc (int): Processes on this machine.
        module_args (Sequence[str]): The :obj:`pmm_geo` command line of
            every process.
        threads (int, optional): Torch threads of each process (passed on
            as :obj:`OMP_NUM_THREADS`; default: the available cores divided
            among the processes).
    """
    from .threads import default_threads

    env = dict(os.environ)
    env['OMP_NUM_THREADS'] = str(threads if threads is not None else
                                 default_threads(nproc))
    cmd: List[str] = [sys.executable, '-m', 'torch.distributed.run',
                      '--standalone', f'--nproc-per-node={int(nproc)}',
                      '-m', 'pmm_geo', *module_args]
    return subprocess.call(cmd, env=env)


__all__ = ['Distributed', 'launch']
