import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pmm_geo.cli import main
from pmm_geo.data import EDGE_TYPE
from pmm_geo.data.synthetic import synthetic

NUM_USERS, NUM_ITEMS = 80, 60


def write_promptmm_folder(root, data):
    root.mkdir(parents=True, exist_ok=True)
    store = data[EDGE_TYPE]
    for split, key in (('train', 'edge_index'), ('val', 'val_edge_index'),
                       ('test', 'test_edge_index')):
        lists = {}
        for user, item in store[key].t().tolist():
            lists.setdefault(str(user), []).append(item)
        (root / f'{split}.json').write_text(json.dumps(lists))
    for m in ('image', 'text'):
        np.save(root / f'{m}_feat.npy', data['item'][m].numpy())
    return root


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    data = synthetic(num_users=NUM_USERS, num_items=NUM_ITEMS,
                     num_interactions=1400, modalities={'image': 12,
                                                        'text': 6}, seed=0)
    root = write_promptmm_folder(tmp_path_factory.mktemp('data'), data)
    return root, data


@pytest.fixture(scope='module')
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('config') / 'tiny.json'
    path.write_text(json.dumps({
        'epochs': 2, 'batch_size': 512, 'embedding_dim': 16,
        'student_dim': 16, 'num_layers': 1, 'student_layers': 1,
        'num_list_negatives': 4}))
    return path


@pytest.fixture(scope='module')
def trained_run(dataset, config_file, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp('runs') / 'promptmm'
    code = main(['train', str(dataset[0]), '--out', str(run_dir),
                 '--config', str(config_file), '--seed', '1', '--quiet'])
    assert code == 0
    return run_dir


def test_train_writes_the_run(trained_run, config_file):
    config = json.loads((trained_run / 'config.json').read_text())
    assert config['seed'] == 1 and config['epochs'] == 2  # CLI over file.
    assert config['model'] == 'promptmm'
    metrics = json.loads((trained_run / 'metrics.json').read_text())
    assert set(metrics) == {'teacher', 'student'}
    assert {'recall@20', 'ndcg@20', 'precision@20', 'hit@20'} <= set(
        metrics['student']['test'])
    for name in ('teacher.pt', 'student.pt', 'log.jsonl', 'train_state.pt'):
        assert (trained_run / name).is_file()


def test_evaluate_prints_the_saved_metrics(trained_run, capsys):
    assert main(['evaluate', str(trained_run)]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((trained_run / 'metrics.json').read_text())
    student_test = [line for line in out.splitlines()
                    if line.split()[:2] == ['student', 'test']]
    assert len(student_test) == 1
    assert f"{metrics['student']['test']['recall@20']:.4f}" in \
        student_test[0]
    assert main(['evaluate', str(trained_run), '--json']) == 0
    assert json.loads(capsys.readouterr().out) == metrics


def test_recommend_returns_unseen_items(trained_run, dataset, capsys):
    assert main(['recommend', str(trained_run), '--users', '0', '5', '7',
                 '-k', '10']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    train = dataset[1][EDGE_TYPE].edge_index
    assert [line.split(':')[0] for line in lines] == [
        'user 0', 'user 5', 'user 7']
    for user, line in zip((0, 5, 7), lines):
        items = [int(i) for i in line.split(':')[1].split()]
        assert len(items) == len(set(items)) == 10
        seen = set(train[1][train[0] == user].tolist())
        assert not seen & set(items)


def test_recommend_reads_no_data(trained_run, tmp_path, capsys):
    # The run directory alone (data folder gone) is enough to serve.
    moved = tmp_path / 'moved'
    os.makedirs(moved)
    for name in ('config.json', 'student.pt'):
        (moved / name).write_bytes((trained_run / name).read_bytes())
    assert main(['recommend', str(moved), '--users', '3', '-k', '4']) == 0
    assert main(['recommend', str(trained_run), '--users', '3', '-k',
                 '4']) == 0
    first, second = capsys.readouterr().out.strip().splitlines()
    assert first == second


def test_resume_of_a_finished_run_keeps_its_metrics(trained_run, dataset,
                                                    capsys):
    before = (trained_run / 'metrics.json').read_text()
    assert main(['train', str(dataset[0]), '--out', str(trained_run),
                 '--resume', '--quiet']) == 0
    assert json.loads((trained_run / 'metrics.json').read_text()) == \
        json.loads(before)


def run_bad(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert len(err.strip().splitlines()) == 1, err
    assert 'Traceback' not in err
    return err


def test_bad_inputs_give_one_line_errors(trained_run, dataset, config_file,
                                         tmp_path, capsys):
    data_dir = str(dataset[0])
    err = run_bad(['train', str(tmp_path / 'missing'), '--out',
                   str(tmp_path / 'r')], capsys)
    assert 'DATA_DIR not found' in err
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert 'no config.json' in run_bad(['recommend', str(empty), '--users',
                                        '0'], capsys)
    assert 'no metrics.json' in run_bad(['evaluate', str(empty)], capsys)
    assert 'nothing to resume' in run_bad(
        ['train', data_dir, '--out', str(empty), '--resume'], capsys)
    assert '-k must be >= 1' in run_bad(
        ['recommend', str(trained_run), '--users', '0', '-k', '0'], capsys)
    assert f'unknown user {NUM_USERS}' in run_bad(
        ['recommend', str(trained_run), '--users', '0', str(NUM_USERS)],
        capsys)
    assert 'unknown user -1' in run_bad(
        ['recommend', str(trained_run), '--users', '-1'], capsys)
    assert 'must be in 1..60' in run_bad(
        ['recommend', str(trained_run), '--users', '0', '-k', '61'], capsys)
    bad_config = tmp_path / 'bad.json'
    bad_config.write_text('{"epochs": 2, "learning_rate": 0.1}')
    err = run_bad(['train', data_dir, '--out', str(tmp_path / 'r'),
                   '--config', str(bad_config)], capsys)
    assert "unknown config key 'learning_rate'" in err and 'bad.json' in err
    assert 'already holds a run' in run_bad(
        ['train', data_dir, '--out', str(trained_run)], capsys)
    assert 'seed differs' in run_bad(
        ['train', data_dir, '--out', str(trained_run), '--resume', '--seed',
         '2'], capsys)
    assert 'invalid choice' in run_bad(
        ['train', data_dir, '--out', str(tmp_path / 'r'), '--model', 'mf'],
        capsys)
    assert 'required' in run_bad(['recommend', str(trained_run)], capsys)
    broken = tmp_path / 'broken'
    broken.mkdir()
    (broken / 'train.json').write_text('{"0": [1, 2}')
    assert 'train.json' in run_bad(
        ['train', str(broken), '--out', str(tmp_path / 'r2')], capsys)


def test_python_dash_m_entry_point(tmp_path):
    result = subprocess.run(
        [sys.executable, '-m', 'pmm_geo', 'evaluate', str(tmp_path / 'x')],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip() == (f'pmm-geo evaluate: error: RUN_DIR not '
                                     f"found: {tmp_path / 'x'}")


def test_threads_option_sets_torch_threads(dataset, config_file, tmp_path,
                                           monkeypatch, capsys):
    import torch

    from pmm_geo.train import threads as threads_module

    before = torch.get_num_threads()
    monkeypatch.setattr(threads_module, 'available_cores', lambda: 2)
    try:
        code = main(['train', str(dataset[0]), '--out', str(tmp_path / 'a'),
                     '--config', str(config_file), '--epochs', '1',
                     '--quiet', '--threads', '1'])
        assert code == 0 and torch.get_num_threads() == 1
        assert 'warning' not in capsys.readouterr().err
        # Three threads on two cores: honoured, with one warning line.
        code = main(['train', str(dataset[0]), '--out', str(tmp_path / 'b'),
                     '--config', str(config_file), '--epochs', '1',
                     '--quiet', '--threads', '3'])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 0 and torch.get_num_threads() == 3
        assert err == ['pmm-geo: warning: --threads 3 oversubscribes the 2 '
                       'cores this process may use (sparse kernels then '
                       'spin); use 2']
    finally:
        torch.set_num_threads(before)


# Rough edges ##################################################################


def test_sigterm_stops_like_ctrl_c(dataset, tmp_path, capsys):
    import signal
    import time
    config = tmp_path / 'long.json'
    config.write_text(json.dumps({
        'epochs': 60, 'batch_size': 64, 'embedding_dim': 8,
        'student_dim': 8, 'num_layers': 1, 'student_layers': 1,
        'patience': 60}))
    run_dir = tmp_path / 'run'
    proc = subprocess.Popen(
        [sys.executable, '-m', 'pmm_geo', 'train', str(dataset[0]), '--out',
         str(run_dir), '--model', 'lightgcn', '--config', str(config),
         '--quiet', '--threads', '1'], stderr=subprocess.PIPE, text=True)
    log = run_dir / 'log.jsonl'
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not (
            log.is_file() and '"epoch"' in log.read_text()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == (
        'pmm-geo train: terminated; continue with --resume')
    # And it resumes (from the last saved epoch, or from the start when the
    # signal came before the first was saved).
    code = main(['train', str(dataset[0]), '--out', str(run_dir),
                 '--resume', '--quiet'])
    assert code == 0, capsys.readouterr().err
    assert (run_dir / 'metrics.json').is_file()


def test_resume_checks_the_data_before_the_config(trained_run, tmp_path,
                                                  capsys):
    other = synthetic(num_users=NUM_USERS, num_items=NUM_ITEMS,
                      num_interactions=1400, modalities={'image': 12,
                                                         'text': 6}, seed=5)
    other_dir = write_promptmm_folder(tmp_path / 'other', other)
    err = run_bad(['train', str(other_dir), '--out', str(trained_run),
                   '--resume', '--seed', '2'], capsys)
    assert 'trained on different data' in err and 'seed' not in err


def test_run_files_follow_the_umask(trained_run, tmp_path):
    from pmm_geo.train.checkpoint import atomic_write_text, save_checkpoint
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ('config.json', 'metrics.json', 'log.jsonl', 'student.pt',
                 'teacher.pt', 'train_state.pt'):
        assert (trained_run / name).stat().st_mode & 0o777 == \
            0o666 & ~umask, name
    for mask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        old = os.umask(mask)
        try:
            atomic_write_text(str(tmp_path / f'{mask}.json'), '{}')
            save_checkpoint({'x': 1}, str(tmp_path / f'{mask}.pt'))
        finally:
            os.umask(old)
        for suffix in ('json', 'pt'):
            assert (tmp_path / f'{mask}.{suffix}').stat().st_mode & 0o777 \
                == mode


@pytest.mark.parametrize('script,option', [
    ('train_electronics.py', '--root'),
    ('distill_into_pyg_lightgcn.py', '--data')])
def test_examples_report_a_bad_path_in_one_line(script, option, tmp_path):
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / 'examples' / script
    result = subprocess.run([sys.executable, str(path), option,
                             str(tmp_path / 'nope')], capture_output=True,
                            text=True, timeout=300,
                            env={**os.environ, 'PYTHONPATH': str(
                                path.parents[1])})
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"{script}: error: {tmp_path / 'nope'}: field 'root': dataset "
        f"folder '{tmp_path / 'nope'}' does not exist")


def test_no_sparse_beta_warning(synthetic_data):
    import warnings

    from pmm_geo.nn import LightGCNStudent
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        for layout in ('edge_index_fused', 'csr'):
            student = LightGCNStudent(120, 80, 8, layout=layout)
            user, item = student.get_embedding(synthetic_data)
            (user.sum() + item.sum()).backward()


def test_a_signal_during_a_checkpoint_write_waits_for_the_file(tmp_path):
    import signal
    from pmm_geo.train.checkpoint import load_checkpoint, save_checkpoint
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda *_: seen.append('raised'))
    path = tmp_path / 'state.pt'

    class Tensorish(dict):  # sends SIGTERM to itself while being pickled
        def __reduce__(self):
            signal.raise_signal(signal.SIGTERM)
            seen.append(f'still writing after {len(seen)} handler calls')
            return (dict, (dict(self),))
    try:
        save_checkpoint({'kind': 'x', 'payload': Tensorish(a=1)}, path)
    finally:
        signal.signal(signal.SIGTERM, previous)
    # The handler ran once, after the write; the file is whole.
    assert seen == ['still writing after 0 handler calls', 'raised']
    assert load_checkpoint(path)['payload'] == {'a': 1}
