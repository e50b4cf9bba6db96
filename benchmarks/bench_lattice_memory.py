r"""Peak memory of the sparse LATTICE at Electronics scale.

Builds LATTICE's frozen kNN graphs from random features of the real shapes
(default: 21,479 items, 4096-d image + 1024-d text), then runs one forward +
backward with ``build_item_graph=True`` (the learned graph rebuilt with
gradient, the most expensive step) and one with ``False``. ``--dense`` uses
the original's dense graph (:mod:`pmm_geo.nn.models.lattice_dense`: several
I x I float32 matrices, 1.85 GB each at 21,479 items) instead. Memory: the
peak RSS (Linux ``VmHWM``, reset once the inputs exist) minus the RSS then;
on CUDA, ``max_memory_allocated`` minus the inputs.

    python benchmarks/bench_lattice_memory.py [--items 5000] [--json out.json]
"""
import argparse
import json
import os
import os.path as osp
import sys
import time

import torch
import torch.nn.functional as F
from torch_geometric.utils import dense_to_sparse

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import _common as C  # noqa: E402

from pmm_geo.data import ELECTRONICS, BipartiteAdjacency  # noqa: E402
from pmm_geo.nn import LATTICE  # noqa: E402
from pmm_geo.nn.models.lattice_dense import dense_item_graph  # noqa: E402


def memory_probe(device: torch.device):
    r"""(current bytes, peak bytes) of this process on :obj:`device`, the
    peak since the call (reset now)."""
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return lambda: (torch.cuda.memory_allocated(),
                        torch.cuda.max_memory_allocated())
    C.reset_peak_rss()
    return lambda: (C.rss_mb() * C.MB, C.peak_rss_mb() * C.MB)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    for flag, default in (('--users', ELECTRONICS['num_users']),
                          ('--items', ELECTRONICS['num_items']),
                          ('--interactions', 200000), ('--embedding-dim', 64),
                          ('--knn-k', 10), ('--block-size', 2048),
                          ('--batch-size', 1024)):
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument('--dims', type=int, nargs='+', metavar='D',
                        default=list(ELECTRONICS['modalities'].values()),
                        help='raw feature width per modality')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--dense', action='store_true',
                        help="measure the original's dense item graph "
                        'instead (same parameters; needs several I x I '
                        'matrices: use a small --items)')
    parser.add_argument('--json', default=None, metavar='FILE',
                        help="write the results here ('-': stdout)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    names = ['image', 'text', 'audio'] + [f'm{j}' for j in range(3, 16)]
    features = {names[j]: torch.rand(args.items, d, generator=gen).to(device)
                for j, d in enumerate(args.dims)}
    key = torch.randint(0, args.users * args.items, (args.interactions, ),
                        generator=gen).unique()
    graph = BipartiteAdjacency(torch.stack([key // args.items,
                                            key % args.items]).to(device),
                               args.users, args.items)
    users, pos, neg = (torch.randint(0, n, (args.batch_size, ),
                                     generator=gen).to(device)
                       for n in (args.users, args.items, args.items))

    probe = memory_probe(device)
    baseline = probe()[0]
    rows = []

    def record(phase: str, tic: float):
        now, peak = probe()
        rows.append({'phase': phase,
                     'seconds': round(time.perf_counter() - tic, 2),
                     'peak_mb': round((peak - baseline) / C.MB, 1),
                     'current_mb': round((now - baseline) / C.MB, 1)})

    def bpr_step(build: bool) -> None:
        user, item = model(graph, features, build_item_graph=build)
        u = user[users]
        loss = -F.logsigmoid((u * item[pos]).sum(-1) -
                             (u * item[neg]).sum(-1)).mean()
        model.zero_grad(set_to_none=True)
        loss.backward()

    tic = time.perf_counter()
    torch.manual_seed(0)
    model = LATTICE(args.users, args.items, features,
                    embedding_dim=args.embedding_dim, knn_k=args.knn_k,
                    knn_block_size=args.block_size).to(device)
    if args.dense:  # The same model with the original's dense graph.
        model.item_graph = lambda x: dense_to_sparse(dense_item_graph(model, x))
    record('construct (frozen kNN graphs)', tic)
    for build in (True, False):
        tic = time.perf_counter()
        bpr_step(build)
        record(f'forward+backward, build_item_graph={build}', tic)

    dense_gb = args.items**2 * 4 / 1e9
    result = {
        **vars(args), 'device': str(device), 'torch': torch.__version__,
        'command': ' '.join([os.path.basename(sys.executable)] + sys.argv),
        'threads': torch.get_num_threads(), 'train_edges': graph.num_edges,
        'implementation': 'dense original' if args.dense else 'sparse',
        'item_graph_edges': int(model.item_graph_index.size(1)),
        'baseline_mb': round(baseline / C.MB, 1), 'phases': rows,
        'peak_over_baseline_mb': max(r['peak_mb'] for r in rows),
        'dense_item_item_matrix_gb': round(dense_gb, 3)}
    print(f"LATTICE ({result['implementation']}) memory: {args.items} items, "
          f'{args.users} users, features {args.dims}, d={args.embedding_dim}'
          f', k={args.knn_k}, block={args.block_size}, device={device}, '
          f"threads={result['threads']}")
    print(f"baseline (inputs loaded): {result['baseline_mb']} MB")
    print(f"{'phase':<45}{'seconds':>9}{'peak MB':>10}{'kept MB':>10}")
    for r in rows:
        print(f"{r['phase']:<45}{r['seconds']:>9}{r['peak_mb']:>10}"
              f"{r['current_mb']:>10}")
    print(f"peak over baseline: {result['peak_over_baseline_mb']} MB "
          f'(one dense {args.items}x{args.items} float32 matrix: '
          f'{dense_gb:.2f} GB)')
    print(f"item graph: {result['item_graph_edges']} edges")
    if args.json == '-':  # For another script: the last line of output.
        print(json.dumps(result))
    elif args.json:
        C.write(args.json, result)
    return result


if __name__ == '__main__':
    main()
