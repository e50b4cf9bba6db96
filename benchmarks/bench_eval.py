r"""Full-ranking evaluation cost on the Amazon Baby graph.

Times :func:`pmm_geo.evaluate` (test split, all test users, ks=(10, 20, 50),
train+val exclusion) against the bare lower bound "one dense ``U @ I.T`` plus
``topk(50)``" on the same shapes without any masking, interleaved in one run,
and reports median times, their ratio, and the peak memory of each variant
measured in a fresh subprocess. ``evaluate`` reuses the ranking index cached on
the data (as in a training loop that evaluates every epoch); building that
index is timed on its own ("index build"), so a first, cold call costs about
evaluate + index build.

Peak memory: torch's CPU allocations are invisible to ``tracemalloc``, so each
variant runs in its own subprocess that loads the data and embeddings, resets
the kernel's resident-set high-water mark (``echo 5 > /proc/self/clear_refs``,
Linux), runs the variant twice, and reports ``VmHWM - VmRSS`` before the run:
the true extra resident memory the computation needed. Without
``clear_refs`` it falls back to ``ru_maxrss`` (a lower bound of the increase,
flagged in the output).

    python benchmarks/bench_eval.py --root ../shared/data/amazon_baby_5core
"""
import argparse
import json
import os
import os.path as osp
import resource
import statistics
import subprocess
import sys
import time

import torch

import pmm_geo
from pmm_geo.evaluation import default_batch_size, ranking_index

DEFAULT_ROOT = osp.join(osp.dirname(osp.abspath(__file__)), '..', '..',
                        'shared', 'data', 'amazon_baby_5core')
KS = (10, 20, 50)


def load(root: str):
    try:
        from pmm_geo.data import read_promptmm
    except ImportError:  # Not exported yet by the readers module's owner.
        from pmm_geo.data.readers import read_promptmm
    return read_promptmm(root)


def embeddings(data, dim: int = 64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    user = torch.randn(data['user'].num_nodes, dim, generator=gen)
    item = torch.randn(data['item'].num_nodes, dim, generator=gen)
    return user, item


def run_bound(user, item, num_eval_users):
    # Same shapes as the evaluator's work: every test user against all items.
    return torch.topk(user[:num_eval_users] @ item.t(), max(KS), dim=1)


def run_evaluate(user, item, data, batch_size):
    return pmm_geo.evaluate(user, item, data, 'test', ks=KS,
                            batch_size=batch_size)


def _status_kb(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise KeyError(field)


def worker(args) -> None:
    r"""Subprocess: peak resident-memory increase of one variant."""
    data = load(args.root)
    user, item = embeddings(data)
    num_eval = ranking_index(data, 'test').users.numel()
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # Reset VmHWM to the current RSS.
        method, before = 'VmHWM', _status_kb('VmRSS')
    except OSError:
        method = 'ru_maxrss (lower bound)'
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(2):
        if args.worker == 'bound':
            out = run_bound(user, item, num_eval)
        else:
            out = run_evaluate(user, item, data, args.batch_size)
        del out
    peak = (_status_kb('VmHWM') if method == 'VmHWM' else
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    print(json.dumps({'peak_increase_mb': (peak - before) / 1024,
                      'method': method}))


def peak_memory(args, variant: str) -> dict:
    cmd = [sys.executable, osp.abspath(__file__), '--root', args.root,
           '--worker', variant]
    if args.threads:
        cmd += ['--threads', str(args.threads)]
    if args.batch_size is not None:
        cmd += ['--batch-size', str(args.batch_size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONWARNINGS='ignore'))
    return json.loads(out.stdout.strip().splitlines()[-1])


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--root', default=DEFAULT_ROOT,
                        help='LATTICE/PromptMM-format folder (Amazon Baby)')
    parser.add_argument('--repeats', type=int, default=7,
                        help='interleaved timing repeats per variant')
    parser.add_argument('--batch-size', type=int, default=None,
                        help='users per score chunk (default: 64 MiB chunk)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch intra-op threads (default: torch\'s)')
    parser.add_argument('--worker', choices=['bound', 'evaluate'],
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not osp.isdir(args.root):
        sys.exit(f'Data folder not found: {args.root}')
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args)

    data = load(args.root)
    user, item = embeddings(data)
    num_items = data['item'].num_nodes
    num_eval = ranking_index(data, 'test').users.numel()
    batch_size = args.batch_size or default_batch_size(num_items)
    print(f'graph: {data["user"].num_nodes} users, {num_items} items, '
          f'{data["user", "interacts", "item"].edge_index.size(1)} train / '
          f'{data["user", "interacts", "item"].test_edge_index.size(1)} test '
          f'interactions; {num_eval} test users; d={user.size(1)}; '
          f'torch {torch.__version__}, {torch.get_num_threads()} threads, '
          f'{os.cpu_count()} CPUs, load average before '
          f'{os.getloadavg()[0]:.1f}')

    variants = {
        'bound': lambda: run_bound(user, item, num_eval),
        'evaluate': lambda: run_evaluate(user, item, data, args.batch_size),
        'index build': lambda: ranking_index(data, 'test'),
    }
    for fn in variants.values():  # Warm-up (allocator, BLAS buffers).
        fn()
    times = {name: [] for name in variants}
    for _ in range(args.repeats):  # Interleaved: drift hits all alike.
        for name, fn in variants.items():
            times[name].append(timed(fn))
    median = {name: statistics.median(t) for name, t in times.items()}

    memory = {name: peak_memory(args, name) for name in ('bound', 'evaluate')}
    print(f'{"variant":<13} {"median s":>9} {"min s":>7} {"peak MB":>8}')
    for name in variants:
        mem = memory.get(name, {}).get('peak_increase_mb')
        mem = f'{mem:8.0f}' if mem is not None else f'{"-":>8}'
        print(f'{name:<13} {median[name]:9.3f} {min(times[name]):7.3f} '
              f'{mem}')
    print(f'ratio evaluate / bound (medians of {args.repeats}): '
          f'{median["evaluate"] / median["bound"]:.2f}x')
    print(f'largest score chunk alive: {batch_size} users x {num_items} '
          f'items x 4 B = {batch_size * num_items * 4 / 2**20:.1f} MiB '
          f'(bound: one {num_eval} x {num_items} matrix = '
          f'{num_eval * num_items * 4 / 2**20:.1f} MiB)')
    print(f'peak memory method: {memory["evaluate"]["method"]}; load '
          f'average after {os.getloadavg()[0]:.1f}')
    metrics = run_evaluate(user, item, data, args.batch_size)
    print('random-embedding metrics (sanity): ' + ', '.join(
        f'{k}={v:.4f}' for k, v in metrics.items() if k.endswith('@20')))


if __name__ == '__main__':
    main()
