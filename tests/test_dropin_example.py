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
