import pytest
import torch
from torch_geometric.typing import WITH_TORCH_SPARSE

import pmm_geo
from pmm_geo.data import EDGE_TYPE, BipartiteAdjacency, from_arrays
from pmm_geo.nn import FrozenItemGraph, LightGCNStudent

LAYOUTS = ['edge_index', 'edge_index_fused', 'csr']
if WITH_TORCH_SPARSE:
    LAYOUTS.append('sparse_tensor')


def random_edges(num_users, num_items, num_edges, seed=0):
    gen = torch.Generator().manual_seed(seed)
    key = torch.unique(
        torch.randint(num_users * num_items, (num_edges, ), generator=gen))
    edge_index = torch.stack([key // num_items, key % num_items])
    # Every user and item gets at least one edge (no isolated nodes).
    extra = torch.stack([torch.arange(num_users),
                         torch.arange(num_users) % num_items])
    extra2 = torch.stack([torch.arange(num_items) % num_users,
                          torch.arange(num_items)])
    key = torch.cat([edge_index, extra, extra2], 1)
    key = torch.unique(key[0] * num_items + key[1])
    return torch.stack([key // num_items, key % num_items])


def dense_lightgcn(edge_index, num_users, num_items, user0, item0, alpha):
    # Reference written from the LightGCN paper, independent of pmm_geo:
    # the (U+I) x (U+I) symmetric adjacency, E_l = A E_{l-1}, weighted sum.
    n = num_users + num_items
    adj = torch.zeros(n, n)
    adj[edge_index[0], num_users + edge_index[1]] = 1.
    adj[num_users + edge_index[1], edge_index[0]] = 1.
    deg_inv_sqrt = adj.sum(1).pow(-0.5)
    adj = deg_inv_sqrt.view(-1, 1) * adj * deg_inv_sqrt.view(1, -1)
    x = torch.cat([user0, item0], dim=0)
    out = alpha[0] * x
    for weight in alpha[1:]:
        x = adj @ x
        out = out + weight * x
    return out[:num_users], out[num_users:]


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('num_layers,alpha', [
    (3, None),
    (2, torch.tensor([0.5, 0.3, 0.2])),
    (0, None),
])
def test_student_equals_dense_lightgcn(layout, num_layers, alpha):
    num_users, num_items = 23, 17
    edge_index = random_edges(num_users, num_items, 80, seed=1)
    adj = BipartiteAdjacency(edge_index, num_users, num_items)
    model = LightGCNStudent(num_users, num_items, 8, num_layers=num_layers,
                            alpha=alpha, layout=layout)
    user, item = model.get_embedding(adj)
    assert user.shape == (num_users, 8) and item.shape == (num_items, 8)

    weights = model.alpha.tolist()
    if alpha is None:
        assert weights == pytest.approx([1 / (num_layers + 1)] *
                                        (num_layers + 1))
    user0 = model.user_embedding.weight.detach().clone().requires_grad_()
    item0 = model.item_embedding.weight.detach().clone().requires_grad_()
    ref_user, ref_item = dense_lightgcn(edge_index, num_users, num_items,
                                        user0, item0, weights)
    assert torch.allclose(user, ref_user, atol=1e-5)
    assert torch.allclose(item, ref_item, atol=1e-5)

    assert_same_gradients(model, (user, item), (ref_user, ref_item),
                          user0, item0)


def assert_same_gradients(model, out, ref, user0, item0):
    # Same gradients w.r.t. the layer-0 embeddings for a random upstream
    # gradient of the (user, item) outputs and of their references.
    grads = [torch.randn_like(x) for x in out]
    sum((x * g).sum() for x, g in zip(out, grads)).backward()
    sum((x * g).sum() for x, g in zip(ref, grads)).backward()
    assert torch.allclose(model.user_embedding.weight.grad, user0.grad,
                          atol=1e-5)
    assert torch.allclose(model.item_embedding.weight.grad, item0.grad,
                          atol=1e-5)


def test_student_forward_scores_and_graph_types():
    num_users, num_items = 10, 7
    edge_index = random_edges(num_users, num_items, 25, seed=2)
    data = from_arrays(edge_index, num_users=num_users, num_items=num_items)
    model = LightGCNStudent(num_users, num_items, 4, num_layers=2)

    user, item = model.get_embedding(data)
    scores = model(data)  # Default: the train edges.
    assert scores.shape == (edge_index.size(1), )
    assert torch.allclose(scores,
                          (user[edge_index[0]] * item[edge_index[1]]).sum(-1))
    pairs = torch.tensor([[0, 9, 3], [6, 0, 2]])
    assert torch.allclose(model(data, pairs),
                          (user[pairs[0]] * item[pairs[1]]).sum(-1))
    # A BipartiteAdjacency and the HeteroData give the same result.
    adj = BipartiteAdjacency(edge_index, num_users, num_items)
    assert torch.allclose(model(adj, pairs), model(data, pairs))


def test_student_repr_reset_and_errors():
    model = LightGCNStudent(100, 50, 64, num_layers=3)
    assert str(model) == 'LightGCNStudent(100, 50, 64, num_layers=3)'
    # Initialization: N(0, 0.1^2), as the reference LightGCN.
    weight = torch.cat([model.user_embedding.weight,
                        model.item_embedding.weight]).detach()
    assert 0.08 < float(weight.std()) < 0.12
    before = model.user_embedding.weight.detach().clone()
    model.reset_parameters()
    assert not torch.equal(before, model.user_embedding.weight)
    # The student owns nothing but its two embedding tables.
    assert sum(p.numel() for p in model.parameters()) == (100 + 50) * 64

    with pytest.raises(ValueError, match="'alpha' must have"):
        LightGCNStudent(10, 5, 4, num_layers=2, alpha=torch.ones(2))
    with pytest.raises(ValueError, match="Unknown 'layout'"):
        LightGCNStudent(10, 5, 4, layout='dense')
    with pytest.raises(ValueError, match="'num_users' must be positive"):
        LightGCNStudent(0, 5, 4)
    adj = BipartiteAdjacency(random_edges(9, 5, 20), 9, 5)
    with pytest.raises(ValueError, match='built for 10 users'):
        LightGCNStudent(10, 5, 4).get_embedding(adj)
    model = LightGCNStudent(9, 5, 4)
    with pytest.raises(ValueError, match=r"edge_label_index\[1\] \(item\)"):
        model(adj, torch.tensor([[0], [5]]))
    with pytest.raises(TypeError, match='BipartiteAdjacency'):
        model.get_embedding(torch.zeros(2, 3, dtype=torch.long))


def item_graph_of(num_items, seed=0, k=3):
    # FREEDOM's mixed graph of two random modalities (not stored row by row).
    gen = torch.Generator().manual_seed(seed)
    features = {'image': torch.randn(num_items, 6, generator=gen),
                'text': torch.randn(num_items, 5, generator=gen)}
    return FrozenItemGraph.from_features(features, k=k)


@pytest.mark.parametrize('layout', ['edge_index', 'edge_index_fused'])
def test_student_item_graph_equals_dense_reference(layout):
    # e_i = LightGCN(E)_i + (S E^(0))_i with S the dense mixed kNN graph.
    num_users, num_items = 23, 17
    edge_index = random_edges(num_users, num_items, 80, seed=1)
    adj = BipartiteAdjacency(edge_index, num_users, num_items)
    graph = item_graph_of(num_items)
    model = LightGCNStudent(num_users, num_items, 8, num_layers=2,
                            layout=layout, item_graph=graph)
    user, item = model.get_embedding(adj)
    user0 = model.user_embedding.weight.detach().clone().requires_grad_()
    item0 = model.item_embedding.weight.detach().clone().requires_grad_()
    ref_user, ref_item = dense_lightgcn(edge_index, num_users, num_items,
                                        user0, item0, [1 / 3] * 3)
    ref_item = ref_item + graph.to_dense() @ item0
    assert torch.allclose(user, ref_user, atol=1e-5)
    assert torch.allclose(item, ref_item, atol=1e-5)
    # The graph term really contributes, and gradients match the reference.
    plain = LightGCNStudent(num_users, num_items, 8, num_layers=2)
    plain.load_state_dict(model.state_dict(), strict=False)
    assert not torch.allclose(plain.get_embedding(adj)[1], item, atol=1e-3)
    assert_same_gradients(model, (user, item), (ref_user, ref_item),
                          user0, item0)


def test_student_item_graph_saved_and_rebuilt():
    num_users, num_items = 12, 9
    adj = BipartiteAdjacency(random_edges(num_users, num_items, 30, seed=4),
                             num_users, num_items)
    model = LightGCNStudent(num_users, num_items, 4,
                            item_graph=item_graph_of(num_items, k=2))
    assert 'item_graph=FrozenItemGraph(9, num_edges=36' in str(model)
    # Still nothing trainable but the two tables.
    assert sum(p.numel() for p in model.parameters()) == (12 + 9) * 4
    args = model.init_args()
    assert args['item_graph'] == (36, 1)  # Plain ints: a weights_only load.
    rebuilt = LightGCNStudent(**args)
    rebuilt.load_state_dict(model.state_dict())
    for a, b in zip(rebuilt.get_embedding(adj), model.get_embedding(adj)):
        assert torch.equal(a, b)
    assert LightGCNStudent(3, 2, 4).init_args()['item_graph'] is None

    with pytest.raises(ValueError, match='over 9 items, the student has 8'):
        LightGCNStudent(num_users, 8, 4, item_graph=item_graph_of(9))
    with pytest.raises(ValueError, match="'item_graph' must be a Frozen"):
        LightGCNStudent(num_users, num_items, 4, item_graph='knn')


def test_recommendation_loss():
    model = LightGCNStudent(6, 4, 8, num_layers=1)
    adj = BipartiteAdjacency(random_edges(6, 4, 12, seed=3), 6, 4)
    pos = model(adj, torch.tensor([[0, 1, 2], [0, 1, 2]]))
    neg = model(adj, torch.tensor([[0, 1, 2], [3, 2, 1]]))

    loss = model.recommendation_loss(pos, neg)
    assert loss.dim() == 0 and loss > 0
    expected = -torch.nn.functional.logsigmoid(pos - neg).mean()
    assert torch.allclose(loss, expected)

    # The L2 term on the layer-0 rows; both node_id formats agree.
    users, items = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2, 3])
    reg = (model.user_embedding.weight[users].pow(2).sum() +
           model.item_embedding.weight[items].pow(2).sum())
    loss_tuple = model.recommendation_loss(pos, neg, (users, items),
                                           lambda_reg=0.1)
    loss_homo = model.recommendation_loss(pos, neg, torch.cat([users,
                                                               6 + items]),
                                          lambda_reg=0.1)
    assert torch.allclose(loss_tuple, expected + 0.1 * reg / 3)
    assert torch.allclose(loss_homo, loss_tuple)
    loss_tuple.backward()
    assert model.user_embedding.weight.grad[5].abs().sum() > 0  # Via graph.
    with pytest.raises(ValueError, match="'node_id' holds id 10"):
        model.recommendation_loss(pos, neg, torch.tensor([10]))


def dense_recommend(model, adj, k, exclude):
    user, item = model.get_embedding(adj)
    scores = user @ item.t()
    if exclude is not None:
        scores[exclude[0], exclude[1]] = float('-inf')
    return scores.topk(k, dim=-1).indices


def test_recommend_excludes_seen_items_and_is_chunk_invariant():
    num_users, num_items = 40, 30
    edge_index = random_edges(num_users, num_items, 300, seed=4)
    data = from_arrays(edge_index, num_users=num_users, num_items=num_items)
    model = LightGCNStudent(num_users, num_items, 16, num_layers=2)

    top = model.recommend(data, k=5)
    assert top.shape == (num_users, 5) and top.dtype == torch.long
    assert top.min() >= 0 and top.max() < num_items
    seen = torch.zeros(num_users, num_items, dtype=torch.bool)
    seen[edge_index[0], edge_index[1]] = True
    assert not seen.gather(1, top).any()
    assert torch.equal(top, dense_recommend(model, data, 5, edge_index))
    # Chunking over users does not change the result.
    for batch_size in (1, 7, 1000):
        assert torch.equal(model.recommend(data, k=5, batch_size=batch_size),
                           top)

    # Any subset of users, in any order, duplicates included.
    users = torch.tensor([7, 3, 7, 39])
    assert torch.equal(model.recommend(data, 5, user_index=users,
                                       batch_size=3), top[users])

    # exclude_links=False: plain top-k over all items, seen ones included.
    plain = model.recommend(data, k=5, exclude_links=False)
    assert torch.equal(plain, dense_recommend(model, data, 5, None))
    assert seen.gather(1, plain).any()

    # A custom exclusion list (e.g. train + val edges).
    extra = torch.stack([torch.arange(num_users), top[:, 0]])
    both = torch.cat([edge_index, extra], dim=1)
    top2 = model.recommend(data, k=5, exclude_links=both, batch_size=9)
    assert torch.equal(top2, dense_recommend(model, data, 5, both))
    assert not (top2 == top[:, :1]).any()


def test_recommend_k_bounds_and_padding():
    # User 0 has seen every item but one.
    edge_index = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 3, 0]])
    adj = BipartiteAdjacency(edge_index, 3, 4)
    model = LightGCNStudent(3, 4, 4, num_layers=1)
    top = model.recommend(adj, k=2)
    assert top[0].tolist() == [3, -1]  # Never an excluded item.
    assert (top[1:] >= 0).all()
    assert model.recommend(adj, k=4, exclude_links=False).shape == (3, 4)
    for k in (0, 5):
        with pytest.raises(ValueError, match="'k' must be in 1..num_items"):
            model.recommend(adj, k=k)
    with pytest.raises(ValueError, match="'user_index' holds id 3"):
        model.recommend(adj, k=1, user_index=torch.tensor([3]))


def planted_dataset(num_users=300, num_items=200, rank=4, per_user=12,
                    seed=0):
    # Low-rank preferences: each user picks items by softmax(u . i / 0.1).
    gen = torch.Generator().manual_seed(seed)
    user_f = torch.randn(num_users, rank, generator=gen)
    item_f = torch.randn(num_items, rank, generator=gen)
    logits = user_f @ item_f.t() / (0.1 * rank**.5)
    items = torch.multinomial(logits.softmax(-1), per_user, generator=gen)
    users = torch.arange(num_users).view(-1, 1).expand_as(items)
    split = lambda a, b: torch.stack(  # noqa: E731
        [users[:, a:b].reshape(-1), items[:, a:b].reshape(-1)])
    return from_arrays(split(2, per_user), split(0, 1), split(1, 2),
                       num_users=num_users, num_items=num_items)



def test_student_fits_planted_signal():
    torch.manual_seed(0)
    data = planted_dataset()
    num_users, num_items = data['user'].num_nodes, data['item'].num_nodes
    edge_index = data[EDGE_TYPE].edge_index
    model = LightGCNStudent(num_users, num_items, 32, num_layers=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)

    random_recall = pmm_geo.evaluate(torch.randn(num_users, 32),
                                     torch.randn(num_items, 32), data,
                                     split='val')['recall@20']
    before = pmm_geo.evaluate(*model.get_embedding(data), data,
                              split='val')['recall@20']
    losses = []
    for step in range(20):  # Full-batch BPR with uniform negatives.
        users, pos = edge_index
        neg = torch.randint(num_items, (pos.numel(), ))
        label = torch.cat([edge_index, torch.stack([users, neg])], dim=1)
        pos_rank, neg_rank = model(data, label).chunk(2)
        loss = model.recommendation_loss(pos_rank, neg_rank,
                                         (users, torch.cat([pos, neg])))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))

    with torch.no_grad():
        after = pmm_geo.evaluate(*model.get_embedding(data), data,
                                 split='val')
    assert losses[-1] < 0.5 * losses[0], losses
    # Chance is about 20 / 190 ~ 0.1; the planted signal is learnable.
    assert random_recall < 0.2 and before < 0.2
    assert after['recall@20'] > 0.5, after
    assert after['recall@20'] > 3 * max(random_recall, before), after
