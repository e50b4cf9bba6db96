r"""How PromptMM's teacher and student, LATTICE and LightGCN scale with the
number of users and interactions, at the shape of Amazon Electronics.

The data is the synthetic Electronics preset of :mod:`pmm_geo.data`
(:func:`~pmm_geo.data.synthetic` with 41,691 users, 21,479 items, 359,165
interactions, 4096-d image and 1024-d text features) at 1x, and with 2x
and 4x the USERS and the INTERACTIONS (items and features fixed:
:func:`~pmm_geo.data.synthetic_electronics`'s :obj:`scale` would multiply
the items too, so the counts are passed to :func:`~pmm_geo.data.synthetic`
explicitly). :obj:`--size` shrinks all three counts for a quick run.

For every scale and model, in its own subprocess (so that its peak memory
is its own), with the engine's stages and the default
:class:`~pmm_geo.train.TrainConfig`:

- ``setup_seconds``: building the model (LATTICE: frozen kNN graphs of the
  raw features; teacher: PCA hard tokens; student: an untrained teacher
  built and frozen, as stage 2 holds it);
- ``seconds_per_epoch`` (EXTRAPOLATED, not a full epoch): one warm-up step,
  then ``--steps`` timed training steps (forward + backward + Adam) on the
  engine's own batches; an epoch has ``ceil(E_train / batch_size)``
  steps, and is estimated as ``t(first step) + (steps - 1) x median(t(other
  steps))`` (LATTICE rebuilds its learned item graph with gradient on the
  first step of an epoch only, as the engine does). Model quality does not
  change a step's cost, so untrained weights are timed;
- ``eval_seconds``: one validation pass (embeddings + full ranking);
- ``embed_seconds`` / ``rank_seconds`` / ``inference_seconds``: as in
  ``compare.py``, the served model's forward computations from the
  normalized adjacency (built before, shared by every graph model:
  ``graph_seconds``) to the final embeddings (median of ``--repeats``),
  then the top-20 unseen items of every user with the shared chunked
  scorer (once);
- ``peak_memory_mb``: peak RSS (Linux ``VmHWM``) of the subprocess over all
  of the above, data (the feature tables alone are 420 MiB) and interpreter
  included; ``base_memory_mb`` is the RSS once the data is loaded;
- ``cpu_seconds_per_epoch``, ``embed_cpu_seconds``, ``rank_cpu_seconds``:
  the same in process CPU time (one torch thread: about the wall time on
  an idle core, robust to whatever else the machine runs).

Writes ``OUT/scale.json``, ``OUT/scale.md`` and ``OUT/scale.png``.

Usage::

    python benchmarks/scale.py                       # 1x 2x 4x, full size
    python benchmarks/scale.py --size 0.05 --scales 1 2 --steps 3   # quick
"""
import argparse
import json
import os
import os.path as osp
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import _common as C  # noqa: E402

ELECTRONICS = {'num_users': 41691, 'num_items': 21479,
               'num_interactions': 359165}
WIDTHS = {'image': 4096, 'text': 1024}
MODELS = ('teacher', 'student', 'lattice', 'lightgcn')
#: The engine's model (TrainConfig.model) that trains each row.
ENGINE_MODEL = {'teacher': 'promptmm', 'student': 'promptmm',
                'lattice': 'lattice', 'lightgcn': 'lightgcn'}
LIMIT_MB = 12 * 1024  # the 12 GB target
EMBED_RATIO = 5.0  # the student's embed_seconds must be >= 5x lower
K = 20


def counts(scale: float, size: float) -> Dict[str, int]:
    r"""Users and interactions times :obj:`scale`; all three times
    :obj:`size`."""
    return {'num_users': round(ELECTRONICS['num_users'] * size * scale),
            'num_items': round(ELECTRONICS['num_items'] * size),
            'num_interactions': round(ELECTRONICS['num_interactions'] *
                                      size * scale)}


# ----------------------------------------------------------------------
# Workers

def gen_worker(scale: float, size: float, seed: int, path: str) -> None:
    import torch

    from pmm_geo.data import modalities, split_edge_index, synthetic
    tic = time.perf_counter()
    data = synthetic(**counts(scale, size), modalities=WIDTHS, seed=seed)
    torch.save({
        'num_users': data['user'].num_nodes,
        'num_items': data['item'].num_nodes,
        **{split: split_edge_index(data, split)
           for split in ('train', 'val', 'test')},
        'features': {m: data['item'][m] for m in modalities(data)},
        'generate_seconds': time.perf_counter() - tic,
    }, path)


def load_data(path: str):
    import torch

    from pmm_geo.data import from_arrays
    raw = torch.load(path, weights_only=True)
    return from_arrays(raw['train'], raw['val'], raw['test'],
                       features=raw['features'], num_users=raw['num_users'],
                       num_items=raw['num_items'])


def model_worker(name: str, data_path: str, steps: int, repeats: int,
                 result_path: str) -> None:
    import torch

    from pmm_geo import evaluate
    from pmm_geo.data import EDGE_TYPE
    from pmm_geo.train import Trainer, TrainConfig
    from pmm_geo.train.stages import (
        DistillStage,
        LatticeStage,
        LightGCNStage,
        TeacherStage,
    )

    data = load_data(data_path)
    base = C.rss_mb()
    C.reset_peak_rss()
    config = TrainConfig(model=ENGINE_MODEL[name], seed=0)
    trainer = Trainer(data, config, quiet=True)
    ctx = trainer.context
    torch.manual_seed(0)
    ctx.generator.manual_seed(0)

    tic = time.perf_counter()
    if name == 'student':
        teacher = TeacherStage(ctx)
        teacher.build({})
        stage = DistillStage(ctx)
        stage.build(dict(teacher.modules))
    else:
        stage = {'teacher': TeacherStage, 'lattice': LatticeStage,
                 'lightgcn': LightGCNStage}[name](ctx)
        stage.build({})
    setup = time.perf_counter() - tic

    optimizer = stage.optimizer()
    stage.train_mode()
    num_batches = ctx.sampler.num_batches(config.batch_size)

    def endless_batches():
        # Small graphs (--size) have fewer batches than the steps timed.
        while True:
            yield from ctx.sampler.epoch_batches(config.batch_size,
                                                 generator=ctx.generator)

    batches = endless_batches()

    cpu_times = []

    def step(batch_index: int) -> float:
        users, pos, neg = next(batches)
        tic, cpu = time.perf_counter(), time.process_time()
        loss, _ = stage.step(stage.batch(users, pos, neg, batch_index))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        cpu_times.append(time.process_time() - cpu)
        return time.perf_counter() - tic

    def per_epoch(times: List[float]) -> float:
        rest = statistics.median(times[1:]) if len(times) > 1 else times[0]
        return times[0] + (num_batches - 1) * rest

    warmup = step(1)  # one-time costs (layout caches, allocator)
    times = [step(i) for i in range(min(steps, num_batches))]
    epoch = per_epoch(times)
    cpu_epoch = per_epoch(cpu_times[1:])
    peak_train = C.peak_rss_mb()

    tic = time.perf_counter()
    user_emb, item_emb = stage.embeddings()
    evaluate(user_emb, item_emb, data, 'val', ks=config.ks)
    eval_seconds = time.perf_counter() - tic
    del user_emb, item_emb

    model = stage.model
    model.eval()
    features = ctx.features
    train_edges = data[EDGE_TYPE].edge_index
    num_users, num_items = ctx.num_users, ctx.num_items

    if name == 'teacher':
        model.clear_cache()  # a served teacher has no stage-2 cache
    graph_s, graph = C.time_call(C.prepare_graph, train_edges, num_users,
                                 num_items, model.layout)
    embeds, embed_cpu = [], []
    for _ in range(repeats):
        cpu = time.process_time()
        seconds, (user_emb, item_emb) = C.time_call(C.embed, name, model,
                                                    graph, features)
        embed_cpu.append(time.process_time() - cpu)
        embeds.append(seconds)
    embed_s = statistics.median(embeds)
    cpu = time.process_time()
    rank_s, _ = C.time_call(C.rank_all_users, user_emb, item_emb,
                            train_edges, K)
    rank_cpu = time.process_time() - cpu
    tensors = C.serving_tensors(model, features if C.needs_features(name)
                                else None)
    C.write_json(result_path, {
        'model': name, 'num_train_edges': int(train_edges.size(1)),
        'setup_seconds': setup, 'warmup_step_seconds': warmup,
        'step_seconds': times, 'steps_per_epoch': num_batches,
        'seconds_per_epoch': epoch, 'step_cpu_seconds': cpu_times[1:],
        'cpu_seconds_per_epoch': cpu_epoch,
        'embed_cpu_seconds': statistics.median(embed_cpu),
        'rank_cpu_seconds': rank_cpu,
        'eval_seconds': eval_seconds, 'embed_seconds': embed_s,
        'embed_seconds_all': embeds, 'graph_seconds': graph_s,
        'rank_seconds': rank_s, 'inference_seconds': embed_s + rank_s,
        'peak_train_mb': peak_train,
        'peak_memory_mb': max(peak_train, C.peak_rss_mb()),
        'base_memory_mb': base,
        'serving_params': C.count_elements(tensors),
        'serving_mb': C.count_bytes(tensors) / C.MB,
        'trainable_params': stage.num_params(),
        'threads': torch.get_num_threads(),
    })


def _run_spec(spec: Dict[str, Any]) -> None:
    if spec['kind'] == 'gen':
        gen_worker(spec['scale'], spec['size'], spec['seed'], spec['path'])
    else:
        model_worker(spec['model'], spec['data'], spec['steps'],
                     spec['repeats'], spec['result'])


def _call_in_process(spec: Dict[str, Any], log_path: str) -> bool:
    C.run_in_process(spec, _run_spec)
    return True


def _spawn(spec: Dict[str, Any], log_path: str) -> bool:
    error = C.spawn_worker(__file__, spec, log_path)
    if error is not None:
        print(error, flush=True)
    return error is None


# ----------------------------------------------------------------------
# Orchestration

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Seconds per epoch, inference time and peak memory of '
        'teacher, student, LATTICE and LightGCN at 1x/2x/4x the users and '
        'interactions of the synthetic Electronics preset.')
    parser.add_argument('--scales', type=float, nargs='+', default=[1, 2, 4],
                        metavar='S', help='multipliers of users and '
                        'interactions (default: 1 2 4)')
    parser.add_argument('--steps', type=int, default=10, metavar='N',
                        help='timed training steps per model (default: 10)')
    parser.add_argument('--size', type=float, default=1.0, metavar='F',
                        help='fraction of the Electronics users, items and '
                        'interactions (default: 1 = full size)')
    parser.add_argument('--models', nargs='+', default=list(MODELS),
                        choices=MODELS)
    parser.add_argument('--out', default=osp.join('runs', 'scale'),
                        metavar='DIR', help='output folder (default: '
                        'runs/scale)')
    parser.add_argument('--threads', type=int, default=1, metavar='N',
                        help='torch threads of the worker (default: 1)')
    parser.add_argument('--repeats', type=int, default=3, metavar='N',
                        help='embedding timing repeats (median; default: 3)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--keep-data', action='store_true',
                        help='keep the generated datasets in DIR')
    parser.add_argument('--in-process', action='store_true',
                        help='run the workers in this process (tests; peak '
                        'memory is then the whole process\'s)')
    parser.add_argument('--no-plot', action='store_true')
    parser.add_argument('--report-only', action='store_true',
                        help='re-render scale.md / scale.png from DIR/'
                        'scale.json without running anything')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.steps < 1:
        raise SystemExit(f'--steps must be >= 1, got {args.steps}')
    out = args.out
    if args.report_only:
        with open(osp.join(out, 'scale.json'), encoding='utf-8') as f:
            summary = json.load(f)
        _write_report(summary, out, args.no_plot)
        return summary
    os.makedirs(out, exist_ok=True)
    spawn = _call_in_process if args.in_process else _spawn
    results: Dict[str, Any] = {}
    tic_all = time.perf_counter()
    for scale in args.scales:
        key = f'{scale:g}x'
        shape = counts(scale, args.size)
        print(f'[{key}] generating {shape} ...', flush=True)
        path = osp.abspath(osp.join(out, f'data_{key}_size{args.size:g}.pt'))
        tic = time.perf_counter()
        if not spawn({'kind': 'gen', 'scale': scale, 'size': args.size,
                      'seed': args.seed, 'path': path,
                      'threads': args.threads},
                     osp.join(out, f'gen_{key}.log')):
            raise SystemExit('data generation failed')
        results[key] = {'scale': scale, 'shape': shape, 'models': {},
                        'generate_seconds': time.perf_counter() - tic}
        for name in args.models:
            result = osp.join(out, f'{name}_{key}.json')
            tic = time.perf_counter()
            ok = spawn({'kind': 'model', 'model': name, 'data': path,
                        'steps': args.steps, 'repeats': args.repeats,
                        'result': osp.abspath(result),
                        'threads': args.threads},
                       osp.join(out, f'{name}_{key}.log'))
            if not ok:
                results[key]['models'][name] = {'failed': True}
                continue
            with open(result, encoding='utf-8') as f:
                row = json.load(f)
            row['worker_seconds'] = time.perf_counter() - tic
            results[key]['models'][name] = row
            print(f'[{key}] {name:8s} {row["seconds_per_epoch"]:9.1f} s/epoch'
                  f' (extrapolated from {len(row["step_seconds"])} steps)  '
                  f'embed {row["embed_seconds"]:.3f}s  rank '
                  f'{row["rank_seconds"]:.2f}s  peak '
                  f'{row["peak_memory_mb"]:.0f} MB', flush=True)
        if not args.keep_data:
            os.remove(path)
    summary = {'command': 'python benchmarks/scale.py ' + ' '.join(argv),
               'size': args.size, 'steps': args.steps,
               'threads': args.threads,
               'machine': C.machine(), 'scales': results,
               'total_seconds': time.perf_counter() - tic_all}
    C.write_json(osp.join(out, 'scale.json'), summary)
    _write_report(summary, out, args.no_plot)
    return summary


def _write_report(summary, out: str, no_plot: bool) -> None:
    with open(osp.join(out, 'scale.md'), 'w', encoding='utf-8') as f:
        f.write(report(summary))
    if not no_plot:
        plot(summary, osp.join(out, 'scale.png'))
    print(f'wrote {osp.join(out, "scale.md")}', flush=True)


def _rows(summary) -> List[Dict[str, Any]]:
    rows = []
    for key, entry in summary['scales'].items():
        for name, row in entry['models'].items():
            rows.append({'key': key, 'name': name, 'shape': entry['shape'],
                         **row})
    return rows


def report(summary) -> str:
    machine = summary['machine']
    lines = [
        '# Scale: Electronics-shaped synthetic data', '',
        f'`{summary["command"]}`  ',
        f'Machine: {machine.get("cpu", "?")}, {machine["cpu_count"]} CPU '
        f'cores, torch threads {summary["threads"]} per worker (one worker '
        f'at a time), CUDA '
        f'{machine["cuda"]}. Total {summary["total_seconds"] / 60:.1f} min. '
        f'Seconds per epoch are EXTRAPOLATED from {summary["steps"]} timed '
        'training steps (plus one warm-up), not measured over full epochs.',
        '',
        '| scale | users | items | train edges | model | s/step | '
        's/epoch (extrap.) | CPU s/epoch | eval s | setup s | graph s | '
        'embed s | embed CPU s | rank s | inference s | peak MB | base MB |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|'
        '---|',
    ]
    for r in _rows(summary):
        shape = r['shape']
        if r.get('failed'):
            lines.append(f'| {r["key"]} | {shape["num_users"]:,} | '
                         f'{shape["num_items"]:,} | | {r["name"]} | FAILED '
                         '(see its log) |||||||||')
            continue
        per_step = statistics.median(r['step_seconds'])
        lines.append(
            f'| {r["key"]} | {shape["num_users"]:,} | {shape["num_items"]:,}'
            f' | {r["num_train_edges"]:,} ({r["steps_per_epoch"]} '
            f'steps) | {r["name"]} | {per_step:.3f} | '
            f'{r["seconds_per_epoch"]:.1f} | '
            f'{r.get("cpu_seconds_per_epoch", float("nan")):.1f} | '
            f'{r["eval_seconds"]:.2f} | '
            f'{r["setup_seconds"]:.1f} | '
            f'{r.get("graph_seconds", float("nan")):.3f} | '
            f'{r["embed_seconds"]:.3f} | '
            f'{r.get("embed_cpu_seconds", float("nan")):.3f} | '
            f'{r["rank_seconds"]:.2f} | {r["inference_seconds"]:.2f} | '
            f'{r["peak_memory_mb"]:,.0f} | {r["base_memory_mb"]:,.0f} |')
    lines += ['', '## Growth (relative to the smallest scale)', '',
              'CPU seconds per epoch (one thread: robust to other load on '
              'the machine), extrapolated as above.', '',
              '| model | ' + ' | '.join(
                  f'CPU s/epoch {k}' for k in summary['scales']) + ' | ' +
              ' | '.join(f'peak MB {k}' for k in summary['scales']) + ' |',
              '|---|' + '---|' * (2 * len(summary['scales']))]
    for name in MODELS:
        epoch, peak = [], []
        first = None
        for key, entry in summary['scales'].items():
            row = entry['models'].get(name)
            if row is None or row.get('failed'):
                epoch.append('n/a')
                peak.append('n/a')
                continue
            if first is None:
                first = row
            cpu, peak_mb = (row['cpu_seconds_per_epoch'],
                            row['peak_memory_mb'])
            epoch.append(f'{cpu:.1f} '
                         f'({cpu / first["cpu_seconds_per_epoch"]:.2f}x)')
            peak.append(f'{peak_mb:,.0f} '
                        f'({peak_mb / first["peak_memory_mb"]:.2f}x)')
        if first is not None:
            lines.append(f'| {name} | ' + ' | '.join(epoch + peak) + ' |')
    lines += ['', '## Targets', '']
    for key, entry in summary['scales'].items():
        rows = entry['models']
        for name, row in rows.items():
            if row.get('failed'):
                continue
            ok = row['peak_memory_mb'] < LIMIT_MB
            lines.append(f'- {key} {name}: peak {row["peak_memory_mb"]:,.0f}'
                         f' MB < 12 GB: {"PASS" if ok else "MISS"}')
        student = rows.get('student')
        for other in ('lattice', 'teacher'):
            row = rows.get(other)
            if not student or not row or student.get('failed') or \
                    row.get('failed'):
                continue
            ratio = row['embed_seconds'] / student['embed_seconds']
            cpu_ratio = row['embed_cpu_seconds'] / student['embed_cpu_seconds']
            ok = ratio >= EMBED_RATIO
            lines.append(f'- {key} student embed_seconds '
                         f'{student["embed_seconds"]:.3f}s is {ratio:.1f}x '
                         f'lower than {other} ({row["embed_seconds"]:.3f}s;'
                         f' {cpu_ratio:.1f}x in CPU time):'
                         f' {"PASS" if ok else "MISS"} (>= 5x)')
    items = next(iter(summary['scales'].values()))['shape']['num_items']
    dense = items**2 * 4 / 1024**3
    lines += ['', 'Dense LATTICE (the original code) would hold I x I float32 '
              f'matrices: {items:,}^2 x 4 bytes = {dense:.2f} GiB each. By '
              'the analytic estimate of reference/lattice_mmrec.md (not a '
              'measurement), about 5 are alive in steady state '
              f'({5 * dense:.1f} GiB) and 13 to 16 at the peak of the graph '
              f'rebuild on the first batch of each epoch ({13 * dense:.0f} to '
              f'{16 * dense:.0f} GiB), above the 12 GB target before any '
              'activation or optimizer state. The sparse LATTICE here keeps '
              'k = 10 neighbours per item and graph (O(I k) memory).', '']
    return '\n'.join(lines)


def plot(summary, path: str) -> None:
    if not C.have_matplotlib():
        print('matplotlib is not installed: no plot (pip install matplotlib)')
        return
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 3.8))
    for name in MODELS:
        xs, epoch, peak, embed = [], [], [], []
        for entry in summary['scales'].values():
            row = entry['models'].get(name)
            if row is None or row.get('failed'):
                continue
            xs.append(entry['scale'])
            epoch.append(row['cpu_seconds_per_epoch'])
            peak.append(row['peak_memory_mb'] / 1024)
            embed.append(row['embed_seconds'])
        if not xs:
            continue
        ax1.plot(xs, epoch, marker='o', label=name)
        ax2.plot(xs, peak, marker='o', label=name)
        ax3.plot(xs, embed, marker='o', label=name)
    ax1.set_ylabel('CPU seconds / epoch (extrapolated, 1 thread)')
    ax2.set_ylabel('peak RSS (GiB)')
    ax2.axhline(12, color='red', ls='--', lw=1, label='12 GB target')
    ax3.set_ylabel('embed seconds (inference)')
    scales = [entry['scale'] for entry in summary['scales'].values()]
    for ax in (ax1, ax2, ax3):
        ax.set_xlabel('x users and interactions (items fixed)')
        ax.set_xscale('log', base=2)
        ax.set_xticks(scales)
        ax.set_xticklabels([f'{x:g}x' for x in scales])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    ax1.set_yscale('log')
    ax3.set_yscale('log')
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    size = summary['size']
    fig.suptitle('Electronics-shaped synthetic data' +
                 ('' if size == 1 else f' (size {size:g})'))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f'wrote {path}')


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == '--worker':
        sys.exit(C.worker_main(sys.argv[2:], _run_spec))
    main()
