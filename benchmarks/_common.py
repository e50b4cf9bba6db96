r"""Helpers shared by :obj:`benchmarks/compare.py` and
:obj:`benchmarks/scale.py`: peak memory of the current process, the one
chunked top-k scorer every model is ranked with, serving-time footprints,
rebuilding a served model from its checkpoint, and summary statistics.

Not a public API of pmm_geo: the benchmark scripts import it by path.
"""
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
                    Tuple)

import torch
from torch import Tensor

MB = 1024.0**2

#: The metrics of every benchmark row, in table order.
QUALITY = ('recall@20', 'ndcg@20', 'precision@20')


# ----------------------------------------------------------------------
# Memory

def _status_kb(field: str) -> Optional[int]:
    try:
        with open('/proc/self/status', encoding='ascii') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float:
    r"""Current resident set size of this process, in MiB."""
    kb = _status_kb('VmRSS')
    return float('nan') if kb is None else kb / 1024.0


def peak_rss_mb() -> float:
    r"""Peak resident set size of this process in MiB: Linux
    :obj:`VmHWM` (since the last :func:`reset_peak_rss`), else
    :obj:`ru_maxrss` (since the process started)."""
    kb = _status_kb('VmHWM')
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == 'darwin':  # bytes there, KiB on Linux
            kb //= 1024
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


# ----------------------------------------------------------------------
# Ranking: the one scorer every model's inference is timed with

def rank_all_users(user_emb: Tensor, item_emb: Tensor,
                   train_edge_index: Tensor, k: int = 20) -> Tensor:
    r"""Top-:obj:`k` unseen items of *every* user, :obj:`[U, k]`, with
    :func:`pmm_geo.ranking.recommend_items` (chunks of at most 64 MiB of
    scores, train items masked, one :func:`torch.topk` per chunk): the same
    code ranks every model, so rank times differ only by embedding width
    and machine noise."""
    from pmm_geo.ranking import recommend_items
    return recommend_items(user_emb, item_emb, k, exclude=train_edge_index)


# ----------------------------------------------------------------------
# Serving-time models

def count_elements(tensors: Iterable[Tensor]) -> int:
    return sum(int(t.numel()) for t in tensors)


def count_bytes(tensors: Iterable[Tensor]) -> int:
    return sum(int(t.numel()) * t.element_size() for t in tensors)


def serving_tensors(model: torch.nn.Module,
                    features: Optional[Mapping[str, Tensor]] = None
                    ) -> List[Tensor]:
    r"""Every tensor a model needs to compute its embeddings at serving time:
    its parameters and persistent buffers (:obj:`state_dict`: hard tokens,
    frozen kNN graphs, ...) plus the raw item feature tables it reads (the
    teacher and LATTICE). The student and LightGCN need their embedding
    tables only. The train interactions (needed by every graph model, and
    to exclude seen items) are not counted."""
    tensors = list(model.state_dict().values())
    if features is not None:
        tensors += list(features.values())
    return tensors


def build_served_model(name: str, ckpt: Mapping[str, Any], num_users: int,
                       num_items: int, features: Mapping[str, Tensor]
                       ) -> torch.nn.Module:
    r"""Rebuilds the model :obj:`name` (:obj:`teacher`, :obj:`student`,
    :obj:`lightgcn` or :obj:`lattice`) of a run from its checkpoint
    (:obj:`<run>/<name>.pt` as the engine writes it), in eval mode.

    The teacher gets its stage-1 weights and prompt (the state the teacher
    row of the table was selected and tested with). LATTICE's constructor
    recomputes its frozen kNN graphs from the raw features; the saved graphs
    then overwrite them (a server would only load them)."""
    from pmm_geo.nn import LATTICE, LightGCNStudent, MultimodalTeacher
    from pmm_geo.train import TrainConfig

    cfg = TrainConfig.from_dict(ckpt['config'], source=f'{name}.pt')
    if name in ('student', 'lightgcn'):
        model = LightGCNStudent(**ckpt['init'])
    elif name == 'teacher':
        model = MultimodalTeacher(
            num_users, num_items, {m: x.size(1) for m, x in features.items()},
            embedding_dim=cfg.embedding_dim, num_layers=cfg.num_layers,
            dropout=cfg.teacher_dropout, beta=cfg.teacher_beta,
            gamma=cfg.teacher_gamma, fusion_weight=cfg.teacher_lambda,
            modality_weight=cfg.teacher_modality_weight,
            lambda_reg=cfg.reg_weight, layout=cfg.layout)
    elif name == 'lattice':
        model = LATTICE(num_users, num_items, dict(features),
                        embedding_dim=cfg.embedding_dim,
                        num_layers=cfg.lattice_layers,
                        knn_k=cfg.lattice_knn_k,
                        lambda_coeff=cfg.lattice_lambda,
                        item_graph_layers=cfg.lattice_item_layers,
                        layout=cfg.layout)
    else:
        raise ValueError(f"unknown model '{name}'")
    model.load_state_dict(ckpt['state_dict'])
    return model.eval()


def needs_features(name: str) -> bool:
    return name in ('teacher', 'lattice')


@torch.no_grad()
def embed(name: str, model: torch.nn.Module, graph,
          features: Mapping[str, Tensor]) -> Tuple[Tensor, Tensor]:
    r"""Every forward computation the served model needs for its final
    embeddings (teacher: projections + prompt + propagation; LATTICE:
    projections, learned item graphs, propagation; student / LightGCN:
    propagation)."""
    if needs_features(name):
        return model.get_embedding(graph, dict(features))
    return model.get_embedding(graph)


def prepare_graph(train_edge_index: Tensor, num_users: int, num_items: int,
                  layout: str = 'edge_index_fused'):
    r"""The normalized user-item adjacency with both propagation views of
    :obj:`layout` built: graph preprocessing that every graph model shares
    (timed apart from the models' forward computations)."""
    from pmm_geo.data import BipartiteAdjacency
    graph = BipartiteAdjacency(train_edge_index, num_users, num_items)
    graph.item_to_user(layout)
    graph.user_to_item(layout)
    return graph


def time_call(fn, *args, **kwargs) -> Tuple[float, Any]:
    tic = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - tic, out


# ----------------------------------------------------------------------
# Workers: each benchmark measurement runs in its own subprocess (its own
# peak memory, its own thread count) or, for tests, in this process.

Spec = Dict[str, Any]


def run_in_process(spec: Spec, run_spec: Callable[[Spec], None]) -> None:
    r"""Runs a worker in this process with the spec's thread count (also
    :obj:`--in-process` for tests and debugging: its peak memory is then
    this whole process's)."""
    threads = torch.get_num_threads()
    if spec.get('threads'):
        torch.set_num_threads(int(spec['threads']))
    try:
        run_spec(spec)
    finally:
        torch.set_num_threads(threads)


def worker_main(argv: List[str], run_spec: Callable[[Spec], None]) -> int:
    r"""The :obj:`--worker SPEC_JSON` entry point of a benchmark script."""
    import warnings
    warnings.filterwarnings('ignore', message='Sparse CSR tensor support')
    run_in_process(json.loads(argv[0]), run_spec)
    return 0


def spawn_worker(script: str, spec: Spec, log_path: str) -> Optional[str]:
    r"""Runs :obj:`script --worker SPEC_JSON` with its output in
    :obj:`log_path`; returns :obj:`None` on success, else an error message
    with the tail of the log."""
    cmd = [sys.executable, os.path.abspath(script), '--worker',
           json.dumps(spec)]
    with open(log_path, 'w', encoding='utf-8') as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode == 0:
        return None
    with open(log_path, encoding='utf-8', errors='replace') as f:
        tail = ''.join(f.readlines()[-15:])
    what = ' '.join(str(spec[k]) for k in ('kind', 'run', 'model')
                    if k in spec)
    return (f'worker {what} failed (exit {proc.returncode}); log '
            f'{log_path}:\n{tail}')


# ----------------------------------------------------------------------
# Statistics and reports

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
    if math.isnan(mean):
        return 'n/a'
    if digits == 0:
        return f'{mean:,.0f} ± {std:,.0f}'
    return f'{mean:.{digits}f} ± {std:.{digits}f}'


def machine() -> Dict[str, Any]:
    r"""A short description of the machine and the software."""
    import torch_geometric
    info = {'platform': platform.platform(),
            'python': platform.python_version(),
            'torch': torch.__version__, 'torch_geometric':
            torch_geometric.__version__, 'cpu_count': os.cpu_count(),
            'torch_threads': torch.get_num_threads(), 'cuda':
            torch.cuda.is_available()}
    try:
        with open('/proc/cpuinfo', encoding='ascii', errors='replace') as f:
            for line in f:
                if line.startswith('model name'):
                    info['cpu'] = line.split(':', 1)[1].strip()
                    break
        with open('/proc/meminfo', encoding='ascii') as f:
            info['mem_total_gb'] = round(int(f.readline().split()[1]) /
                                         1024**2, 1)
    except OSError:
        pass
    return info


def write_json(path: str, obj: Any) -> None:
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(obj, f, indent=2)
        f.write('\n')
    os.replace(tmp, path)


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False
