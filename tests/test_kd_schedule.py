import statistics

import pytest
import torch

from pmm_geo.data.synthetic import synthetic
from pmm_geo.nn.models.teacher import TeacherOutput
from pmm_geo.train import ConfigError, KDSchedule, Trainer, TrainConfig
from pmm_geo.train.stages import DistillStage


def test_a_plateau_switches_the_distillation_off_for_good():
    schedule = KDSchedule(patience=2)
    assert schedule.scale == 1.0
    # improved, stale, improved, stale, stale -> off (where early stopping
    # would have stopped the stage)
    steps = [schedule.step(s) for s in (True, False, True, False, False)]
    assert steps == [False, False, False, False, True]
    assert schedule.scale == 0.0
    assert not any(schedule.step(s, caught_up=True) for s in (True, False))
    assert schedule.scale == 0.0


def test_catching_up_with_the_teacher_fades_at_each_evaluation():
    schedule = KDSchedule(patience=100, factor=0.5, min_scale=0.1)
    steps = [schedule.step(improved, caught_up=caught_up)
             for improved, caught_up in ((True, True), (True, False),
                                         (False, True), (True, True),
                                         (True, True), (True, True))]
    assert steps == [True, False, True, True, True, False]
    assert schedule.scale == 0.0  # 1 -> .5 -> .25 -> .125 -> (.0625) 0

    schedule = KDSchedule(patience=3)
    schedule.step(True, caught_up=True)
    schedule.step(False)
    schedule.step(False)
    assert schedule.scale == 0.5
    # A fade restarts the count of stale evaluations.
    assert schedule.step(False) and schedule.scale == 0.0


def test_constant_schedule_and_state_round_trip():
    constant = KDSchedule('constant', patience=1)
    assert not any(constant.step(False, caught_up=True) for _ in range(5))
    assert constant.scale == 1.0
    assert repr(constant) == "KDSchedule(mode='constant')"

    schedule = KDSchedule(patience=5)
    schedule.step(False, caught_up=True)
    copy = KDSchedule(patience=5)
    copy.load_state_dict(schedule.state_dict())
    assert copy.scale == 0.5
    assert 'scale=0.5' in repr(copy)


@pytest.mark.parametrize('kwargs, match', [
    (dict(mode='linear'), 'mode'),
    (dict(patience=0), 'patience'),
    (dict(factor=1.0), 'factor'),
    (dict(min_scale=1.0), 'min_scale'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KDSchedule(**kwargs)


def test_config_keys():
    assert TrainConfig().kd_schedule == 'plateau'
    with pytest.raises(ConfigError, match="'kd_schedule'"):
        TrainConfig(kd_schedule='cosine')
    with pytest.raises(ConfigError,
                       match="'kd_patience' must be >= 0, got -1"):
        TrainConfig(kd_patience=-1)
    assert TrainConfig().kd_fade_margin == 0.1
    with pytest.raises(ConfigError,
                       match="'kd_fade_margin' must be >= 0, got -0.5"):
        TrainConfig(kd_fade_margin=-0.5)


@pytest.mark.parametrize('kd_patience,expected', [(0, 7), (3, 3)])
def test_kd_patience_reaches_the_schedule(kd_patience, expected):
    data = synthetic(num_users=40, num_items=30, num_interactions=300,
                     modalities={'image': 8}, seed=0)
    config = TrainConfig(model='promptmm', embedding_dim=8, student_dim=8,
                         num_layers=1, student_layers=1, patience=7,
                         kd_patience=kd_patience, batching='full')
    trainer = Trainer(data, config, quiet=True, plot=False)
    stages = trainer.stages()
    next(stages)
    student = next(stages)
    assert student.schedule.patience == expected



@pytest.mark.parametrize('margin', [0.0, 0.1])
def test_the_fade_waits_for_the_margin_over_the_teacher(margin):
    data = synthetic(num_users=40, num_items=30, num_interactions=300,
                     modalities={'image': 8}, seed=0)
    config = TrainConfig(model='promptmm', embedding_dim=8, student_dim=8,
                         num_layers=1, student_layers=1, batching='full',
                         kd_fade_margin=margin)
    trainer = Trainer(data, config, quiet=True, plot=False)
    stages = trainer.stages()
    next(stages)
    student = next(stages)
    student.teacher_score = 0.2
    bar = 0.2 * (1 + margin)
    # Below the bar: the weights stay; at the bar they halve.
    assert student.evaluated(bar - 1e-3, True) is None
    assert student.objective.pair_weight == config.kd_pair_weight
    message = student.evaluated(bar, True)
    assert f'{bar:.4f}' in message and f'{1 + margin:g} x' in message
    assert student.schedule.scale == 0.5
    assert student.objective.list_weight == 0.5 * config.kd_list_weight
    assert student.objective.emb_weight == 0.5 * config.kd_emb_weight


def _noise_run(data, model, seed, schedule):
    config = TrainConfig(
        model=model, seed=seed, epochs=100, batch_size=512, embedding_dim=16,
        student_dim=16, num_layers=1, student_layers=2, patience=10,
        lr=1e-12, student_lr=1e-2, num_list_negatives=5, batching='full',
        prompt_tuning=False, kd_schedule=schedule)
    results = Trainer(data, config, quiet=True, plot=False).fit()
    result = results['lightgcn' if model == 'lightgcn' else 'student']
    return result['val']['recall@20'], result['test']['recall@20']


def test_noise_teacher_cannot_pull_the_student_below_lightgcn(monkeypatch):
    # Dense data (40 train items per user); the teacher's targets are random
    # embeddings (a stand-in for a teacher whose signal is noise).
    num_users, num_items = 200, 200
    data = synthetic(num_users=num_users, num_items=num_items,
                     num_interactions=8000, modalities={'image': 8}, seed=0,
                     num_val_per_user=4, num_test_per_user=4)
    gen = torch.Generator().manual_seed(123)
    user = torch.randn(num_users, 16, generator=gen)
    item = torch.randn(num_items, 16, generator=gen)
    noise = TeacherOutput(user, item, {'image': user}, {'image': item})
    monkeypatch.setattr(DistillStage, 'teacher_targets',
                        lambda self, batch=None: noise)

    runs = {kind: [_noise_run(data, model, seed, schedule)
                   for seed in range(3)]
            for kind, model, schedule in (
                ('lightgcn', 'lightgcn', 'plateau'),
                ('plateau', 'promptmm', 'plateau'),
                ('constant', 'promptmm', 'constant'))}

    for split in (0, 1):  # validation, test Recall@20
        base = [run[split] for run in runs['lightgcn']]
        floor = statistics.mean(base) - statistics.stdev(base)
        # The default schedule ends within one std of LightGCN alone ...
        assert statistics.mean(r[split] for r in runs['plateau']) >= floor
        # ... while the paper's fixed weights follow the noise far below
        # it (the check above can fail).
        assert statistics.mean(r[split] for r in runs['constant']) < floor


def test_an_objective_change_restarts_the_optimizer_and_patience(
        monkeypatch):
    data = synthetic(num_users=60, num_items=40, num_interactions=600,
                     modalities={'image': 8}, seed=0)
    config = TrainConfig(epochs=4, batch_size=128, embedding_dim=8,
                         student_dim=8, num_layers=1, student_layers=1,
                         num_list_negatives=3, prompt_tuning=False,
                         batching='full', patience=2)
    steps = []  # Adam's step count of the student's tables at each eval
    original = DistillStage.optimizer

    def optimizer(self):
        self._seen = original(self)
        return self._seen

    def evaluated(self, score, improved):
        table = self.model.user_embedding.weight
        steps.append(int(self._seen.state[table]['step']))
        return 'a change' if len(steps) == 2 else None

    monkeypatch.setattr(DistillStage, 'optimizer', optimizer)
    monkeypatch.setattr(DistillStage, 'evaluated', evaluated)
    results = Trainer(data, config, quiet=True, plot=False).fit()
    per_epoch = steps[0]
    # Cleared after epoch 2: epoch 3 starts counting again from 0.
    assert per_epoch > 0
    assert steps == [per_epoch, 2 * per_epoch, per_epoch, 2 * per_epoch]
    # Patience 2 restarted at epoch 2: all 4 epochs ran whatever the scores.
    assert results['student']['epochs'] == 4


def test_clear_optimizer_state_covers_every_optimizer():
    from pmm_geo.train.stages.base import Optimizers, clear_optimizer_state
    dense = torch.nn.Parameter(torch.ones(3))
    table = torch.nn.Embedding(4, 2, sparse=True)
    adam = torch.optim.Adam([dense], lr=0.1)
    lazy = torch.optim.SparseAdam(table.parameters(), lr=0.1)
    both = Optimizers([adam, lazy])
    (dense.sum() + table(torch.tensor([1, 2])).sum()).backward()
    both.step()
    assert len(adam.state) == 1 and len(lazy.state) == 1
    clear_optimizer_state(both)
    assert len(adam.state) == 0 and len(lazy.state) == 0
    dense.grad = torch.ones(3)
    adam.step()
    clear_optimizer_state(adam)
    assert len(adam.state) == 0
