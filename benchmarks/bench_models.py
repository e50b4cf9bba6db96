r"""Forward + backward time of the pmm_geo models against PyG's stock
:class:`torch_geometric.nn.models.LightGCN`, on the Amazon Baby graph.

One timed step: full graph propagation, the scores of a batch of BPR
triples, the model's loss and :obj:`backward()` (no optimizer). Models run
interleaved in one process so that machine noise hits them alike; the report
gives each median and its ratio to PyG's default path (:class:`LGConv` on a
plain :obj:`edge_index`, :obj:`normalize=True`). Then the peak memory of one
LATTICE training step at the Electronics width, in a fresh process
(:obj:`bench_lattice_memory.py`).

    python benchmarks/bench_models.py [--repeats 5] [--no-memory] [--only W]
"""
import argparse
import os.path as osp
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.nn.models import LightGCN
from torch_geometric.utils import to_torch_csr_tensor

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import _common as C  # noqa: E402

from pmm_geo.data import EDGE_TYPE, ELECTRONICS, BipartiteAdjacency  # noqa
from pmm_geo.data.readers import read_promptmm  # noqa: E402
from pmm_geo.nn import (LATTICE, BPRLoss, LightGCNStudent,  # noqa: E402
                        MultimodalTeacher)

ROOT = Path(__file__).resolve().parents[1]
BABY = ROOT.parent / 'shared' / 'data' / 'amazon_baby_5core'
BABY_WIDTHS = {'image': 4096, 'text': 384}
REFERENCE = 'PyG LightGCN (LGConv, edge_index, normalize=True)'


def build_steps(data, features, batch, device, dim: int, layers: int,
                only: Optional[List[str]] = None
                ) -> Dict[str, Callable[[], torch.Tensor]]:
    num_users, num_items = data['user'].num_nodes, data['item'].num_nodes
    num_nodes = num_users + num_items
    edge_index = data[EDGE_TYPE].edge_index
    adj = BipartiteAdjacency(edge_index, num_users, num_items).to(device)
    users, pos, neg = (t.to(device) for t in batch)
    label = torch.cat([torch.stack([users, pos]),
                       torch.stack([users, neg])], dim=1)
    bpr = BPRLoss(lambda_reg=1e-4)
    features = {m: x.to(device) for m, x in features.items()}

    # PyG's LightGCN on the homogeneous graph: users 0..U-1, items U..U+I-1.
    homo = torch.stack([edge_index[0], edge_index[1] + num_users])
    homo = torch.cat([homo, homo.flip(0)], dim=1).to(device)
    homo_label = label + torch.tensor([[0], [num_users]], device=device)
    node_id = torch.cat([users, pos + num_users, neg + num_users])
    pyg = LightGCN(num_nodes, dim, num_layers=layers).to(device)
    # The best stock-PyG alternative: a pre-normalized sparse adj_t.
    pyg_csr = LightGCN(num_nodes, dim, num_layers=layers,
                       normalize=False).to(device)
    pyg_csr.embedding.weight.data.copy_(pyg.embedding.weight.data)
    norm_index, norm_weight = gcn_norm(homo, None, num_nodes,
                                       add_self_loops=False)
    adj_t = to_torch_csr_tensor(norm_index.flip(0), norm_weight,
                                size=(num_nodes, ) * 2)

    def pyg_step(model, graph):
        def step():
            out = model.get_embedding(graph)
            scores = (out[homo_label[0]] * out[homo_label[1]]).sum(-1)
            return model.recommendation_loss(*scores.chunk(2),
                                             node_id=node_id)
        return step

    def wanted(name: str) -> bool:  # The reference row is always timed.
        return name == REFERENCE or only is None or any(
            w.lower() in name.lower() for w in only)

    student = LightGCNStudent(num_users, num_items, dim,
                              num_layers=layers).to(device)
    steps = {
        REFERENCE: pyg_step(pyg, homo),
        'PyG LightGCN (normalize=False, cached CSR adj_t)':
        pyg_step(pyg_csr, adj_t),
        'LightGCNStudent (pmm_geo, edge_index_fused)':
        lambda: student.recommendation_loss(
            *student(adj, label).chunk(2), (users, torch.cat([pos, neg]))),
    }
    if wanted('MultimodalTeacher (stage 1)'):
        teacher = MultimodalTeacher(
            num_users, num_items, {m: x.size(1) for m, x in features.items()},
            embedding_dim=dim, num_layers=layers).to(device)
        teacher.init_prompt(adj, features)
        steps['MultimodalTeacher (stage 1)'] = lambda: teacher.loss(
            teacher(adj, features), users, pos, neg)
    if wanted('LATTICE (item graph rebuilt)') or wanted(
            'LATTICE (cached item graph)'):
        lattice = LATTICE(num_users, num_items, features,
                          embedding_dim=dim).to(device)

        def lattice_step(build: bool):
            def step():
                user, item = lattice(adj, features, build_item_graph=build)
                return bpr(*(user[label[0]] * item[label[1]]).sum(-1).chunk(2))
            return step

        steps['LATTICE (item graph rebuilt)'] = lattice_step(True)
        steps['LATTICE (cached item graph)'] = lattice_step(False)
    return {name: step for name, step in steps.items() if wanted(name)}


def time_steps(steps: Dict[str, Callable], repeats: int, warmup: int,
               device: torch.device) -> Dict[str, List[float]]:
    times = {name: [] for name in steps}
    sync = torch.cuda.synchronize if device.type == 'cuda' else lambda: None
    for round_ in range(warmup + repeats):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step().backward()
            sync()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def lattice_memory(device: str) -> None:
    script = osp.join(osp.dirname(osp.abspath(__file__)),
                      'bench_lattice_memory.py')
    try:
        mem = C.child_json(script, [
            '--device', device, '--threads', str(torch.get_num_threads()),
            '--interactions', str(ELECTRONICS['num_interactions']),
            '--batch-size', '2048', '--json', '-'])
    except Exception as error:  # noqa: BLE001 (a note, not a failure)
        print(f'note: LATTICE memory run failed: {error}')
        return
    print(f"\nLATTICE, one training step (kNN graphs built at construction "
          f"+ rebuilt learned graph + backward) at {mem['items']} items, "
          f"widths {mem['dims']} ({mem['device']}): "
          f"{mem['peak_over_baseline_mb']:.0f} MB above the "
          f"{mem['baseline_mb']:.0f} MB process with inputs; construction "
          f"{mem['phases'][0]['seconds']:.1f} s, step "
          f"{mem['phases'][1]['seconds']:.1f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', type=Path, default=BABY)
    for flag, default in (('--repeats', 7), ('--warmup', 2), ('--dim', 64),
                          ('--batch-size', 2048), ('--layers', 3)):
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--only', nargs='+', default=None, metavar='WORD',
                        help='time only models whose name contains a WORD '
                        '(the PyG default path is always kept)')
    parser.add_argument('--no-memory', action='store_true')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if not args.data.exists():
        sys.exit(f'The Baby graph is not at {args.data} (pass --data DIR)')
    data = read_promptmm(str(args.data))
    num_users, num_items = data['user'].num_nodes, data['item'].num_nodes
    edge_index = data[EDGE_TYPE].edge_index
    gen = torch.Generator().manual_seed(0)
    # Random features of the real widths: timing only, no accuracy.
    features = {m: torch.rand(num_items, w, generator=gen)
                for m, w in BABY_WIDTHS.items()}
    pick = torch.randint(edge_index.size(1), (args.batch_size, ),
                         generator=gen)
    batch = (*edge_index[:, pick], torch.randint(
        num_items, (args.batch_size, ), generator=gen))
    print(f'graph: {args.data.name}: {num_users} users, {num_items} items, '
          f'{edge_index.size(1)} train edges; features '
          f'{ {m: tuple(x.shape) for m, x in features.items()} } (random)')
    info = C.machine()
    print(f"machine: {info['cpu']}, {info['cpu_count']} cores, torch "
          f"{info['torch']} ({info['torch_threads']} threads), "
          f"torch_geometric {info['torch_geometric']}, Python "
          f"{info['python']}, device {device}")
    print(f'step = full propagation + BPR on {args.batch_size} triples + '
          f'backward; width {args.dim}, {args.layers} layers; '
          f'{args.repeats} interleaved repeats after {args.warmup} warm-ups')

    steps = build_steps(data, features, batch, device, args.dim, args.layers,
                        args.only)
    times = time_steps(steps, args.repeats, args.warmup, device)
    reference = statistics.median(times[REFERENCE])
    print('\n' + '\n'.join(C.md_table(
        ['model', 'median ms', 'min ms', 'speed-up vs PyG default'],
        [[name, f'{1e3 * statistics.median(v):.1f}', f'{1e3 * min(v):.1f}',
          f'{reference / statistics.median(v):.2f}x']
         for name, v in times.items()], ['---', '---:', '---:', '---:'])))
    if not args.no_memory:
        lattice_memory(args.device)
    return times


if __name__ == '__main__':
    main()
