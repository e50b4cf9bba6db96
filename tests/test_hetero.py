import numpy as np
import pytest
import torch

from pmm_geo.data import (
    EDGE_TYPE,
    REV_EDGE_TYPE,
    DataFormatError,
    from_arrays,
    modalities,
    split_edge_index,
)


def test_from_arrays_layout():
    train = torch.tensor([[2, 0, 0, 1], [1, 2, 0, 1]])
    data = from_arrays(train, val=([0], [1]), test=np.array([[1], [0]]),
                       features={'text': np.ones((3, 2)),
                                 'image': torch.ones(3, 4, dtype=torch.int)},
                       num_users=4)
    assert data['user'].num_nodes == 4
    assert data['item'].num_nodes == 3
    # Sorted by user, then item.
    assert data[EDGE_TYPE].edge_index.tolist() == [[0, 0, 1, 2],
                                                   [0, 2, 1, 1]]
    assert data[REV_EDGE_TYPE].edge_index.tolist() == [[0, 2, 1, 1],
                                                       [0, 0, 1, 2]]
    assert data[EDGE_TYPE].val_edge_index.tolist() == [[0], [1]]
    assert split_edge_index(data, 'test').tolist() == [[1], [0]]
    assert modalities(data) == ['text', 'image']  # Insertion order.
    assert data['item'].image.dtype == torch.float32
    assert data['item'].text.dtype == torch.float32


def test_from_arrays_defaults_and_optional_splits():
    data = from_arrays(([0, 1, 1], [4, 0, 2]))
    assert data['user'].num_nodes == 2
    assert data['item'].num_nodes == 5
    assert modalities(data) == []
    with pytest.raises(ValueError, match="no 'val' split"):
        split_edge_index(data, 'val')
    with pytest.raises(ValueError, match="Unknown split 'dev'"):
        split_edge_index(data, 'dev')


def test_from_arrays_empty_held_out_split():
    data = from_arrays(([0], [0]), val=np.empty((2, 0), dtype=np.int64))
    assert split_edge_index(data, 'val').size() == (2, 0)


@pytest.mark.parametrize('kwargs, field, value', [
    (dict(train=[[0, 1], [0.5, 1.]]), 'train', 'got 0.5'),
    (dict(train=[[0, 1], [0, 1]], val=[[0], [-3]]), 'val',
     'negative item id -3'),
    (dict(train=([0, 1], [1])), 'train', '2 user ids but 1 item ids'),
    (dict(train=[[0, 1, 2]]), 'train', 'shape [2, E]'),
    (dict(train=np.empty((2, 0), np.int64)), 'train', 'no interactions'),
    (dict(train=[[0, 1], [0, 5]], num_items=3), 'train', 'item id 5'),
    (dict(train=[[0, 4], [0, 1]], num_users=3), 'train', 'user id 4'),
    (dict(train=[[0, 1], [0, 1]], features={'image': np.ones((2, 0))}),
     'image', 'no columns'),
    (dict(train=[[0, 1], [0, 1]], features={'image': np.ones((2, 3)),
                                            'text': np.ones((3, 3))}),
     'text', '3 feature rows'),
    (dict(train=[[0, 1], [0, 1]], features={'image': np.ones((2, 3))},
          num_items=4), 'image', 'num_items=4'),
    (dict(train=[[0, 1], [0, 1]], test=[[1], [1]]), 'test',
     '(user 1, item 1)'),
])
def test_from_arrays_errors(kwargs, field, value):
    with pytest.raises(DataFormatError) as info:
        from_arrays(**kwargs)
    assert info.value.field == field
    assert f"<array '{field}'>" in str(info.value)  # Default source name.
    assert value in str(info.value)


def test_from_arrays_names_given_sources():
    with pytest.raises(DataFormatError, match=r"^/data/img\.npy: field "
                       r"'image': non-finite value nan at row 1, column 0"):
        from_arrays([[0], [0]], features={'image': [[1.], [np.nan]]},
                    sources={'image': '/data/img.npy'})
