r"""How PromptMM's teacher and student, LATTICE and LightGCN scale with the
number of users and interactions, at the shape of Amazon Electronics.

The data is :func:`pmm_geo.data.synthetic` at :obj:`pmm_geo.data.ELECTRONICS`
(41,691 users, 21,479 items, 359,165 interactions, 4096-d image and 1024-d
text features) with 1x, 2x and 4x the users and interactions (items fixed;
``--size`` shrinks all three). Every registered model, its stage built by
:meth:`pmm_geo.train.Trainer.stages`, runs in its own subprocess:
``setup_seconds`` (building it); ``seconds_per_epoch``, EXTRAPOLATED from one
warm-up and ``--steps`` :func:`pmm_geo.train.train_step` calls as
``t(first) + (steps - 1) x median(t(others))`` (LATTICE rebuilds its item
graph on the first); ``eval_seconds``; ``embed`` / ``rank`` /
``inference_seconds`` as in ``compare.py``; ``peak_memory_mb`` (``VmHWM``,
data and interpreter included) and the CPU-time twins (one thread: robust to
other load). At the first scale, ``lightgcn x2``: lightgcn on 2 DDP
processes (torchrun, gloo, one thread each; rank 0's row). Writes
``OUT/scale.json``, ``scale.md`` and ``scale.png``.

    python benchmarks/scale.py                       # 1x 2x 4x, full size
    python benchmarks/scale.py --size 0.05 --scales 1 2 --steps 3   # quick
"""
import argparse
import itertools
import os
import os.path as osp
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import _common as C  # noqa: E402

from pmm_geo import evaluate  # noqa: E402
from pmm_geo.data import (EDGE_TYPE, ELECTRONICS, from_arrays,  # noqa: E402
                          modalities, split_edge_index, synthetic)
from pmm_geo.train import MODELS, Trainer, TrainConfig, train_step  # noqa
from pmm_geo.train.distributed import Distributed  # noqa: E402
from pmm_geo.train.registry import output_names as model_names  # noqa

LIMIT_MB = 12 * 1024  # the 12 GB target
EMBED_RATIO = 5.0  # the student's embed_seconds must be >= 5x lower
K = 20


def counts(scale: float, size: float) -> Dict[str, int]:
    r"""Users and interactions times :obj:`scale`; all three times
    :obj:`size`."""
    return {key: round(ELECTRONICS[key] * size * (1 if key == 'num_items'
                                                  else scale))
            for key in ('num_users', 'num_items', 'num_interactions')}


# ----------------------------------------------------------------------
# Workers

def gen_worker(spec: Dict[str, Any]) -> None:
    data = synthetic(**counts(spec['scale'], spec['size']),
                     modalities=ELECTRONICS['modalities'], seed=spec['seed'])
    torch.save({'num_users': data['user'].num_nodes,
                'num_items': data['item'].num_nodes,
                **{split: split_edge_index(data, split)
                   for split in ('train', 'val', 'test')},
                'features': {m: data['item'][m] for m in modalities(data)}},
               spec['path'])


def model_worker(spec: Dict[str, Any]) -> None:
    # 'lightgcn x2' under torchrun: each rank steps through its shard.
    group = Distributed.from_env()
    # The DDP wrapper lives in _time_model's frame only: freed there, with
    # the process group still registered. Freed after close() (a local
    # here), its reducer would drop the group's last reference with the GIL
    # held, and the group's destructor would wait for its gloo thread,
    # which needs the GIL to finish the last barrier's work: a deadlock
    # (seen at teardown in CI).
    result = _time_model(spec, group)
    group.barrier()
    if result is not None:
        C.write(spec['result'], result)
    group.close()


def _time_model(spec: Dict[str, Any], group: Distributed
                ) -> Optional[Dict[str, Any]]:
    # One model's steps, then (rank 0) evaluation and inference timings.
    name = spec['model'].split()[0]
    data = from_arrays(**torch.load(spec['data'], weights_only=True))
    base = C.rss_mb()
    C.reset_peak_rss()
    model = next(m for m, s in MODELS.items() if name in s.outputs)
    trainer = Trainer(data, TrainConfig(model=model, seed=0), quiet=True,
                      distributed=group)
    tic = time.perf_counter()
    # The engine's stage, built as fit() builds it (those before it too).
    stage = next(s for s in trainer.stages() if s.name == name)
    setup = time.perf_counter() - tic
    config, sampler = trainer.config, trainer.sampler
    optimizer, forward = stage.optimizer(), group.wrap_stage(stage)
    stage.train_mode()
    shards = {'num_shards': group.world_size}
    num_batches = sampler.num_batches(config.batch_size, **shards)
    # Endless: small graphs (--size) have fewer batches than steps timed.
    batches = (batch for _ in itertools.count() for batch in
               sampler.epoch_batches(config.batch_size, trainer.generator,
                                     shard=group.rank, **shards))
    wall, cpu = [], []
    for index in [1] + list(range(min(spec['steps'], num_batches))):
        group.barrier()
        step_s, step_cpu, _ = C.time_call(train_step, stage, optimizer,
                                          *next(batches), index, forward)
        wall.append(step_s)
        cpu.append(step_cpu)
    if not group.is_main:
        return None

    def per_epoch(times: List[float]) -> float:
        rest = statistics.median(times[1:]) if len(times) > 1 else times[0]
        return times[0] + (num_batches - 1) * rest

    peak_train = C.peak_rss_mb()
    eval_s, _, _ = C.time_call(lambda: evaluate(*stage.embeddings(), data,
                                                'val', ks=config.ks))
    model = stage.model.eval()
    if hasattr(model, 'clear_cache'):
        model.clear_cache()  # A served teacher has no stage-2 cache.
    edges = data[EDGE_TYPE].edge_index
    samples = [C.time_inference(name, model, edges, stage.ctx.num_users,
                                stage.ctx.num_items, trainer.features, K)[0]
               for _ in range(spec['repeats'])]
    params, size = C.footprint(name, model, trainer.features)
    return {
        'model': name, 'num_train_edges': int(edges.size(1)),
        'setup_seconds': setup, 'warmup_step_seconds': wall[0],
        'step_seconds': wall[1:], 'steps_per_epoch': num_batches,
        'seconds_per_epoch': per_epoch(wall[1:]),
        'step_cpu_seconds': cpu[1:],
        'cpu_seconds_per_epoch': per_epoch(cpu[1:]),
        'eval_seconds': eval_s, **C.medians(samples),
        'peak_train_mb': peak_train,
        'peak_memory_mb': max(peak_train, C.peak_rss_mb()),
        'base_memory_mb': base, 'serving_params': params, 'serving_mb': size,
        'trainable_params': stage.num_params(),
        'threads': torch.get_num_threads(), 'processes': group.world_size,
    }


def _run_spec(spec: Dict[str, Any]) -> None:
    (gen_worker if spec['kind'] == 'gen' else model_worker)(spec)


# ----------------------------------------------------------------------
# Orchestration

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--scales', type=float, nargs='+', default=[1, 2, 4],
                        metavar='S', help='multipliers of users and '
                        'interactions (default: 1 2 4)')
    parser.add_argument('--steps', type=int, default=10, metavar='N',
                        help='timed training steps per model (default: 10)')
    parser.add_argument('--size', type=float, default=1.0, metavar='F',
                        help='fraction of the Electronics users, items and '
                        'interactions (default: 1 = full size)')
    parser.add_argument('--models', nargs='+', default=None,
                        metavar='MODEL', help='a subset of '
                        f'{" ".join(model_names())}')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--keep-data', action='store_true',
                        help='keep the generated datasets in DIR')
    parser.add_argument('--report-only', action='store_true',
                        help='re-render scale.md / scale.png from DIR/'
                        'scale.json without running anything')
    C.add_worker_args(parser, 'scale')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    models = args.models or list(model_names())
    unknown = set(models) - set(model_names())
    if unknown or args.steps < 1:
        raise SystemExit(f'unknown --models {sorted(unknown)}' if unknown
                         else f'--steps must be >= 1, got {args.steps}')
    out = args.out
    if args.report_only:
        summary = C.read_json(osp.join(out, 'scale.json'))
        _write_report(summary, out, args.no_plot)
        return summary
    os.makedirs(out, exist_ok=True)

    def spawn(spec: Dict[str, Any], log: str, nproc: int = 1) -> bool:
        error = C.run_worker(__file__, spec, osp.join(out, log),
                             args.in_process, _run_spec, nproc)
        if error is not None:
            print(error, flush=True)
        return error is None

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
                      'threads': args.threads}, f'gen_{key}.log'):
            raise SystemExit('data generation failed')
        results[key] = {'scale': scale, 'shape': shape, 'models': {},
                        'generate_seconds': time.perf_counter() - tic}
        ddp = [('lightgcn x2', 2)] if scale == args.scales[0] and \
            'lightgcn' in models else []
        for name, nproc in [(m, 1) for m in models] + ddp:
            result = osp.abspath(osp.join(out, f'{name}_{key}.json'))
            tic = time.perf_counter()
            if not spawn({'kind': 'model', 'model': name, 'data': path,
                          'steps': args.steps, 'repeats': args.repeats,
                          'result': result, 'threads': args.threads},
                         f'{name}_{key}.log', nproc):
                results[key]['models'][name] = {'failed': True}
                continue
            row = C.read_json(result)
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
               'threads': args.threads, 'machine': C.machine(),
               'scales': results,
               'total_seconds': time.perf_counter() - tic_all}
    C.write(osp.join(out, 'scale.json'), summary)
    _write_report(summary, out, args.no_plot)
    return summary


def _write_report(summary, out: str, no_plot: bool) -> None:
    C.write(osp.join(out, 'scale.md'), report(summary))
    if not no_plot:
        plot(summary, osp.join(out, 'scale.png'))
    print(f'wrote {osp.join(out, "scale.md")}', flush=True)


def _series(summary, name: str) -> List[Dict[str, Any]]:
    r"""The rows of model :obj:`name` that ran, with their scale."""
    return [{'scale': entry['scale'], 'key': key, **entry['models'][name]}
            for key, entry in summary['scales'].items()
            if not entry['models'].get(name, {'failed': True}).get('failed')]


def report(summary) -> str:
    machine, scales = summary['machine'], summary['scales']
    lines = [
        '# Scale: Electronics-shaped synthetic data', '',
        f'`{summary["command"]}`  ',
        f'Machine: {machine.get("cpu", "?")}, {machine["cpu_count"]} CPU '
        f'cores, torch threads {summary["threads"]} per worker (one worker '
        f'at a time), CUDA {machine["cuda"]}. Total '
        f'{summary["total_seconds"] / 60:.1f} min. Seconds per epoch are '
        f'EXTRAPOLATED from {summary["steps"]} timed training steps (plus '
        'one warm-up), not measured over full epochs.', '']
    columns = (('s/epoch (extrap.)', 'seconds_per_epoch', '.1f'),
               ('CPU s/epoch', 'cpu_seconds_per_epoch', '.1f'),
               ('eval s', 'eval_seconds', '.2f'),
               ('setup s', 'setup_seconds', '.1f'),
               ('graph s', 'graph_seconds', '.3f'),
               ('embed s', 'embed_seconds', '.3f'),
               ('embed CPU s', 'embed_cpu_seconds', '.3f'),
               ('rank s', 'rank_seconds', '.2f'),
               ('inference s', 'inference_seconds', '.2f'),
               ('peak MB', 'peak_memory_mb', ',.0f'),
               ('base MB', 'base_memory_mb', ',.0f'))
    rows = []
    for key, entry in scales.items():
        shape = entry['shape']
        for name, r in entry['models'].items():
            rows.append([key, f'{shape["num_users"]:,}',
                         f'{shape["num_items"]:,}'] + (
                ['', name, 'FAILED (see its log)'] if r.get('failed') else [
                    f'{r["num_train_edges"]:,} ({r["steps_per_epoch"]} steps)',
                    name, f'{statistics.median(r["step_seconds"]):.3f}'] +
                [format(r[k], f) for _, k, f in columns]))
    lines += C.md_table(['scale', 'users', 'items', 'train edges', 'model',
                         's/step'] + [c[0] for c in columns], rows)
    lines += ['', '## Growth (relative to the smallest scale)', '',
              'CPU seconds per epoch (one thread: robust to other load on '
              'the machine), extrapolated as above.', '']
    growth = []
    for name in model_names():
        series = {r['key']: r for r in _series(summary, name)}
        if not series:
            continue
        first = next(iter(series.values()))
        cells = {k: [f'{r[m]:,.{d}f} ({r[m] / first[m]:.2f}x)' for m, d in (
            ('cpu_seconds_per_epoch', 1), ('peak_memory_mb', 0))]
            for k, r in series.items()}
        growth.append([name] + [cells.get(k, ['n/a'] * 2)[i] for i in (0, 1)
                                for k in scales])
    lines += C.md_table(['model'] + [f'{what} {k}' for what in (
        'CPU s/epoch', 'peak MB') for k in scales], growth)
    lines += ['', '## Targets', '']
    for key, entry in scales.items():
        rows = {n: r for n, r in entry['models'].items()
                if not r.get('failed')}
        for name, row in rows.items():
            ok = row['peak_memory_mb'] < LIMIT_MB
            lines.append(f'- {key} {name}: peak {row["peak_memory_mb"]:,.0f}'
                         f' MB < 12 GB: {"PASS" if ok else "MISS"}')
            one = rows.get(name.split()[0], {}).get('step_seconds')
            if row.get('processes', 1) > 1 and one:  # Examples per second.
                x = row['processes'] * statistics.median(one) / \
                    statistics.median(row['step_seconds'])
                lines.append(f'- {key} {name}: {x:.2f}x the examples/s of '
                             f'one process: {"PASS" if x >= 1.6 else "MISS"}')
        student = rows.get('student')
        for other in ('lattice', 'teacher'):
            row = rows.get(other)
            if student and row:
                ratio = row['embed_seconds'] / student['embed_seconds']
                cpu_ratio = (row['embed_cpu_seconds'] /
                             student['embed_cpu_seconds'])
                lines.append(
                    f'- {key} student embed_seconds '
                    f'{student["embed_seconds"]:.3f}s is {ratio:.1f}x lower '
                    f'than {other} ({row["embed_seconds"]:.3f}s; '
                    f'{cpu_ratio:.1f}x in CPU time): '
                    f'{"PASS" if ratio >= EMBED_RATIO else "MISS"} (>= 5x)')
    return '\n'.join(lines + [''])


def plot(summary, path: str) -> None:
    plt = C.pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for name in model_names():
        series = _series(summary, name)
        if series:
            xs = [r['scale'] for r in series]
            for ax, key, unit in zip(axes, ('cpu_seconds_per_epoch',
                                            'peak_memory_mb', 'embed_seconds'),
                                     (1, 1024, 1)):
                ax.plot(xs, [r[key] / unit for r in series], marker='o',
                        label=name)
    axes[0].set_ylabel('CPU seconds / epoch (extrapolated, 1 thread)')
    axes[1].set_ylabel('peak RSS (GiB)')
    axes[1].axhline(12, color='red', ls='--', lw=1, label='12 GB target')
    axes[2].set_ylabel('embed seconds (inference)')
    scales = [entry['scale'] for entry in summary['scales'].values()]
    for ax in axes:
        ax.set_xscale('log', base=2)
        ax.set(xlabel='x users and interactions (items fixed)', xticks=scales,
               xticklabels=[f'{x:g}x' for x in scales])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    for ax in axes[::2]:
        ax.set_yscale('log')
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    fig.suptitle('Electronics-shaped synthetic data' + (
        '' if summary['size'] == 1 else f' (size {summary["size"]:g})'))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f'wrote {path}')


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == '--worker':
        sys.exit(C.worker_main(sys.argv[2:], _run_spec))
    main()
