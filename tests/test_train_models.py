r"""The engine with FREEDOM and with the LATTICE teacher: training, export,
loading, resuming, the command line."""
import math

import pytest
import torch

from pmm_geo import load_graph, load_model
from pmm_geo.cli import CommandError, build_parser
from pmm_geo.data import modalities
from pmm_geo.nn import FREEDOM, LATTICETeacher, LightGCNStudent
from pmm_geo.train import (ConfigError, Trainer, TrainConfig,
                           TrainingInterrupted, load_checkpoint,
                           load_recommender)

from test_subgraph import needs_sampling
from test_train import results_without_time, small_data, tiny_config


@pytest.fixture(scope='module')
def data():
    return small_data()


def test_freedom_trains_exports_loads_and_serves_without_features(
        data, tmp_path):
    config = tiny_config(model='freedom', epochs=3, freedom_knn_k=5)
    trainer = Trainer(data, config, run_dir=tmp_path, quiet=True,
                      plot=False)
    results = trainer.fit()
    assert set(results) == {'freedom'}
    assert all(math.isfinite(v) for v in results['freedom']['test'].values())
    model = load_model(tmp_path)  # The frozen graph comes from the file.
    assert type(model) is FREEDOM and not model.training
    ckpt = load_checkpoint(tmp_path / 'freedom.pt')
    assert ckpt['init']['features'] == {'image': 24, 'text': 12}
    assert ckpt['needs_features'] is False
    with torch.no_grad():
        user, item = model.get_embedding(load_graph(tmp_path))
    assert torch.allclose(user, ckpt['user_emb'], atol=1e-6)
    assert torch.allclose(item, ckpt['item_emb'], atol=1e-6)
    top = load_recommender(tmp_path).recommend(torch.tensor([0, 5]), k=10)
    assert top.shape == (2, 10)


def test_freedom_resumes_to_the_same_result(data, tmp_path,
                                            interrupt_after):
    # Each epoch prunes the graph from the run's generator: a resumed run
    # must draw the same graphs.
    config = tiny_config(model='freedom', epochs=4, freedom_knn_k=5)
    full = Trainer(data, config, run_dir=tmp_path / 'full', quiet=True,
                   plot=False)
    expected = full.fit()
    with pytest.raises(TrainingInterrupted):
        Trainer(data, config, run_dir=tmp_path / 'cut', quiet=True,
                on_epoch_end=interrupt_after(2)).fit()
    resumed = Trainer(data, config, run_dir=tmp_path / 'cut', quiet=True,
                      plot=False)
    got = resumed.fit(resume=True)
    assert results_without_time(got) == results_without_time(expected)
    a = full.modules['freedom'].state_dict()
    b = resumed.modules['freedom'].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lattice_teacher_distils_and_loads(data, tmp_path):
    config = tiny_config(teacher='lattice', epochs=3, lattice_knn_k=5)
    trainer = Trainer(data, config, run_dir=tmp_path, quiet=True,
                      plot=False)
    results = trainer.fit()
    assert set(results) == {'teacher', 'student'}
    assert all(math.isfinite(v) for v in results['student']['val'].values())
    teacher = trainer.modules['teacher']
    assert type(teacher) is LATTICETeacher
    # Stage 2 tuned the prompt of the frozen LATTICE teacher.
    saved = load_checkpoint(tmp_path / 'teacher.pt')
    tuned = saved['tuned_prompt_state_dict']
    assert any(not torch.equal(tuned[k], saved['state_dict'][f'prompt.{k}'])
               for k in tuned)
    assert all(not p.requires_grad for n, p in teacher.named_parameters()
               if not n.startswith('prompt.'))

    loaded = load_model(tmp_path, 'teacher')
    assert type(loaded) is LATTICETeacher
    features = {m: data['item'][m] for m in modalities(data)}
    with torch.no_grad():
        user, item = loaded.get_embedding(load_graph(tmp_path), features)
    assert torch.allclose(user, saved['user_emb'], atol=1e-5)
    assert torch.allclose(item, saved['item_emb'], atol=1e-5)
    assert type(load_model(tmp_path)) is LightGCNStudent


def test_command_line_choices():
    args = build_parser().parse_args(['train', 'd', '--out', 'o', '--model',
                                      'freedom'])
    assert args.model == 'freedom'
    args = build_parser().parse_args(['train', 'd', '--out', 'o',
                                      '--teacher', 'lattice'])
    assert args.teacher == 'lattice'
    with pytest.raises(CommandError, match="--teacher: invalid choice: "
                       "'freedom'"):
        build_parser().parse_args(['train', 'd', '--out', 'o', '--teacher',
                                   'freedom'])


def test_teacher_prune_ratio_trains_on_pruned_graphs(data, monkeypatch):
    # Each stage-1 epoch propagates over FREEDOM's pruned graph: 20 % of
    # the edges at ratio 0.8, a fresh draw every epoch; stage 2 and
    # evaluation see the full graph.
    from pmm_geo.data.adjacency import as_adjacency
    from pmm_geo.train.stages import base
    num_edges = as_adjacency(data).num_edges
    drawn = []
    prune = base.degree_sensitive_prune

    def spy(adj, ratio, generator=None):
        assert adj.num_edges == num_edges and ratio == 0.8
        kept = prune(adj, ratio, generator)
        drawn.append(kept.edge_index.clone())
        return kept

    monkeypatch.setattr(base, 'degree_sensitive_prune', spy)
    config = tiny_config(epochs=3, teacher_prune_ratio=0.8,
                         teacher_knn_k=5)
    trainer = Trainer(data, config, quiet=True, plot=False)
    assert trainer.batching == 'full'
    results = trainer.fit()
    assert len(drawn) == 3  # Once per teacher epoch, never in stage 2.
    assert all(e.size(1) == int(num_edges * (1. - 0.8)) for e in drawn)
    assert abs(drawn[0].size(1) - 0.2 * num_edges) <= 1
    assert not torch.equal(drawn[0], drawn[1])
    assert all(math.isfinite(v) for v in results['student']['val'].values())
    # The same seed draws the same graphs (the run's generator).
    first, drawn[:] = list(drawn), []
    repeat = Trainer(data, config, quiet=True, plot=False).fit()
    assert all(torch.equal(a, b) for a, b in zip(first, drawn))
    assert results_without_time(repeat) == results_without_time(results)


def test_teacher_prune_ratio_bad_values():
    assert TrainConfig().teacher_prune_ratio == 0.5  # The default.
    for ratio in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="'teacher_prune_ratio' must"):
            tiny_config(teacher_prune_ratio=ratio)


@needs_sampling
def test_teacher_prune_ratio_leaves_sampled_subgraphs_as_they_are(
        data, monkeypatch):
    from pmm_geo.train.stages import base
    monkeypatch.setattr(base, 'degree_sensitive_prune', None)  # Unused.
    config = tiny_config(epochs=2, teacher_prune_ratio=0.5,
                         batching='sampled', teacher_knn_k=5)
    assert config.full_graph_only() == ''
    results = Trainer(data, config, quiet=True, plot=False).fit()
    assert all(math.isfinite(v) for v in results['teacher']['val'].values())
