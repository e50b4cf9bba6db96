r"""The shared scoring functions against dense references: values and the
gradients of both tables (the gathered dot has a hand-written backward)."""
import pytest
import torch

from pmm_geo.nn.functional import bpr_scores, gather_rows, pair_scores


def tables(num_users=7, num_items=5, dim=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    user = torch.randn(num_users, dim, generator=gen, dtype=torch.double)
    item = torch.randn(num_items, dim, generator=gen, dtype=torch.double)
    return user.requires_grad_(), item.requires_grad_()


def dense_scores(user, item, users, items):
    # The full score matrix, then the pairs: the definition.
    full = user @ item.t()
    if items.dim() == 1:
        return full[users, items]
    return full[users.unsqueeze(1), items]


def grads(out, weights, *inputs):
    return torch.autograd.grad((out * weights).sum(), inputs)


# Up to 4 columns the broadcast product, above them the custom backward.
@pytest.mark.parametrize('shape', [(6, ), (6, 3), (6, 7)])
def test_pair_scores_match_the_dense_score_matrix(shape):
    user, item = tables()
    # Repeated users and items: their gradient rows must accumulate.
    users = torch.tensor([0, 3, 3, 6, 1, 0])
    gen = torch.Generator().manual_seed(1)
    items = torch.randint(0, 5, shape, generator=gen)
    weights = torch.randn(shape, dtype=torch.double)
    got = pair_scores(user, item, users, items)
    want = dense_scores(user, item, users, items)
    assert got.shape == shape
    torch.testing.assert_close(got, want)
    for g, w in zip(grads(got, weights, user, item),
                    grads(want, weights, user, item)):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize('repeat', [1, 3])
def test_pair_scores_hand_computed(repeat):
    user = torch.tensor([[1., 2.], [0., -1.]], requires_grad=True)
    item = torch.tensor([[3., 0.], [1., 1.], [2., -2.]], requires_grad=True)
    # Each list repeated: 2 columns (broadcast product) or 6 (custom).
    lists = torch.tensor([[0, 2], [2, 2]]).repeat(1, repeat)
    scores = pair_scores(user, item, torch.tensor([0, 1]), lists)
    assert scores.tolist() == [[3., -2.] * repeat, [2., 2.] * repeat]
    scores.sum().backward()
    # d/du_0 = v_0 + v_2, d/du_1 = 2 v_2; d/dv_0 = u_0, d/dv_2 = u_0 + 2 u_1.
    assert user.grad.tolist() == [[5. * repeat, -2. * repeat],
                                  [4. * repeat, -4. * repeat]]
    assert item.grad.tolist() == [[1. * repeat, 2. * repeat], [0., 0.],
                                  [1. * repeat, 0.]]


def test_pair_scores_gradcheck():
    user, item = tables(num_users=4, num_items=3, dim=2)
    users = torch.tensor([0, 2, 2])
    items = torch.tensor([[0, 1, 2, 2, 1], [1, 1, 0, 0, 0], [2, 0, 1, 2, 0]])
    assert torch.autograd.gradcheck(
        lambda u, i: pair_scores(u, i, users, items), (user, item))


def test_pair_scores_gradient_to_one_table_only():
    user, item = tables()
    frozen = item.detach()
    users = torch.tensor([1, 2])
    items = torch.tensor([[0, 4, 1, 1, 2], [4, 4, 3, 0, 0]])
    (grad_user, ) = torch.autograd.grad(
        pair_scores(user, frozen, users, items).sum(), (user, ))
    (want, ) = torch.autograd.grad(
        dense_scores(user, frozen, users, items).sum(), (user, ))
    torch.testing.assert_close(grad_user, want)
    with torch.no_grad():
        assert not pair_scores(user, item, users, items).requires_grad


@pytest.mark.parametrize('neg_shape', [(6, ), (6, 2)])
def test_bpr_scores_match_the_dense_score_matrix(neg_shape):
    user, item = tables()
    users = torch.tensor([0, 3, 3, 6, 1, 0])
    pos = torch.tensor([0, 1, 1, 4, 2, 3])
    neg = torch.randint(0, 5, neg_shape,
                        generator=torch.Generator().manual_seed(2))
    s_pos, s_neg = bpr_scores(user, item, users, pos, neg)
    assert s_pos.shape == (6, ) and s_neg.shape == neg_shape
    torch.testing.assert_close(s_pos, dense_scores(user, item, users, pos))
    torch.testing.assert_close(s_neg, dense_scores(user, item, users, neg))
    w_pos, w_neg = torch.randn(6, dtype=torch.double), torch.randn(
        neg_shape, dtype=torch.double)
    got = torch.autograd.grad((s_pos * w_pos).sum() + (s_neg * w_neg).sum(),
                              (user, item))
    want = torch.autograd.grad(
        (dense_scores(user, item, users, pos) * w_pos).sum() +
        (dense_scores(user, item, users, neg) * w_neg).sum(), (user, item))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_gather_rows_any_id_shape():
    table = torch.arange(12.).view(6, 2).requires_grad_()
    ids = torch.tensor([[5, 0], [5, 5]])
    rows = gather_rows(table, ids)
    assert rows.shape == (2, 2, 2)
    assert rows[1, 0].tolist() == [10., 11.]
    rows.sum().backward()
    assert table.grad[:, 0].tolist() == [1., 0., 0., 0., 0., 3.]
