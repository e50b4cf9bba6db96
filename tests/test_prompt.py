import pytest
import torch

import pmm_geo.nn.prompt as prompt_module
from pmm_geo.data import BipartiteAdjacency
from pmm_geo.nn import PromptedProjector, PromptLearner
from pmm_geo.nn.prompt import pca


def reference_pca(x: torch.Tensor, k: int) -> torch.Tensor:
    # Textbook PCA scores: centre, full SVD, U S, first k columns.
    xc = x.double() - x.double().mean(0)
    u, s, _ = torch.linalg.svd(xc, full_matrices=False)
    return (u * s)[:, :k]


def low_rank_features(num_rows, num_cols, rank, seed=0):
    gen = torch.Generator().manual_seed(seed)
    spectrum = 2.0**-torch.arange(rank, dtype=torch.float)
    left = torch.randn(num_rows, rank, generator=gen) * spectrum
    return (left @ torch.randn(rank, num_cols, generator=gen) +
            1e-3 * torch.randn(num_rows, num_cols, generator=gen) + 3.0)


def small_graph():
    edge_index = torch.tensor([[0, 0, 1, 2, 2, 2, 3], [0, 1, 1, 0, 2, 3, 4]])
    return BipartiteAdjacency(edge_index, num_users=4, num_items=5)


def test_pca_matches_svd_up_to_sign_and_follows_sign_convention():
    x = torch.randn(40, 12, generator=torch.Generator().manual_seed(0)) + 5
    out = pca(x, 6)
    ref = reference_pca(x, 6)
    sign = (out.double() * ref).sum(0).sign()
    assert torch.allclose(out.double(), ref * sign, atol=1e-4)
    # Convention: the loading of largest magnitude is positive, with the
    # loadings recovered from the scores by least squares.
    xc = x.double() - x.double().mean(0)
    loadings = torch.linalg.lstsq(xc, out.double()).solution
    pivot = loadings.abs().argmax(0)
    assert bool((loadings[pivot, torch.arange(6)] > 0).all())
    # Deterministic, and independent of the row order up to that order.
    assert torch.equal(pca(x, 6), out)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(pca(x[perm], 6), out[perm], atol=1e-4)


def test_pca_randomized_path_matches_exact(monkeypatch):
    x = low_rank_features(300, 80, rank=8)
    exact = pca(x, 6)
    monkeypatch.setattr(prompt_module, 'EXACT_PCA_MAX_DIM', 10)
    randomized = pca(x, 6)
    assert torch.allclose(randomized, exact, atol=1e-3 * exact.abs().max())
    assert torch.equal(pca(x, 6), randomized)  # Seeded: repeatable.


def test_pca_pads_narrow_or_short_inputs_and_survives_zero_variance():
    narrow = torch.randn(30, 3)
    out = pca(narrow, 8)
    assert out.shape == (30, 8)
    assert torch.equal(out[:, 3:], torch.zeros(30, 5))
    assert torch.allclose(out[:, :3].double(), reference_pca(narrow, 3) *
                          (out[:, :3].double() * reference_pca(narrow, 3)
                           ).sum(0).sign(), atol=1e-4)
    short = torch.randn(4, 20)  # Fewer rows than components.
    assert torch.equal(pca(short, 8)[:, 4:], torch.zeros(4, 4))

    constant = torch.full((10, 6), 2.5)
    zeros = torch.zeros(10, 6)
    for x in (constant, zeros):
        assert torch.equal(pca(x, 4), torch.zeros(10, 4))
    with pytest.raises(ValueError, match="2-D"):
        pca(torch.randn(5), 2)


def test_prompt_learner_tokens_and_prompts():
    adj = small_graph()
    features = {'image': torch.randn(5, 7), 'text': torch.randn(5, 2)}
    learner = PromptLearner(4, 5, embedding_dim=3)
    with pytest.raises(RuntimeError, match='init_tokens'):
        learner()
    learner.init_tokens(adj, features)

    item_tokens = (pca(features['image'], 3) + pca(features['text'], 3)) / 2
    assert torch.allclose(learner.item_tokens, item_tokens, atol=1e-6)
    # Users aggregate their items' tokens through the normalized graph.
    assert torch.allclose(learner.user_tokens,
                          adj.to_dense() @ item_tokens, atol=1e-6)

    user_prompt, item_prompt = learner()
    assert user_prompt.shape == (4, 3) and item_prompt.shape == (5, 3)
    assert torch.allclose(item_prompt, learner.item_map(item_tokens))
    assert torch.allclose(user_prompt,
                          learner.user_map(adj.to_dense() @ item_tokens),
                          atol=1e-6)
    (user_prompt.sum() + item_prompt.sum()).backward()
    assert learner.item_map.weight.grad.abs().sum() > 0
    assert learner.user_map.weight.grad.abs().sum() > 0

    # Hard tokens are persistent buffers: a saved prompt reloads exactly.
    clone = PromptLearner(4, 5, embedding_dim=3)
    clone.load_state_dict(learner.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(clone(), learner()))

    # Re-initializing is deterministic and keeps the trained map.
    before = learner.item_tokens.clone()
    learner.init_tokens(adj, features)
    assert torch.equal(learner.item_tokens, before)
    assert repr(learner) == 'PromptLearner(4, 5, 3, dropout=0.0)'


def test_prompt_learner_bad_input():
    adj = small_graph()
    with pytest.raises(ValueError, match='num_items'):
        PromptLearner(4, 0)
    with pytest.raises(ValueError, match='dropout'):
        PromptLearner(4, 5, dropout=1.5)
    learner = PromptLearner(4, 5, 3)
    with pytest.raises(ValueError, match="modality 'image'"):
        learner.init_tokens(adj, {'image': torch.randn(6, 3)})
    with pytest.raises(ValueError, match='empty'):
        learner.init_tokens(adj, {})
    with pytest.raises(ValueError, match='built for 3 users'):
        PromptLearner(3, 5, 3).init_tokens(adj, {'a': torch.randn(5, 2)})


def dense_projector(projector, x, prompt):
    x, prompt = x.double(), prompt.double()
    smooth = prompt @ prompt.t() @ x  # The dense I x I form, tests only.
    norm = smooth.norm(dim=1, keepdim=True)
    smooth = torch.where(norm > 0, smooth / norm, torch.zeros_like(smooth))
    weight = projector.lin.weight.double()
    return (x + projector.beta * smooth) @ weight.t() + \
        projector.lin.bias.double()


def test_prompted_projector_matches_dense_computation():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 6, generator=gen)
    prompt = torch.randn(9, 4, generator=gen)
    projector = PromptedProjector(6, 4, dropout=0.5, beta=0.3)
    projector.lin.bias.data.uniform_(-1, 1)
    projector.eval()
    out = projector(x, prompt)
    assert out.shape == (9, 4)
    assert torch.allclose(out.double(), dense_projector(projector, x, prompt),
                          atol=1e-5)
    # The explicit I x d_m form gives the same result.
    explicit = projector.lin(x + 0.3 * projector.prompt_features(x, prompt))
    assert torch.allclose(out, explicit, atol=1e-5)
    # A precomputed W x + b (a frozen projector in stage 2) too.
    assert torch.allclose(projector(x, prompt, projector.lin(x)), out)
    # Without a prompt (or beta = 0) it is a plain linear map.
    assert torch.allclose(projector(x, None), projector.lin(x))
    # Dropout is active in train mode only.
    projector.train()
    assert (projector(x, prompt) == 0).any()
    assert repr(projector) == 'PromptedProjector(6, 4, dropout=0.5, beta=0.3)'


def test_prompted_projector_gradients_match_explicit_form():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(12, 7, generator=gen)
    prompt = torch.randn(12, 3, generator=gen, requires_grad=True)
    projector = PromptedProjector(7, 3, beta=0.8)
    target = torch.randn(12, 3, generator=gen)

    def grads(out):
        projector.zero_grad()
        prompt.grad = None
        (out - target).square().sum().backward()
        return [prompt.grad.clone(), projector.lin.weight.grad.clone(),
                projector.lin.bias.grad.clone()]

    implicit = grads(projector(x, prompt))
    explicit = grads(projector.lin(x + 0.8 * projector.prompt_features(
        x, prompt)))
    for a, b in zip(implicit, explicit):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_prompted_projector_zero_feature_rows_are_finite():
    x = torch.randn(6, 5)
    x[2] = 0.  # An item without this modality.
    prompt = torch.randn(6, 3, requires_grad=True)
    projector = PromptedProjector(5, 3, beta=1.0)
    for forward in (lambda: projector(x, prompt),
                    lambda: projector(x, prompt, projector.lin(x))):
        out = forward()
        assert torch.isfinite(out).all()
        # The zero row still gets the prompt smoothing of the other items.
        assert torch.allclose(out.double(),
                              dense_projector(projector, x, prompt.detach()),
                              atol=1e-5)
        out.square().sum().backward()
        assert torch.isfinite(prompt.grad).all() and prompt.grad.abs().sum() > 0
        prompt.grad = None

    # An all-zero modality: the prompt term vanishes, gradients stay finite.
    zeros = torch.zeros(6, 5)
    out = projector(zeros, prompt)
    assert torch.allclose(out, projector.lin.bias.expand(6, 3))
    out.sum().backward()
    assert torch.isfinite(prompt.grad).all()
    assert torch.isfinite(projector.lin.weight.grad).all()


def test_prompted_projector_bad_input():
    projector = PromptedProjector(5, 3)
    with pytest.raises(ValueError, match=r'\[num_items, 5\]'):
        projector(torch.randn(4, 6), torch.randn(4, 3))
    with pytest.raises(ValueError, match="'prompt' has 3 rows"):
        projector(torch.randn(4, 5), torch.randn(3, 3))
    with pytest.raises(ValueError, match='dropout'):
        PromptedProjector(5, 3, dropout=-0.1)
