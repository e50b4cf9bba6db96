r"""Multi-process training on :mod:`torch.distributed`: one process per rank
(started by :obj:`torchrun`, or by :obj:`pmm-geo train --nproc N`), each
training on its shard of every epoch's train interactions, with gradients
averaged by :class:`~torch.nn.parallel.DistributedDataParallel`; rank 0
evaluates, logs and writes the run directory."""
import inspect
import os
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn import Embedding, Module, ModuleDict, ModuleList, Parameter


class StageModule(Module):
    r"""A training stage's step as a module's :meth:`forward`, so that
    :class:`~torch.nn.parallel.DistributedDataParallel` sees every trainable
    parameter of the stage and averages its gradient over the ranks.

    The tables a sampled step updates row-wise (:meth:`Stage.sparse_tables`)
    come first, each held by an :class:`~torch.nn.Embedding` with
    :obj:`sparse=True`: DDP tells from the first module holding a parameter
    whether to expect a sparse gradient (and then passes it, sparse, to
    :func:`sparse_safe_allreduce_hook`).

    Args:
        stage (pmm_geo.train.stages.Stage): The built stage.
    """
    def __init__(self, stage):
        super().__init__()
        self.stage = stage
        self.sparse_tables = ModuleList(
            _sparse_holder(table) for table in stage.sparse_tables())
        self.parts = ModuleDict(stage.modules)

    def forward(self, batch) -> Tuple[Tensor, Dict[str, float]]:
        return self.stage.step(batch)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.stage.name}, '
                f'sparse_tables={len(self.sparse_tables)})')


def _sparse_holder(table: Parameter) -> Embedding:
    holder = Embedding(1, 1, sparse=True)
    holder.weight = table  # The table itself, not a copy.
    return holder


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
        ...): gloo on CPU; on CUDA nccl, with this process's current device
        :obj:`cuda:LOCAL_RANK` (train there: :obj:`Trainer(device=
        torch.cuda.current_device())`). Without :obj:`WORLD_SIZE` > 1, a
        single process."""
        world_size = int(os.environ.get('WORLD_SIZE', '1'))
        if world_size <= 1:
            return cls()
        if not dist.is_available():
            raise RuntimeError('WORLD_SIZE > 1 but this torch build has no '
                               'torch.distributed')
        if not dist.is_initialized():
            cuda = torch.device(device).type == 'cuda'
            if cuda:  # One GPU per process on each machine.
                torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
            dist.init_process_group('nccl' if cuda else 'gloo')
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        r"""Whether this process evaluates, logs and writes files."""
        return self.rank == 0

    def wrap_stage(self, stage) -> Callable:
        r"""The callable that returns a stage's :obj:`(loss, parts)` for a
        batch: :obj:`stage.step` for a single process, else a
        :class:`StageModule` in
        :class:`~torch.nn.parallel.DistributedDataParallel` (its
        construction copies rank 0's weights to every rank). Parameters a
        step may leave without gradient are looked for at every step unless
        :obj:`stage.skips_parameters` is :obj:`False` (torch then warns
        once per process when it found none); buffers (hard tokens, kNN
        graphs) are constant and synchronized once, not before every
        step."""
        if not self.enabled:
            return stage.step
        tables = stage.sparse_tables()
        if tables and dist.get_backend() == 'nccl':
            from .config import ConfigError
            raise ConfigError("batching='sampled' on several CUDA processes "
                              'needs a sparse all-reduce, which nccl lacks: '
                              "use batching='full', or CPU processes (gloo)")
        from torch.nn.parallel import DistributedDataParallel as DDP
        sync = ('forward_sync_buffers' if 'forward_sync_buffers' in
                inspect.signature(DDP).parameters else
                'broadcast_buffers')  # torch < 2.13
        model = DDP(StageModule(stage),
                    find_unused_parameters=stage.skips_parameters,
                    **{sync: False})
        if tables:
            model.register_comm_hook(None, sparse_safe_allreduce_hook)
        return model

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        r"""Rank :obj:`src`'s :obj:`obj` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def mean(self, values: Dict[str, float]) -> Dict[str, float]:
        r"""The mean over the ranks of each value (the same keys on every
        rank), e.g. an epoch's mean loss over the ranks' shards."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        total = torch.tensor([float(values[k]) for k in keys],
                             dtype=torch.float64)
        dist.all_reduce(total)
        return dict(zip(keys, (total / self.world_size).tolist()))

    def barrier(self) -> None:
        r"""Waits for every rank (e.g. until rank 0 has written a file the
        others read)."""
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        r"""Leaves the process group. Free every
        :class:`~torch.nn.parallel.DistributedDataParallel` wrapper first
        (e.g. :meth:`wrap_stage`'s callable, as the engine does when a stage
        ends): a wrapper freed after this call drops the gloo group's last
        reference from its reducer with the GIL held, and the group's
        destructor then waits for its worker thread, which needs the GIL to
        finish the last collective's work (a teardown deadlock seen with
        torch 2.13 on CPU)."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(rank={self.rank}, '
                f'world_size={self.world_size})')


#: A sparse bucket is summed through one dense all-reduce of its table when
#: the ranks' entries together number at least this fraction of its rows,
#: else by all-gathering the rows. (At Electronics size, where a sampled
#: step touches 60-70 % of each table, the all-reduce and no sort took 15 ms
#: per table against 21 ms for the all-gathers and the coalescing; on a
#: table touched thinly the gathers move far fewer bytes.)
DENSE_REDUCE_FRACTION = 0.5


def sparse_safe_allreduce_hook(state: Any, bucket
                               ) -> torch.futures.Future[torch.Tensor]:
    r"""The DDP communication hook of stages with sparse tables: a dense
    bucket is averaged by torch's own :obj:`allreduce_hook` (DDP's default
    behaviour, an asynchronous all-reduce); a sparse gradient (one table's
    touched rows) by dense collectives into one coalesced sparse gradient,
    the mean over the :math:`W` ranks of the union of their rows,

    .. math::
        \bar{\mathbf{g}}_r = \frac{1}{W} \sum_{w=1}^{W}
        \mathbf{g}^{(w)}_r \quad \text{for every row } r
        \text{ some rank touched.}

    When the ranks' entries number at least :obj:`DENSE_REDUCE_FRACTION` of
    the table's rows (the sampled subgraphs of a small graph reach most of
    it), the rows are summed into a dense :obj:`[rows, d + 1]` buffer whose
    last column counts each row's entries, and one all-reduce gives the sum
    and the union of rows together; otherwise every rank's entries are
    all-gathered and coalesced (large tables, few rows per step). Both give
    the same result.

    It replaces gloo's sparse all-reduce, which DDP uses by default for a
    sparse gradient: in 5 of 111 two-process runs of
    :obj:`tests/ddp_worker.py` on CPU (torch 2.13, gloo) a rank died of a
    corrupted heap in gloo's worker thread (:obj:`malloc(): unaligned
    tcache chunk detected`, or a segmentation fault in its next
    allocation); with this hook, 0 of 150 runs on the same machine. Dense
    collectives are gloo's common path. The tests compare a step on two
    shards with one process's step on their union to 1e-6.

    Args:
        state: Unused (DDP's hook signature).
        bucket (torch.distributed.GradBucket): The bucket to reduce.
    """
    # Imported here: the package imports on torch builds without
    # torch.distributed, and only a distributed run calls the hook.
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import \
        allreduce_hook

    tensor = bucket.buffer()
    if not tensor.is_sparse:
        return allreduce_hook(None, bucket)
    # Every rank takes the same path: the decision uses all ranks' counts.
    counts = [int(c) for c in _all_gather(torch.tensor([tensor._nnz()]))]
    if tensor.sparse_dim() == 1 and \
            sum(counts) >= DENSE_REDUCE_FRACTION * tensor.size(0):
        mean = _mean_through_dense(tensor)
    else:
        mean = _mean_through_gather(tensor, counts)
    future: torch.futures.Future[Tensor] = torch.futures.Future()
    future.set_result(mean)
    return future


def _mean_through_dense(grad: Tensor) -> Tensor:
    # Uncoalesced entries add up in index_add_; the ones column counts them,
    # so a row some rank touched has a nonzero count after the all-reduce
    # (and is kept even if its summed gradient is zero, as SparseAdam's
    # update of the union expects).
    index, values = grad._indices()[0], grad._values()
    width = grad.shape[1:].numel()
    rows = values.new_zeros((grad.size(0), width + 1))
    rows.index_add_(0, index, torch.cat(
        [values.reshape(len(index), width), values.new_ones(len(index), 1)],
        1))
    dist.all_reduce(rows)
    touched = rows[:, -1].nonzero().view(-1)
    mean = rows[touched, :-1].div_(dist.get_world_size())
    return torch.sparse_coo_tensor(
        touched.unsqueeze(0), mean.view((-1, ) + grad.shape[1:]),
        grad.shape, is_coalesced=True)


def _mean_through_gather(grad: Tensor, counts: List[int]) -> Tensor:
    # One row per entry: its indices (sparse_dim of them) and its values;
    # the ranks' entries are concatenated and coalesced once.
    indices, values = grad._indices().t(), grad._values()
    all_indices = _all_gather(_pad(indices, max(counts)))
    all_values = _all_gather(_pad(values, max(counts)))
    indices = torch.cat([i[:c] for i, c in zip(all_indices, counts)])
    values = torch.cat([v[:c] for v, c in zip(all_values, counts)])
    return torch.sparse_coo_tensor(indices.t(), values / dist.get_world_size(),
                                   grad.shape).coalesce()


def _all_gather(tensor: Tensor) -> List[Tensor]:
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return parts


def _pad(tensor: Tensor, size: int) -> Tensor:
    # all_gather needs the same shape on every rank.
    out = tensor.new_zeros((size, ) + tuple(tensor.shape[1:]))
    out[:tensor.size(0)] = tensor
    return out


def launch(nproc: int, program: Sequence[str],
           threads: Optional[int] = None, **kwargs) -> int:
    r"""Runs :obj:`python -m torch.distributed.run --standalone
    --nproc-per-node nproc <program>` and returns its exit status (what
    :obj:`pmm-geo train --nproc N` does with :obj:`program = ['-m',
    'pmm_geo', 'train', ...]`). Interrupted or terminated, it stops
    torchrun, which stops its processes.

    Args:
        nproc (int): Processes on this machine.
        program (Sequence[str]): What every process runs: a script and its
            arguments, or :obj:`-m` and a module's.
        threads (int, optional): Torch threads of each process (passed on
            as :obj:`OMP_NUM_THREADS`; default: the available cores divided
            among the processes).
        **kwargs: Passed to :class:`subprocess.Popen` (e.g. :obj:`stdout`).
    """
    from .threads import default_threads

    env = dict(os.environ)
    env['OMP_NUM_THREADS'] = str(threads if threads is not None else
                                 default_threads(nproc))
    cmd: List[str] = [sys.executable, '-m', 'torch.distributed.run',
                      '--standalone', f'--nproc-per-node={int(nproc)}',
                      *program]
    proc = subprocess.Popen(cmd, env=env, **kwargs)
    try:
        return proc.wait()
    except BaseException:  # Not killed: torchrun must stop its processes.
        proc.terminate()
        proc.wait()
        raise


__all__ = ['Distributed', 'StageModule', 'launch',
           'sparse_safe_allreduce_hook']
