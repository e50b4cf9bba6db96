r"""What the benchmark scripts share (imported by path; not pmm_geo API):
memory, the machine, workers, served models, timing, statistics, output."""
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import (Any, Callable, Dict, Iterable, List, Mapping, Optional,
                    Sequence, Tuple)

import torch
from torch import Tensor

MB = 1024.0**2


def status_kb(field: str) -> Optional[int]:
    r"""A field of :obj:`/proc/self/status` in KiB (e.g. :obj:`VmRSS`)."""
    try:
        with open('/proc/self/status', encoding='ascii') as f:
            return next(int(line.split()[1]) for line in f
                        if line.startswith(field + ':'))
    except (OSError, StopIteration):
        return None


def rss_mb() -> float:
    r"""Current resident set size of this process, in MiB."""
    return (status_kb('VmRSS') or float('nan')) / 1024.0


def peak_rss_mb() -> float:
    r"""Peak resident set size of this process in MiB: Linux :obj:`VmHWM`
    (since the last :func:`reset_peak_rss`), else :obj:`ru_maxrss`."""
    kb = status_kb('VmHWM')
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kb //= 1024 if sys.platform == 'darwin' else 1  # bytes there
    return kb / 1024.0


def reset_peak_rss() -> bool:
    r"""Resets the kernel's peak-RSS mark to the current RSS (Linux
    :obj:`/proc/self/clear_refs`); returns whether that was possible."""
    try:
        with open('/proc/self/clear_refs', 'w', encoding='ascii') as f:
            f.write('5')
        return True
    except OSError:
        return False


def machine() -> Dict[str, Any]:
    r"""A short description of the machine and the software."""
    import torch_geometric
    info = {'platform': platform.platform(), 'cpu_count': os.cpu_count(),
            'python': platform.python_version(), 'torch': torch.__version__,
            'torch_geometric': torch_geometric.__version__,
            'torch_threads': torch.get_num_threads(),
            'cuda': torch.cuda.is_available(),
            'cpu': platform.processor() or platform.machine()}
    try:
        with open('/proc/cpuinfo', encoding='ascii', errors='replace') as f:
            info['cpu'] = next(line.split(':', 1)[1].strip() for line in f
                               if line.startswith('model name'))
        with open('/proc/meminfo', encoding='ascii') as f:
            info['mem_total_gb'] = round(int(f.readline().split()[1]) /
                                         1024**2, 1)
    except (OSError, StopIteration):
        pass
    return info


def footprint(name: str, model: torch.nn.Module,
              features: Mapping[str, Tensor]) -> Tuple[int, float]:
    r"""Elements and MiB of every tensor the served model :obj:`name`
    needs for its embeddings: its :obj:`state_dict` (hard tokens, frozen kNN
    graphs, ...) and the feature tables it reads (not the interactions)."""
    from pmm_geo.train.registry import stage_class
    tensors = list(model.state_dict().values())
    if stage_class(name).needs_features:
        tensors += list(features.values())
    return (sum(int(t.numel()) for t in tensors),
            sum(int(t.numel()) * t.element_size() for t in tensors) / MB)


def time_call(fn, *args, **kwargs) -> Tuple[float, float, Any]:
    r"""Runs :obj:`fn`: :obj:`(wall seconds, CPU seconds, its output)`."""
    tic, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return time.perf_counter() - tic, time.process_time() - cpu, out


@torch.no_grad()
def time_inference(name: str, model: torch.nn.Module, edges: Tensor,
                   num_users: int, num_items: int,
                   features: Mapping[str, Tensor], k: int = 20):
    r"""One timed inference of the served model :obj:`name`, wall and CPU:
    the shared normalized adjacency (``graph_seconds``, apart), every
    forward computation the model needs (``embed_seconds``) and the top-k
    unseen items of every user with one scorer for all models
    (``rank_seconds``); returns them and :obj:`(user, item, top)`."""
    from pmm_geo.data import BipartiteAdjacency
    from pmm_geo.ranking import recommend_items
    from pmm_geo.train.registry import stage_class

    def prepare():
        graph = BipartiteAdjacency(edges, num_users, num_items)
        graph.item_to_user(model.layout), graph.user_to_item(model.layout)
        return graph

    graph_s, _, graph = time_call(prepare)
    embed_s, embed_cpu, (user, item) = time_call(
        stage_class(name).model_embeddings, model, graph, features)
    rank_s, rank_cpu, top = time_call(recommend_items, user, item, k,
                                      exclude=edges)
    return {'graph_seconds': graph_s, 'embed_seconds': embed_s,
            'rank_seconds': rank_s, 'inference_seconds': embed_s + rank_s,
            'embed_cpu_seconds': embed_cpu, 'rank_cpu_seconds': rank_cpu,
            'inference_cpu_seconds': embed_cpu + rank_cpu}, (user, item, top)


def medians(samples: List[Dict[str, float]]) -> Dict[str, Any]:
    r"""The median of each key over :obj:`samples`, and all of them as
    :obj:`<key>_all`."""
    return {**{k: statistics.median(s[k] for s in samples)
               for k in samples[0]},
            **{k + '_all': [s[k] for s in samples] for k in samples[0]}}


Spec = Dict[str, Any]


def run_worker(script: str, spec: Spec, log_path: str, in_process: bool,
               run_spec: Callable[[Spec], None], nproc: int = 1
               ) -> Optional[str]:
    r"""Runs :obj:`run_spec(spec)` with the spec's threads in this process
    (tests) or as :obj:`script --worker SPEC_JSON` (:obj:`nproc` ranks by
    torchrun), logging to :obj:`log_path` (each measurement its own peak
    memory and threads); returns :obj:`None` on success, else the log tail."""
    from pmm_geo.train.distributed import launch
    if in_process and nproc == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(int(spec.get('threads') or threads))
        try:
            run_spec(spec)
        finally:
            torch.set_num_threads(threads)
        return None
    cmd = [sys.executable, os.path.abspath(script), '--worker',
           json.dumps(spec)]
    with open(log_path, 'w', encoding='utf-8') as log:
        out = {'stdout': log, 'stderr': subprocess.STDOUT}
        code = launch(nproc, cmd[1:], spec['threads'], **out) if nproc > 1 \
            else subprocess.run(cmd, env=dict(
                os.environ, PYTHONWARNINGS='ignore'), **out).returncode
    if code == 0:
        return None
    with open(log_path, encoding='utf-8', errors='replace') as f:
        tail = ''.join(f.readlines()[-15:])
    return f'worker {spec["kind"]} failed (exit {code}); {log_path}:\n{tail}'


def worker_main(argv: List[str], run_spec: Callable[[Spec], None]) -> int:
    r"""The :obj:`--worker SPEC_JSON` entry point of a benchmark script."""
    return run_worker('', json.loads(argv[0]), '', True, run_spec) or 0


def add_worker_args(parser, out: str) -> None:
    r"""The options compare.py and scale.py share."""
    parser.add_argument('--out', default=os.path.join('runs', out),
                        metavar='DIR', help=f'output folder (default: '
                        f'runs/{out})')
    parser.add_argument('--threads', type=int, default=1, metavar='N',
                        help='torch threads per worker (default: 1; on a '
                        'small graph more threads mostly add contention)')
    parser.add_argument('--repeats', type=int, default=3, metavar='N',
                        help='inference timing repeats (median; default: 3)')
    parser.add_argument('--in-process', action='store_true',
                        help='run the workers in this process (tests; peak '
                        'memory is then the whole process\'s)')
    parser.add_argument('--no-plot', action='store_true')


def child_json(script: str, args: Sequence[str]) -> Dict[str, Any]:
    r"""Runs :obj:`python script args...` in a fresh process and returns
    the JSON object on the last line of its output."""
    out = subprocess.run([sys.executable, os.path.abspath(script), *args],
                         check=True, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONWARNINGS='ignore'))
    return json.loads(out.stdout.strip().splitlines()[-1])


def mean_std(values: List[float]) -> Dict[str, float]:
    r"""Mean and sample standard deviation (0 for a single value)."""
    values = [float(v) for v in values if v is not None and
              not math.isnan(float(v))]
    if not values:
        return {'mean': float('nan'), 'std': float('nan')}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {'mean': statistics.fmean(values), 'std': std}


def fmt(stat: Mapping[str, float], digits: int = 4) -> str:
    mean, std = stat['mean'], stat['std']
    return 'n/a' if math.isnan(mean) else \
        f'{mean:,.{digits}f} ± {std:,.{digits}f}'


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]],
             align: Optional[Sequence[str]] = None) -> List[str]:
    r"""The lines of a markdown table (:obj:`align`: one :obj:`'---'`,
    :obj:`'---:'`, ... per column)."""
    align = align or ['---'] * len(header)
    return (['| ' + ' | '.join(header) + ' |', '|' + '|'.join(align) + '|'] +
            ['| ' + ' | '.join(str(v) for v in row) + ' |' for row in rows])


def write(path: str, obj: Any) -> None:
    r"""Writes text, or any other object as JSON, atomically."""
    from pmm_geo.train.checkpoint import atomic_write_text
    atomic_write_text(path, obj if isinstance(obj, str) else
                      json.dumps(obj, indent=2) + '\n')


def read_json(path: str) -> Any:
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def pyplot():
    r"""matplotlib's pyplot (Agg), or :obj:`None` without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        print('matplotlib is not installed: no plot (pip install matplotlib)')
        return None
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt
