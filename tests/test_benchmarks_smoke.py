r"""Smoke test of benchmarks/compare.py: the whole pipeline (three engine
runs, inference timing from the checkpoints, summary, report) on a tiny
synthetic dataset in the PromptMM on-disk format."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from pmm_geo.data import modalities, split_edge_index, synthetic

ROOT = Path(__file__).resolve().parents[1]
COMPARE = ROOT / 'benchmarks' / 'compare.py'


def _load_compare():
    spec = importlib.util.spec_from_file_location('bench_compare', COMPARE)
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
    compare = _load_compare()
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
    assert set(on_disk) == {'lightgcn', 'lattice', 'teacher', 'student'}
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

    # Serving footprints: the student needs its two embedding tables (and
    # its 3 + 1 layer weights) only; the teacher also its feature tables
    # (60 x 18 values) and more.
    student = on_disk['student']['serving_params']['mean']
    assert student == (40 + 60) * 64 + 4
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
