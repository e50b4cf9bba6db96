import importlib
import warnings

import pytest
import torch

from pmm_geo.data import (
    modalities,
    split_edge_index,
    synthetic,
    synthetic_electronics,
)

# `pmm_geo.data.synthetic` is the function; the module holds the internals.
synthetic_module = importlib.import_module('pmm_geo.data.synthetic')


def recall_at_k(scores, data, k=20):
    r"""Test recall@k of dense scores, train and val items excluded."""
    scores = scores.clone()
    for split in ('train', 'val'):
        user, item = split_edge_index(data, split)
        scores[user, item] = -float('inf')
    user, item = split_edge_index(data, 'test')
    relevant = torch.zeros_like(scores, dtype=torch.bool)
    relevant[user, item] = True
    hits = relevant.gather(1, scores.topk(k, dim=1).indices).sum(1)
    has_test = relevant.sum(1) > 0
    return (hits[has_test] / relevant.sum(1)[has_test]).mean().item()


def held_out_r2(features, target, ridge=1e-3):
    r"""R^2 on the second half of the items of a ridge regression fitted on
    the first half (linear recoverability of the item factors)."""
    x = torch.cat([features, torch.ones(features.size(0), 1)], dim=1)
    n = x.size(0) // 2
    gram = x[:n].t() @ x[:n] + ridge * torch.eye(x.size(1))
    weight = torch.linalg.solve(gram, x[:n].t() @ target[:n])
    residual = target[n:] - x[n:] @ weight
    total = (target[n:] - target[n:].mean(0)).pow(2).sum()
    return float(1 - residual.pow(2).sum() / total)


def test_shapes_counts_and_splits():
    data = synthetic(num_users=200, num_items=150, num_interactions=3000,
                     modalities={'image': 12, 'text': 5},
                     noise_modality='noise', noise_dim=7,
                     num_val_per_user=2, num_test_per_user=1, seed=3)
    assert data['user'].num_nodes == 200
    assert data['item'].num_nodes == 150
    assert modalities(data) == ['image', 'text', 'noise']
    assert [data['item'][m].size(1) for m in modalities(data)] == [12, 5, 7]
    counts = {s: split_edge_index(data, s).size(1)
              for s in ('train', 'val', 'test')}
    assert sum(counts.values()) == 3000
    # Every user: exactly 2 val items, 1 test item and at least 1 train item.
    for split, per_user in (('val', 2), ('test', 1)):
        user = split_edge_index(data, split)[0]
        assert torch.equal(torch.bincount(user, minlength=200),
                           torch.full((200, ), per_user))
    assert torch.bincount(split_edge_index(data, 'train')[0]).min() >= 1
    # Informative features have standardized signal columns.
    image = data['item'].image
    assert image.mean(0).abs().max() < 0.1
    assert ((image.std(0) - 1).abs() < 0.2).all()


def test_no_duplicates_no_warnings_and_without_replacement():
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # Duplicates would warn.
        data = synthetic(num_users=50, num_items=40, num_interactions=900,
                         seed=1)
    edges = torch.cat([split_edge_index(data, s)
                       for s in ('train', 'val', 'test')], dim=1)
    assert torch.unique(edges[0] * 40 + edges[1]).numel() == 900


def test_deterministic_given_seed():
    kwargs = dict(num_users=60, num_items=50, num_interactions=600,
                  noise_modality='noise')
    a, b = synthetic(seed=5, **kwargs), synthetic(seed=5, **kwargs)
    c = synthetic(seed=6, **kwargs)
    for split in ('train', 'val', 'test'):
        assert torch.equal(split_edge_index(a, split),
                           split_edge_index(b, split))
    assert torch.equal(a['item'].image, b['item'].image)
    assert torch.equal(a['item'].noise, b['item'].noise)
    assert not torch.equal(split_edge_index(a, 'train'),
                           split_edge_index(c, 'train'))


def test_same_data_whatever_the_thread_count():
    # Products this wide round differently with 2 threads than with 1; the
    # generator runs single-threaded so that a resumed run (another
    # --threads) finds its data, and gives the caller's threads back.
    kwargs = dict(num_users=200, num_items=1000, num_interactions=4000,
                  modalities={'image': 512, 'text': 64})
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = synthetic(**kwargs)
        torch.set_num_threads(2)
        b = synthetic(**kwargs)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    for m in ('image', 'text'):
        assert torch.equal(a['item'][m], b['item'][m])
    assert torch.equal(split_edge_index(a, 'train'),
                       split_edge_index(b, 'train'))


def test_scale_and_electronics_preset():
    data = synthetic(num_users=1000, num_items=400, num_interactions=9000,
                     scale=0.1)
    assert data['user'].num_nodes == 100
    assert data['item'].num_nodes == 40
    assert sum(split_edge_index(data, s).size(1)
               for s in ('train', 'val', 'test')) == 900

    data = synthetic_electronics(scale=0.005)
    assert data['user'].num_nodes == round(41691 * 0.005)
    assert data['item'].num_nodes == round(21479 * 0.005)
    assert sum(split_edge_index(data, s).size(1)
               for s in ('train', 'val', 'test')) == round(359165 * 0.005)
    assert modalities(data) == ['image', 'text']
    assert data['item'].image.shape == (107, 4096)
    assert data['item'].text.shape == (107, 1024)


def test_planted_preferences():
    data, factors = synthetic(num_users=400, num_items=300,
                              num_interactions=6000, return_factors=True,
                              seed=0)
    num_users, num_items = 400, 300
    oracle = recall_at_k(factors.scores(), data)
    gen = torch.Generator().manual_seed(0)
    random = recall_at_k(torch.rand(num_users, num_items, generator=gen),
                         data)
    train_item = split_edge_index(data, 'train')[1]
    popularity = torch.bincount(train_item, minlength=num_items).float()
    popular = recall_at_k(popularity.expand(num_users, -1), data)
    # Measured: oracle 0.70, popularity 0.39, random 0.07.
    assert oracle > 5 * random
    assert oracle > popular + 0.15


def test_popularity_skew():
    def top_decile_share(skew):
        data, factors = synthetic(num_users=300, num_items=200,
                                  num_interactions=4000,
                                  popularity_skew=skew,
                                  return_factors=True, seed=0)
        top = factors.log_popularity.topk(20).indices
        item = split_edge_index(data, 'train')[1]
        return torch.isin(item, top).float().mean().item()

    # Measured: 0.10 without skew, 0.46 with skew 1.5.
    flat, skewed = top_decile_share(0.), top_decile_share(1.5)
    assert flat < 0.2
    assert skewed > flat + 0.2


def test_features_encode_the_item_factors_nonlinearly():
    data, factors = synthetic(num_users=100, num_items=2000,
                              num_interactions=1000, feature_noise=0.,
                              noise_modality='noise', return_factors=True)
    # Without noise a linear map of 16-d factors to 64 or 32 columns would
    # give R^2 = 1: the tanh layer keeps it clearly below (measured 0.88).
    for name in ('image', 'text'):
        r2 = held_out_r2(data['item'][name], factors.item)
        assert 0.6 < r2 < 0.95, (name, r2)
    # The noise modality says nothing about the items (measured -0.03).
    assert held_out_r2(data['item'].noise, factors.item) < 0.05


def test_feature_noise_weakens_the_signal():
    r2 = []
    for noise in (0.1, 2.0):
        data, factors = synthetic(num_users=100, num_items=2000,
                                  num_interactions=1000, feature_noise=noise,
                                  return_factors=True)
        r2.append(held_out_r2(data['item'].image, factors.item))
    assert r2[0] > r2[1] + 0.2  # Measured: 0.87 and 0.33.


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_users=100, num_interactions=250), 'num_interactions'),
    (dict(num_items=5), 'num_items'),
    (dict(num_users=10, num_items=10, num_interactions=60),
     'exceeds half'),
    (dict(noise_modality='image'), 'noise_modality'),
    (dict(modalities={'image': 0}), "'image' needs a positive width"),
    (dict(modalities={'two words': 3}), 'not an identifier'),
    (dict(num_val_per_user=-1), 'num_val_per_user'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic(**kwargs)


def test_sampling_without_replacement_is_exact():
    # First pick of each row ~ weight; then all picks distinct.
    gen = torch.Generator().manual_seed(0)
    weight = torch.tensor([[1., 2., 3., 4., 0.]]).repeat(4000, 1)
    count = torch.full((4000, ), 1)
    picks = synthetic_module._first_distinct_draws(weight, count, gen)
    freq = torch.bincount(picks[:, 0], minlength=5).float() / 4000
    assert torch.allclose(freq, weight[0] / 10, atol=0.03)

    count = torch.tensor([4, 2, 3, 1]).repeat(1000)
    picks = synthetic_module._first_distinct_draws(weight, count, gen)
    for row, n in zip(picks[:4].tolist(), count[:4].tolist()):
        assert len(set(row[:n])) == n and set(row[n:]) <= {-1}
        assert 4 not in row  # Zero weight: never drawn.
    # Rows asking for all 4 possible items get exactly those.
    assert (picks[count == 4].sort(1).values == torch.arange(4)).all()
    # P(second pick = 3 | first pick = 0) = 4 / 9.
    first0 = (count >= 2) & (picks[:, 0] == 0)
    share = (picks[first0, 1] == 3).float().mean().item()
    assert abs(share - 4 / 9) < 0.08


def test_sampling_fallback_for_peaked_weights(monkeypatch):
    # No extension rounds: every short row takes the exponential race.
    monkeypatch.setattr(synthetic_module, '_MAX_EXTENSIONS', 0)
    gen = torch.Generator().manual_seed(0)
    weight = torch.tensor([[1., 1e-6, 1e-6, 1e-6]]).repeat(200, 1)
    count = torch.full((200, ), 3)
    picks = synthetic_module._first_distinct_draws(weight, count, gen)
    assert (picks[:, 0] == 0).float().mean() > 0.99
    assert all(len(set(row)) == 3 for row in picks.tolist())
