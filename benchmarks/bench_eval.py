r"""Full-ranking evaluation cost on the Amazon Baby graph.

Times :func:`pmm_geo.evaluate` (test split, all test users, ks=(10, 20, 50),
train+val exclusion, the ranking index cached as in a training loop; its
build is timed apart) against the bare lower bound "one dense ``U @ I.T``
plus ``topk(50)``" without masking, interleaved, and reports medians, their
ratio, and each variant's peak memory in a fresh subprocess: ``VmHWM`` after
resetting it (``/proc/self/clear_refs``) minus ``VmRSS`` before, over two
runs (without ``clear_refs``, ``ru_maxrss``: a lower bound, flagged).

    python benchmarks/bench_eval.py --root ../shared/data/amazon_baby_5core
"""
import argparse
import json
import os
import os.path as osp
import statistics
import sys
import time

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import _common as C  # noqa: E402

import pmm_geo  # noqa: E402
from pmm_geo.data import EDGE_TYPE, read_promptmm  # noqa: E402
from pmm_geo.evaluation import ranking_index  # noqa: E402
from pmm_geo.ranking import default_batch_size  # noqa: E402

DEFAULT_ROOT = osp.join(osp.dirname(osp.abspath(__file__)), '..', '..',
                        'shared', 'data', 'amazon_baby_5core')
KS = (10, 20, 50)


def setup(args):
    data = read_promptmm(args.root)
    gen = torch.Generator().manual_seed(0)
    user = torch.randn(data['user'].num_nodes, 64, generator=gen)
    item = torch.randn(data['item'].num_nodes, 64, generator=gen)
    num_eval = ranking_index(data, 'test').users.numel()
    return data, user, item, {
        # Same shapes as the evaluator's work: every test user, all items.
        'bound': lambda: torch.topk(user[:num_eval] @ item.t(), max(KS),
                                    dim=1),
        'evaluate': lambda: pmm_geo.evaluate(user, item, data, 'test', ks=KS,
                                             batch_size=args.batch_size),
        'index build': lambda: ranking_index(data, 'test')}


def worker(args) -> None:
    r"""Subprocess: peak resident-memory increase of one variant."""
    run = setup(args)[3][args.worker]
    if C.reset_peak_rss():
        method, before = 'VmHWM', C.rss_mb()
    else:
        method, before = 'ru_maxrss (lower bound)', C.peak_rss_mb()
    for _ in range(2):
        run()
    print(json.dumps({'peak_increase_mb': C.peak_rss_mb() - before,
                      'method': method}))


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

    data, user, item, variants = setup(args)
    store, num_items = data[EDGE_TYPE], data['item'].num_nodes
    num_eval = ranking_index(data, 'test').users.numel()
    batch_size = args.batch_size or default_batch_size(num_items)
    print(f'graph: {data["user"].num_nodes} users, {num_items} items, '
          f'{store.edge_index.size(1)} train / '
          f'{store.test_edge_index.size(1)} test interactions; {num_eval} '
          f'test users; d={user.size(1)}; torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load '
          f'average before {os.getloadavg()[0]:.1f}')
    for fn in variants.values():  # Warm-up (allocator, BLAS buffers).
        fn()
    times = {name: [] for name in variants}
    for _ in range(args.repeats):  # Interleaved: drift hits all alike.
        for name, fn in variants.items():
            times[name].append(C.time_call(fn)[0])
    median = {name: statistics.median(t) for name, t in times.items()}

    memory = {name: C.child_json(__file__, sys.argv[1:] + ['--worker', name])
              for name in ('bound', 'evaluate')}
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
    metrics = variants['evaluate']()
    print('random-embedding metrics (sanity): ' + ', '.join(
        f'{k}={v:.4f}' for k, v in metrics.items() if k.endswith('@20')))


if __name__ == '__main__':
    main()
