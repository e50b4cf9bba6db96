import math

import pytest
import torch
from torch_geometric.metrics import (
    LinkPredHitRatio,
    LinkPredNDCG,
    LinkPredPrecision,
    LinkPredRecall,
)

import pmm_geo
from pmm_geo import evaluate
from pmm_geo.data import EDGE_TYPE, from_arrays, split_edge_index
from pmm_geo.evaluation import default_batch_size, ranking_index
from pmm_geo.ranking import masked_scores


def random_data(num_users=40, num_items=60, seed=0):
    r"""Random splits with users holding 0, 1 or several val/test items."""
    gen = torch.Generator().manual_seed(seed)
    split = torch.randint(0, 10, (num_users, num_items), generator=gen)
    train = (split < 3).nonzero().t()  # ~30% train,
    val = (split == 3).nonzero().t()  # ~10% val,
    test = ((split == 4) | (split == 5)).nonzero().t()  # ~20% test,
    # and a quarter of the users without test (another without val) items.
    val, test = val[:, val[0] % 4 != 1], test[:, test[0] % 4 != 0]
    data = from_arrays(train, val, test, num_users=num_users,
                       num_items=num_items)
    user = torch.randn(num_users, 8, generator=gen, dtype=torch.float64)
    item = torch.randn(num_items, 8, generator=gen, dtype=torch.float64)
    return data, user, item


def reference(user_emb, item_emb, data, split, ks, legacy=False):
    r"""Per-user loops over sorted Python lists (NGCF-style)."""
    def items_of(name):
        out = {}
        for u, i in split_edge_index(data, name).t().tolist():
            out.setdefault(u, set()).add(i)
        return out

    train, targets = items_of('train'), items_of(split)
    val = items_of('val') if split == 'test' else {}
    scores = (user_emb @ item_emb.t()).tolist()
    sums = {}
    for u, target in targets.items():
        seen = train.get(u, set()) | val.get(u, set())
        ranked = sorted((i for i in range(item_emb.size(0)) if i not in seen),
                        key=lambda i: -scores[u][i])
        r = [1 if i in target else 0 for i in ranked[:max(ks)]]
        for k in ks:
            dcg = sum(r[j] / math.log2(j + 2) for j in range(k))
            idcg = sum(1 / math.log2(j + 2) for j in range(min(len(target),
                                                              k)))
            legacy_ideal = sorted(r, reverse=True)[:k]
            legacy_idcg = sum(x / math.log2(j + 2)
                              for j, x in enumerate(legacy_ideal))
            values = {
                'recall': sum(r[:k]) / len(target),
                'ndcg': dcg / idcg,
                'precision': sum(r[:k]) / k,
                'hit': float(sum(r[:k]) > 0),
            }
            if legacy:
                values['legacy_ndcg'] = (dcg / legacy_idcg
                                         if legacy_idcg else 0.0)
            for name, value in values.items():
                sums[f'{name}@{k}'] = sums.get(f'{name}@{k}', 0.0) + value
    return {key: value / len(targets) for key, value in sums.items()}


def masked_topk(user_emb, item_emb, data, split, k):
    r"""Dense, unchunked masked top-k over all users (independent of the
    evaluator's CSR masking)."""
    scores = user_emb @ item_emb.t()
    excluded = [split_edge_index(data, 'train')]
    if split == 'test':
        excluded.append(split_edge_index(data, 'val'))
    users, items = torch.cat(excluded, dim=1)
    scores[users, items] = float('-inf')
    return scores.topk(k, dim=1).indices


@pytest.mark.parametrize('split', ['test', 'val'])
def test_matches_per_user_reference(split):
    data, user, item = random_data()
    ks = (1, 5, 10, 20)
    out = evaluate(user, item, data, split, ks=ks, legacy_ndcg=True)
    expected = reference(user, item, data, split, ks, legacy=True)
    assert set(out) == set(expected)
    for key, value in expected.items():
        assert isinstance(out[key], float)
        assert out[key] == pytest.approx(value, abs=1e-12), key
    # Users with several held-out items, users with none, and imperfect
    # rankings are all covered by this data.
    counts = torch.bincount(split_edge_index(data, split)[0], minlength=40)
    assert int((counts == 0).sum()) > 0 and int((counts > 1).sum()) > 0
    assert 0 < out['recall@5'] < 1


def test_matches_pyg_link_pred_metrics():
    data, user, item = random_data(seed=1)
    k = 10
    pred = masked_topk(user, item, data, 'test', k)
    labels = split_edge_index(data, 'test')  # Row = user = row in `pred`.
    out = evaluate(user, item, data, 'test', ks=(k, ))
    for name, metric in (('recall', LinkPredRecall(k)),
                         ('ndcg', LinkPredNDCG(k)),
                         ('precision', LinkPredPrecision(k)),
                         ('hit', LinkPredHitRatio(k))):
        metric.update(pred, labels)  # PyG skips users without labels too.
        assert out[f'{name}@{k}'] == pytest.approx(float(metric.compute()),
                                                   abs=1e-6), name


def test_chunking_does_not_change_results():
    data, user, item = random_data(seed=2)
    full = evaluate(user, item, data, batch_size=10_000)
    for batch_size in (1, 7, None):
        assert evaluate(user, item, data, batch_size=batch_size) == full
    float_out = evaluate(user.float(), item.float(), data)
    for key, value in full.items():
        assert float_out[key] == pytest.approx(value, abs=1e-6)


def test_excluded_items_never_retrieved():
    data, user, item = random_data(seed=3)
    index = ranking_index(data, 'test')
    seen = set()
    for name in ('train', 'val'):
        seen |= set(map(tuple, split_edge_index(data, name).t().tolist()))
    retrieved = []
    for start, scores in masked_scores(user[index.users], item,
                                       index.exclude, batch_size=6):
        top = scores.topk(20, dim=1)
        for row, items in enumerate(top.indices.tolist()):
            u = int(index.users[start + row])
            retrieved += [(u, i) for i in items]
    assert len(retrieved) == index.users.numel() * 20
    assert not seen & set(retrieved)
    # Users without test items are not ranked at all.
    assert set(index.users.tolist()) == set(
        split_edge_index(data, 'test')[0].tolist())


def test_planted_scores_exclusion():
    # Train items score 3, val items 2, test items 1, the rest 0: if train
    # (or, at test, val) items were not excluded, they would fill the top.
    data, _, _ = random_data(seed=4)
    scores = torch.zeros(40, 60, dtype=torch.float64)
    for value, name in ((3., 'train'), (2., 'val'), (1., 'test')):
        u, i = split_edge_index(data, name)
        scores[u, i] = value
    user, item = scores, torch.eye(60, dtype=torch.float64)
    max_test = int(torch.bincount(split_edge_index(data, 'test')[0]).max())
    test = evaluate(user, item, data, 'test', ks=(max_test, ))
    assert test[f'recall@{max_test}'] == 1.0
    assert test[f'ndcg@{max_test}'] == pytest.approx(1.0)
    max_val = int(torch.bincount(split_edge_index(data, 'val')[0]).max())
    val = evaluate(user, item, data, 'val', ks=(max_val, ))
    assert val[f'recall@{max_val}'] == 1.0


def toy_data():
    # u0: train {0}, val {4}, test {1, 3}; u1: train {1}, test {0, 3};
    # u2: train {2}, no held-out item (skipped).
    data = from_arrays(train=[[0, 1, 2], [0, 1, 2]], val=[[0], [4]],
                       test=[[0, 0, 1, 1], [1, 3, 0, 3]], num_users=3,
                       num_items=5)
    user = torch.tensor([[0.9, 0.5, 0.1, 0.3, 0.8],
                         [0.2, 0.9, 0.7, 0.1, 0.6],
                         [0.1, 0.2, 0.3, 0.4, 0.5]])
    return data, user, torch.eye(5)


def test_hand_computed_toy_example():
    data, user, item = toy_data()
    out = evaluate(user, item, data, 'test', ks=(1, 2, 3), legacy_ndcg=True)
    # u0 ranks 1, 3, 2 (0 train, 4 val excluded): hits r = [1, 1, 0].
    # u1 ranks 2, 4, 0 (1 train excluded): hits r = [0, 0, 1].
    ndcg_u1_at_3 = (1 / math.log2(4)) / (1 + 1 / math.log2(3))
    expected = {
        'recall@1': (1 / 2 + 0) / 2, 'recall@2': (1 + 0) / 2,
        'recall@3': (1 + 1 / 2) / 2,
        'precision@1': (1 + 0) / 2, 'precision@2': (1 + 0) / 2,
        'precision@3': (2 / 3 + 1 / 3) / 2,
        'hit@1': 0.5, 'hit@2': 0.5, 'hit@3': 1.0,
        'ndcg@1': 0.5, 'ndcg@2': 0.5, 'ndcg@3': (1 + ndcg_u1_at_3) / 2,
        # Legacy IDCG of u1 uses its 1 retrieved hit, not its 2 test items.
        'legacy_ndcg@1': 0.5, 'legacy_ndcg@2': 0.5,
        'legacy_ndcg@3': (1 + 1 / math.log2(4)) / 2,
    }
    assert out.keys() == expected.keys()
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, abs=1e-7), key
    assert out['ndcg@3'] == pytest.approx(0.6532868, abs=1e-7)

    # At validation only train items are excluded: u0 ranks 4 first.
    val = evaluate(user, item, data, 'val', ks=(1, ))
    assert val == {'recall@1': 1.0, 'ndcg@1': 1.0, 'precision@1': 1.0,
                   'hit@1': 1.0}


def test_legacy_ndcg_upper_bounds_standard():
    data, user, item = random_data(seed=5)
    out = evaluate(user, item, data, ks=(5, 10, 20), legacy_ndcg=True)
    for k in (5, 10, 20):
        assert out[f'legacy_ndcg@{k}'] >= out[f'ndcg@{k}'] - 1e-12
    assert out['legacy_ndcg@20'] > out['ndcg@20'] + 0.1  # Inflated here.
    assert 'legacy_ndcg@5' not in evaluate(user, item, data, ks=(5, ))


def test_default_batch_size_bounds_the_chunk():
    assert default_batch_size(7050) == 64 * 2**20 // (7050 * 4)
    assert default_batch_size(7050, torch.float64) == 64 * 2**20 // (7050 * 8)
    assert default_batch_size(10**9) == 1
    assert pmm_geo.evaluate is evaluate and 'evaluate' in pmm_geo.__all__


def test_clear_errors():
    data, user, item = toy_data()
    with pytest.raises(ValueError, match="'user_emb' has 2 rows.*3 users"):
        evaluate(user[:2], item, data)
    with pytest.raises(ValueError, match="'item_emb' has 4 rows.*5 items"):
        evaluate(user, item[:4], data)
    with pytest.raises(ValueError, match='widths differ'):
        evaluate(user, torch.ones(5, 4), data)
    with pytest.raises(ValueError, match="'split' must be 'val' or 'test'"):
        evaluate(user, item, data, split='train')
    with pytest.raises(ValueError, match='K=6.*5'):
        evaluate(user, item, data, ks=(1, 6))
    with pytest.raises(ValueError, match='positive integers'):
        evaluate(user, item, data, ks=(0, ))
    with pytest.raises(ValueError, match='batch_size'):
        evaluate(user, item, data, ks=(1, ), batch_size=0)
    with pytest.raises(ValueError, match='NaN'):
        evaluate(user * float('nan'), item, data, ks=(1, ))
    with pytest.raises(ValueError, match="'item_emb' holds NaN or inf"):
        evaluate(user, item.index_fill(1, torch.tensor([2]), float('inf')),
                 data, ks=(1, ))
    no_val = from_arrays(train=[[0], [0]], test=[[0], [1]], num_items=2)
    with pytest.raises(ValueError, match="no 'val' split"):
        evaluate(torch.ones(1, 2), torch.eye(2), no_val, split='val',
                 ks=(1, ))
    assert evaluate(torch.ones(1, 2), torch.eye(2), no_val,
                    ks=(1, ))['recall@1'] == 1.0


def test_cached_index_follows_replaced_splits():
    data, user, item = random_data(seed=6)
    first = evaluate(user, item, data)
    assert evaluate(user, item, data) == first  # Served from the cache.
    store = data[EDGE_TYPE]
    store.test_edge_index = store.test_edge_index[:, ::2].contiguous()
    fresh = from_arrays(split_edge_index(data, 'train'),
                        split_edge_index(data, 'val'),
                        split_edge_index(data, 'test'), num_users=40,
                        num_items=60)
    assert evaluate(user, item, data) == evaluate(user, item, fresh)
    assert evaluate(user, item, data) != first
