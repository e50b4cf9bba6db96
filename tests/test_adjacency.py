import math

import torch

from pmm_geo.data import (
    EDGE_TYPE,
    BipartiteAdjacency,
    as_adjacency,
    from_arrays,
    get_adjacency,
    split_edge_index,
)


def dense_normalized(edge_index, num_users, num_items):
    r"""D_u^-1/2 R D_i^-1/2 computed densely, zero-degree rows kept 0."""
    R = torch.zeros(num_users, num_items)
    R[edge_index[0], edge_index[1]] = 1.
    deg_u, deg_i = R.sum(1), R.sum(0)
    inv_u = torch.where(deg_u > 0, deg_u.rsqrt(), torch.zeros_like(deg_u))
    inv_i = torch.where(deg_i > 0, deg_i.rsqrt(), torch.zeros_like(deg_i))
    return inv_u.view(-1, 1) * R * inv_i.view(1, -1)


def test_hand_computed():
    # R = [[1, 1, 0], [0, 1, 1], [0, 0, 0]]: user degrees (2, 2, 0), item
    # degrees (1, 2, 1); held-out edges must not enter the adjacency.
    data = from_arrays([[0, 0, 1, 1], [0, 1, 1, 2]], val=[[2], [0]],
                       test=[[0], [2]], num_users=3)
    s = 1 / math.sqrt(2)
    expected = torch.tensor([[s, 0.5, 0.], [0., 0.5, s], [0., 0., 0.]])
    assert torch.allclose(get_adjacency(data).to_dense(), expected)


def test_matches_dense_reference(synthetic_data):
    adj = get_adjacency(synthetic_data)
    num_users = synthetic_data['user'].num_nodes
    num_items = synthetic_data['item'].num_nodes
    expected = dense_normalized(split_edge_index(synthetic_data, 'train'),
                                num_users, num_items)
    assert adj.to_dense().shape == (num_users, num_items)
    assert torch.allclose(adj.to_dense(), expected, atol=1e-6)
    # The held-out positives are nowhere in the message-passing graph.
    for split in ('val', 'test'):
        user, item = split_edge_index(synthetic_data, split)
        assert (adj.to_dense()[user, item] == 0).all()


def test_cached_on_the_data(synthetic_data):
    adj = get_adjacency(synthetic_data)
    assert isinstance(adj, BipartiteAdjacency)
    assert get_adjacency(synthetic_data) is adj
    assert as_adjacency(synthetic_data) is adj
    assert as_adjacency(adj) is adj


def test_rebuilt_when_the_train_edges_change(synthetic_data):
    adj = get_adjacency(synthetic_data)
    store = synthetic_data[EDGE_TYPE]
    store.edge_index = store.edge_index[:, :-5].clone()
    fresh = get_adjacency(synthetic_data)
    assert fresh is not adj
    assert fresh.num_edges == adj.num_edges - 5
    expected = dense_normalized(store.edge_index, fresh.num_users,
                                fresh.num_items)
    assert torch.allclose(fresh.to_dense(), expected, atol=1e-6)
