import os
import runpy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pmm_geo.data import BipartiteAdjacency
from pmm_geo.nn import LATTICE
from pmm_geo.nn.knn import cosine_knn, edge_cosine
# The dense original: the reference the sparse implementation must reproduce.
from pmm_geo.nn.models.lattice_dense import build_sim, dense_item_graph


def close(a, b, atol=1e-12):
    return torch.allclose(a, b, rtol=1e-9, atol=atol)


def to_dense(edge_index, edge_weight, n):
    out = torch.zeros(n, n, dtype=edge_weight.dtype)
    return out.index_put((edge_index[0], edge_index[1]), edge_weight,
                         accumulate=True)



# ---------------------------------------------------------------------------


def make_features(num_items, dims, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    # Continuous random features: no ties among the cosines.
    return {
        m: torch.randn(num_items, d, generator=gen, dtype=dtype)
        for m, d in dims.items()
    }


def make_graph(num_users, num_items, num_edges=600, seed=0):
    gen = torch.Generator().manual_seed(seed)
    key = torch.randint(0, num_users * num_items, (num_edges, ),
                        generator=gen).unique()
    key = torch.cat([key, torch.arange(num_items)])  # Every item seen.
    key = key.unique()
    return BipartiteAdjacency(
        torch.stack([key // num_items, key % num_items]), num_users,
        num_items)


def make_model(features, num_users=40, seed=0, **kwargs):
    torch.manual_seed(seed)
    num_items = next(iter(features.values())).size(0)
    dtype = next(iter(features.values())).dtype
    model = LATTICE(num_users, num_items, features, **kwargs).to(dtype)
    with torch.no_grad():  # Unequal modality weights exercise the mixing.
        model.modality_weight.copy_(
            torch.linspace(-0.4, 0.7, len(features), dtype=dtype))
    return model


def test_cosine_knn_matches_dense_topk():
    x = make_features(97, {'a': 12})['a']
    sim = build_sim(x)
    ref_val, ref_idx = sim.topk(7, dim=1)
    for block_size in (1, 10, 97, 500):  # Blocks not dividing the rows too.
        val, idx = cosine_knn(x, 7, block_size=block_size)
        assert torch.equal(idx, ref_idx)
        assert close(val, ref_val, atol=1e-12)
    # LATTICE keeps each item itself as its top neighbour.
    assert torch.equal(idx[:, 0], torch.arange(97))
    assert val.dtype == torch.float64
    assert cosine_knn(x.float(), 7)[1].equal(ref_idx)


def test_cosine_knn_zero_rows_and_errors():
    x = make_features(30, {'a': 5})['a']
    x[[3, 17]] = 0
    val, idx = cosine_knn(x, 4, block_size=8)
    assert torch.isfinite(val).all()
    assert (val[[3, 17]] == 0).all()  # A zero row has no similar rows.
    # Other rows never need the zero rows: 4 positive cosines exist.
    assert not torch.isin(idx[val > 0], torch.tensor([3, 17])).any()
    with pytest.raises(ValueError, match="'k' must be in"):
        cosine_knn(x, 31)
    with pytest.raises(ValueError, match="2-D"):
        cosine_knn(x[0], 1)


def test_edge_cosine_gradient_matches_dense_topk():
    x = make_features(50, {'a': 8})['a'].requires_grad_()
    target = torch.randn(50, 6, dtype=torch.float64)
    dense = build_sim(x).topk(6, dim=1).values
    (dense * target).sum().backward()
    ref_grad, x.grad = x.grad, None

    _, idx = cosine_knn(x, 6)
    values = edge_cosine(x, idx)
    assert close(values, dense, atol=1e-12)
    (values * target).sum().backward()
    assert close(x.grad, ref_grad, atol=1e-10)

    z = torch.zeros(4, 3, requires_grad=True)  # Zero rows: finite.
    edge_cosine(z, torch.zeros(4, 2, dtype=torch.long)).sum().backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize('dims', [
    {'image': 40, 'text': 24},
    {'image': 40, 'text': 24, 'audio': 8},
    {'text': 24},
])
def test_item_graph_matches_dense_lattice(dims):
    num_items, k = 120, 6
    features = make_features(num_items, dims)
    model = make_model(features, knn_k=k, feat_embed_dim=16,
                       lambda_coeff=0.7)

    edge_index, edge_weight = model.item_graph(features)
    sparse = to_dense(edge_index, edge_weight, num_items)
    dense = dense_item_graph(model, features)

    # Same neighbours, same normalized weights.
    assert torch.equal(sparse != 0, dense != 0)
    assert close(sparse, dense, atol=1e-12)
    # Coalesced, sorted by row, at most 2 M k edges per row.
    key = edge_index[0] * num_items + edge_index[1]
    assert bool((key[1:] > key[:-1]).all())
    assert edge_index.size(1) <= 2 * len(dims) * k * num_items
    for m in dims:  # The frozen kNN graph keeps each item itself.
        frozen_index, frozen_weight = model.frozen_graph(m)
        assert frozen_index.size(1) == k * num_items
        assert frozen_index[1].view(num_items, k)[:, 0].equal(
            torch.arange(num_items))

    # Same gradients with respect to the graph learner.
    target = torch.randn(num_items, num_items, dtype=torch.float64)
    params = [model.modality_weight] + list(model.projections.parameters())
    ref = torch.autograd.grad((dense * target).sum(), params)
    out = torch.autograd.grad(
        (edge_weight * target[edge_index[0], edge_index[1]]).sum(), params)
    for a, b in zip(out, ref):
        assert close(a, b, atol=1e-10)
    if len(dims) > 1:
        assert out[0].abs().sum() > 0


def test_forward_matches_dense_model():
    num_users, num_items = 40, 90
    features = make_features(num_items, {'image': 30, 'text': 12})
    graph = make_graph(num_users, num_items)
    model = make_model(features, num_users, embedding_dim=8, knn_k=5,
                       num_layers=2, item_graph_layers=2)

    # Dense reference: mean over LightGCN layers + normalized item graph.
    adj = graph.to_dense().double()
    user, item = model.user_embedding.weight, model.item_embedding.weight
    users, items = [user], [item]
    for _ in range(2):
        user, item = adj @ item, adj.t() @ user
        users.append(user)
        items.append(item)
    item_graph = dense_item_graph(model, features)
    h = item_graph @ (item_graph @ model.item_embedding.weight)
    ref_user = torch.stack(users).mean(0)
    ref_item = torch.stack(items).mean(0) + F.normalize(h, dim=1)
    target_u = torch.randn_like(ref_user)
    target_i = torch.randn_like(ref_item)
    params = list(model.parameters())
    ref_grad = torch.autograd.grad(
        (ref_user * target_u).sum() + (ref_item * target_i).sum(), params)

    # The user-item adjacency is float32: run the model in float32 too.
    model.float()
    features = {m: x.float() for m, x in features.items()}
    target_u, target_i = target_u.float(), target_i.float()
    params = list(model.parameters())
    for layout in ('edge_index', 'edge_index_fused', 'csr'):
        model.layout = layout
        out_user, out_item = model(graph, features)
        assert torch.allclose(out_user.double(), ref_user, atol=1e-6)
        assert torch.allclose(out_item.double(), ref_item, atol=1e-6)
        grad = torch.autograd.grad(
            (out_user * target_u).sum() + (out_item * target_i).sum(),
            params)
        for (name, _), a, b in zip(model.named_parameters(), grad,
                                   ref_grad):
            assert torch.allclose(a.double(), b, rtol=1e-4, atol=1e-5), name


def test_build_item_graph_false_reuses_detached_graph():
    features = make_features(60, {'image': 20, 'text': 10},
                             dtype=torch.float32)
    graph = make_graph(30, 60)
    model = make_model(features, 30, embedding_dim=8, knn_k=4)
    # Without a cached graph, build_item_graph=False builds one.
    _, first = model(graph, features, build_item_graph=False)
    _, item = model(graph, features, build_item_graph=True)
    assert torch.allclose(first, item)

    with torch.no_grad():  # A new graph learner: a different graph ...
        for p in model.projections.parameters():
            p.add_(torch.randn_like(p))
        model.modality_weight.add_(1.0)
    _, reused = model(graph, features, build_item_graph=False)
    assert torch.allclose(reused, item)  # ... is not used until a rebuild,
    reused.sum().backward()
    for p in [model.modality_weight, *model.projections.parameters()]:
        assert p.grad is None  # and the learner gets no gradient.
    assert model.item_embedding.weight.grad is not None
    _, rebuilt = model(graph, features, build_item_graph=True)
    assert not torch.allclose(rebuilt, item)

    model.reset_parameters()  # Drops the cached graph.
    assert model.item_graph_index is None


def test_zero_feature_rows_give_finite_outputs_and_gradients():
    num_items = 50
    features = make_features(num_items, {'image': 20, 'text': 10},
                             dtype=torch.float32)
    features['image'][[2, 9, 31]] = 0  # Items without an image.
    features['text'][[9, 40]] = 0
    graph = make_graph(25, num_items)
    model = make_model(features, 25, embedding_dim=8, knn_k=5)

    user, item = model(graph, features)
    assert torch.isfinite(user).all() and torch.isfinite(item).all()
    (user.square().sum() + item.square().sum()).backward()
    for name, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), name

    # Items without a modality have no weighted edges in its graphs.
    edge_index, weight = model.frozen_graph('image')
    missing = torch.isin(edge_index, torch.tensor([2, 9, 31])).any(0)
    assert (weight[missing] == 0).all() and (weight[~missing] != 0).all()
    edge_index, weight = model.item_graph(features)
    row_sum = torch.zeros(num_items, dtype=weight.dtype).index_add_(
        0, edge_index[0], weight.abs())
    assert row_sum[9] == 0  # Item 9 has neither modality.
    assert (row_sum[[2, 31, 40]] > 0).all()  # The other modality remains.


def test_repr_reset_and_input_errors():
    features = make_features(20, {'image': 6, 'text': 4})
    model = LATTICE(10, 20, features, embedding_dim=8, knn_k=3)
    assert str(model) == ("LATTICE(10, 20, 8, modalities=['image', 'text'], "
                          "knn_k=3)")
    assert torch.allclose(torch.softmax(model.modality_weight, 0),
                          torch.full((2, ), 0.5))
    # Raw features are inputs, never parameters.
    num_params = sum(p.numel() for p in model.parameters())
    assert num_params == (10 + 20) * 8 + (6 + 1) * 8 + (4 + 1) * 8 + 2
    before = model.user_embedding.weight.clone()
    model.reset_parameters()
    assert not torch.equal(before, model.user_embedding.weight)
    assert 'frozen_index_0' in model.state_dict()

    graph = make_graph(10, 20)
    with pytest.raises(ValueError, match="exactly the modalities"):
        model(graph, {'image': features['image']})
    with pytest.raises(ValueError, match="has width 5"):
        model(graph, {'image': features['image'],
                      'text': torch.zeros(20, 5)})
    with pytest.raises(ValueError, match="expected num_items=20"):
        LATTICE(10, 20, {'image': torch.randn(19, 4)})
    with pytest.raises(ValueError, match="'knn_k'"):
        LATTICE(10, 20, features, knn_k=21)
    with pytest.raises(ValueError, match="'lambda_coeff'"):
        LATTICE(10, 20, features, lambda_coeff=1.5)
    with pytest.raises(ValueError, match="non-empty dict"):
        LATTICE(10, 20, {})
    with pytest.raises(ValueError, match='LATTICE model was built for'):
        model(make_graph(11, 20), {k: v.float() for k, v in features.items()})


def test_fits_planted_signal():
    from pmm_geo import evaluate
    from pmm_geo.data import NegativeSampler
    from pmm_geo.data.synthetic import synthetic
    from pmm_geo.data import modalities

    data = synthetic(num_users=300, num_items=150, num_interactions=6000,
                     seed=0)
    features = {m: data['item'][m] for m in modalities(data)}
    torch.manual_seed(0)
    model = LATTICE(data['user'].num_nodes, data['item'].num_nodes, features,
                    embedding_dim=32)
    sampler = NegativeSampler.from_data(data)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)

    losses = []
    for epoch in range(12):
        total, count = 0.0, 0
        for step, (users, pos, neg) in enumerate(
                sampler.epoch_batches(1024, generator=gen)):
            # LATTICE's schedule: the graph learner trains on batch 0.
            user, item = model(data, features, build_item_graph=step == 0)
            u = user[users]
            loss = -F.logsigmoid((u * item[pos]).sum(-1) -
                                 (u * item[neg]).sum(-1)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(users)
            count += len(users)
        losses.append(total / count)
    assert losses[-1] < 0.7 * losses[0]

    with torch.no_grad():
        user, item = model.get_embedding(data, features)
        recall = evaluate(user, item, data, split='val')['recall@20']
        random = evaluate(torch.randn_like(user), torch.randn_like(item),
                          data, split='val')['recall@20']
    assert recall > 2 * random, (recall, random)


@pytest.mark.skipif(not os.path.exists('/proc/self/status'),
                    reason='the memory benchmark reads Linux /proc')
def test_memory_benchmark_smoke():
    path = Path(__file__).resolve().parents[1] / 'benchmarks' / \
        'bench_lattice_memory.py'
    bench = runpy.run_path(str(path))
    argv = ['--items', '150', '--users', '80', '--interactions', '1500',
            '--dims', '24', '12', '--embedding-dim', '8', '--batch-size',
            '64']
    sparse = bench['main'](argv)
    dense = bench['main'](argv + ['--dense'])
    # The dense original and the sparse graph hold the same edges.
    assert sparse['item_graph_edges'] == dense['item_graph_edges'] > 0
    assert sparse['peak_over_baseline_mb'] >= 0
