r"""Reads the real datasets in ``../shared/data`` (beside the checkout, never
in the repository): the published statistics must come out exactly."""
import json
from pathlib import Path

import pytest
import torch

from pmm_geo.data import modalities, read_promptmm, split_edge_index

SHARED_DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(
        not SHARED_DATA.is_dir(),
        reason=f'real data folder {SHARED_DATA} is absent (it lives beside '
        f'the checkout, never in the repository)'),
]


def split_sizes(data):
    return tuple(split_edge_index(data, split).size(1)
                 for split in ('train', 'val', 'test'))


def assert_disjoint(data):
    num_items = data['item'].num_nodes
    train = split_edge_index(data, 'train')
    train_key = train[0] * num_items + train[1]
    for split in ('val', 'test'):
        user, item = split_edge_index(data, split)
        assert not torch.isin(user * num_items + item, train_key).any()


def test_scientific():
    data = read_promptmm(SHARED_DATA / 'scientific')  # A Path.
    assert data['user'].num_nodes == 2928
    assert data['item'].num_nodes == 1585
    assert split_sizes(data) == (13763, 2902, 2903)
    assert modalities(data) == ['image', 'text']
    for name in ('image', 'text'):
        x = data['item'][name]
        assert x.shape == (1585, 512) and x.dtype == torch.float32
        assert torch.isfinite(x).all()
    assert_disjoint(data)
    # Time-ordered leave-one-out: at most one held-out item per user; the
    # users whose last item repeats a train item have none (README).
    for split, users_without in (('val', 26), ('test', 25)):
        count = torch.bincount(split_edge_index(data, split)[0],
                               minlength=2928)
        assert count.max() == 1
        assert int((count == 0).sum()) == users_without


def test_amazon_baby_graph_without_features():
    root = SHARED_DATA / 'amazon_baby_5core'
    data = read_promptmm(str(root))
    assert modalities(data) == []
    assert data['user'].num_nodes == 19445
    assert data['item'].num_nodes == 7050  # Largest item id + 1.
    assert split_sizes(data) == (119674, 20559, 20559)
    with open(root / 'item2id.json') as f:
        assert len(json.load(f)) == data['item'].num_nodes
    with open(root / 'user2id.json') as f:
        assert len(json.load(f)) == data['user'].num_nodes
    assert_disjoint(data)
