r"""Forward + backward time of the pmm_geo models against PyG's stock
:class:`torch_geometric.nn.models.LightGCN`, on the Amazon Baby graph.

One timed step = one BPR training step without the optimizer: full graph
propagation, scores of a batch of (user, positive, negative) triples, the
model's loss and :obj:`backward()`. Models run interleaved (A B C A B C ...)
in one process so that machine noise hits them alike; the report gives the
median per model and its ratio to PyG's default :class:`LightGCN` path
(:class:`LGConv` on a plain :obj:`edge_index`, :obj:`normalize=True`).

It also measures, in a fresh subprocess, the peak memory of one LATTICE
training step at the Electronics width (21,479 items, 4096-d image and
1024-d text features) as the peak-RSS increase over the process after the
features are allocated.

Usage::

    python benchmarks/bench_models.py                 # all, Baby graph
    python benchmarks/bench_models.py --repeats 5 --no-memory
    python benchmarks/bench_models.py --device cuda

Models whose module is missing are skipped with a note.
"""
import argparse
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch_geometric.nn.models import LightGCN

from pmm_geo.data import EDGE_TYPE, BipartiteAdjacency
from pmm_geo.data.readers import read_promptmm
from pmm_geo.nn import BPRLoss, LightGCNStudent

ROOT = Path(__file__).resolve().parents[1]
BABY = ROOT.parent / 'shared' / 'data' / 'amazon_baby_5core'
BABY_WIDTHS = {'image': 4096, 'text': 384}
ELECTRONICS = dict(num_users=41691, num_items=21479, num_edges=359165,
                   widths={'image': 4096, 'text': 1024})


def optional_class(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        print(f'note: skipping {name}: {module} not available ({error})')
        return None


def sync(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def bpr_batch(num_users: int, num_items: int, edge_index: torch.Tensor,
              batch_size: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(edge_index.size(1), (batch_size, ), generator=gen)
    users, pos = edge_index[:, pick]
    neg = torch.randint(num_items, (batch_size, ), generator=gen)
    return users, pos, neg


def build_steps(data, features, batch, device, dim: int, layers: int,
                only: Optional[List[str]] = None
                ) -> Dict[str, Callable[[], torch.Tensor]]:
    def wanted(name: str) -> bool:
        return only is None or any(w.lower() in name.lower() for w in only)

    num_users, num_items = data['user'].num_nodes, data['item'].num_nodes
    edge_index = data[EDGE_TYPE].edge_index
    adj = BipartiteAdjacency(edge_index, num_users, num_items).to(device)
    users, pos, neg = (t.to(device) for t in batch)
    label = torch.cat([torch.stack([users, pos]),
                       torch.stack([users, neg])], dim=1)
    bpr = BPRLoss(lambda_reg=1e-4)
    steps: Dict[str, Callable[[], torch.Tensor]] = {}

    # PyG's LightGCN on the homogeneous graph: users 0..U-1, items U..U+I-1.
    homo = torch.cat([edge_index[0], edge_index[1] + num_users])
    homo = torch.stack([homo, torch.cat([edge_index[1] + num_users,
                                         edge_index[0]])]).to(device)
    homo_label = label.clone()
    homo_label[1] += num_users
    node_id = torch.cat([users, pos + num_users, neg + num_users])
    pyg = LightGCN(num_users + num_items, dim, num_layers=layers).to(device)

    def pyg_default():
        pos_rank, neg_rank = pyg(homo, homo_label).chunk(2)
        return pyg.recommendation_loss(pos_rank, neg_rank, node_id=node_id)

    # The reference row is always timed.
    steps['PyG LightGCN (LGConv, edge_index, normalize=True)'] = pyg_default

    # The best stock-PyG alternative: a pre-normalized sparse adj_t.
    pyg_csr = LightGCN(num_users + num_items, dim, num_layers=layers,
                       normalize=False).to(device)
    pyg_csr.embedding.weight.data.copy_(pyg.embedding.weight.data)
    from torch_geometric.nn.conv.gcn_conv import gcn_norm
    from torch_geometric.utils import to_torch_csr_tensor
    norm_index, norm_weight = gcn_norm(homo, None, num_users + num_items,
                                       add_self_loops=False)
    adj_t = to_torch_csr_tensor(norm_index.flip(0), norm_weight,
                                size=(num_users + num_items, ) * 2)

    def pyg_prenormalized():
        out = pyg_csr.get_embedding(adj_t)
        scores = (out[homo_label[0]] * out[homo_label[1]]).sum(-1)
        pos_rank, neg_rank = scores.chunk(2)
        return pyg_csr.recommendation_loss(pos_rank, neg_rank,
                                           node_id=node_id)

    if wanted('PyG LightGCN (normalize=False, cached CSR adj_t)'):
        steps['PyG LightGCN (normalize=False, cached CSR adj_t)'] = \
            pyg_prenormalized

    student = LightGCNStudent(num_users, num_items, dim,
                              num_layers=layers).to(device)

    def student_step():
        pos_rank, neg_rank = student(adj, label).chunk(2)
        return student.recommendation_loss(pos_rank, neg_rank,
                                           (users, torch.cat([pos, neg])))

    if wanted('LightGCNStudent (pmm_geo, edge_index_fused)'):
        steps['LightGCNStudent (pmm_geo, edge_index_fused)'] = student_step

    features = {m: x.to(device) for m, x in features.items()}
    teacher_cls = None
    if wanted('MultimodalTeacher (stage 1)'):
        teacher_cls = optional_class('pmm_geo.nn.models.teacher',
                                     'MultimodalTeacher')
    if teacher_cls is not None:
        teacher = teacher_cls(num_users, num_items,
                              {m: x.size(1) for m, x in features.items()},
                              embedding_dim=dim, num_layers=layers).to(device)
        teacher.init_prompt(adj, features)

        def teacher_step():
            return teacher.loss(teacher(adj, features), users, pos, neg)

        steps['MultimodalTeacher (stage 1)'] = teacher_step

    lattice_cls = None
    if wanted('LATTICE (item graph rebuilt)') or wanted(
            'LATTICE (cached item graph)'):
        lattice_cls = optional_class('pmm_geo.nn.models.lattice', 'LATTICE')
    if lattice_cls is not None:
        lattice = lattice_cls(num_users, num_items, features,
                              embedding_dim=dim).to(device)

        def lattice_step(build: bool):
            def step():
                user, item = lattice(adj, features, build_item_graph=build)
                scores = (user[label[0]] * item[label[1]]).sum(-1)
                return bpr(*scores.chunk(2))
            return step

        for name, build in (('LATTICE (item graph rebuilt)', True),
                            ('LATTICE (cached item graph)', False)):
            if wanted(name):
                steps[name] = lattice_step(build)
    return steps


def time_steps(steps: Dict[str, Callable], repeats: int, warmup: int,
               device: torch.device) -> Dict[str, List[float]]:
    times = {name: [] for name in steps}
    for round_ in range(warmup + repeats):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step().backward()
            sync(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def lattice_memory_child(device: str) -> dict:
    # Runs in a fresh process: peak RSS after the step minus RSS once the
    # inputs (graph, features) exist.
    from pmm_geo.nn.models.lattice import LATTICE

    cfg = ELECTRONICS
    gen = torch.Generator().manual_seed(0)
    key = torch.unique(torch.randint(cfg['num_users'] * cfg['num_items'],
                                     (cfg['num_edges'], ), generator=gen))
    edge_index = torch.stack([key // cfg['num_items'],
                              key % cfg['num_items']])
    adj = BipartiteAdjacency(edge_index, cfg['num_users'], cfg['num_items'])
    features = {m: torch.rand(cfg['num_items'], w, generator=gen)
                for m, w in cfg['widths'].items()}
    baseline = _current_rss()
    if device == 'cuda':
        adj = adj.to(device)
        features = {m: x.to(device) for m, x in features.items()}
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    start = time.perf_counter()
    model = LATTICE(cfg['num_users'], cfg['num_items'], features).to(device)
    build = time.perf_counter() - start
    users, pos, neg = (t.to(device) for t in bpr_batch(
        cfg['num_users'], cfg['num_items'], edge_index, 2048))
    start = time.perf_counter()
    user, item = model(adj, features, build_item_graph=True)
    loss = BPRLoss()((user[users] * item[pos]).sum(-1),
                     (user[users] * item[neg]).sum(-1))
    loss.backward()
    step = time.perf_counter() - start
    out = dict(num_items=cfg['num_items'], widths=cfg['widths'],
               feature_mb=sum(x.numel() * 4 for x in features.values()) /
               2**20, baseline_rss_mb=baseline / 2**20,
               peak_rss_mb=_peak_rss() / 2**20,
               peak_delta_mb=(_peak_rss() - baseline) / 2**20,
               construct_s=build, step_s=step)
    if device == 'cuda':
        out['cuda_peak_delta_mb'] = (torch.cuda.max_memory_allocated() -
                                     base_cuda) / 2**20
    return out


def _current_rss() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _peak_rss() -> int:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def lattice_memory(device: str) -> Optional[dict]:
    if optional_class('pmm_geo.nn.models.lattice', 'LATTICE') is None:
        return None
    proc = subprocess.run(
        [sys.executable, __file__, '--memory-child', '--device', device,
         '--threads', str(torch.get_num_threads())],
        capture_output=True, text=True)
    if proc.returncode != 0:
        print(f'note: LATTICE memory run failed:\n{proc.stderr[-2000:]}')
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load_graph(path: Path):
    if not path.exists():
        sys.exit(f'The Baby graph is not at {path} (pass --data DIR)')
    data = read_promptmm(str(path))
    gen = torch.Generator().manual_seed(0)
    num_items = data['item'].num_nodes
    # Random features of the real widths: timing only, no accuracy.
    features = {m: torch.rand(num_items, w, generator=gen)
                for m, w in BABY_WIDTHS.items()}
    return data, features


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f
                       if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    import torch_geometric
    return (f'{cpu}, {os.cpu_count()} cores, torch {torch.__version__} '
            f'({torch.get_num_threads()} threads), torch_geometric '
            f'{torch_geometric.__version__}, Python '
            f'{platform.python_version()}')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', type=Path, default=BABY)
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--batch-size', type=int, default=2048)
    parser.add_argument('--dim', type=int, default=64)
    parser.add_argument('--layers', type=int, default=3)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--only', nargs='+', default=None, metavar='WORD',
                        help='time only models whose name contains a WORD '
                        '(the PyG default path is always kept)')
    parser.add_argument('--no-memory', action='store_true')
    parser.add_argument('--memory-child', action='store_true',
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(lattice_memory_child(args.device)))
        return
    device = torch.device(args.device)
    torch.manual_seed(0)

    data, features = load_graph(args.data)
    num_users, num_items = data['user'].num_nodes, data['item'].num_nodes
    edge_index = data[EDGE_TYPE].edge_index
    print(f'graph: {args.data.name}: {num_users} users, {num_items} items, '
          f'{edge_index.size(1)} train edges; features '
          f'{ {m: tuple(x.shape) for m, x in features.items()} } (random)')
    print(f'machine: {machine()}, device {device}')
    print(f'step = full propagation + BPR on {args.batch_size} triples + '
          f'backward; width {args.dim}, {args.layers} layers; '
          f'{args.repeats} interleaved repeats after {args.warmup} warm-ups')

    batch = bpr_batch(num_users, num_items, edge_index, args.batch_size)
    steps = build_steps(data, features, batch, device, args.dim, args.layers,
                        args.only)
    times = time_steps(steps, args.repeats, args.warmup, device)

    reference = statistics.median(next(iter(times.values())))
    print('\n| model | median ms | min ms | speed-up vs PyG default |')
    print('|---|---:|---:|---:|')
    for name, values in times.items():
        median = statistics.median(values)
        print(f'| {name} | {1e3 * median:.1f} | {1e3 * min(values):.1f} | '
              f'{reference / median:.2f}x |')

    if not args.no_memory:
        mem = lattice_memory(args.device)
        if mem is not None:
            print(f"\nLATTICE, one training step (kNN graphs built at "
                  f"construction + rebuilt learned graph + backward) at "
                  f"{mem['num_items']} items, widths {mem['widths']}: peak "
                  f"RSS {mem['peak_rss_mb']:.0f} MB, "
                  f"{mem['peak_delta_mb']:.0f} MB above the "
                  f"{mem['baseline_rss_mb']:.0f} MB process with inputs "
                  f"({mem['feature_mb']:.0f} MB of features); "
                  f"construction {mem['construct_s']:.1f} s, step "
                  f"{mem['step_s']:.1f} s")
            if 'cuda_peak_delta_mb' in mem:
                print(f"  CUDA peak allocated above inputs: "
                      f"{mem['cuda_peak_delta_mb']:.0f} MB")
    return times


if __name__ == '__main__':
    main()
