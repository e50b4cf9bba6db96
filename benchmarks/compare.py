r"""PromptMM against LATTICE and LightGCN, side by side, on one dataset.

Trains and evaluates, for each seed, ``lightgcn``, ``lattice`` and
``promptmm`` (its teacher and its distilled student) with the pmm_geo
engine: the same split, the same evaluator (:func:`pmm_geo.evaluate`, full
ranking), the same embedding width, epoch budget, patience and seeds (the
defaults of :class:`pmm_geo.train.TrainConfig`, model selection on the
validation split only, test evaluated once at the selected epoch). Then it
times inference from the saved checkpoints and writes

- ``OUT/compare.json``: ``{model: {metric: {"mean": x, "std": y}}}`` for
  model in ``lightgcn``, ``lattice``, ``teacher``, ``student``;
- ``OUT/compare.md``: the table, a Table-6-style block (student vs teacher)
  and how each number was measured;
- ``OUT/compare_runs.json``: every seed's raw numbers, the config and the
  machine;
- ``OUT/compare.png``: Recall@20 against inference time, one point per model
  and seed (when matplotlib is installed);
- ``OUT/runs/<model>_s<seed>/``: the engine's run directories.

Training runs ``--jobs`` (default 2) subprocesses at once with ``--threads``
(default 1) torch threads each: on the 2-core reference machine, one run
per core (on graphs this small, two threads per process mostly add
contention). Inference is timed with nothing else of ours running.

How each number is measured:

- quality: ``recall@20``, ``ndcg@20``, ``precision@20`` on the test split at
  the epoch with the best validation Recall@20 (``metrics.json``);
- ``train_seconds``: the engine's wall time of the stage (every epoch run,
  including its validation pass; the student's is stage 2 only: the
  teacher's training comes on top for the PromptMM pipeline);
  ``seconds_per_epoch`` = ``train_seconds / epochs_run``;
  ``epochs_to_best``: the selected epoch;
- ``peak_memory_mb``: each model+seed trains in its own subprocess, which
  reports its peak resident set size (Linux ``VmHWM``). PromptMM trains the
  teacher and then the student in one process: the peak mark is reset
  (``/proc/self/clear_refs``) when stage 1 ends, so the student's peak is
  that of stage 2 (which holds the frozen teacher and its features, as
  distillation needs). The peak includes the interpreter, torch and the
  dataset (``base_memory_mb`` is the RSS once the data is loaded);
- inference, in a fresh subprocess per seed, from each saved checkpoint to
  the top-20 unseen items of *every* user: ``embed_seconds`` is every
  forward computation the model needs (teacher: feature projections +
  prompt + propagation; LATTICE: projections, learned kNN item graphs,
  propagation; student / LightGCN: propagation only), ``rank_seconds`` is
  scoring + top-20 with one chunked
  scorer for all models, ``inference_seconds`` their sum; the median of
  ``--repeats`` runs, the models interleaved so machine noise hits them
  alike. Loading a checkpoint from disk is not timed; the normalized
  user-item adjacency, which every graph model shares, is built before
  (``graph_seconds``, reported apart);
- ``serving_params``: the elements of every tensor needed at serving time
  (teacher: feature tables + projectors + id embeddings + prompt with its
  hard tokens; LATTICE: feature tables + projections + id embeddings +
  frozen kNN graphs; student / LightGCN: their embedding tables);
  ``serving_mb`` their bytes; ``trainable_params`` the parameters;
- ``*_cpu_seconds``: the same spans in process CPU time (one thread per
  worker, so about the wall time on an idle core: robust to other load).

Usage::

    python benchmarks/compare.py ../shared/data/scientific
    python benchmarks/compare.py DATA_DIR --seeds 1 --epochs 20 --out runs/c
"""
import argparse
import json
import os
import os.path as osp
import shutil
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import _common as C  # noqa: E402

#: The rows of compare.json, in table order.
MODELS = ('lightgcn', 'lattice', 'teacher', 'student')
#: Engine runs: each trains the models listed.
RUNS = {'promptmm': ('teacher', 'student'), 'lattice': ('lattice', ),
        'lightgcn': ('lightgcn', )}
METRICS = C.QUALITY + (
    'train_seconds', 'seconds_per_epoch', 'embed_seconds', 'rank_seconds',
    'inference_seconds', 'serving_params', 'peak_memory_mb')
EXTRA = ('epochs_to_best', 'epochs_run', 'hit@20', 'recall@10',
         'recall@50', 'serving_mb', 'trainable_params', 'base_memory_mb',
         'val_recall@20', 'graph_seconds', 'train_cpu_seconds',
         'embed_cpu_seconds', 'rank_cpu_seconds', 'inference_cpu_seconds')
#: The inference spans timed per repeat (median reported, all kept).
TIMED = ('graph_seconds', 'embed_seconds', 'rank_seconds',
         'inference_seconds', 'embed_cpu_seconds', 'rank_cpu_seconds',
         'inference_cpu_seconds')
K = 20


# ----------------------------------------------------------------------
# Workers (each in its own subprocess)

def _read_data(data_dir: str):
    from pmm_geo.data import read_promptmm
    return read_promptmm(data_dir)


def train_worker(data_dir: str, run: str, seed: int, run_dir: str,
                 config_path: Optional[str], result_path: str) -> None:
    r"""Trains one engine run and writes its results and peak memory."""
    from pmm_geo.train import Trainer, TrainConfig

    data = _read_data(data_dir)
    config = (TrainConfig.from_json(config_path) if config_path else
              TrainConfig())
    config = config.replace(model=run, seed=seed)
    base = C.rss_mb()
    can_reset = C.reset_peak_rss()
    peaks: Dict[str, float] = {}
    cpu: Dict[str, float] = {}
    cpu_mark = [time.process_time()]

    def record_stage(name: str, result: Dict[str, Any]) -> None:
        # Per-stage peak memory and CPU time, then a fresh peak mark for
        # the next stage (the student's peak is stage 2's).
        peaks[name] = C.peak_rss_mb()
        C.reset_peak_rss()
        now = time.process_time()
        cpu[name] = now - cpu_mark[0]
        cpu_mark[0] = now

    trainer = Trainer(data, config, run_dir=run_dir, quiet=True,
                      on_stage_end=record_stage)
    tic = time.perf_counter()
    results = trainer.fit()
    wall = time.perf_counter() - tic
    out = {}
    for name, res in results.items():
        out[name] = {
            **{k: res['test'][k] for k in res['test']},
            'val_recall@20': res['val']['recall@20'],
            'epochs_run': res['epochs'],
            'epochs_to_best': res['best_epoch'],
            'train_seconds': res['train_seconds'],
            'seconds_per_epoch': res['train_seconds'] / max(res['epochs'],
                                                            1),
            'train_cpu_seconds': cpu.get(name, float('nan')),
            'trainable_params': res['params'],
            'peak_memory_mb': peaks.get(name, C.peak_rss_mb()),
            'base_memory_mb': base,
        }
    C.write_json(result_path, {'results': out, 'wall_seconds': wall,
                               'peak_reset': can_reset,
                               'threads': _threads()})


def infer_worker(data_dir: str, run_dirs: Dict[str, str], repeats: int,
                 result_path: str) -> None:
    r"""Times embed + rank for every saved model of one seed (interleaved,
    median of :obj:`repeats`) and checks the served embeddings against the
    checkpoint and the test metric."""
    from pmm_geo import evaluate
    from pmm_geo.data import modalities
    from pmm_geo.train import load_checkpoint

    data = _read_data(data_dir)
    features = {m: data['item'][m] for m in modalities(data)}
    num_users, num_items = data['user'].num_nodes, data['item'].num_nodes
    ckpts, models, out = {}, {}, {}
    for name, run_dir in run_dirs.items():
        ckpt = load_checkpoint(osp.join(run_dir, f'{name}.pt'),
                               what=f'{name} checkpoint')
        model = C.build_served_model(name, ckpt, num_users, num_items,
                                     features)
        ckpts[name], models[name] = ckpt, model
        tensors = C.serving_tensors(
            model, features if C.needs_features(name) else None)
        out[name] = {'serving_params': C.count_elements(tensors),
                     'serving_mb': C.count_bytes(tensors) / C.MB,
                     **{key: [] for key in TIMED}}

    for repeat in range(repeats):
        for name, model in models.items():
            ckpt = ckpts[name]

            graph_s, graph = C.time_call(
                C.prepare_graph, ckpt['train_edge_index'], num_users,
                num_items, model.layout)
            cpu0 = time.process_time()
            embed_s, (user_emb, item_emb) = C.time_call(
                C.embed, name, model, graph, features)
            cpu1 = time.process_time()
            rank_s, top = C.time_call(C.rank_all_users, user_emb, item_emb,
                                      ckpt['train_edge_index'], K)
            cpu2 = time.process_time()
            row = out[name]
            row['graph_seconds'].append(graph_s)
            row['embed_seconds'].append(embed_s)
            row['rank_seconds'].append(rank_s)
            row['inference_seconds'].append(embed_s + rank_s)
            row['embed_cpu_seconds'].append(cpu1 - cpu0)
            row['rank_cpu_seconds'].append(cpu2 - cpu1)
            row['inference_cpu_seconds'].append(cpu2 - cpu0)
            if repeat == 0:
                diff = max(float((user_emb - ckpt['user_emb']).abs().max()),
                           float((item_emb - ckpt['item_emb']).abs().max()))
                row['embedding_max_abs_diff'] = diff
                row['served_test_recall@20'] = evaluate(
                    user_emb, item_emb, data, 'test', ks=(K, ))['recall@20']
                row['top_k_shape'] = list(top.shape)
            del user_emb, item_emb, top, graph
    for row in out.values():
        for key in TIMED:
            row[key + '_all'] = row[key]
            row[key] = statistics.median(row[key])
    C.write_json(result_path, {'results': out, 'threads': _threads()})


def _threads() -> int:
    import torch
    return torch.get_num_threads()


def _run_spec(spec: Dict[str, Any]) -> None:
    if spec['kind'] == 'train':
        train_worker(spec['data_dir'], spec['run'], spec['seed'],
                     spec['run_dir'], spec.get('config'),
                     spec['result'])
    else:
        infer_worker(spec['data_dir'], spec['run_dirs'], spec['repeats'],
                     spec['result'])


def _call_in_process(spec: Dict[str, Any], log_path: str) -> None:
    C.run_in_process(spec, _run_spec)


def _spawn(spec: Dict[str, Any], log_path: str) -> None:
    error = C.spawn_worker(__file__, spec, log_path)
    if error is not None:
        raise RuntimeError(error)


# ----------------------------------------------------------------------
# Orchestration

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Train and evaluate lightgcn, lattice and PromptMM '
        '(teacher + distilled student) on one PromptMM-format dataset with '
        'the same split, evaluator, width, epoch budget and seeds; write '
        'compare.md / compare.json.')
    parser.add_argument('data_dir', metavar='DATA_DIR')
    parser.add_argument('--seeds', type=int, default=3, metavar='N',
                        help='seeds 0..N-1 (default: 3)')
    parser.add_argument('--out', default=osp.join('runs', 'compare'),
                        metavar='DIR', help='output folder (default: '
                        'runs/compare)')
    parser.add_argument('--epochs', type=int, default=None, metavar='N',
                        help='maximum epochs per stage (default: '
                        'TrainConfig.epochs)')
    parser.add_argument('--patience', type=int, default=None, metavar='N',
                        help='early-stopping patience (default: '
                        'TrainConfig.patience)')
    parser.add_argument('--config', default=None, metavar='FILE',
                        help='TrainConfig JSON shared by every model '
                        '(--epochs / --patience override it)')
    parser.add_argument('--repeats', type=int, default=3, metavar='N',
                        help='inference timing repeats (median; default: 3)')
    parser.add_argument('--threads', type=int, default=1, metavar='N',
                        help='torch threads per worker (default: 1; on a '
                        'small graph more threads mostly add contention)')
    parser.add_argument('--jobs', type=int, default=2, metavar='N',
                        help='training subprocesses at once (default: 2, '
                        'one per core of the reference machine; inference '
                        'is always timed alone)')
    parser.add_argument('--in-process', action='store_true',
                        help='run the workers in this process (tests; peak '
                        'memory is then the whole process\'s)')
    parser.add_argument('--reuse', action='store_true',
                        help='reuse finished runs found in DIR')
    parser.add_argument('--no-plot', action='store_true')
    parser.add_argument('--quiet', action='store_true')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    r"""Runs the comparison; returns the content of :obj:`compare.json`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.seeds < 1:
        raise SystemExit(f'--seeds must be >= 1, got {args.seeds}')
    if not osp.isdir(args.data_dir):
        raise SystemExit(f'DATA_DIR not found: {args.data_dir}')
    from pmm_geo.train import TrainConfig

    print_lock = threading.Lock()  # training workers report from threads

    def say(*parts) -> None:
        if not args.quiet:
            with print_lock:
                print(*parts, flush=True)

    out = args.out
    os.makedirs(osp.join(out, 'runs'), exist_ok=True)
    config = (TrainConfig.from_json(args.config) if args.config else
              TrainConfig())
    changes = {k: getattr(args, k) for k in ('epochs', 'patience')
               if getattr(args, k) is not None}
    config = config.replace(**changes)
    config_path = osp.join(out, 'config.json')
    config.to_json(config_path)
    data_dir = osp.abspath(args.data_dir)

    runs: Dict[str, List[Dict[str, Any]]] = {m: [] for m in MODELS}
    meta: Dict[str, Any] = {'peak_reset': True, 'wall_seconds': {},
                            'jobs': args.jobs}
    tic_all = time.perf_counter()
    spawn = _call_in_process if args.in_process else _spawn

    # 1. Training: every (run, seed) in its own subprocess, --jobs at once,
    # the longest (PromptMM: two stages) first so the workers end together.
    tasks = []
    for run in RUNS:
        for seed in range(args.seeds):
            run_dir = osp.join(out, 'runs', f'{run}_s{seed}')
            result = run_dir + '.train.json'
            if args.reuse and osp.isfile(result):
                say(f'[seed {seed}] {run}: reusing {result}')
                continue
            if osp.isdir(run_dir):
                shutil.rmtree(run_dir)
            tasks.append(({'kind': 'train', 'data_dir': data_dir,
                           'run': run, 'seed': seed,
                           'run_dir': osp.abspath(run_dir),
                           'config': osp.abspath(config_path),
                           'result': osp.abspath(result),
                           'threads': args.threads}, run_dir + '.train.log'))

    def train(task):
        spec, log = task
        tic = time.perf_counter()
        say(f"[seed {spec['seed']}] training {spec['run']} ...")
        spawn(spec, log)
        say(f"[seed {spec['seed']}] {spec['run']} done in "
            f'{time.perf_counter() - tic:.0f}s')

    if args.jobs > 1 and not args.in_process:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(train, tasks))
    else:
        for task in tasks:
            train(task)

    # 2. Inference: one subprocess per seed, one at a time (nothing else
    # running), every model of the seed interleaved.
    for seed in range(args.seeds):
        run_dirs, seed_rows = {}, {}
        for run, names in RUNS.items():
            run_dir = osp.join(out, 'runs', f'{run}_s{seed}')
            with open(run_dir + '.train.json', encoding='utf-8') as f:
                trained = json.load(f)
            meta['peak_reset'] &= trained['peak_reset']
            meta['threads'] = trained['threads']
            meta['wall_seconds'][f'{run}_s{seed}'] = trained['wall_seconds']
            for name in names:
                run_dirs[name] = osp.abspath(run_dir)
                seed_rows[name] = dict(trained['results'][name])

        say(f'[seed {seed}] timing inference ...')
        result = osp.join(out, 'runs', f'infer_s{seed}.json')
        spawn({'kind': 'infer', 'data_dir': data_dir, 'run_dirs': run_dirs,
               'repeats': args.repeats, 'result': osp.abspath(result),
               'threads': args.threads},
              osp.join(out, 'runs', f'infer_s{seed}.log'))
        with open(result, encoding='utf-8') as f:
            inferred = json.load(f)['results']
        for name in MODELS:
            row = {'seed': seed, **seed_rows[name], **inferred[name]}
            runs[name].append(row)
            say(f'[seed {seed}] {name:8s} recall@20 {row["recall@20"]:.4f}'
                f'  ndcg@20 {row["ndcg@20"]:.4f}  epochs '
                f'{row["epochs_to_best"]}/{row["epochs_run"]}  train '
                f'{row["train_seconds"]:.0f}s  embed '
                f'{row["embed_seconds"]:.3f}s  rank '
                f'{row["rank_seconds"]:.3f}s  peak '
                f'{row["peak_memory_mb"]:.0f} MB')
    meta['total_seconds'] = time.perf_counter() - tic_all

    summary = summarize(runs)
    C.write_json(osp.join(out, 'compare.json'), summary)
    command = 'python benchmarks/compare.py ' + ' '.join(argv)
    C.write_json(osp.join(out, 'compare_runs.json'), {
        'command': command, 'data_dir': args.data_dir,
        'config': config.to_dict(), 'machine': C.machine(),
        'meta': meta, 'runs': runs})
    with open(osp.join(out, 'compare.md'), 'w', encoding='utf-8') as f:
        f.write(report(summary, runs, config, command, meta))
    if not args.no_plot:
        plot(runs, osp.join(out, 'compare.png'), say)
    say(f'wrote {osp.join(out, "compare.md")} and compare.json '
        f'({meta["total_seconds"] / 60:.1f} min)')
    return summary


def summarize(runs: Dict[str, List[Dict[str, Any]]]
              ) -> Dict[str, Dict[str, Dict[str, float]]]:
    return {name: {metric: C.mean_std([r[metric] for r in rows])
                   for metric in METRICS + EXTRA}
            for name, rows in runs.items()}


def report(summary, runs, config, command: str, meta) -> str:
    machine = C.machine()
    n = len(runs['student'])
    lines = [
        '# PromptMM vs LATTICE vs LightGCN', '',
        f'`{command}`  ', f'{n} seed(s) (0..{n - 1}); mean ± sample std over '
        f'seeds. Machine: {machine.get("cpu", "?")}, '
        f'{machine["cpu_count"]} CPU cores, torch threads '
        f'{meta.get("threads")} per worker, {meta.get("jobs", 1)} training '
        f'worker(s) at once, CUDA: {machine["cuda"]}; torch '
        f'{machine["torch"]}, PyG {machine["torch_geometric"]}. Total '
        f'{meta["total_seconds"] / 60:.1f} min.', '',
        f'Shared budget (TrainConfig): width {config.embedding_dim} (student '
        f'{config.student_dim}), at most {config.epochs} epochs per stage, '
        f'patience {config.patience} validation checks, batch '
        f'{config.batch_size}, lr {config.lr} (student {config.student_lr}); '
        'selection on validation Recall@20, test once at the selected '
        'epoch.', '',
        '| model | Recall@20 | NDCG@20 | Precision@20 | epochs to best | '
        'train s | s/epoch | embed s | rank s | inference s | serving '
        'params | peak MB |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for name in MODELS:
        s = summary[name]
        lines.append(
            f'| {name} | {C.fmt(s["recall@20"])} | {C.fmt(s["ndcg@20"])} | '
            f'{C.fmt(s["precision@20"])} | '
            f'{C.fmt(s["epochs_to_best"], 0)} | '
            f'{C.fmt(s["train_seconds"], 1)} | '
            f'{C.fmt(s["seconds_per_epoch"], 3)} | '
            f'{C.fmt(s["embed_seconds"], 3)} | '
            f'{C.fmt(s["rank_seconds"], 3)} | '
            f'{C.fmt(s["inference_seconds"], 3)} | '
            f'{s["serving_params"]["mean"]:,.0f} | '
            f'{C.fmt(s["peak_memory_mb"], 0)} |')
    total_cpu = sum(r['train_cpu_seconds'] + r['inference_cpu_seconds']
                    for rows in runs.values() for r in rows)
    lines += [
        '', '### CPU seconds (single-thread workers: about the wall time on '
        'an otherwise idle core)', '',
        'Wall times above depend on what else the machine runs; each worker '
        'uses one torch thread, so its process CPU time is close to what '
        'the same work takes on a dedicated core. Sum over all runs: '
        f'{total_cpu / 60:.1f} CPU-min, i.e. about '
        f'{total_cpu / 60 / max(meta.get("jobs", 1), 1):.1f} min of wall '
        f'time with {meta.get("jobs", 1)} worker(s) on an idle machine '
        '(plus process start-up and the scheduling tail).', '',
        '| model | train CPU s | embed CPU s | rank CPU s | inference CPU s '
        '| graph prep s (shared, not in inference) |',
        '|---|---|---|---|---|---|',
    ]
    for name in MODELS:
        s = summary[name]
        lines.append(f'| {name} | {C.fmt(s["train_cpu_seconds"], 1)} | '
                     f'{C.fmt(s["embed_cpu_seconds"], 4)} | '
                     f'{C.fmt(s["rank_cpu_seconds"], 4)} | '
                     f'{C.fmt(s["inference_cpu_seconds"], 4)} | '
                     f'{C.fmt(s["graph_seconds"], 4)} |')
    t, st, la = summary['teacher'], summary['student'], summary['lattice']
    ratio = st['serving_params']['mean'] / t['serving_params']['mean']

    def m(stat, digits=1):
        return f'{stat["mean"]:.{digits}f}'

    pipeline = [a['train_seconds'] + b['train_seconds']
                for a, b in zip(runs['teacher'], runs['student'])]
    lines += [
        '', '## Table 6 style: teacher vs student (serving-time needs only)',
        '',
        '| | teacher | student | student / teacher | LATTICE |',
        '|---|---|---|---|---|',
        f'| serving parameters + stored tensors | '
        f'{t["serving_params"]["mean"]:,.0f} | '
        f'{st["serving_params"]["mean"]:,.0f} | {ratio:.2%} | '
        f'{la["serving_params"]["mean"]:,.0f} |',
        f'| serving size (MB) | {m(t["serving_mb"], 2)} | '
        f'{m(st["serving_mb"], 2)} | '
        f'{st["serving_mb"]["mean"] / t["serving_mb"]["mean"]:.2%} | '
        f'{m(la["serving_mb"], 2)} |',
        f'| training time (s) | {m(t["train_seconds"])} | '
        f'{m(st["train_seconds"])} (stage 2; teacher + student '
        f'{statistics.fmean(pipeline):.1f}) | '
        f'{st["train_seconds"]["mean"] / t["train_seconds"]["mean"]:.2f}x | '
        f'{m(la["train_seconds"])} |',
        f'| inference: embed (s) | {m(t["embed_seconds"], 4)} | '
        f'{m(st["embed_seconds"], 4)} | '
        f'{_ratio(st["embed_seconds"], t["embed_seconds"])} | '
        f'{m(la["embed_seconds"], 4)} |',
        f'| inference: embed, CPU (s) | {m(t["embed_cpu_seconds"], 4)} | '
        f'{m(st["embed_cpu_seconds"], 4)} | '
        f'{_ratio(st["embed_cpu_seconds"], t["embed_cpu_seconds"])} | '
        f'{m(la["embed_cpu_seconds"], 4)} |',
        f'| inference: embed + rank, all users top-{K} (s) | '
        f'{m(t["inference_seconds"], 4)} | {m(st["inference_seconds"], 4)} |'
        f' {_ratio(st["inference_seconds"], t["inference_seconds"])} | '
        f'{m(la["inference_seconds"], 4)} |',
        f'| Recall@20 | {m(t["recall@20"], 4)} | {m(st["recall@20"], 4)} | '
        f'{_ratio(st["recall@20"], t["recall@20"])} | '
        f'{m(la["recall@20"], 4)} |',
        '',
        '## Per seed', '',
        '| model | seed | Recall@20 | NDCG@20 | val Recall@20 | epochs to '
        'best / run | train s | embed s | rank s | peak MB | served check |',
        '|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for name in MODELS:
        for r in runs[name]:
            check = (f'Δemb {r["embedding_max_abs_diff"]:.1e}, recall '
                     f'{r["served_test_recall@20"]:.4f}')
            lines.append(
                f'| {name} | {r["seed"]} | {r["recall@20"]:.4f} | '
                f'{r["ndcg@20"]:.4f} | {r["val_recall@20"]:.4f} | '
                f'{r["epochs_to_best"]} / {r["epochs_run"]} | '
                f'{r["train_seconds"]:.1f} | {r["embed_seconds"]:.4f} | '
                f'{r["rank_seconds"]:.4f} | {r["peak_memory_mb"]:.0f} | '
                f'{check} |')
    lines += [
        '', 'Measurement notes: train seconds include the per-epoch '
        'validation pass; peak MB is the peak RSS of the training '
        'subprocess (interpreter + torch + data included'
        + ('' if meta['peak_reset'] else '; the peak mark could NOT be '
           'reset between the teacher and student stages, so the student '
           'row shows the process peak') +
        '); inference times are medians over repeats, from the loaded '
        'checkpoint to the top-20 of every user; "served check" = largest '
        'difference between the recomputed embeddings and those saved at '
        'training time, and the test Recall@20 of the recomputed ones.', '']
    return '\n'.join(lines)


def _ratio(a, b) -> str:
    return f'{a["mean"] / b["mean"]:.3f}x' if b['mean'] else 'n/a'


def plot(runs, path: str, say) -> None:
    if not C.have_matplotlib():
        say('matplotlib is not installed: no plot (pip install matplotlib)')
        return
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    markers = {'lightgcn': 'o', 'lattice': 's', 'teacher': '^',
               'student': '*'}
    for name in MODELS:
        rows = runs[name]
        ax.scatter([r['inference_seconds'] for r in rows],
                   [r['recall@20'] for r in rows], label=name,
                   marker=markers[name], s=60 if name == 'student' else 35)
    ax.set_xscale('log')
    ax.set_xlabel(f'inference seconds (embed + top-{K} of every user)')
    ax.set_ylabel('test Recall@20')
    ax.set_title('Recall@20 vs inference time (one point per seed)')
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    say(f'wrote {path}')


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == '--worker':
        sys.exit(C.worker_main(sys.argv[2:], _run_spec))
    main()
