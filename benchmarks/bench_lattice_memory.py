r"""Peak memory of the sparse LATTICE at Electronics scale.

Builds LATTICE's frozen kNN graphs from random raw features of the real
shapes (default: 21,479 items, 4096-d image + 1024-d text, as PromptMM's
Electronics) and runs one forward + backward with ``build_item_graph=True``
(the most expensive step: the learned kNN graph rebuilt with gradient), then
one with ``build_item_graph=False``. The dense original keeps several
:math:`I \times I` float32 matrices alive (1.85 GB each at 21,479 items; see
``reference/lattice_mmrec.md`` section 1.6).

Memory is measured honestly, in this fresh process:

- CPU: the peak resident set size (Linux ``VmHWM``, reset through
  ``/proc/self/clear_refs`` once the inputs exist) minus the resident size
  at that point (interpreter, torch, the raw features and the user-item
  graph: the inputs any model needs);
- CUDA (``--device cuda``): ``torch.cuda.max_memory_allocated`` minus the
  memory allocated by the inputs.

Run::

    python benchmarks/bench_lattice_memory.py            # Electronics scale
    python benchmarks/bench_lattice_memory.py --items 5000 --json out.json

It prints a table and, with ``--json``, writes the numbers to a file.
"""
import argparse
import json
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F

from pmm_geo.data import BipartiteAdjacency
from pmm_geo.nn import LATTICE

MB = 1024.0**2


def _status_kb(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise KeyError(field)


class CpuMemory:
    r"""Resident memory of this process (Linux)."""
    def __init__(self):
        self.can_reset = self._reset_peak()

    @staticmethod
    def _reset_peak() -> bool:
        try:  # '5' resets the peak RSS (VmHWM) to the current RSS.
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            return True
        except OSError:
            return False

    def start(self):
        self.can_reset = self._reset_peak()
        self.baseline = _status_kb('VmRSS') * 1024
        self.peak_before = (_status_kb('VmHWM') * 1024 if self.can_reset
                            else resource.getrusage(
                                resource.RUSAGE_SELF).ru_maxrss * 1024)

    def peak(self) -> int:
        return _status_kb('VmHWM') * 1024

    def current(self) -> int:
        return _status_kb('VmRSS') * 1024


class CudaMemory:
    def start(self):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.baseline = torch.cuda.memory_allocated()
        self.peak_before = self.baseline

    def peak(self) -> int:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()

    def current(self) -> int:
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()


# The dense original (CRIPAC-DIG/LATTICE codes/Models.py lines 13-27 and
# 86-98), for ``--dense``: the same function with I x I matrices.
def build_sim(context):
    context_norm = context.div(torch.norm(context, p=2, dim=-1, keepdim=True))
    return torch.mm(context_norm, context_norm.transpose(1, 0))


def build_knn_neighbourhood(adj, topk):
    knn_val, knn_ind = torch.topk(adj, topk, dim=-1)
    return torch.zeros_like(adj).scatter_(-1, knn_ind, knn_val)


def compute_normalized_laplacian(adj):
    rowsum = torch.sum(adj, -1)
    d_inv_sqrt = torch.pow(rowsum, -0.5)
    d_inv_sqrt[torch.isinf(d_inv_sqrt)] = 0.
    d_mat_inv_sqrt = torch.diagflat(d_inv_sqrt)
    return torch.mm(torch.mm(d_mat_inv_sqrt, adj), d_mat_inv_sqrt)


class DenseLATTICE(torch.nn.Module):
    r"""The original's dense item graph around the same parameters."""
    def __init__(self, model: LATTICE, features):
        super().__init__()
        self.model = model
        for j, m in enumerate(model.modalities):
            adj = build_sim(features[m])
            adj = build_knn_neighbourhood(adj, model.knn_k)
            self.register_buffer(f'original_{j}',
                                 compute_normalized_laplacian(adj))
            del adj
        self.item_adj = None

    def forward(self, graph, features, build_item_graph=True):
        model = self.model
        if build_item_graph:
            weight = torch.softmax(model.modality_weight, dim=0)
            learned = sum(
                weight[j] * build_knn_neighbourhood(
                    build_sim(model.projections[m](features[m])),
                    model.knn_k) for j, m in enumerate(model.modalities))
            learned = compute_normalized_laplacian(learned)
            original = sum(weight[j] * getattr(self, f'original_{j}')
                           for j in range(len(model.modalities)))
            self.item_adj = ((1 - model.lambda_coeff) * learned +
                             model.lambda_coeff * original)
        else:
            self.item_adj = self.item_adj.detach()
        h = model.item_embedding.weight
        for _ in range(model.item_graph_layers):
            h = torch.mm(self.item_adj, h)
        user, item = model._lightgcn(graph)
        return user, item + F.normalize(h, p=2, dim=1)


def random_graph(num_users: int, num_items: int, num_edges: int,
                 gen: torch.Generator) -> torch.Tensor:
    key = torch.randint(0, num_users * num_items, (num_edges, ),
                        generator=gen).unique()
    return torch.stack([key // num_items, key % num_items])


def bpr_step(model, graph, features, users, pos, neg, build: bool) -> float:
    user, item = model(graph, features, build_item_graph=build)
    u = user[users]
    loss = -F.logsigmoid((u * item[pos]).sum(-1) -
                         (u * item[neg]).sum(-1)).mean()
    model.zero_grad(set_to_none=True)
    loss.backward()
    return float(loss.detach())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--users', type=int, default=41691)
    parser.add_argument('--items', type=int, default=21479)
    parser.add_argument('--interactions', type=int, default=200000)
    parser.add_argument('--dims', type=int, nargs='+', default=[4096, 1024],
                        help='raw feature width per modality')
    parser.add_argument('--embedding-dim', type=int, default=64)
    parser.add_argument('--knn-k', type=int, default=10)
    parser.add_argument('--block-size', type=int, default=2048)
    parser.add_argument('--batch-size', type=int, default=1024)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--dense', action='store_true',
                        help="measure the original's dense item graph "
                        'instead (same parameters; needs several I x I '
                        'matrices: use a small --items)')
    parser.add_argument('--json', default=None, help='write results here')
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    names = ['image', 'text', 'audio'] + [f'm{j}' for j in range(3, 16)]
    features = {
        names[j]: torch.rand(args.items, d, generator=gen).to(device)
        for j, d in enumerate(args.dims)
    }
    edge_index = random_graph(args.users, args.items, args.interactions,
                              gen).to(device)
    graph = BipartiteAdjacency(edge_index, args.users, args.items)
    users = torch.randint(0, args.users, (args.batch_size, ),
                          generator=gen).to(device)
    pos = torch.randint(0, args.items, (args.batch_size, ),
                        generator=gen).to(device)
    neg = torch.randint(0, args.items, (args.batch_size, ),
                        generator=gen).to(device)

    memory = CudaMemory() if device.type == 'cuda' else CpuMemory()
    memory.start()
    rows = []

    def record(phase: str, seconds: float):
        rows.append({
            'phase': phase,
            'seconds': round(seconds, 2),
            'peak_mb': round((memory.peak() - memory.baseline) / MB, 1),
            'current_mb': round((memory.current() - memory.baseline) / MB, 1),
        })

    t = time.perf_counter()
    torch.manual_seed(0)
    model = LATTICE(args.users, args.items, features,
                    embedding_dim=args.embedding_dim, knn_k=args.knn_k,
                    knn_block_size=args.block_size).to(device)
    if args.dense:
        model = DenseLATTICE(model, features)
    record('construct (frozen kNN graphs)', time.perf_counter() - t)
    t = time.perf_counter()
    bpr_step(model, graph, features, users, pos, neg, build=True)
    record('forward+backward, build_item_graph=True',
           time.perf_counter() - t)
    t = time.perf_counter()
    bpr_step(model, graph, features, users, pos, neg, build=False)
    record('forward+backward, build_item_graph=False',
           time.perf_counter() - t)

    dense_gb = args.items**2 * 4 / 1e9
    result = {
        'command': ' '.join([os.path.basename(sys.executable)] + sys.argv),
        'device': str(device),
        'threads': torch.get_num_threads(),
        'torch': torch.__version__,
        'users': args.users,
        'items': args.items,
        'train_edges': graph.num_edges,
        'dims': args.dims,
        'embedding_dim': args.embedding_dim,
        'knn_k': args.knn_k,
        'block_size': args.block_size,
        'implementation': 'dense original' if args.dense else 'sparse',
        'item_graph_edges': (int((model.item_adj != 0).sum()) if args.dense
                             else int(model.item_graph_index.size(1))),
        'baseline_mb': round(memory.baseline / MB, 1),
        'peak_before_mb': round(memory.peak_before / MB, 1),
        'peak_over_baseline_mb': max(r['peak_mb'] for r in rows),
        'dense_item_item_matrix_gb': round(dense_gb, 3),
        'phases': rows,
    }
    print(f"LATTICE ({result['implementation']}) memory: {args.items} items, "
          f"{args.users} users, "
          f"features {args.dims}, d={args.embedding_dim}, "
          f"k={args.knn_k}, block={args.block_size}, device={device}, "
          f"threads={result['threads']}")
    print(f"baseline (inputs loaded): {result['baseline_mb']} MB RSS "
          f"(peak so far {result['peak_before_mb']} MB)")
    print(f"{'phase':<45}{'seconds':>9}{'peak MB':>10}{'kept MB':>10}")
    for r in rows:
        print(f"{r['phase']:<45}{r['seconds']:>9}{r['peak_mb']:>10}"
              f"{r['current_mb']:>10}")
    print(f"peak over baseline: {result['peak_over_baseline_mb']} MB "
          f"(one dense {args.items}x{args.items} float32 matrix: "
          f"{dense_gb:.2f} GB)")
    print(f"item graph: {result['item_graph_edges']} edges")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == '__main__':
    main()
