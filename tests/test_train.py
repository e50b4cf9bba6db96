import json
import math

import pytest
import torch

from pmm_geo import evaluate
from pmm_geo.data import EDGE_TYPE
from pmm_geo.data.synthetic import synthetic
from pmm_geo.train import (
    ConfigError,
    SELECT_METRIC,
    CheckpointError,
    ConfigError,
    Trainer,
    TrainConfig,
    TrainingInterrupted,
    load_checkpoint,
    load_recommender,
)

from test_subgraph import needs_sampling

KS = (10, 20, 50)
METRIC_KEYS = {f'{name}@{k}' for name in ('recall', 'ndcg', 'precision',
                                          'hit') for k in KS}


def small_data(seed=0, **kwargs):
    args = dict(num_users=160, num_items=120, num_interactions=3200,
                modalities={'image': 24, 'text': 12}, seed=seed)
    args.update(kwargs)
    return synthetic(**args)


def tiny_config(**changes):
    base = dict(epochs=4, batch_size=512, embedding_dim=32, student_dim=32,
                num_layers=2, student_layers=2, patience=10, lr=5e-3,
                student_lr=5e-3, num_list_negatives=5)
    base.update(changes)
    return TrainConfig(**base)


@pytest.fixture(scope='module')
def data():
    return small_data()


@pytest.fixture(scope='module')
def promptmm_run(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp('promptmm_run')
    trainer = Trainer(data, tiny_config(prompt_lr=1e-2), run_dir=run_dir,
                      quiet=True)
    results = trainer.fit()
    return run_dir, trainer, results


def test_metrics_schema_and_run_files(promptmm_run):
    run_dir, trainer, results = promptmm_run
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    assert metrics == json.loads(json.dumps(results))
    assert set(metrics) == {'teacher', 'student'}
    for entry in metrics.values():
        assert {'val', 'test', 'epochs', 'train_seconds', 'params'} <= set(
            entry)
        for split in ('val', 'test'):
            assert set(entry[split]) == METRIC_KEYS
            assert all(isinstance(v, float) and 0 <= v <= 1
                       for v in entry[split].values())
        assert isinstance(entry['epochs'], int) and entry['epochs'] == 4
        assert isinstance(entry['train_seconds'], float)
        assert entry['train_seconds'] > 0
        assert isinstance(entry['params'], int)
    U, I = 160, 120
    # The served student is nothing but its two id tables.
    assert metrics['student']['params'] == (U + I) * 32
    assert metrics['teacher']['params'] > metrics['student']['params']

    config = json.loads((run_dir / 'config.json').read_text())
    assert TrainConfig.from_dict(config) == trainer.config
    for name in ('teacher.pt', 'student.pt', 'train_state.pt', 'log.jsonl',
                 'curves.png'):
        assert (run_dir / name).is_file(), name
    records = [json.loads(line) for line in
               (run_dir / 'log.jsonl').read_text().splitlines()]
    events = [r['event'] for r in records]
    assert events[0] == 'start' and events[-1] == 'done'
    # Test metrics are computed once per stage, never during training.
    assert [r['stage'] for r in records if r['event'] == 'test'] == [
        'teacher', 'student']
    assert all('test' not in r for r in records if r['event'] == 'epoch')


def test_selection_on_validation_only(promptmm_run):
    _, trainer, results = promptmm_run
    for stage in ('teacher', 'student'):
        evals = [r for r in trainer.history
                 if r['stage'] == stage and 'val' in r]
        scores = [r['val'][SELECT_METRIC] for r in evals]
        best = evals[scores.index(max(scores))]  # First best epoch wins.
        assert results[stage]['best_epoch'] == best['epoch']
        assert results[stage]['val'] == best['val']


def test_restored_best_state_gives_reported_metrics(data, promptmm_run):
    _, trainer, results = promptmm_run
    student = trainer.modules['student']
    with torch.no_grad():
        user, item = student.get_embedding(data)
    assert evaluate(user, item, data, 'test') == pytest.approx(
        results['student']['test'])
    assert evaluate(user, item, data, 'val') == pytest.approx(
        results['student']['val'])


def test_student_beats_random_scores(data, promptmm_run):
    _, _, results = promptmm_run
    gen = torch.Generator().manual_seed(0)
    random = [evaluate(torch.randn(160, 32, generator=gen),
                       torch.randn(120, 32, generator=gen), data,
                       'test')['recall@20'] for _ in range(5)]
    random = sum(random) / len(random)
    student = results['student']['test']['recall@20']
    assert student > 1.5 * random, (student, random)
    assert student > random + 0.1, (student, random)


def test_prompt_learns_in_stage2_while_teacher_is_frozen(promptmm_run):
    run_dir, trainer, _ = promptmm_run
    stage1 = load_checkpoint(run_dir / 'teacher.pt')['state_dict']
    teacher = trainer.modules['teacher']
    after = teacher.state_dict()
    changed = {k for k in stage1 if not torch.equal(stage1[k], after[k])}
    prompt_params = {f'prompt.{n}' for n, _ in
                     teacher.prompt.named_parameters()}
    assert changed and changed <= prompt_params, changed
    assert not teacher.training
    for name, param in teacher.named_parameters():
        assert param.requires_grad == name.startswith('prompt.'), name
    tuned = load_checkpoint(run_dir / 'teacher.pt')['tuned_prompt_state_dict']
    assert all(torch.equal(tuned[k], teacher.prompt.state_dict()[k])
               for k in tuned)


def test_frozen_prompt_option(data):
    trainer = Trainer(data, tiny_config(epochs=2, prompt_tuning=False),
                      quiet=True)
    trainer.fit()
    teacher = trainer.modules['teacher']
    assert not any(p.requires_grad for p in teacher.parameters())


def test_teacher_item_graph_switch(data):
    config = tiny_config(epochs=2, teacher_item_graph=True, teacher_knn_k=5)
    trainer = Trainer(data, config, quiet=True)
    results = trainer.fit()
    teacher = trainer.modules['teacher']
    assert set(teacher.item_graphs) == {'image', 'text'}
    # Built once from the features: 5 binary neighbours per item.
    assert teacher.item_graphs['text'].edge_index.size(1) == 120 * 5
    assert torch.allclose(teacher.item_graphs['text'].edge_weight,
                          torch.full((120 * 5, ), 0.2))
    assert all(math.isfinite(v) for v in results['student']['val'].values())
    assert tiny_config().teacher_item_graph is True  # The default.
    plain = Trainer(data, tiny_config(epochs=1, teacher_item_graph=False),
                    quiet=True)
    plain.fit()
    assert plain.modules['teacher'].item_graphs is None


@needs_sampling
def test_teacher_item_graph_trains_sampled(data):
    # The graphs' rows come from the neighbours: no full-graph restriction.
    config = tiny_config(epochs=2, teacher_item_graph=True, teacher_knn_k=5,
                         batching='sampled')
    assert config.full_graph_only() == ''
    sampled = Trainer(data, config, quiet=True)
    assert sampled.batching == 'sampled'
    assert all(math.isfinite(v) for stage in ('teacher', 'student')
               for v in sampled.fit()[stage]['val'].values())


def test_recommend_never_returns_seen_items(data, promptmm_run):
    run_dir, trainer, _ = promptmm_run
    recommender = load_recommender(run_dir)
    users = torch.arange(160)
    top = recommender.recommend(users, k=50)
    assert top.shape == (160, 50)
    train = data[EDGE_TYPE].edge_index
    seen = set(zip(train[0].tolist(), train[1].tolist()))
    for user, items in zip(users.tolist(), top.tolist()):
        assert len(set(items)) == 50
        assert not any((user, i) in seen for i in items)
    # Exactly the student's own ranking (served from its checkpoint alone).
    expected = trainer.modules['student'].recommend(data, k=50)
    assert torch.equal(top, expected)


def test_recommend_pads_when_few_items_are_unseen(data, promptmm_run):
    run_dir, _, _ = promptmm_run
    recommender = load_recommender(run_dir)
    train = data[EDGE_TYPE].edge_index
    user = int(torch.bincount(train[0]).argmax())
    seen = int((train[0] == user).sum())
    top = recommender.recommend(torch.tensor([user, user]), k=120)
    assert (top[:, 120 - seen:] == -1).all()
    assert (top[:, :120 - seen] >= 0).all()


def results_without_time(results):
    return {model: {k: v for k, v in entry.items() if k != 'train_seconds'}
            for model, entry in results.items()}


RESUME_CONFIG = dict(eval_every=2, patience=10)


@pytest.fixture(scope='module')
def resume_data():
    return small_data(num_users=100, num_items=80, num_interactions=1600)


@pytest.fixture(scope='module')
def uninterrupted(resume_data, tmp_path_factory):
    trainer = Trainer(resume_data, tiny_config(**RESUME_CONFIG),
                      run_dir=tmp_path_factory.mktemp('full'), quiet=True,
                      plot=False)
    return trainer, trainer.fit()


@pytest.mark.parametrize('epochs_run', [2, 5])
def test_resume_reaches_the_same_result(resume_data, uninterrupted, tmp_path,
                                        interrupt_after, epochs_run):
    # Epochs 1-4 are stage 1, epochs 5-8 stage 2: interrupt in each stage
    # (a simulated kill right after that epoch's checkpoint).
    full, expected = uninterrupted
    config = tiny_config(**RESUME_CONFIG)
    with pytest.raises(TrainingInterrupted):
        Trainer(resume_data, config, run_dir=tmp_path, quiet=True,
                on_epoch_end=interrupt_after(epochs_run)).fit()
    state = load_checkpoint(tmp_path / 'train_state.pt')
    assert (state['stage'], state['epoch']) == (
        ('teacher', 2) if epochs_run == 2 else ('student', 1))
    assert (tmp_path / 'metrics.json').exists() == (epochs_run > 4)

    resumed = Trainer(resume_data, config, run_dir=tmp_path, quiet=True,
                      plot=False)
    got = resumed.fit(resume=True)
    assert results_without_time(got) == results_without_time(expected)
    for name in ('teacher', 'student'):
        a = full.modules[name].state_dict()
        b = resumed.modules[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert [(r['stage'], r['epoch']) for r in resumed.history] == [
        (r['stage'], r['epoch']) for r in full.history]


def test_same_seed_same_metrics_and_other_seed_differs(data):
    config = tiny_config(model='lightgcn', epochs=3)
    first = Trainer(data, config, quiet=True).fit()
    second = Trainer(data, config, quiet=True).fit()
    other = Trainer(data, config.replace(seed=1), quiet=True).fit()
    assert results_without_time(first) == results_without_time(second)
    assert results_without_time(first) != results_without_time(other)


def test_early_stopping_and_baselines(data, tmp_path):
    config = tiny_config(model='lightgcn', epochs=200, patience=2,
                         lr=1e-3, student_lr=1e-1)
    results = Trainer(data, config, run_dir=tmp_path / 'lgcn', quiet=True,
                      plot=False).fit()
    entry = results['lightgcn']
    assert entry['epochs'] < 200
    assert entry['epochs'] == entry['best_epoch'] + 2
    assert entry['params'] == (160 + 120) * 32
    assert (tmp_path / 'lgcn' / 'lightgcn.pt').is_file()

    results = Trainer(data, tiny_config(model='lattice', epochs=2,
                                        lattice_knn_k=5),
                      run_dir=tmp_path / 'lattice', quiet=True,
                      plot=False).fit()
    assert set(results) == {'lattice'}
    top = load_recommender(tmp_path / 'lattice').recommend(
        torch.tensor([0, 1]), k=5)
    assert top.shape == (2, 5)


def test_narrow_student_uses_embedding_kd_heads(data):
    trainer = Trainer(data, tiny_config(epochs=2, student_dim=8), quiet=True)
    results = trainer.fit()
    assert trainer.modules['student'].embedding_dim == 8
    heads = trainer.modules['objective'].emb_kd
    assert all(h.head is not None and h.head.weight.shape == (32, 8)
               for h in heads.values())
    assert results['student']['params'] == (160 + 120) * 8
    assert all(math.isfinite(v) for v in results['student']['test'].values())


def test_bad_data_is_refused(data):
    no_features = small_data(modalities={})
    with pytest.raises(ValueError, match='features'):
        Trainer(no_features, TrainConfig(model='promptmm'))
    Trainer(no_features, TrainConfig(model='lightgcn'))  # Fine without.
    no_val = small_data(num_val_per_user=0)
    with pytest.raises(ValueError, match='validation'):
        Trainer(no_val, TrainConfig(model='lightgcn'))


def test_on_stage_end_sees_each_stage_once_with_its_result(data):
    calls = []

    def record(name, result):
        # The stage is finished when the hook runs: its result is final.
        calls.append((name, result['best_epoch'], result['test']))

    results = Trainer(data, tiny_config(epochs=2), quiet=True,
                      on_stage_end=record).fit()
    assert [name for name, _, _ in calls] == ['teacher', 'student']
    for name, best_epoch, test in calls:
        assert best_epoch == results[name]['best_epoch']
        assert test == results[name]['test']


def test_student_init_from_teacher_starts_at_the_teacher(data):
    # One epoch of stage 2 with lr 0: the student's tables stay what they
    # were initialized with, the teacher's final fused embeddings.
    config = tiny_config(epochs=1, student_lr=1e-12, student_init='teacher',
                         kd_pair_weight=0.0, kd_list_weight=0.0,
                         kd_emb_weight=0.0, prompt_tuning=False)
    trainer = Trainer(data, config, quiet=True)
    trainer.fit()
    teacher, student = trainer.modules['teacher'], trainer.modules['student']
    teacher.eval()
    user, item = teacher.get_embedding(trainer.graph, trainer.features)
    assert torch.allclose(student.user_embedding.weight, user, atol=1e-6)
    assert torch.allclose(student.item_embedding.weight, item, atol=1e-6)

    fresh = Trainer(data, config.replace(student_init='fresh'),
                    quiet=True)
    fresh.fit()
    assert not torch.allclose(fresh.modules['student'].user_embedding.weight,
                              user, atol=1e-2)


def test_on_epoch_end_can_end_a_stage(data):
    # Returning True ends the stage after that epoch, as early stopping
    # does; with no evaluation yet (eval_every=5), the state is validated
    # there so that the stage has a selected epoch to test.
    seen = []

    def stop_at_three(stage, record):
        seen.append((stage, record['epoch'], 'val' in record))
        return record['epoch'] == 3

    trainer = Trainer(data, tiny_config(model='lightgcn', epochs=10,
                                        eval_every=5),
                      quiet=True, on_epoch_end=stop_at_three)
    results = trainer.fit()
    assert seen == [('lightgcn', 1, False), ('lightgcn', 2, False),
                    ('lightgcn', 3, False)]
    assert results['lightgcn']['epochs'] == 3
    assert results['lightgcn']['best_epoch'] == 3
    assert trainer.history[-1]['val'] == results['lightgcn']['val']


def test_load_model_rebuilds_every_saved_model(data, promptmm_run, tmp_path):
    from pmm_geo import load_graph, load_model
    from pmm_geo.data import modalities
    from pmm_geo.nn import LATTICE, LightGCNStudent, MultimodalTeacher

    run_dir, trainer, _ = promptmm_run
    features = {m: data['item'][m] for m in modalities(data)}
    graph = load_graph(run_dir)
    assert torch.equal(graph.edge_index, data[EDGE_TYPE].edge_index)
    student = load_model(run_dir)  # The served model: the student.
    assert type(student) is LightGCNStudent and not student.training
    assert repr(student) == repr(trainer.modules['student'])
    ckpt = load_checkpoint(run_dir / 'student.pt')
    with torch.no_grad():
        user, item = student.get_embedding(graph)
    assert torch.equal(user, ckpt['user_emb'])
    assert torch.equal(item, ckpt['item_emb'])
    top = student.recommend(graph, k=10, user_index=torch.tensor([3, 0]))
    assert torch.equal(top, load_recommender(run_dir).recommend(
        torch.tensor([3, 0]), k=10))

    teacher = load_model(run_dir, 'teacher')  # Stage 1's selected state.
    assert type(teacher) is MultimodalTeacher
    ckpt = load_checkpoint(run_dir / 'teacher.pt')
    with torch.no_grad():
        user, item = teacher.get_embedding(graph, features)
    assert torch.allclose(user, ckpt['user_emb'], atol=1e-6)
    assert torch.allclose(item, ckpt['item_emb'], atol=1e-6)

    Trainer(data, tiny_config(model='lattice', epochs=1, lattice_knn_k=5),
            run_dir=tmp_path, quiet=True, plot=False).fit()
    lattice = load_model(tmp_path)  # Frozen kNN graphs from the file.
    assert type(lattice) is LATTICE
    ckpt = load_checkpoint(tmp_path / 'lattice.pt')
    assert ckpt['init']['features'] == {'image': 24, 'text': 12}
    with torch.no_grad():
        user, item = lattice.get_embedding(load_graph(tmp_path), features)
    assert torch.allclose(user, ckpt['user_emb'], atol=1e-6)
    assert torch.allclose(item, ckpt['item_emb'], atol=1e-6)
    with pytest.raises(CheckpointError, match="no model 'student'"):
        load_model(tmp_path, 'student')


def test_student_item_graph_trains_saves_and_serves(data, tmp_path):
    # The student's frozen item graph is saved with it: load_model and
    # load_recommender serve it without features or the data directory.
    from pmm_geo import load_graph, load_model
    trainer = Trainer(data, tiny_config(epochs=2, student_item_graph=True,
                                        student_knn_k=3),
                      run_dir=tmp_path, quiet=True, plot=False)
    trainer.fit()
    trained = trainer.modules['student']
    assert trained.item_graph is not None
    assert trained.item_graph.edge_index.size(1) == 2 * 3 * \
        data['item'].num_nodes  # Two modalities, k = 3 each.
    student = load_model(tmp_path)
    assert repr(student) == repr(trained)
    ckpt = load_checkpoint(tmp_path / 'student.pt')
    with torch.no_grad():
        user, item = student.get_embedding(load_graph(tmp_path))
    assert torch.equal(user, ckpt['user_emb'])
    assert torch.equal(item, ckpt['item_emb'])
    users = torch.tensor([1, 4])
    assert torch.equal(load_recommender(tmp_path).recommend(users, k=5),
                       student.recommend(load_graph(tmp_path), k=5,
                                         user_index=users))
    with pytest.raises(ConfigError, match="'student_knn_k' must be >= 1"):
        tiny_config(student_item_graph=True, student_knn_k=0)


def test_a_registered_model_trains_exports_and_loads(data, tmp_path):
    # Adding a model is one ModelSpec: the config, the command line and
    # the loader all read the registry.
    from pmm_geo import load_model
    from pmm_geo.cli import build_parser
    from pmm_geo.nn import LightGCNStudent
    from pmm_geo.train import MODELS, ModelSpec, model_names, register_model
    from pmm_geo.train.stages import LightGCNStage

    class WideStage(LightGCNStage):
        name = 'wide'

    with pytest.raises(ConfigError, match="unknown model 'wide'"):
        TrainConfig(model='wide')
    register_model(ModelSpec('wide', (WideStage, ), needs_features=False))
    try:
        assert model_names()[-1] == 'wide'
        args = build_parser().parse_args(['train', 'd', '--out', 'o',
                                          '--model', 'wide'])
        assert args.model == 'wide'
        results = Trainer(data, tiny_config(model='wide', epochs=1),
                          run_dir=tmp_path, quiet=True, plot=False).fit()
        assert set(results) == {'wide'}
        assert type(load_model(tmp_path)) is LightGCNStudent
        with pytest.raises(ValueError, match='already registered'):
            register_model(ModelSpec('wide', (WideStage, ), False))
    finally:
        MODELS.pop('wide')


def test_teacher_refresh_tunes_the_prompt_every_k_steps(data):
    # Full batching: the teacher's forward (with gradient to the prompt)
    # runs at steps 0, k, 2k, ... of an epoch; in between the student
    # distils from those targets, detached, and the prompt stays put.
    from pmm_geo.train import train_step
    from pmm_geo.train.stages.base import Batch
    trainer = Trainer(data, tiny_config(teacher_refresh=3, batching='full'),
                      quiet=True)
    stages = trainer.stages()
    next(stages)
    stage = next(stages)
    optimizer = stage.optimizer()
    stage.train_mode()
    prompt = [p for p in stage.modules['teacher'].prompt.parameters()
              if p.requires_grad]
    users, pos, neg = next(trainer.sampler.epoch_batches(64,
                                                         trainer.generator))
    for index in range(7):
        before = [p.detach().clone() for p in prompt]
        targets = stage.teacher_targets(Batch(stage.ctx.graph, users, pos,
                                              neg, None, index))
        assert targets.user.requires_grad == (index % 3 == 0), index
        if index % 3 == 0:
            refreshed = targets.user.detach().clone()
        else:  # The last refresh's targets, before the prompt moved.
            assert torch.equal(targets.user, refreshed)
        train_step(stage, optimizer, users, pos, neg, index)
        moved = any(not torch.equal(b, p) for b, p in zip(before, prompt))
        assert moved == (index % 3 == 0), index
