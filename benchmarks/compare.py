r"""PromptMM against LATTICE and LightGCN, side by side, on one dataset.

For each seed, trains every model of :mod:`pmm_geo.train.registry`
(``lightgcn``, ``lattice``, ``promptmm``: teacher and distilled student) with
the engine and the same split, evaluator, width, epoch budget, patience and
seeds (:class:`~pmm_geo.train.TrainConfig` defaults; selection on
validation, test once), in ``--jobs`` subprocesses; then times inference
from the checkpoints (:func:`pmm_geo.load_model`), alone. Writes
``OUT/compare.json`` (``{model: {metric: {"mean", "std"}}}``),
``compare.md`` (tables, a Table-6-style block, how each number was measured),
``compare_runs.json`` (every seed's numbers, config, machine),
``compare.png`` (Recall@20 against inference time) and ``OUT/runs/``.

- quality: test metrics at the epoch with the best validation Recall@20;
- ``train_seconds``: the stage's wall time, validation passes included (the
  student's: stage 2 only); ``seconds_per_epoch``; ``epochs_to_best``;
- ``peak_memory_mb``: peak RSS (Linux ``VmHWM``) of the training process,
  reset when a stage ends; interpreter, torch and data included
  (``base_memory_mb``: the RSS once the data is loaded);
- ``embed_seconds``: every forward computation the served model needs;
  ``rank_seconds``: scores + top-20 unseen items of every user with one
  chunked scorer; ``inference_seconds``: both (medians of ``--repeats``,
  models interleaved; the shared adjacency, built before: ``graph_seconds``);
- ``serving_params`` / ``serving_mb``: every tensor needed at serving time
  (teacher and LATTICE: the feature tables too);
- ``*_cpu_seconds``: the same in process CPU time (one thread per worker).

    python benchmarks/compare.py ../shared/data/scientific
    python benchmarks/compare.py DATA_DIR --seeds 1 --epochs 20 --out runs/c
"""
import argparse
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

K = 20


def runs_and_rows():
    r"""The engine runs, longest first (the workers end together), and the
    table rows: single-stage models first."""
    from pmm_geo.train.registry import MODELS
    specs = list(MODELS.values())
    runs = {s.name: s.outputs for s in sorted(specs,
                                              key=lambda s: -len(s.stages))}
    rows = tuple(out for s in sorted(specs, key=lambda s: len(s.stages))
                 for out in s.outputs)
    return runs, rows


# ----------------------------------------------------------------------
# Workers (each in its own subprocess)

def train_worker(spec: Dict[str, Any]) -> None:
    r"""Trains one engine run and writes its results and peak memory."""
    from pmm_geo.data import read_promptmm
    from pmm_geo.train import Trainer, TrainConfig

    data = read_promptmm(spec['data_dir'])
    config = TrainConfig.from_json(spec['config']).replace(
        model=spec['run'], seed=spec['seed'])
    base = C.rss_mb()
    can_reset = C.reset_peak_rss()
    peaks: Dict[str, float] = {}
    cpu: Dict[str, float] = {}
    cpu_mark = [time.process_time()]

    def record_stage(name: str, result: Dict[str, Any]) -> None:
        # Per-stage peak memory and CPU time, then a fresh peak mark.
        peaks[name] = C.peak_rss_mb()
        C.reset_peak_rss()
        cpu[name] = time.process_time() - cpu_mark[0]
        cpu_mark[0] += cpu[name]

    trainer = Trainer(data, config, run_dir=spec['run_dir'], quiet=True,
                      on_stage_end=record_stage)
    tic = time.perf_counter()
    results = trainer.fit()
    out = {name: {
        **res['test'], 'val_recall@20': res['val']['recall@20'],
        'epochs_run': res['epochs'], 'epochs_to_best': res['best_epoch'],
        'train_seconds': res['train_seconds'],
        'seconds_per_epoch': res['train_seconds'] / max(res['epochs'], 1),
        'train_cpu_seconds': cpu.get(name, float('nan')),
        'trainable_params': res['params'],
        'peak_memory_mb': peaks.get(name, C.peak_rss_mb()),
        'base_memory_mb': base} for name, res in results.items()}
    C.write(spec['result'], {
        'results': out, 'wall_seconds': time.perf_counter() - tic,
        'peak_reset': can_reset, 'threads': spec['threads']})


def infer_worker(spec: Dict[str, Any]) -> None:
    r"""Times embed + rank for every saved model of one seed (interleaved,
    median of :obj:`repeats`) and checks the served embeddings against the
    checkpoint and the test metric."""
    from pmm_geo import evaluate, load_model
    from pmm_geo.data import modalities, read_promptmm
    from pmm_geo.train import load_checkpoint

    data = read_promptmm(spec['data_dir'])
    features = {m: data['item'][m] for m in modalities(data)}
    shape = data['user'].num_nodes, data['item'].num_nodes
    ckpts = {name: load_checkpoint(osp.join(path, f'{name}.pt'))
             for name, path in spec['run_dirs'].items()}
    models = {name: load_model(path, name)
              for name, path in spec['run_dirs'].items()}
    samples: Dict[str, List[Dict[str, float]]] = {name: [] for name in models}
    out = {}
    for _ in range(spec['repeats']):
        for name, model in models.items():
            ckpt = ckpts[name]
            times, (user, item, top) = C.time_inference(
                name, model, ckpt['train_edge_index'], *shape, features, K)
            samples[name].append(times)
            if name not in out:
                out[name] = dict(zip(('serving_params', 'serving_mb'),
                                     C.footprint(name, model, features)))
                out[name]['embedding_max_abs_diff'] = max(
                    float((user - ckpt['user_emb']).abs().max()),
                    float((item - ckpt['item_emb']).abs().max()))
                out[name]['served_test_recall@20'] = evaluate(
                    user, item, data, 'test', ks=(K, ))['recall@20']
                out[name]['top_k_shape'] = list(top.shape)
            del user, item, top
    C.write(spec['result'], {'results': {
        name: {**row, **C.medians(samples[name])}
        for name, row in out.items()}})


def _run_spec(spec: Dict[str, Any]) -> None:
    (train_worker if spec['kind'] == 'train' else infer_worker)(spec)


# ----------------------------------------------------------------------
# Orchestration

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('data_dir', metavar='DATA_DIR')
    parser.add_argument('--seeds', type=int, default=3, metavar='N',
                        help='seeds 0..N-1 (default: 3)')
    parser.add_argument('--epochs', type=int, default=None, metavar='N',
                        help='maximum epochs per stage (default: '
                        'TrainConfig.epochs)')
    parser.add_argument('--patience', type=int, default=None, metavar='N',
                        help='early-stopping patience (default: '
                        'TrainConfig.patience)')
    parser.add_argument('--config', default=None, metavar='FILE',
                        help='TrainConfig JSON shared by every model '
                        '(--epochs / --patience override it)')
    parser.add_argument('--jobs', type=int, default=2, metavar='N',
                        help='training subprocesses at once (default: 2; '
                        'inference is always timed alone)')
    parser.add_argument('--reuse', action='store_true',
                        help='reuse finished runs found in DIR')
    parser.add_argument('--quiet', action='store_true')
    C.add_worker_args(parser, 'compare')
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

    out, runs_of = args.out, runs_and_rows()
    os.makedirs(osp.join(out, 'runs'), exist_ok=True)
    config = (TrainConfig.from_json(args.config) if args.config else
              TrainConfig()).replace(**{
                  k: getattr(args, k) for k in ('epochs', 'patience')
                  if getattr(args, k) is not None})
    config_path = osp.abspath(osp.join(out, 'config.json'))
    config.to_json(config_path)
    data_dir = osp.abspath(args.data_dir)
    runs: Dict[str, List[Dict[str, Any]]] = {m: [] for m in runs_of[1]}
    meta: Dict[str, Any] = {'peak_reset': True, 'wall_seconds': {},
                            'jobs': args.jobs, 'threads': args.threads}
    tic_all = time.perf_counter()

    def spawn(spec, log_path):
        error = C.run_worker(__file__, spec, log_path, args.in_process,
                             _run_spec)
        if error is not None:
            raise RuntimeError(error)

    def run_dir(run: str, seed: int) -> str:
        return osp.abspath(osp.join(out, 'runs', f'{run}_s{seed}'))

    # 1. Training: every (run, seed) in its own subprocess, --jobs at once.
    tasks = []
    for run in runs_of[0]:
        for seed in range(args.seeds):
            path = run_dir(run, seed)
            if args.reuse and osp.isfile(path + '.train.json'):
                say(f'[seed {seed}] {run}: reusing {path}.train.json')
                continue
            if osp.isdir(path):
                shutil.rmtree(path)
            tasks.append({'kind': 'train', 'data_dir': data_dir, 'run': run,
                          'seed': seed, 'run_dir': path,
                          'config': config_path, 'threads': args.threads,
                          'result': path + '.train.json'})

    def train(spec):
        tic = time.perf_counter()
        say(f"[seed {spec['seed']}] training {spec['run']} ...")
        spawn(spec, spec['run_dir'] + '.train.log')
        say(f"[seed {spec['seed']}] {spec['run']} done in "
            f'{time.perf_counter() - tic:.0f}s')

    if args.jobs > 1 and not args.in_process:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(train, tasks))
    else:
        list(map(train, tasks))

    # 2. Inference: one subprocess per seed, alone, models interleaved.
    for seed in range(args.seeds):
        run_dirs, seed_rows = {}, {}
        for run, names in runs_of[0].items():
            trained = C.read_json(run_dir(run, seed) + '.train.json')
            meta['peak_reset'] &= trained['peak_reset']
            meta['wall_seconds'][f'{run}_s{seed}'] = trained['wall_seconds']
            for name in names:
                run_dirs[name] = run_dir(run, seed)
                seed_rows[name] = dict(trained['results'][name])
        say(f'[seed {seed}] timing inference ...')
        result = osp.abspath(osp.join(out, 'runs', f'infer_s{seed}.json'))
        spawn({'kind': 'infer', 'data_dir': data_dir, 'run_dirs': run_dirs,
               'repeats': args.repeats, 'result': result,
               'threads': args.threads}, result[:-5] + '.log')
        inferred = C.read_json(result)['results']
        for name in runs:
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

    summary = {name: {key: C.mean_std([r[key] for r in rows])
                      for key, value in rows[0].items() if key != 'seed'
                      and isinstance(value, (int, float))}
               for name, rows in runs.items()}
    C.write(osp.join(out, 'compare.json'), summary)
    command = 'python benchmarks/compare.py ' + ' '.join(argv)
    C.write(osp.join(out, 'compare_runs.json'), {
        'command': command, 'data_dir': args.data_dir,
        'config': config.to_dict(), 'machine': C.machine(), 'meta': meta,
        'runs': runs})
    C.write(osp.join(out, 'compare.md'),
            report(summary, runs, config, command, meta))
    if not args.no_plot:
        plot(runs, osp.join(out, 'compare.png'), say)
    say(f'wrote {osp.join(out, "compare.md")} and compare.json '
        f'({meta["total_seconds"] / 60:.1f} min)')
    return summary


def report(summary, runs, config, command: str, meta) -> str:
    machine, fmt = C.machine(), C.fmt
    n = len(next(iter(runs.values())))
    lines = [
        '# PromptMM vs LATTICE vs LightGCN', '',
        f'`{command}`  ', f'{n} seed(s) (0..{n - 1}); mean ± sample std over '
        f'seeds. Machine: {machine["cpu"]}, {machine["cpu_count"]} CPU '
        f'cores, torch threads {meta["threads"]} per worker, '
        f'{meta["jobs"]} training worker(s) at once, CUDA: '
        f'{machine["cuda"]}; torch {machine["torch"]}, PyG '
        f'{machine["torch_geometric"]}. Total '
        f'{meta["total_seconds"] / 60:.1f} min.', '',
        f'Shared budget (TrainConfig): width {config.embedding_dim} (student '
        f'{config.student_dim}), at most {config.epochs} epochs per stage, '
        f'patience {config.patience} validation checks, batch '
        f'{config.batch_size}, lr {config.lr} (student {config.student_lr}); '
        'selection on validation Recall@20, test once at the selected '
        'epoch.', '']
    def stats(columns, more=(), extra=lambda s: ()):
        return C.md_table(
            ['model'] + [c[0] for c in columns] + list(more),
            [[name] + [fmt(s[k], d) for _, k, d in columns] + list(extra(s))
             for name, s in summary.items()])

    lines += stats((('Recall@20', 'recall@20', 4), ('NDCG@20', 'ndcg@20', 4),
                    ('Precision@20', 'precision@20', 4),
                    ('epochs to best', 'epochs_to_best', 0),
                    ('train s', 'train_seconds', 1),
                    ('s/epoch', 'seconds_per_epoch', 3),
                    ('embed s', 'embed_seconds', 3),
                    ('rank s', 'rank_seconds', 3),
                    ('inference s', 'inference_seconds', 3)),
                   ('serving params', 'peak MB'),
                   lambda s: (f'{s["serving_params"]["mean"]:,.0f}',
                              fmt(s['peak_memory_mb'], 0)))
    total_cpu = sum(r['train_cpu_seconds'] + r['inference_cpu_seconds']
                    for rows in runs.values() for r in rows)
    lines += [
        '', '### CPU seconds (single-thread workers: about the wall time on '
        'an otherwise idle core)', '',
        'Wall times above depend on what else the machine runs; each worker '
        'uses one torch thread, so its process CPU time is close to what '
        'the same work takes on a dedicated core. Sum over all runs: '
        f'{total_cpu / 60:.1f} CPU-min, i.e. about '
        f'{total_cpu / 60 / max(meta["jobs"], 1):.1f} min of wall '
        f'time with {meta["jobs"]} worker(s) on an idle machine '
        '(plus process start-up and the scheduling tail).', '']
    lines += stats((('train CPU s', 'train_cpu_seconds', 1),
                    ('embed CPU s', 'embed_cpu_seconds', 4),
                    ('rank CPU s', 'rank_cpu_seconds', 4),
                    ('inference CPU s', 'inference_cpu_seconds', 4),
                    ('graph prep s (shared, not in inference)',
                     'graph_seconds', 4)))
    if {'teacher', 'student', 'lattice'} <= set(summary):
        lines += table6(summary, runs)
    lines += ['', '## Per seed', ''] + C.md_table(
        ['model', 'seed', 'Recall@20', 'NDCG@20', 'val Recall@20',
         'epochs to best / run', 'train s', 'embed s', 'rank s', 'peak MB',
         'served check'],
        [[name, r['seed'], f'{r["recall@20"]:.4f}', f'{r["ndcg@20"]:.4f}',
          f'{r["val_recall@20"]:.4f}',
          f'{r["epochs_to_best"]} / {r["epochs_run"]}',
          f'{r["train_seconds"]:.1f}', f'{r["embed_seconds"]:.4f}',
          f'{r["rank_seconds"]:.4f}', f'{r["peak_memory_mb"]:.0f}',
          f'Δemb {r["embedding_max_abs_diff"]:.1e}, recall '
          f'{r["served_test_recall@20"]:.4f}']
         for name, rows in runs.items() for r in rows])
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


def table6(summary, runs) -> List[str]:
    t, st, la = summary['teacher'], summary['student'], summary['lattice']
    pipeline = statistics.fmean(a['train_seconds'] + b['train_seconds'] for
                                a, b in zip(runs['teacher'], runs['student']))

    def row(label, key, digits, ratio='{:.3f}x', note=''):
        share = st[key]['mean'] / t[key]['mean'] if t[key]['mean'] else None
        return [label, f'{t[key]["mean"]:,.{digits}f}',
                f'{st[key]["mean"]:,.{digits}f}{note}',
                'n/a' if share is None else ratio.format(share),
                f'{la[key]["mean"]:,.{digits}f}']

    return ['', '## Table 6 style: teacher vs student (serving-time needs '
            'only)', ''] + C.md_table(
        ['', 'teacher', 'student', 'student / teacher', 'LATTICE'], [
            row('serving parameters + stored tensors', 'serving_params', 0,
                '{:.2%}'),
            row('serving size (MB)', 'serving_mb', 2, '{:.2%}'),
            row('training time (s)', 'train_seconds', 1, '{:.2f}x',
                f' (stage 2; teacher + student {pipeline:.1f})'),
            row('inference: embed (s)', 'embed_seconds', 4),
            row('inference: embed, CPU (s)', 'embed_cpu_seconds', 4),
            row(f'inference: embed + rank, all users top-{K} (s)',
                'inference_seconds', 4),
            row('Recall@20', 'recall@20', 4)])


def plot(runs, path: str, say) -> None:
    plt = C.pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, marker in zip(runs, 'os^*Dvp'):
        ax.scatter([r['inference_seconds'] for r in runs[name]],
                   [r['recall@20'] for r in runs[name]], label=name,
                   marker=marker, s=60 if name == 'student' else 35)
    ax.set(xscale='log', ylabel='test Recall@20',
           xlabel=f'inference seconds (embed + top-{K} of every user)',
           title='Recall@20 vs inference time (one point per seed)')
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
