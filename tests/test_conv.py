import pytest
import torch
from torch_geometric.typing import WITH_TORCH_SPARSE

from pmm_geo.data import BipartiteAdjacency
from pmm_geo.nn import BipartiteConv

LAYOUTS = ['edge_index', 'edge_index_fused', 'csr']
if WITH_TORCH_SPARSE:
    LAYOUTS.append('sparse_tensor')

# The toy graph of reference/promptmm.md section 6: 4 users, 3 items, where
# user 3 interacted with items 0 and 1, and item 0 with users 0 and 3.
TOY_EDGES = torch.tensor([[0, 0, 1, 2, 2, 3, 3],
                          [0, 2, 1, 1, 2, 0, 1]])
NUM_USERS, NUM_ITEMS = 4, 3


def toy_adjacency() -> BipartiteAdjacency:
    return BipartiteAdjacency(TOY_EDGES, NUM_USERS, NUM_ITEMS)


def random_adjacency(num_users, num_items, num_edges, seed=0):
    gen = torch.Generator().manual_seed(seed)
    key = torch.randint(num_users * num_items, (num_edges, ), generator=gen)
    key = torch.unique(key)
    return BipartiteAdjacency(
        torch.stack([key // num_items, key % num_items]), num_users,
        num_items)


def test_toy_adjacency_values():
    adj = toy_adjacency()
    # Hand-computed D_u^-1/2 R D_i^-1/2: deg_u = (2, 1, 2, 2),
    # deg_i = (2, 3, 2).
    expected = torch.tensor([
        [1 / 2, 0, 1 / 2],
        [0, 1 / 3**.5, 0],
        [0, 1 / 6**.5, 1 / 2],
        [1 / 2, 1 / 6**.5, 0],
    ])
    assert torch.allclose(adj.to_dense(), expected)


@pytest.mark.parametrize('layout', LAYOUTS)
def test_conv_equals_dense(layout):
    adj = random_adjacency(30, 20, 150, seed=1)
    dense = adj.to_dense()
    conv = BipartiteConv()
    x_user = torch.randn(30, 8)
    x_item = torch.randn(20, 8)

    assert torch.allclose(conv(x_item, *adj.item_to_user(layout)),
                          dense @ x_item, atol=1e-6)
    assert torch.allclose(conv(x_user, *adj.user_to_item(layout)),
                          dense.t() @ x_user, atol=1e-6)
    # A (source, target) pair gives the same result (targets unused).
    out = conv((x_item, x_user), *adj.item_to_user(layout))
    assert torch.allclose(out, dense @ x_item, atol=1e-6)


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('direction', ['item_to_user', 'user_to_item'])
def test_conv_gradient_equals_dense(layout, direction):
    adj = random_adjacency(25, 40, 200, seed=2)  # Non-square on purpose.
    dense = adj.to_dense()
    if direction == 'user_to_item':
        dense, num_src = dense.t(), 25
    else:
        num_src = 40
    view = getattr(adj, direction)(layout)
    x = torch.randn(num_src, 6, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    grad_out = torch.randn(dense.size(0), 6)

    out = BipartiteConv()(x, *view)
    out.backward(grad_out)
    (dense @ x_ref).backward(grad_out)
    assert out.shape == (dense.size(0), 6)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)
    # The gradient is A^T grad_out, not a broadcast or a transposed shape.
    assert torch.allclose(x.grad, dense.t() @ grad_out, atol=1e-5)


@pytest.mark.parametrize('layout', ['edge_index', 'edge_index_fused'])
def test_conv_learnable_edge_weight_gradient(layout):
    adj = random_adjacency(12, 9, 50, seed=3)
    index, weight, size = adj.item_to_user(layout)
    weight = weight.detach().clone().requires_grad_()
    x = torch.randn(9, 4)
    grad_out = torch.randn(12, 4)

    out = BipartiteConv()(x, index, weight, size)
    out.backward(grad_out)

    # Dense reference built from the same (possibly permuted) weights.
    src, dst = (index.as_tensor() if hasattr(index, 'as_tensor') else index)
    weight_ref = weight.detach().clone().requires_grad_()
    dense = torch.zeros(12, 9).index_put((dst, src), weight_ref)
    ref = dense @ x
    ref.backward(grad_out)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(weight.grad, weight_ref.grad, atol=1e-5)
    # d out[u] / d w_(i,u) = x[i]: check one edge by hand.
    assert torch.allclose(weight.grad[0], (grad_out[dst[0]] * x[src[0]]).sum(),
                          atol=1e-5)


def promptmm_swapped_block_propagation(adj, x_user, x_item):
    # The original student multiplied [[UI, 0], [0, IU]] (a (U+I) x (I+U)
    # matrix) with [users; items]: user rows read *user* embeddings indexed
    # by item id and item rows read the ego rows I..I+U-1.
    num_users, num_items = adj.num_users, adj.num_items
    dense = adj.to_dense()
    buggy = torch.zeros(num_users + num_items, num_items + num_users)
    buggy[:num_users, :num_items] = dense
    buggy[num_users:, num_items:] = dense.t()
    out = buggy @ torch.cat([x_user, x_item], dim=0)
    return out[:num_users], out[num_users:]


@pytest.mark.parametrize('layout', LAYOUTS)
def test_users_aggregate_items_not_the_swapped_blocks(layout):
    adj = toy_adjacency()
    x_user = torch.arange(4 * 2, dtype=torch.float).view(4, 2)
    x_item = 100 + torch.arange(3 * 2, dtype=torch.float).view(3, 2)
    conv = BipartiteConv()
    user = conv(x_item, *adj.item_to_user(layout))
    item = conv(x_user, *adj.user_to_item(layout))

    # Hand-computed rows: user 3 <- items 0 and 1; item 0 <- users 0 and 3.
    expected_u3 = x_item[0] / 2 + x_item[1] / 6**.5
    expected_i0 = x_user[0] / 2 + x_user[3] / 2
    assert torch.allclose(user[3], expected_u3)
    assert torch.allclose(item[0], expected_i0)

    buggy_user, buggy_item = promptmm_swapped_block_propagation(
        adj, x_user, x_item)
    # The bug: user 3 reads users 0 and 1, item 0 reads user 3 and item 2.
    assert torch.allclose(buggy_user[3], x_user[0] / 2 + x_user[1] / 6**.5)
    assert torch.allclose(buggy_item[0], x_user[3] / 2 + x_item[2] / 2)
    assert not torch.allclose(user, buggy_user)
    assert not torch.allclose(item, buggy_item)


def test_fused_and_unfused_paths_agree_on_a_bigger_graph():
    adj = random_adjacency(400, 300, 5000, seed=4)
    x_item = torch.randn(300, 16, requires_grad=True)
    grad_out = torch.randn(400, 16)
    conv = BipartiteConv()
    outs, grads = [], []
    for layout in LAYOUTS:
        x_item.grad = None
        out = conv(x_item, *adj.item_to_user(layout))
        out.backward(grad_out)
        outs.append(out.detach())
        grads.append(x_item.grad.clone())
    for out, grad in zip(outs[1:], grads[1:]):
        assert torch.allclose(out, outs[0], atol=1e-5)
        assert torch.allclose(grad, grads[0], atol=1e-5)
    # A real check: the result is not trivially zero.
    assert outs[0].abs().sum() > 0


def test_conv_repr_and_errors():
    assert str(BipartiteConv()) == 'BipartiteConv()'
    with pytest.raises(ValueError, match="aggr='mean'"):
        BipartiteConv(aggr='mean')
    with pytest.raises(ValueError, match='Unknown adjacency layout'):
        toy_adjacency().item_to_user('coo')


@pytest.mark.skipif(WITH_TORCH_SPARSE, reason='torch-sparse is installed')
def test_sparse_tensor_layout_needs_torch_sparse():
    with pytest.raises(ImportError, match='torch-sparse'):
        toy_adjacency().item_to_user('sparse_tensor')
