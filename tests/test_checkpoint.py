import json
import os

import pytest
import torch

from pmm_geo.data import EDGE_TYPE
from pmm_geo.data.synthetic import synthetic
from pmm_geo.train import (
    CheckpointError,
    ConfigError,
    Trainer,
    TrainConfig,
    TrainingInterrupted,
    data_fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from pmm_geo.train.checkpoint import atomic_write_text


def small_data(seed=0, **kwargs):
    args = dict(num_users=60, num_items=50, num_interactions=900,
                modalities={'image': 8, 'text': 4}, seed=seed)
    args.update(kwargs)
    return synthetic(**args)


# Config ---------------------------------------------------------------------

def test_config_json_round_trip(tmp_path):
    config = TrainConfig(model='lattice', seed=3, epochs=7, lr=5e-4,
                         ks=(5, 20), list_reweight=False, student_dim=16)
    path = tmp_path / 'config.json'
    config.to_json(path)
    assert TrainConfig.from_json(path) == config
    assert json.loads(path.read_text())['ks'] == [5, 20]
    # A partial file keeps the other defaults; ints are fine for floats.
    path.write_text('{"epochs": 3, "lr": 1}')
    loaded = TrainConfig.from_json(path)
    assert (loaded.epochs, loaded.lr) == (3, 1.0)
    assert loaded.replace(epochs=500, lr=2e-3) == TrainConfig()


@pytest.mark.parametrize('content, match', [
    ('{"learning_rate": 0.1}', "unknown config key 'learning_rate'"),
    ('{"epoch": 3}', "did you mean 'epochs'"),
    ('{"epochs": "3"}', "'epochs' must be int"),
    ('{"epochs": 2.5}', "'epochs' must be int"),
    ('{"prompt_tuning": 1}', "'prompt_tuning' must be bool"),
    ('{"epochs": 0}', "'epochs' must be >= 1"),
    ('{"model": "mf"}', "unknown model 'mf'"),
    ('{"ks": [10, 50]}', 'including 20'),
    ('{"teacher_dropout": 1.0}', 'teacher_dropout'),
    ('[1, 2]', 'expected a JSON object'),
    ('{"epochs": 3', 'not valid JSON'),
])
def test_config_file_errors_name_the_file_and_key(tmp_path, content, match):
    path = tmp_path / 'bad.json'
    path.write_text(content)
    with pytest.raises(ConfigError, match=match) as info:
        TrainConfig.from_json(path)
    assert str(path) in str(info.value)


def test_config_errors_in_code():
    with pytest.raises(ConfigError, match="'lr' must be > 0"):
        TrainConfig(lr=0)
    with pytest.raises(ConfigError, match='config file not found'):
        TrainConfig.from_json('/no/such/config.json')
    with pytest.raises(ConfigError, match="'student_init' must be one of"):
        TrainConfig(student_init='pretrained')
    with pytest.raises(ConfigError, match='needs student_dim == '
                       'embedding_dim, got 32 and 64'):
        TrainConfig(student_init='teacher', student_dim=32)


# Checkpoint files -----------------------------------------------------------

def test_save_load_weights_only_and_atomic(tmp_path):
    path = tmp_path / 'ckpt.pt'
    obj = {'state_dict': {'w': torch.arange(3.)}, 'config': {'a': 1},
           'history': [{'epoch': 1, 'loss': 0.5}]}
    save_checkpoint(obj, path)
    raw = torch.load(path, weights_only=True)
    assert torch.equal(raw['state_dict']['w'], torch.arange(3.))
    assert load_checkpoint(path)['history'] == obj['history']
    assert os.listdir(tmp_path) == ['ckpt.pt']  # No temporary file left.


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / 'ckpt.pt'
    save_checkpoint({'value': 1}, path)

    def broken_save(obj, f):
        f.write(b'partial')
        raise OSError('disk full')

    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(OSError, match='disk full'):
        save_checkpoint({'value': 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)['value'] == 1
    assert os.listdir(tmp_path) == ['ckpt.pt']
    atomic_write_text(tmp_path / 'a.txt', 'hello')
    assert (tmp_path / 'a.txt').read_text() == 'hello'


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match='no checkpoint at'):
        load_checkpoint(tmp_path / 'missing.pt')
    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match='cannot read'):
        load_checkpoint(garbage)
    torch.save({'x': 1}, tmp_path / 'other.pt')
    with pytest.raises(CheckpointError, match='not a pmm_geo'):
        load_checkpoint(tmp_path / 'other.pt')


def test_run_checkpoints_load_with_weights_only(tmp_path):
    data = small_data()
    config = TrainConfig(model='lightgcn', epochs=2, embedding_dim=8,
                         student_dim=8)
    Trainer(data, config, run_dir=tmp_path, quiet=True, plot=False).fit()
    for name in ('train_state.pt', 'lightgcn.pt'):
        obj = torch.load(tmp_path / name, weights_only=True)
        assert obj['fingerprint'] == data_fingerprint(data)
        assert obj['config'] == config.to_dict()
    model = torch.load(tmp_path / 'lightgcn.pt', weights_only=True)
    assert model['user_emb'].shape == (60, 8)
    assert torch.equal(model['train_edge_index'],
                       data[EDGE_TYPE].edge_index)


# Fingerprint ----------------------------------------------------------------

def test_fingerprint_tracks_edges_and_features():
    base = small_data()
    assert data_fingerprint(base) == data_fingerprint(small_data())
    assert data_fingerprint(base) != data_fingerprint(small_data(seed=1))

    moved = small_data()
    test = moved[EDGE_TYPE].test_edge_index
    test[1, 0] = (test[1, 0] + 1) % 50
    assert data_fingerprint(moved) != data_fingerprint(base)

    nudged = small_data()
    nudged['item'].image[5, 3] += 1e-3
    assert data_fingerprint(nudged) != data_fingerprint(base)

    renamed = small_data(modalities={'image': 8, 'audio': 4})
    assert data_fingerprint(renamed) != data_fingerprint(base)


def test_resume_on_other_data_fails_clearly(tmp_path, interrupt_after):
    config = TrainConfig(model='lightgcn', epochs=3, embedding_dim=8,
                         student_dim=8)
    with pytest.raises(TrainingInterrupted):
        Trainer(small_data(), config, run_dir=tmp_path, quiet=True,
                on_epoch_end=interrupt_after(1)).fit()
    with pytest.raises(CheckpointError, match='trained on different data'):
        Trainer(small_data(seed=5), config, run_dir=tmp_path,
                quiet=True).fit(resume=True)
    with pytest.raises(ConfigError, match='epochs'):
        Trainer(small_data(), config.replace(epochs=4), run_dir=tmp_path,
                quiet=True).fit(resume=True)
    # A second run cannot overwrite the first by accident.
    with pytest.raises(CheckpointError, match='already holds a run'):
        Trainer(small_data(), config, run_dir=tmp_path, quiet=True).fit()
    with pytest.raises(ConfigError, match='cut-off 100 exceeds'):
        Trainer(small_data(num_items=40), config.replace(ks=(20, 100)))
    # The default cut-offs fit themselves to a small catalogue.
    with pytest.warns(UserWarning, match='cut-off.s. 50 exceed the 40 '
                      'items: reporting @10, @20, selecting on recall@20'):
        assert Trainer(small_data(num_items=40), config).ks == (10, 20)
    with pytest.raises(CheckpointError, match='nothing to resume'):
        Trainer(small_data(), config, run_dir=tmp_path / 'new',
                quiet=True).fit(resume=True)


def test_fit_ks_to_the_catalogue():
    from pmm_geo.train.engine import fit_ks
    assert fit_ks((10, 20, 50), 1000) == ((10, 20, 50), 'recall@20')
    with pytest.warns(UserWarning, match='20, 50 exceed the 15 items: '
                      'reporting @10, selecting on recall@10'):
        assert fit_ks((10, 20, 50), 15) == ((10, ), 'recall@10')
    with pytest.warns(UserWarning, match='selecting on recall@5'):
        assert fit_ks((10, 20, 50), 5) == ((5, ), 'recall@5')
    with pytest.raises(ConfigError, match='cut-off 30 exceeds'):
        fit_ks((20, 30), 25)
