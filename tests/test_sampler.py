import math

import pytest
import torch

from pmm_geo.data import NegativeSampler, from_arrays


def dense_graph(num_users=30, num_items=40, density=0.7, seed=0):
    r"""A dense random bipartite graph (rejection matters) in which every user
    keeps at least one negative item and one positive item."""
    gen = torch.Generator().manual_seed(seed)
    adj = torch.rand(num_users, num_items, generator=gen) < density
    adj[:, 0] = True  # Every user has a positive ...
    adj[torch.arange(num_users), 1 + torch.arange(num_users) %
        (num_items - 1)] = False  # ... and a negative.
    return adj, adj.nonzero().t().contiguous()


def wilson_hilferty_critical(df: int, z: float) -> float:
    r"""Upper chi-square quantile via the Wilson-Hilferty approximation
    (accurate to well under 1% for df > 30); :obj:`z` is the standard
    normal quantile (3.09 for p = 0.001)."""
    c = 2.0 / (9.0 * df)
    return df * (1.0 - c + z * math.sqrt(c))**3


def chi_square(adj, users, negatives):
    r"""Pearson statistic of the negatives' counts against a uniform draw over
    each user's true negatives, summed over users; returns (stat, df)."""
    num_users, num_items = adj.shape
    counts = torch.zeros(num_users, num_items, dtype=torch.float64)
    counts.index_put_((users.view(-1, 1).expand_as(negatives), negatives),
                      torch.ones(negatives.shape, dtype=torch.float64),
                      accumulate=True)
    draws = counts.sum(dim=1, keepdim=True)
    free = (~adj).double()
    expected = draws * free / free.sum(dim=1, keepdim=True)
    cells = free.bool() & (draws > 0)
    stat = ((counts - expected)**2 / expected)[cells].sum()
    df = int((free.sum(dim=1)[draws.view(-1) > 0] - 1).sum())
    return float(stat), df


def test_never_returns_a_positive():
    adj, edge_index = dense_graph()
    sampler = NegativeSampler(edge_index, *adj.shape)
    gen = torch.Generator().manual_seed(1)
    users = torch.randint(adj.size(0), (20_000, ), generator=gen)
    neg = sampler.sample_negatives(users, 10, generator=gen)  # 200k draws.
    assert neg.shape == (20_000, 10) and neg.dtype == torch.long
    assert not bool(adj[users.view(-1, 1), neg].any())
    # The proposal alone would hit positives ~70% of the time.
    assert float(adj.float().mean()) > 0.6


def test_uniform_over_true_negatives():
    adj, edge_index = dense_graph(num_users=20, num_items=30, seed=2)
    sampler = NegativeSampler(edge_index, *adj.shape)
    gen = torch.Generator().manual_seed(3)
    users = torch.arange(adj.size(0)).repeat_interleave(500)
    neg = sampler.sample_negatives(users, 20, generator=gen)
    stat, df = chi_square(adj, users, neg)
    assert df > 30
    assert stat < wilson_hilferty_critical(df, z=3.09)  # p = 0.001.

    # The same test rejects a biased sampler (the check can fail): mapping
    # each rejected slot to the user's first negative instead of redrawing.
    raw = torch.randint(adj.size(1), neg.shape, generator=gen)
    first_neg = (~adj).float().argmax(dim=1)
    biased = torch.where(adj[users.view(-1, 1), raw],
                         first_neg[users].view(-1, 1), raw)
    assert chi_square(adj, users, biased)[0] > wilson_hilferty_critical(
        df, z=3.09)


def test_epoch_batches_cover_each_edge_once():
    adj, edge_index = dense_graph(num_users=25, num_items=30, seed=4)
    sampler = NegativeSampler(edge_index, *adj.shape)
    batches = list(sampler.epoch_batches(64, torch.Generator().manual_seed(0)))
    assert len(batches) == sampler.num_batches(64)
    assert all(b[0].numel() == 64 for b in batches[:-1])
    users, pos, neg = (torch.cat(t) for t in zip(*batches))
    keys = users * adj.size(1) + pos
    expected = edge_index[0] * adj.size(1) + edge_index[1]
    assert torch.equal(keys.sort()[0], expected.sort()[0])
    assert not torch.equal(keys, expected)  # Shuffled.
    assert bool(adj[users, pos].all()) and not bool(adj[users, neg].any())

    dropped = list(sampler.epoch_batches(64, drop_last=True))
    assert len(dropped) == sampler.num_batches(64, drop_last=True)
    assert sum(b[0].numel() for b in dropped) == 64 * len(dropped)


def test_repeatable_with_generator_seed():
    adj, edge_index = dense_graph(seed=5)
    sampler = NegativeSampler(edge_index, *adj.shape)
    users = torch.arange(adj.size(0)).repeat(10)

    def draw(seed):
        gen = torch.Generator().manual_seed(seed)
        neg = sampler.sample_negatives(users, 5, generator=gen)
        epoch = list(sampler.epoch_batches(50, generator=gen))
        lists = sampler.candidate_lists(users, users % 3, 4, generator=gen)
        return [neg, lists] + [t for batch in epoch for t in batch]

    first, again, other = draw(7), draw(7), draw(8)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_candidate_lists():
    adj, edge_index = dense_graph(seed=6)
    sampler = NegativeSampler(edge_index, *adj.shape)
    users, pos = edge_index[:, :50]
    lists = sampler.candidate_lists(users, pos, 8,
                                    torch.Generator().manual_seed(0))
    assert lists.shape == (50, 9)
    assert torch.equal(lists[:, 0], pos)
    assert not bool(adj[users.view(-1, 1), lists[:, 1:]].any())
    with pytest.raises(ValueError, match='pos_items'):
        sampler.candidate_lists(users, pos[:3], 8)


def test_from_data_and_repr():
    data = from_arrays(train=[[0, 0, 1, 2], [0, 1, 2, 3]],
                       test=[[1], [0]], num_users=3, num_items=4)
    sampler = NegativeSampler.from_data(data)
    assert repr(sampler) == ('NegativeSampler(num_users=3, num_items=4, '
                             'num_edges=4)')
    neg = sampler.sample_negatives(torch.tensor([0, 1, 2]), 50)
    assert not bool(((neg[0] == 0) | (neg[0] == 1)).any())
    assert not bool((neg[1] == 2).any()) and not bool((neg[2] == 3).any())


def test_clear_errors():
    # User 0 interacted with every item: it has no negative.
    sampler = NegativeSampler(torch.tensor([[0, 0, 0, 1], [0, 1, 2, 0]]),
                              num_users=2, num_items=3)
    assert sampler.sample_negatives(torch.tensor([1]), 3).shape == (1, 3)
    with pytest.raises(ValueError, match='User 0 interacted with all 3'):
        sampler.sample_negatives(torch.tensor([1, 0]), 1)
    with pytest.raises(ValueError, match='user id 5'):
        sampler.sample_negatives(torch.tensor([5]), 1)
    with pytest.raises(ValueError, match='1-D'):
        sampler.sample_negatives(torch.tensor([[1]]), 1)
    with pytest.raises(ValueError, match='item id 9'):
        NegativeSampler(torch.tensor([[0], [9]]), num_users=1, num_items=3)
    with pytest.raises(ValueError, match=r'\[2, E\]'):
        NegativeSampler(torch.tensor([0, 1]), num_users=2, num_items=3)
    with pytest.raises(ValueError, match='batch_size'):
        next(sampler.epoch_batches(0))


def test_epoch_shards_partition_one_epoch():
    edge_index = torch.stack([torch.arange(23) % 5, torch.arange(23) % 7])
    sampler = NegativeSampler(edge_index, 5, 9)
    whole = torch.cat([torch.stack(b, 1) for b in sampler.epoch_batches(
        100, generator=torch.Generator().manual_seed(4))])
    shards = []
    for shard in range(3):
        gen = torch.Generator().manual_seed(4)  # The same state per rank.
        batches = list(sampler.epoch_batches(3, generator=gen, num_shards=3,
                                             shard=shard))
        assert len(batches) == sampler.num_batches(3, num_shards=3) == 3
        shards.append(torch.cat([torch.stack(b, 1) for b in batches]))
    # 7 triplets per shard, taken in turn from the one-process epoch (its
    # negatives included); the last 23 - 21 are left over this epoch.
    assert all(s.size(0) == 7 for s in shards)
    assert torch.equal(torch.stack(shards, 1).view(21, 3), whole[:21])
    assert len(list(sampler.epoch_batches(3, num_shards=3, shard=1,
                                          drop_last=True))) == 2
    with pytest.raises(ValueError, match="'shard' must be in 0..2"):
        sampler.epoch_batches(3, num_shards=3, shard=3)


def test_dense_membership_table_gives_the_same_draws(monkeypatch):
    # Small graphs read membership from a dense U x I table; large ones
    # search the sorted keys. Same answers on every cell, so the same draws.
    import pmm_geo.data.sampler as sampler_module
    adj, edge_index = dense_graph(num_users=25, num_items=35, seed=4)
    dense = NegativeSampler(edge_index, *adj.shape)
    monkeypatch.setattr(sampler_module, 'DENSE_MEMBERSHIP_MAX_CELLS',
                        adj.numel() - 1)
    keys = NegativeSampler(edge_index, *adj.shape)
    assert dense.pos_table is not None and keys.pos_table is None
    users = torch.arange(adj.size(0)).view(-1, 1).expand_as(adj)
    items = torch.arange(adj.size(1)).expand_as(adj)
    assert torch.equal(dense.is_positive(users, items), adj)
    assert torch.equal(keys.is_positive(users, items), adj)
    draws = []
    for sampler in (dense, keys):
        gen = torch.Generator().manual_seed(5)
        batch_users = torch.randint(adj.size(0), (500, ), generator=gen)
        draws.append(sampler.candidate_lists(
            batch_users, torch.zeros(500, dtype=torch.long), 10,
            generator=gen))
    assert torch.equal(*draws)
