r"""Smoke tests of benchmarks/compare.py (three engine runs, inference
timing from the checkpoints, summary, report) and benchmarks/scale.py
(generation, per-model step timing, report) on tiny synthetic data."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from pmm_geo.data import modalities, split_edge_index, synthetic
from pmm_geo.train.registry import output_names

ROOT = Path(__file__).resolve().parents[1]
COMPARE = ROOT / 'benchmarks' / 'compare.py'
SCALE = ROOT / 'benchmarks' / 'scale.py'


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_promptmm(data, root: Path) -> None:
    for split in ('train', 'val', 'test'):
        per_user = {}
        for user, item in split_edge_index(data, split).t().tolist():
            per_user.setdefault(str(user), []).append(item)
        (root / f'{split}.json').write_text(json.dumps(per_user))
    for m in modalities(data):
        np.save(root / f'{m}_feat.npy', data['item'][m].numpy())


def test_compare_smoke(tmp_path):
    compare = _load(COMPARE, 'bench_compare')
    data = synthetic(num_users=40, num_items=60, num_interactions=400,
                     modalities={'image': 12, 'text': 6}, seed=0)
    data_dir = tmp_path / 'data'
    data_dir.mkdir()
    _write_promptmm(data, data_dir)
    out = tmp_path / 'out'

    summary = compare.main([str(data_dir), '--seeds', '1', '--epochs', '1',
                            '--repeats', '1', '--out', str(out),
                            '--in-process', '--no-plot', '--quiet'])

    on_disk = json.loads((out / 'compare.json').read_text())
    assert on_disk == json.loads(json.dumps(summary))
    # One row per model the registry trains (the four of PromptMM's
    # comparison among them).
    assert set(on_disk) == set(output_names()) >= {
        'lightgcn', 'lattice', 'teacher', 'student'}
    required = ('recall@20', 'ndcg@20', 'precision@20', 'train_seconds',
                'seconds_per_epoch', 'embed_seconds', 'rank_seconds',
                'inference_seconds', 'serving_params', 'peak_memory_mb',
                'epochs_to_best')
    for model, metrics in on_disk.items():
        for key in required:
            stat = metrics[key]
            assert set(stat) == {'mean', 'std'}, (model, key)
            assert math.isfinite(stat['mean']), (model, key)
            assert stat['std'] == 0.0  # a single seed
        for key in ('recall@20', 'ndcg@20', 'precision@20'):
            assert 0.0 <= metrics[key]['mean'] <= 1.0
        assert metrics['epochs_to_best']['mean'] == 1
        assert metrics['peak_memory_mb']['mean'] > 0
        got = metrics['inference_seconds']['mean']
        parts = (metrics['embed_seconds']['mean'] +
                 metrics['rank_seconds']['mean'])
        assert got == pytest.approx(parts, rel=1e-6)

    # Serving footprints: the student needs its two embedding tables, its
    # 3 + 1 layer weights and its frozen item graph (2 modalities x 60
    # items x k = 10 entries: row, column, weight) only; the teacher also
    # its feature tables (60 x 18 values) and more.
    student = on_disk['student']['serving_params']['mean']
    assert student == (40 + 60) * 64 + 4 + 3 * 2 * 60 * 10
    assert on_disk['teacher']['serving_params']['mean'] > student + 60 * 18

    runs = json.loads((out / 'compare_runs.json').read_text())['runs']
    for model, rows in runs.items():
        row = rows[0]
        # Served embeddings recomputed from the checkpoint equal the saved
        # ones and give the reported test Recall@20.
        assert row['embedding_max_abs_diff'] < 1e-5, model
        assert row['served_test_recall@20'] == pytest.approx(
            row['recall@20'], abs=1e-6)
        assert row['top_k_shape'] == [40, 20]
    text = (out / 'compare.md').read_text()
    assert 'Table 6' in text and '| student |' in text


def test_scale_smoke(tmp_path):
    scale = _load(SCALE, 'bench_scale')
    out = tmp_path / 'scale'
    summary = scale.main(['--size', '0.005', '--scales', '1', '2',
                          '--steps', '2', '--repeats', '1', '--out',
                          str(out), '--in-process', '--no-plot'])

    assert set(summary['scales']) == {'1x', '2x'}
    one, two = summary['scales']['1x'], summary['scales']['2x']
    # 2x doubles the users and interactions (41,691 and 359,165 at full
    # size, here x 0.005); the items stay fixed.
    assert one['shape'] == {'num_users': 208, 'num_items': 107,
                            'num_interactions': 1796}
    assert two['shape'] == {'num_users': 417, 'num_items': 107,
                            'num_interactions': 3592}
    # At the first scale, lightgcn also on 2 DDP processes (torchrun).
    assert set(one['models']) - set(two['models']) == {'lightgcn x2'}
    assert one['models']['lightgcn x2']['processes'] == 2
    for entry in (one, two):
        assert set(entry['models']) - {'lightgcn x2'} == set(
            output_names()) >= {'teacher', 'student', 'lattice', 'lightgcn'}
        for name, row in entry['models'].items():
            assert not row.get('failed'), name
            assert len(row['step_seconds']) == min(2, row['steps_per_epoch'])
            for key in ('seconds_per_epoch', 'embed_seconds',
                        'rank_seconds', 'peak_memory_mb'):
                assert math.isfinite(row[key]) and row[key] > 0, (name, key)
            assert row['inference_seconds'] == pytest.approx(
                row['embed_seconds'] + row['rank_seconds'])
        # The student serves ids only; the teacher and LATTICE also carry
        # the raw 4096-d + 1024-d feature tables.
        rows = entry['models']
        features = entry['shape']['num_items'] * (4096 + 1024)
        assert rows['student']['serving_params'] < features
        assert rows['teacher']['serving_params'] > features
        assert rows['lattice']['serving_params'] > features
    assert (out / 'scale.json').is_file()
    text = (out / 'scale.md').read_text()
    assert '## Targets' in text and 'student embed_seconds' in text
    assert '1x lightgcn x2: ' in text and 'examples/s of one process' in text


def test_item_graph_rows_smoke(capsys):
    # Every way of computing the rows agrees with the gather (the script
    # raises otherwise), on both sides of ROWS_BY_PRODUCT.
    bench = _load(ROOT / 'benchmarks' / 'bench_item_graph_rows.py',
                  'bench_item_graph_rows')
    bench.main(['--items', '300', '--k', '4', '--dim', '8', '--repeats', '1',
                '--shares', '0.1', '0.9'])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].endswith('neighbours')
    assert lines[-1].endswith('all items')
