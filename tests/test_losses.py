import math

import pytest
import torch
from torch.autograd import gradcheck

from pmm_geo.nn import (BPRLoss, EmbeddingKDLoss, ListwiseKDLoss,
                        PairwiseKDLoss)


# Plain-Python references (lists of floats, math only) for hand-computed
# expectations.
def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def softmax(values, tau=1.):
    exps = [math.exp(v / tau) for v in values]
    return [e / sum(exps) for e in exps]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb)


def dkd_row(z_s, z_t, tau, alpha, beta, reweight):
    p_s, p_t = softmax(z_s, tau), softmax(z_t, tau)
    b_s, b_t = [p_s[0], 1 - p_s[0]], [p_t[0], 1 - p_t[0]]
    q_s, q_t = softmax(z_s[1:], tau), softmax(z_t[1:], tau)
    w = 1 - p_t[0] if reweight else 1.
    return tau**2 * (alpha * kl(b_t, b_s) + beta * w * kl(q_t, q_s))


# ---------------------------------------------------------------- BPRLoss
def test_bpr_hand_computed():
    pos = torch.tensor([2.0, 0.5])
    neg = torch.tensor([1.0, 1.5])
    row0, row1 = math.log(1 + math.exp(-1)), math.log(1 + math.exp(1))
    assert float(BPRLoss()(pos, neg)) == pytest.approx((row0 + row1) / 2)

    # ||params||^2 = 1 + 4 + 9 = 14, shared over B = 2 rows.
    params = [torch.tensor([[1.0, 2.0]]), torch.tensor([3.0])]
    loss = BPRLoss(lambda_reg=0.1, reduction='none')(pos, neg, params)
    assert loss.tolist() == pytest.approx([row0 + 0.7, row1 + 0.7])
    loss = BPRLoss(lambda_reg=0.1, reduction='sum')(pos, neg, params)
    assert float(loss) == pytest.approx(row0 + row1 + 1.4)
    # A single tensor works as well as a list.
    loss = BPRLoss(lambda_reg=0.1)(pos, neg, torch.tensor([1.0, 2.0, 3.0]))
    assert float(loss) == pytest.approx((row0 + row1) / 2 + 0.7)


def test_bpr_several_negatives_per_row():
    loss = BPRLoss(reduction='none')(torch.tensor([1.0]),
                                     torch.tensor([[0.0, 2.0]]))
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    assert loss.tolist() == pytest.approx([expected])


def test_bpr_matches_pyg():
    from torch_geometric.nn.models.lightgcn import BPRLoss as PyGBPRLoss
    gen = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    emb = torch.randn(24, 4, generator=gen)
    ours = BPRLoss(lambda_reg=1e-2)(pos, neg, emb)
    assert torch.allclose(ours, PyGBPRLoss(lambda_reg=1e-2)(pos, neg, emb))


def test_bpr_no_penalty_without_params_and_bad_params():
    pos, neg = torch.tensor([1.0]), torch.tensor([0.0])
    assert torch.equal(BPRLoss(lambda_reg=1.)(pos, neg), BPRLoss()(pos, neg))
    with pytest.raises(TypeError, match='params'):
        BPRLoss(lambda_reg=1.)(pos, neg, 'embeddings')
    with pytest.raises(ValueError, match='lambda_reg'):
        BPRLoss(lambda_reg=-1.)


def test_bpr_shape_errors():
    with pytest.raises(ValueError, match=r"neg_scores.*\(3,\).*\(2,\)"):
        BPRLoss()(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match=r"pos_scores.*\(2, 1\)"):
        BPRLoss()(torch.zeros(2, 1), torch.zeros(2))


# --------------------------------------------------------- PairwiseKDLoss
def test_pairwise_hand_computed():
    p = 1 / (1 + math.exp(-1))  # teacher σ(1) against student σ(0) = 1/2
    expected = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    loss = PairwiseKDLoss(reduction='none')(torch.tensor([0.0, 1.0]),
                                            torch.tensor([1.0, 1.0]))
    assert loss.tolist() == pytest.approx([expected, 0.0], abs=1e-7)
    # τ = 2 on doubled margins: the same KL, times τ² = 4.
    loss = PairwiseKDLoss(tau=2., reduction='none')(torch.tensor([0.0]),
                                                    torch.tensor([2.0]))
    assert loss.tolist() == pytest.approx([4 * expected])


def test_pairwise_zero_iff_margins_agree():
    gen = torch.Generator().manual_seed(1)
    margin = 5 * torch.randn(16, generator=gen)
    loss_fn = PairwiseKDLoss(tau=0.7, reduction='none')
    assert torch.allclose(loss_fn(margin, margin.clone()), torch.zeros(16),
                          atol=1e-6)
    assert bool((loss_fn(margin, margin + 0.5) > 0).all())


@pytest.mark.parametrize('tau', [1., 3.])
def test_pairwise_gradient_raises_student_margin(tau):
    # The reference code's KLDiv-on-BPR-losses pushed this margin DOWN.
    student = torch.tensor([0.5, 2.0], requires_grad=True)
    teacher = torch.tensor([3.0, -1.0])
    PairwiseKDLoss(tau=tau, reduction='sum')(student, teacher).backward()
    grad = student.grad.tolist()
    assert grad[0] < 0 < grad[1]  # descent moves toward the teacher's
    sig = [1 / (1 + math.exp(-v / tau)) for v in (0.5, 2.0, 3.0, -1.0)]
    assert grad == pytest.approx([tau * (sig[0] - sig[2]),
                                  tau * (sig[1] - sig[3])])


def test_pairwise_float32_accurate_for_confident_teacher():
    # The teacher's small mass 1 - σ(t) multiplies a large log-ratio here;
    # computing it as 1 - σ(t) in float32 would be off by about 30 %.
    student, teacher = torch.tensor([1e3, 1e3]), torch.tensor([12.0, 15.0])
    loss = PairwiseKDLoss(reduction='none')(student, teacher)
    exact = PairwiseKDLoss(reduction='none')(student.double(),
                                             teacher.double())
    assert torch.allclose(loss.double(), exact, rtol=1e-3)


def test_pairwise_several_negatives_per_row():
    gen = torch.Generator().manual_seed(2)
    s, t = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    loss = PairwiseKDLoss(reduction='none')(s, t)
    assert loss.shape == (4, )
    flat = PairwiseKDLoss(reduction='none')(s.flatten(), t.flatten())
    assert torch.allclose(loss, flat.view(4, 3).mean(-1))


def test_pairwise_errors():
    with pytest.raises(ValueError, match=r"teacher_margin.*\(3,\).*\(4,\)"):
        PairwiseKDLoss()(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match='tau'):
        PairwiseKDLoss(tau=0.)


# --------------------------------------------------------- ListwiseKDLoss
@pytest.mark.parametrize('tau,alpha,beta,reweight', [
    (1., 1., 1., True),
    (2., 0.5, 3., False),
    (0.5, 0.0, 1., True),
])
def test_listwise_hand_computed(tau, alpha, beta, reweight):
    z_s = [[0.0, 0.0, 0.0], [1.0, 0.0, 2.0]]
    z_t = [[2.0, 1.0, 0.0], [0.0, -1.0, 0.5]]
    loss = ListwiseKDLoss(tau, alpha, beta, reweight, reduction='none')(
        torch.tensor(z_s), torch.tensor(z_t))
    expected = [dkd_row(s, t, tau, alpha, beta, reweight)
                for s, t in zip(z_s, z_t)]
    assert loss.tolist() == pytest.approx(expected, rel=1e-5)


def test_listwise_zero_when_student_equals_teacher():
    gen = torch.Generator().manual_seed(3)
    z = 4 * torch.randn(5, 11, generator=gen)
    loss = ListwiseKDLoss(tau=2.)(z, z.clone())
    assert abs(float(loss)) < 1e-6
    assert float(ListwiseKDLoss()(z + torch.randn(5, 11, generator=gen),
                                  z)) > 0


def test_listwise_reweight_is_teacher_non_target_mass():
    gen = torch.Generator().manual_seed(4)
    z_s, z_t = torch.randn(6, 5, generator=gen), torch.randn(6, 5,
                                                            generator=gen)
    z_t.requires_grad_()
    weighted = ListwiseKDLoss(alpha=0., reweight=True, reduction='none')
    plain = ListwiseKDLoss(alpha=0., reweight=False, reduction='none')
    w = 1 - torch.softmax(z_t.detach(), dim=-1)[:, 0]
    loss_w, loss_p = weighted(z_s, z_t), plain(z_s, z_t)
    assert torch.allclose(loss_w, w * loss_p)
    assert bool((loss_w < loss_p).all())

    # w is detached: the teacher gradient is just rescaled, row by row.
    grad_w, = torch.autograd.grad(loss_w.sum(), z_t)
    grad_p, = torch.autograd.grad(loss_p.sum(), z_t)
    assert torch.allclose(grad_w, w.unsqueeze(-1) * grad_p)


def test_listwise_teacher_not_detached():
    # Stage 2 trains the prompt through the teacher's targets.
    z_s = torch.tensor([[1.0, 0.0, -1.0]])
    z_t = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)
    ListwiseKDLoss()(z_s, z_t).backward()
    assert z_t.grad is not None and bool((z_t.grad != 0).any())


def test_listwise_errors():
    with pytest.raises(ValueError, match=r"teacher_logits.*\(2, 3\).*\(2, 4\)"):
        ListwiseKDLoss()(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match='negative column'):
        ListwiseKDLoss()(torch.zeros(2, 1), torch.zeros(2, 1))
    with pytest.raises(ValueError, match=r"\[B, 1 \+ n\]"):
        ListwiseKDLoss()(torch.zeros(3), torch.zeros(3))
    for kwargs in ({'tau': -1.}, {'alpha': -1.}, {'beta': -0.1}):
        with pytest.raises(ValueError, match=list(kwargs)[0]):
            ListwiseKDLoss(**kwargs)


# -------------------------------------------------------- EmbeddingKDLoss
def test_embedding_hand_computed():
    s = [[1.0, 0.0], [1.0, 1.0], [2.0, -1.0]]
    h = [[1.0, 1.0], [2.0, 2.0], [3.0, 4.0]]
    for alpha in (1., 2., 3.):
        loss = EmbeddingKDLoss(alpha=alpha, reduction='none')(
            torch.tensor(s), torch.tensor(h))
        expected = [(1 - cosine(a, b))**alpha for a, b in zip(s, h)]
        assert loss.tolist() == pytest.approx(expected, abs=1e-6)


def test_embedding_head_maps_student_width():
    loss_fn = EmbeddingKDLoss(in_channels=3, out_channels=2)
    assert loss_fn.head.weight.shape == (2, 3)
    with torch.no_grad():  # a head that keeps the first two coordinates
        loss_fn.head.weight.copy_(torch.tensor([[1., 0., 0.], [0., 1., 0.]]))
        loss_fn.head.bias.zero_()
    loss = loss_fn(torch.tensor([[1.0, 0.0, 5.0]]), torch.tensor([[1.0, 1.0]]))
    assert loss.item() == pytest.approx((1 - 1 / math.sqrt(2))**2)

    loss.backward()
    assert loss_fn.head.weight.grad is not None
    before = loss_fn.head.weight.detach().clone()
    torch.manual_seed(0)
    loss_fn.reset_parameters()
    assert not torch.equal(before, loss_fn.head.weight)
    EmbeddingKDLoss().reset_parameters()  # no head: a no-op
    assert len(list(EmbeddingKDLoss().parameters())) == 0


def test_embedding_zero_rows_are_finite():
    s = torch.tensor([[0.0, 0.0], [1.0, 2.0]], requires_grad=True)
    h = torch.tensor([[1.0, 0.0], [0.0, 0.0]], requires_grad=True)
    loss = EmbeddingKDLoss(reduction='none')(s, h)
    assert loss.tolist() == pytest.approx([1.0, 1.0])
    loss.sum().backward()
    assert bool(torch.isfinite(s.grad).all() & torch.isfinite(h.grad).all())
    # Identical rows: loss 0 with a finite gradient, also for alpha = 1.
    x = torch.tensor([[3.0, 4.0]], requires_grad=True)
    EmbeddingKDLoss(alpha=1.)(x, x.detach() * 2).backward()
    assert bool(torch.isfinite(x.grad).all())


def test_embedding_identical_rows_with_fractional_alpha():
    # Rounding can give cos = 1 + 2e-7 for identical rows; (1 - cos)^2.5
    # would then be NaN without the clamp at zero.
    x = torch.randn(200, 7, generator=torch.Generator().manual_seed(9))
    x.requires_grad_()
    loss = EmbeddingKDLoss(alpha=2.5, reduction='none')(x, x.detach())
    loss.sum().backward()
    assert bool(torch.isfinite(loss).all()) and float(loss.max()) < 1e-12
    assert bool(torch.isfinite(x.grad).all())


def test_embedding_errors():
    with pytest.raises(ValueError, match='alpha'):
        EmbeddingKDLoss(alpha=0.5)
    with pytest.raises(ValueError, match='in_channels'):
        EmbeddingKDLoss(in_channels=4)
    with pytest.raises(ValueError, match='out_channels'):
        EmbeddingKDLoss(in_channels=4, out_channels=0)
    with pytest.raises(ValueError, match=r"student_emb.*\(5, 3\).*\(5, 4\)"):
        EmbeddingKDLoss()(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match=r"head 8 -> 4.*\(5, 3\)"):
        EmbeddingKDLoss(in_channels=8, out_channels=4)(torch.zeros(5, 3),
                                                       torch.zeros(5, 4))
    with pytest.raises(ValueError, match=r"\(5, 4\).*\(6, 4\)"):
        EmbeddingKDLoss()(torch.zeros(5, 4), torch.zeros(6, 4))


# ------------------------------------------------------------ all losses
def _inputs(name, gen, dtype=torch.float32):
    def randn(*size):
        return torch.randn(*size, generator=gen, dtype=dtype)

    return {
        'bpr': (BPRLoss, {'lambda_reg': 0.1}, (randn(4), randn(4, 3))),
        'pairwise': (PairwiseKDLoss, {'tau': 1.5}, (randn(4), randn(4))),
        'listwise': (ListwiseKDLoss, {'tau': 2., 'alpha': 0.5, 'beta': 2.,
                                      'reweight': False},
                     (randn(4, 6), randn(4, 6))),
        'embedding': (EmbeddingKDLoss, {'alpha': 2.5}, (randn(4, 3),
                                                        randn(4, 3))),
    }[name]


LOSSES = ['bpr', 'pairwise', 'listwise', 'embedding']


@pytest.mark.parametrize('name', LOSSES)
def test_gradcheck(name):
    gen = torch.Generator().manual_seed(5)
    cls, kwargs, inputs = _inputs(name, gen, torch.float64)
    inputs = tuple(x.requires_grad_() for x in inputs)
    loss_fn = cls(**kwargs, reduction='none')
    if name == 'bpr':
        params = torch.randn(3, 2, dtype=torch.float64,
                             requires_grad=True)
        assert gradcheck(lambda p, n, w: loss_fn(p, n, [w]),
                         inputs + (params, ))
    else:
        assert gradcheck(loss_fn, inputs)


def test_gradcheck_listwise_reweighted():
    # The weight 1 - p^T_0 is detached on purpose, so finite differences in
    # the teacher logits disagree with autograd there; check the student side
    # with the weight on, and the teacher side with the plain weight-free
    # loss (covered by test_gradcheck).
    gen = torch.Generator().manual_seed(8)
    z_s = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    z_t = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    loss_fn = ListwiseKDLoss(tau=1.5, reweight=True, reduction='none')
    assert gradcheck(lambda s: loss_fn(s, z_t), (z_s.requires_grad_(), ))


def test_gradcheck_embedding_head():
    loss_fn = EmbeddingKDLoss(in_channels=3, out_channels=2).double()
    gen = torch.Generator().manual_seed(6)
    s = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    h = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    weight = loss_fn.head.weight.detach().clone()
    bias = loss_fn.head.bias.detach().clone()

    def fn(s, h, weight, bias):
        return torch.func.functional_call(loss_fn, {
            'head.weight': weight,
            'head.bias': bias
        }, (s, h))

    assert gradcheck(fn, tuple(x.requires_grad_()
                               for x in (s, h, weight, bias)))


@pytest.mark.parametrize('name', LOSSES)
def test_reductions_agree(name):
    gen = torch.Generator().manual_seed(7)
    cls, kwargs, inputs = _inputs(name, gen)
    extra = ([torch.ones(2, 2)], ) if name == 'bpr' else ()
    none = cls(**kwargs, reduction='none')(*inputs, *extra)
    mean = cls(**kwargs, reduction='mean')(*inputs, *extra)
    total = cls(**kwargs, reduction='sum')(*inputs, *extra)
    assert none.shape == (4, ) and mean.dim() == 0 and total.dim() == 0
    assert torch.allclose(total, mean * 4)
    assert torch.allclose(total, none.sum())
    with pytest.raises(ValueError, match='reduction'):
        cls(**kwargs, reduction='batchmean')


@pytest.mark.parametrize('name', LOSSES)
def test_extreme_logits_are_finite(name):
    big = 1e4
    if name == 'bpr':
        cls, kwargs = BPRLoss, {}
        inputs = ([big, -big, big, -big], [-big, big, big, -big])
    elif name == 'pairwise':
        cls, kwargs = PairwiseKDLoss, {'tau': 0.5}
        inputs = ([big, -big, big, -big], [big, big, -big, -big])
    elif name == 'listwise':
        cls, kwargs = ListwiseKDLoss, {'tau': 0.5}
        inputs = ([[big, -big, 0.], [-big, big, big], [0., 0., -big]],
                  [[-big, big, big], [big, -big, 0.], [big, -big, -big]])
    else:
        cls, kwargs = EmbeddingKDLoss, {}
        inputs = ([[big, -big], [0., 0.], [big, big]],
                  [[-big, big], [big, 0.], [big, big]])
    inputs = [torch.tensor(x, requires_grad=True) for x in inputs]
    loss = cls(**kwargs)(*inputs)
    loss.backward()
    assert bool(torch.isfinite(loss))
    for x in inputs:
        assert bool(torch.isfinite(x.grad).all())


def test_reprs():
    assert repr(BPRLoss()) == 'BPRLoss(lambda_reg=0.0)'
    assert repr(PairwiseKDLoss(tau=2)) == 'PairwiseKDLoss(tau=2.0)'
    assert repr(ListwiseKDLoss()) == (
        'ListwiseKDLoss(tau=1.0, alpha=1.0, beta=1.0, reweight=True)')
    assert repr(ListwiseKDLoss(reweight=False, reduction='sum')) == (
        "ListwiseKDLoss(tau=1.0, alpha=1.0, beta=1.0, reweight=False, "
        "reduction='sum')")
    assert repr(EmbeddingKDLoss()) == 'EmbeddingKDLoss(alpha=2.0)'
    assert repr(EmbeddingKDLoss(3, 16, 64)) == (
        'EmbeddingKDLoss(alpha=3.0, in_channels=16, out_channels=64)')


def _objective_inputs(seed=0, num_users=6, num_items=9, d_s=4, d=5):
    from pmm_geo.nn.models import TeacherOutput
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    teacher = TeacherOutput(rand(num_users, d), rand(num_items, d),
                            {'image': rand(num_users, d),
                             'text': rand(num_users, d)},
                            {'image': rand(num_items, d),
                             'text': rand(num_items, d)})
    users = torch.tensor([0, 1, 1, 5])
    pos, neg = torch.tensor([2, 3, 3, 8]), torch.tensor([4, 0, 7, 8])
    lists = torch.tensor([[2, 4, 5], [3, 0, 1], [3, 7, 6], [8, 8, 0]])
    return (rand(num_users, d_s), rand(num_items, d_s), teacher, users, pos,
            neg, lists)


def _reference_objective(objective, user, item, teacher, users, pos, neg,
                         lists, table):
    # The objective's terms written with plain indexing (the reference).
    def dot(a, b):
        return (a * b).sum(-1)

    s_pos, s_neg = dot(user[users], item[pos]), dot(user[users], item[neg])
    t_pos = dot(teacher.user[users], teacher.item[pos])
    t_neg = dot(teacher.user[users], teacher.item[neg])
    l2 = (table[0][users].pow(2).sum() + table[1][pos].pow(2).sum() +
          table[1][neg].pow(2).sum())
    bpr = BPRLoss(objective.bpr.lambda_reg)(s_pos, s_neg, [l2.sqrt()])
    pair = PairwiseKDLoss()(s_pos - s_neg, t_pos - t_neg)
    s_list = dot(user[users].unsqueeze(1), item[lists])
    listwise = sum(ListwiseKDLoss()(s_list, dot(
        teacher.modal_user[m][users].unsqueeze(1),
        teacher.modal_item[m][lists])) for m in ('image', 'text'))
    # Embedding KD over pos and neg as they come (item 8 twice, 3 twice).
    items = torch.cat([pos, neg])
    emb = sum(objective.emb_kd[m](item[items], teacher.modal_item[m][items])
              for m in ('image', 'text'))
    return {'bpr': bpr, 'pair_kd': pair, 'list_kd': listwise, 'emb_kd': emb}


def test_prompt_mm_objective_is_the_weighted_sum_of_the_losses():
    from pmm_geo.nn import PromptMMObjective
    user, item, teacher, users, pos, neg, lists = _objective_inputs()
    objective = PromptMMObjective(['image', 'text'], 4, 5, pair_weight=0.5,
                                  list_weight=2., emb_weight=0.25,
                                  lambda_reg=0.1)
    table = (user * 2, item * 2)  # Layer-0 tables for the L2 term.
    loss, parts = objective(user, item, teacher, users, pos, neg, lists,
                            input_emb=table)
    expected = _reference_objective(objective, user, item, teacher, users,
                                    pos, neg, lists, table)
    assert set(parts) == set(expected)
    for name, value in expected.items():
        assert parts[name].item() == pytest.approx(value.item(), rel=1e-5)
    bpr, pair, listwise, emb = (expected[k] for k in
                                ('bpr', 'pair_kd', 'list_kd', 'emb_kd'))
    assert loss.item() == pytest.approx(
        (bpr + 0.5 * pair + 2. * listwise + 0.25 * emb).item(), rel=1e-5)
    # A narrower student gets one train-only head per modality.
    assert all(h.head.weight.shape == (5, 4) for h in objective.emb_kd.values())


def test_prompt_mm_objective_gradients_match_the_indexing_reference():
    # The objective gathers rows with F.embedding (a cheaper kernel than
    # advanced indexing): the same gradients, repeated ids accumulated, for
    # the student's tables and for the teacher's (the prompt learns through
    # them in stage 2).
    from pmm_geo.nn import PromptMMObjective
    from pmm_geo.nn.models import TeacherOutput
    user, item, teacher, users, pos, neg, lists = _objective_inputs()
    objective = PromptMMObjective(['image', 'text'], 4, 5, pair_weight=0.5,
                                  list_weight=2., emb_weight=0.25,
                                  lambda_reg=0.1)

    def grads(compute):
        leaves = [user.clone().requires_grad_(), item.clone().requires_grad_()]
        t_leaves = [x.clone().requires_grad_() for x in (
            teacher.user, teacher.item, *teacher.modal_user.values(),
            *teacher.modal_item.values())]
        out = TeacherOutput(t_leaves[0], t_leaves[1],
                            dict(zip(teacher.modal_user, t_leaves[2:4])),
                            dict(zip(teacher.modal_item, t_leaves[4:])))
        table = (leaves[0] * 2, leaves[1] * 2)
        loss = compute(leaves[0], leaves[1], out, table)
        loss.backward()
        return [x.grad for x in leaves + t_leaves]

    def ours(u, i, out, table):
        return objective(u, i, out, users, pos, neg, lists,
                         input_emb=table).loss

    def reference(u, i, out, table):
        parts = _reference_objective(objective, u, i, out, users, pos, neg,
                                     lists, table)
        return (parts['bpr'] + 0.5 * parts['pair_kd'] +
                2. * parts['list_kd'] + 0.25 * parts['emb_kd'])

    for got, want in zip(grads(ours), grads(reference)):
        assert want.abs().sum() > 0
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_prompt_mm_objective_weights_can_change_and_gate():
    from pmm_geo.nn import PromptMMObjective
    user, item, teacher, users, pos, neg, lists = _objective_inputs(d_s=5)
    objective = PromptMMObjective(['image', 'text'], 5, 5)
    assert objective.uses_teacher and objective.uses_lists
    assert all(h.head is None for h in objective.emb_kd.values())
    full, parts = objective(user, item, teacher, users, pos, neg, lists)

    # Weight 0: the term is not computed (no lists needed, no part).
    objective.list_weight = 0.
    assert not objective.uses_lists
    loss, some = objective(user, item, teacher, users, pos, neg)
    assert set(some) == {'bpr', 'pair_kd', 'emb_kd'}
    assert loss.item() == pytest.approx(
        (full - parts['list_kd']).item(), rel=1e-5)
    # A tensor weight (a gate) multiplies its term.
    objective.list_weight = torch.tensor(0.5)
    loss, _ = objective(user, item, teacher, users, pos, neg, lists)
    assert loss.item() == pytest.approx(
        (full - 0.5 * parts['list_kd']).item(), rel=1e-5)
    # BPR alone never reads the teacher.
    objective.pair_weight = objective.list_weight = objective.emb_weight = 0.
    assert not objective.uses_teacher
    loss, only = objective(user, item, None, users, pos, neg)
    assert set(only) == {'bpr'} and torch.equal(loss, only['bpr'])
    objective.list_weight = 1.
    with pytest.raises(ValueError, match='candidate'):
        objective(user, item, teacher, users, pos, neg)
    assert 'PromptMMObjective(modalities=' in repr(objective)


def test_prompt_mm_objective_fused_list_target():
    from pmm_geo.nn import PromptMMObjective
    user, item, teacher, users, pos, neg, lists = _objective_inputs(d_s=5)
    objective = PromptMMObjective(['image', 'text'], 5, 5, pair_weight=0.,
                                  emb_weight=0., list_target='fused')

    def dot(a, b):
        return (a * b).sum(-1)

    # Both modality terms distil the fused teacher's scores of the lists.
    s_list = dot(user[users].unsqueeze(1), item[lists])
    t_list = dot(teacher.user[users].unsqueeze(1), teacher.item[lists])
    expected = 2 * ListwiseKDLoss()(s_list, t_list)
    _, parts = objective(user, item, teacher, users, pos, neg, lists)
    assert parts['list_kd'].item() == pytest.approx(expected.item(), rel=1e-5)
    branches = PromptMMObjective(['image', 'text'], 5, 5, pair_weight=0.,
                                 emb_weight=0.)
    _, other = branches(user, item, teacher, users, pos, neg, lists)
    assert other['list_kd'].item() != pytest.approx(expected.item(), rel=1e-3)
    assert "list_target='fused'" in repr(objective)
    with pytest.raises(ValueError, match="'list_target' must be one of"):
        PromptMMObjective(['image'], 5, 5, list_target='modal')


def test_one_sided_pairwise_counts_rows_where_the_teacher_is_surer():
    student = torch.tensor([0.5, 2.0, -1.0, 1.0], requires_grad=True)
    teacher = torch.tensor([1.5, 1.0, 0.0, 1.0])
    both = PairwiseKDLoss(reduction='none')(student, teacher)
    one = PairwiseKDLoss(one_sided=True, reduction='none')(student, teacher)
    # Rows 0 and 2: teacher margin larger -> the two-sided loss; row 1: the
    # student is surer -> 0 (two-sided it is > 0); row 3: equal -> 0.
    assert both[1] > 0
    assert torch.allclose(one, both * torch.tensor([1., 0., 1., 0.]))
    # The gradient never lowers the student's margin.
    PairwiseKDLoss(one_sided=True)(student, teacher).backward()
    assert (student.grad <= 0).all() and (student.grad[[0, 2]] < 0).all()
    assert repr(PairwiseKDLoss(one_sided=True)) == \
        'PairwiseKDLoss(tau=1.0, one_sided=True)'


def test_one_sided_listwise_counts_rows_where_the_teacher_is_surer():
    student = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 0.5],
                            [1.0, 1.0, 1.0]])
    teacher = torch.tensor([[1.0, 0.5, 0.0], [1.0, 0.0, 0.2],
                            [0.5, 1.0, 0.0]])
    both = ListwiseKDLoss(reduction='none')(student, teacher)
    one = ListwiseKDLoss(one_sided=True, reduction='none')(student, teacher)
    p_s = student.softmax(-1)[:, 0]
    p_t = teacher.softmax(-1)[:, 0]
    surer = (p_t > p_s).float()
    assert surer.tolist() == [0., 1., 0.]  # The case mix this test needs.
    assert torch.allclose(one, both * surer)
    assert (both > 0).all()
    assert 'one_sided=True' in repr(ListwiseKDLoss(one_sided=True))


def test_config_reaches_the_objective():
    from pmm_geo.train import TrainConfig
    from pmm_geo.train.stages.promptmm import build_objective
    objective = build_objective(
        TrainConfig(kd_one_sided=True, kd_list_target='fused'), ['image'])
    assert objective.pair_kd.one_sided and objective.list_kd.one_sided
    assert objective.list_target == 'fused'
    default = build_objective(TrainConfig(), ['image'])
    assert default.pair_kd.one_sided and default.list_target == 'branches'
    paper = build_objective(TrainConfig(kd_one_sided=False), ['image'])
    assert not paper.pair_kd.one_sided and not paper.list_kd.one_sided
