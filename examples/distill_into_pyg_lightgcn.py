r"""Distil the pmm_geo multimodal teacher into PyG's stock LightGCN.

The student here is :class:`torch_geometric.nn.models.LightGCN` itself, on
the homogeneous graph PyG's LightGCN expects (users :obj:`0..U-1`, items
:obj:`U..U+I-1`): no pmm_geo model class on the student side. pmm_geo
provides the teacher, the negative sampler, the student objective
(:class:`pmm_geo.nn.PromptMMObjective`, the very module the engine's stage 2
trains with), the cached normalized adjacency (handed to LightGCN as a pre-normalized sparse
:obj:`adj_t` with :obj:`normalize=False`, which is also 5-10x faster than
LightGCN's default :obj:`edge_index` path on CPU) and the evaluation.

1. Stage 1: train :class:`pmm_geo.nn.MultimodalTeacher` with its BPR loss.
2. Freeze it and compute its fused and per-modality embeddings once (the
   soft prompt stays fixed here; :mod:`pmm_geo.train` also tunes it in
   stage 2).
3. Train the PyG LightGCN on the objective
   :math:`\mathcal{L}_{BPR} + \lambda_{pair} \mathcal{L}_{pair} +
   \lambda_{list} \sum_m \mathcal{L}_{list}^m + \lambda_{emb} \sum_m
   \mathcal{L}_{emb}^m` (:func:`batch_loss`: wiring only).

Run ``python examples/distill_into_pyg_lightgcn.py`` (synthetic planted
data) or ``python examples/distill_into_pyg_lightgcn.py --data DIR`` for a
dataset in the LATTICE / PromptMM format (e.g. ``../shared/data/scientific``).
"""
import argparse
import time
from typing import Dict, Optional

import torch
from torch import Tensor
from torch_geometric.nn.models import LightGCN
from torch_geometric.utils import to_torch_csr_tensor

import pmm_geo
from pmm_geo.data import (EDGE_TYPE, NegativeSampler, get_adjacency,
                          modalities)
from pmm_geo.data.synthetic import synthetic
from pmm_geo.nn import MultimodalTeacher, PromptMMObjective


def homogeneous_adj_t(data) -> Tensor:
    r"""pmm_geo's cached :math:`\mathbf{D}_u^{-1/2} \mathbf{R}
    \mathbf{D}_i^{-1/2}` as the symmetric :math:`(U+I) \times (U+I)` sparse
    matrix PyG's :class:`LightGCN` propagates over (with
    :obj:`normalize=False`, so it is used as is)."""
    adj = get_adjacency(data)
    user, item = adj.edge_index
    item = item + adj.num_users
    row = torch.cat([user, item])
    col = torch.cat([item, user])
    weight = torch.cat([adj.edge_weight, adj.edge_weight])
    num_nodes = adj.num_users + adj.num_items
    # Symmetric, so adj_t == adj.
    return to_torch_csr_tensor(torch.stack([row, col]), weight,
                               size=(num_nodes, num_nodes))


def train_teacher(data, features, sampler, dim, layers, epochs, batch_size,
                  lr, generator, log) -> MultimodalTeacher:
    teacher = MultimodalTeacher(
        data['user'].num_nodes, data['item'].num_nodes,
        {m: x.size(1) for m, x in features.items()}, embedding_dim=dim,
        num_layers=layers)
    teacher.init_prompt(data, features)
    optimizer = torch.optim.Adam(teacher.parameters(), lr=lr)
    for epoch in range(epochs):
        teacher.train()
        total = 0.
        for users, pos, neg in sampler.epoch_batches(batch_size, generator):
            loss = teacher.loss(teacher(data, features), users, pos, neg)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * users.numel()
        log(f'teacher epoch {epoch + 1:3d}  loss '
            f'{total / sampler.num_edges:.4f}')
    teacher.eval()
    return teacher


def build_objective(targets, student_dim: int,
                    weights: Dict[str, float]) -> PromptMMObjective:
    r"""The PromptMM student objective (BPR + pairwise + listwise +
    embedding KD, with its train-only heads d_s -> d) for these targets."""
    return PromptMMObjective(
        list(targets.modal_item), student_dim, targets.user.size(1),
        pair_weight=weights['pair'], list_weight=weights['list'],
        emb_weight=weights['emb'], lambda_reg=weights['reg'],
        pair_tau=weights['tau'], list_tau=weights['tau'],
        one_sided=bool(weights.get('one_sided', True)))


def batch_loss(objective: PromptMMObjective, student: LightGCN, adj_t,
               targets, users, pos, neg, lists):
    r"""The objective of one batch for PyG's LightGCN: its homogeneous
    embedding split into users :obj:`0..U-1` and items :obj:`U..U+I-1`."""
    num_users = targets.user.size(0)
    emb = student.get_embedding(adj_t)
    table = student.embedding.weight
    return objective(emb[:num_users], emb[num_users:], targets, users, pos,
                     neg, lists, input_emb=(table[:num_users],
                                            table[num_users:]))


def distil(data, targets, sampler, dim, layers, epochs, batch_size, lr,
           num_negatives, weights, generator, log):
    num_users, num_items = data['user'].num_nodes, data['item'].num_nodes
    adj_t = homogeneous_adj_t(data)

    # The student: PyG's LightGCN, untouched.
    student = LightGCN(num_users + num_items, dim, num_layers=layers,
                       normalize=False)
    objective = build_objective(targets, dim, weights)
    optimizer = torch.optim.Adam(
        list(student.parameters()) + list(objective.parameters()), lr=lr)

    history = []
    for epoch in range(epochs):
        total = 0.
        for users, pos, neg in sampler.epoch_batches(batch_size, generator):
            lists = sampler.candidate_lists(users, pos, num_negatives,
                                            generator)
            loss, _ = batch_loss(objective, student, adj_t, targets, users,
                                 pos, neg, lists)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * users.numel()
        history.append(total / sampler.num_edges)
        log(f'student epoch {epoch + 1:3d}  loss {history[-1]:.4f}')
    return student, adj_t, history


def main(data=None, teacher_epochs: int = 20, student_epochs: int = 30,
         teacher_dim: int = 64, student_dim: int = 32, layers: int = 2,
         batch_size: int = 2048, num_negatives: int = 10, lr: float = 1e-2,
         weights: Optional[Dict[str, float]] = None, seed: int = 0,
         verbose: bool = True) -> Dict[str, object]:
    r"""Runs the three steps and returns the metrics.

    Args:
        data (HeteroData, optional): pmm_geo data with item features and
            val/test splits. (default: a small planted synthetic dataset)
        teacher_epochs (int): Stage-1 epochs. (default: :obj:`20`)
        student_epochs (int): Distillation epochs. (default: :obj:`30`)
        teacher_dim (int): Teacher width :math:`d`. (default: :obj:`64`)
        student_dim (int): Student width :math:`d_s`. (default: :obj:`32`)
        layers (int): Propagation layers of both. (default: :obj:`2`)
        batch_size (int): BPR triples per step. (default: :obj:`2048`)
        num_negatives (int): Negatives per listwise list. (default: :obj:`10`)
        lr (float): Adam learning rate of both. (default: :obj:`1e-2`)
        weights (Dict[str, float], optional): Loss weights :obj:`'pair'`,
            :obj:`'list'`, :obj:`'emb'`, the BPR :obj:`'reg'`, the KD
            temperature :obj:`'tau'` and :obj:`'one_sided'` (the engine's
            default :obj:`True`: the ranking KD never caps the student at
            its teacher; :obj:`False` is the paper's two-sided loss).
        seed (int): Random seed. (default: :obj:`0`)
        verbose (bool): Print progress. (default: :obj:`True`)

    Returns:
        A dict with :obj:`'teacher'`, :obj:`'student'` and :obj:`'random'`
        validation metrics (:func:`pmm_geo.evaluate`), the student's test
        metrics :obj:`'student_test'`, its per-epoch :obj:`'loss'`, the
        trained PyG :obj:`'model'` and :obj:`'seconds'`.
    """
    log = print if verbose else (lambda *args: None)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    if data is None:
        data = synthetic(num_users=600, num_items=400,
                         num_interactions=12000, seed=seed)
    weights = {'pair': 1., 'list': 1., 'emb': 1., 'reg': 1e-4, 'tau': 1.,
               **(weights or {})}
    features = {m: data['item'][m] for m in modalities(data)}
    num_users, num_items = data['user'].num_nodes, data['item'].num_nodes
    log(f'{num_users} users, {num_items} items, '
        f'{data[EDGE_TYPE].edge_index.size(1)} train edges, modalities '
        f'{ {m: x.size(1) for m, x in features.items()} }')
    sampler = NegativeSampler.from_data(data)
    start = time.perf_counter()

    teacher = train_teacher(data, features, sampler, teacher_dim, layers,
                            teacher_epochs, batch_size, lr, generator, log)
    with torch.no_grad():
        targets = teacher(data, features)
    metrics: Dict[str, object] = {
        'teacher': pmm_geo.evaluate(targets.user, targets.item, data, 'val')
    }

    student, adj_t, history = distil(data, targets, sampler, student_dim,
                                     layers, student_epochs, batch_size, lr,
                                     num_negatives, weights, generator, log)
    with torch.no_grad():
        emb = student.get_embedding(adj_t)
    user_emb, item_emb = emb[:num_users], emb[num_users:]
    metrics['student'] = pmm_geo.evaluate(user_emb, item_emb, data, 'val')
    metrics['student_test'] = pmm_geo.evaluate(user_emb, item_emb, data,
                                               'test')
    metrics['random'] = pmm_geo.evaluate(
        torch.randn(num_users, student_dim, generator=generator),
        torch.randn(num_items, student_dim, generator=generator), data,
        'val')
    metrics['loss'] = history
    metrics['model'] = student
    metrics['seconds'] = time.perf_counter() - start
    for name in ('teacher', 'student', 'random'):
        log(f'{name:8s} val recall@20 {metrics[name]["recall@20"]:.4f}  '
            f'ndcg@20 {metrics[name]["ndcg@20"]:.4f}')
    log(f'student  test recall@20 '
        f'{metrics["student_test"]["recall@20"]:.4f}')
    return metrics


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data', default=None,
                        help='dataset folder in the LATTICE/PromptMM format')
    parser.add_argument('--teacher-epochs', type=int, default=20)
    parser.add_argument('--student-epochs', type=int, default=30)
    parser.add_argument('--student-dim', type=int, default=32)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads (default: the cores this '
                        'process may use)')
    args = parser.parse_args()
    from pmm_geo.train import set_threads
    set_threads(args.threads)
    dataset = None
    if args.data is not None:
        from pmm_geo.data.readers import read_promptmm
        dataset = read_promptmm(args.data)
    main(dataset, teacher_epochs=args.teacher_epochs,
         student_epochs=args.student_epochs, student_dim=args.student_dim,
         seed=args.seed)
    return 0


if __name__ == '__main__':
    import sys

    from pmm_geo.cli import run_guarded
    sys.exit(run_guarded(cli, 'distill_into_pyg_lightgcn.py'))
