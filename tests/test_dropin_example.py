import importlib.util
from pathlib import Path

import pytest
import torch
from torch_geometric.nn.models import LightGCN

from pmm_geo.data import from_arrays
from pmm_geo.data.synthetic import synthetic

EXAMPLE = (Path(__file__).resolve().parents[1] / 'examples' /
           'distill_into_pyg_lightgcn.py')


@pytest.fixture(scope='module')
def example():
    spec = importlib.util.spec_from_file_location('distill_example', EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module



def test_homogeneous_adj_t_is_pyg_lightgcn_normalization(example):
    # pmm_geo's cached weights, handed to LightGCN(normalize=False), give
    # exactly PyG's default LightGCN (gcn_norm on the undirected graph).
    edge_index = torch.tensor([[0, 0, 1, 2, 2, 3], [0, 2, 1, 1, 2, 0]])
    data = from_arrays(edge_index, num_users=4, num_items=3)
    adj_t = example.homogeneous_adj_t(data)
    homo = torch.stack([edge_index[0], edge_index[1] + 4])
    homo = torch.cat([homo, homo.flip(0)], dim=1)

    default = LightGCN(7, 5, num_layers=2)
    prenormalized = LightGCN(7, 5, num_layers=2, normalize=False)
    prenormalized.load_state_dict(default.state_dict())
    assert torch.allclose(prenormalized.get_embedding(adj_t),
                          default.get_embedding(homo), atol=1e-6)
    # And the matrix is the symmetric D^-1/2 A D^-1/2, by hand for (0, 0):
    # user 0 has degree 2, item 0 has degree 2.
    assert adj_t.to_dense()[0, 4] == pytest.approx(0.5)
    assert torch.equal(adj_t.to_dense(), adj_t.to_dense().t())


def test_distilled_pyg_lightgcn_beats_random(example):
    data = synthetic(num_users=300, num_items=200, num_interactions=5000,
                     seed=0)
    metrics = example.main(data, teacher_epochs=5, student_epochs=10,
                           verbose=False, seed=0)
    model = metrics['model']
    # The served student is PyG's own class, nothing from pmm_geo.
    assert type(model) is LightGCN
    assert not any(type(m).__module__.startswith('pmm_geo')
                   for m in model.modules())

    loss = metrics['loss']
    assert len(loss) == 10 and loss[-1] < 0.75 * loss[0], loss
    random = metrics['random']['recall@20']
    assert metrics['teacher']['recall@20'] > 2 * random, metrics['teacher']
    assert metrics['student']['recall@20'] > 2 * random, metrics['student']
    assert metrics['student_test']['recall@20'] > 2 * random


def test_engine_and_example_train_on_the_same_objective(example):
    # The engine's stage-2 loss and the example's are one module, and on a
    # fixed batch they give the same loss, parts and gradients (the student
    # tables copied into PyG's LightGCN, the same candidate lists).
    from pmm_geo.nn import PromptMMObjective
    from pmm_geo.train import Trainer, TrainConfig
    from pmm_geo.train.stages import DistillStage, TeacherStage

    data = synthetic(num_users=120, num_items=90, num_interactions=1500,
                     seed=0)
    # The example's student is PyG's plain LightGCN: no item-item graph.
    config = TrainConfig(embedding_dim=16, student_dim=8, num_layers=2,
                         student_layers=2, num_list_negatives=5,
                         prompt_tuning=False, kd_emb_weight=0.5,
                         student_item_graph=False)
    ctx = Trainer(data, config, quiet=True, plot=False).context
    teacher = TeacherStage(ctx)
    teacher.build({})
    stage = DistillStage(ctx)
    stage.build(teacher.modules)
    targets = stage.teacher_targets()
    objective = example.build_objective(targets, 8, {
        'pair': config.kd_pair_weight, 'list': config.kd_list_weight,
        'emb': config.kd_emb_weight, 'reg': config.reg_weight, 'tau': 1.,
        'one_sided': config.kd_one_sided})
    assert type(stage.objective) is PromptMMObjective
    assert type(objective) is PromptMMObjective
    objective.load_state_dict(stage.objective.state_dict())  # Same heads.

    student = stage.modules['student']
    num_users = data['user'].num_nodes
    pyg = LightGCN(num_users + data['item'].num_nodes, 8, num_layers=2,
                   normalize=False)
    with torch.no_grad():
        pyg.embedding.weight.copy_(torch.cat([student.user_embedding.weight,
                                              student.item_embedding.weight]))
    users, pos, neg = next(ctx.sampler.epoch_batches(
        64, generator=torch.Generator().manual_seed(1)))
    ctx.generator.manual_seed(2)
    engine_loss, engine_parts = stage.step(stage.batch(users, pos, neg, 0))
    lists = ctx.sampler.candidate_lists(
        users, pos, 5, generator=torch.Generator().manual_seed(2))
    loss, parts = example.batch_loss(objective, pyg,
                                     example.homogeneous_adj_t(data),
                                     targets, users, pos, neg, lists)

    assert set(parts) == set(engine_parts) == {'bpr', 'pair_kd', 'list_kd',
                                               'emb_kd'}
    for name, part in parts.items():
        assert part.item() > 0, name
        assert part.item() == pytest.approx(engine_parts[name], rel=1e-5)
    assert loss.item() == pytest.approx(engine_loss.item(), rel=1e-5)
    engine_loss.backward()
    loss.backward()
    grad = pyg.embedding.weight.grad
    assert torch.allclose(grad[:num_users], student.user_embedding.weight.grad,
                          atol=1e-6)
    assert torch.allclose(grad[num_users:], student.item_embedding.weight.grad,
                          atol=1e-6)
    for m, head in objective.emb_kd.items():
        assert torch.allclose(head.head.weight.grad,
                              stage.objective.emb_kd[m].head.weight.grad,
                              atol=1e-6)
