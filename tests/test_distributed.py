r"""Multi-process training on torch.distributed: 2 gloo processes on this
machine (torchrun), each one thread."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from ddp_worker import CONFIG, SAMPLING, tiny_data
from pmm_geo.cli import main
from test_cli import write_promptmm_folder

pytestmark = pytest.mark.skipif(not dist.is_available(),
                                reason='torch.distributed is not available')

ROOT = Path(__file__).resolve().parents[1]


def without_time(results):
    return {name: {k: v for k, v in entry.items() if k != 'train_seconds'}
            for name, entry in results.items()}


def epochs_logged(run_dir):
    lines = [json.loads(line) for line in
             (run_dir / 'log.jsonl').read_text().splitlines()]
    return [(e['stage'], e['epoch']) for e in lines
            if e['event'] == 'epoch']


def failure(stderr: str) -> str:
    # torchrun's summary comes last; the failing rank's own message (a
    # Python error, or glibc's on a corrupted heap) may be far above it.
    causes = [line for line in stderr.splitlines() if any(
        key in line for key in ('Error', 'Fatal', 'malloc', 'corrupted'))]
    return '\n'.join(causes[-20:]) + '\n...\n' + stderr[-2000:]


@pytest.fixture(scope='module')
def ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp('ddp')
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': os.pathsep.join(
        [str(ROOT), os.environ.get('PYTHONPATH', '')])}
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone',
         '--nproc-per-node=2', str(ROOT / 'tests' / 'ddp_worker.py'),
         str(root)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, failure(proc.stderr)
    return root, [torch.load(root / f'rank{r}.pt', weights_only=False)
                  for r in range(2)]


@pytest.mark.parametrize('batching', ['full', 'sampled'])
def test_a_step_on_two_shards_is_a_step_on_their_union(ranks, batching):
    if batching == 'sampled' and not SAMPLING:
        pytest.skip('sampled batching needs torch-sparse or pyg-lib')
    steps = [out['steps'][batching] for out in ranks[1]]
    one, (rank0, rank1) = steps[0]['one'], (s['ddp'] for s in steps)
    for key, weight in one.items():
        # The gradients averaged over the ranks (sparse ones for the sampled
        # path's tables) are those of the mean loss over both halves.
        assert torch.equal(rank0[key], rank1[key]), key
        torch.testing.assert_close(rank0[key], weight, rtol=0, atol=1e-6)
    assert not torch.equal(one['user_embedding.weight'],
                           steps[0]['init']['user_embedding.weight'])
    if batching == 'sampled':
        # The sampled stages' sparse gradients went through the hook's
        # dense all-gathers, not gloo's sparse all-reduce.
        assert all(out['sparse_buckets'] > 0 for out in ranks[1])
        assert all(out['dense_buckets'] > 0 for out in ranks[1])


def test_the_hook_averages_uneven_sparse_gradients(ranks):
    assert all(out['hook_ok'] for out in ranks[1])


def test_two_processes_train_interrupt_and_resume(ranks):
    root, (rank0, rank1) = ranks
    # Both ranks end with the same results and identical weights.
    assert rank0['full'] == rank1['full']
    assert rank0['resumed'] == rank1['resumed']
    for name, state in rank0['weights'].items():
        for key, value in state.items():
            assert torch.equal(value, rank1['weights'][name][key]), key
    # The resumed run reaches the uninterrupted one's result and weights.
    assert without_time(rank0['resumed']) == without_time(rank0['full'])
    for key, value in rank0['full_weights'].items():
        assert torch.equal(value, rank0['weights']['student'][key]), key
    assert rank0['full']['student']['epochs'] == CONFIG['epochs']


def test_rank_zero_alone_writes_the_run(ranks):
    root, (rank0, rank1) = ranks
    assert rank0['writes'] and not rank1['writes']
    expected = [(s, e) for s in ('teacher', 'student') for e in (1, 2, 3)]
    assert epochs_logged(root / 'full') == expected  # Each epoch once.
    # The cut run: up to stage 2's first epoch, then the resumed rest.
    assert epochs_logged(root / 'cut') == expected
    log = (root / 'cut' / 'log.jsonl').read_text()
    assert log.count('"event": "resume"') == 1
    metrics = json.loads((root / 'full' / 'metrics.json').read_text())
    assert without_time(metrics) == without_time(rank0['full'])


def test_cli_nproc_runs_torchrun(tmp_path, capfd):
    folder = write_promptmm_folder(tmp_path / 'data', tiny_data())
    config = tmp_path / 'config.json'
    config.write_text(json.dumps({**CONFIG, 'model': 'lightgcn',
                                  'batching': 'full'}))
    code = main(['train', str(folder), '--out', str(tmp_path / 'run'),
                 '--config', str(config), '--nproc', '2', '--threads', '1'])
    assert code == 0
    printed = capfd.readouterr().out
    assert printed.count('Run saved in') == 1  # Rank 0 alone reports.
    metrics = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
    assert metrics['lightgcn']['epochs'] == CONFIG['epochs']
    assert epochs_logged(tmp_path / 'run') == [('lightgcn', e)
                                                 for e in (1, 2, 3)]


def test_cli_nproc_is_refused_under_torchrun(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('WORLD_SIZE', '2')
    assert main(['train', str(tmp_path), '--out', str(tmp_path / 'run'),
                 '--nproc', '2']) == 2
    assert 'under torchrun, leave it out' in capsys.readouterr().err
