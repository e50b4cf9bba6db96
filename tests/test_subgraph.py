import pytest
import torch
import torch_geometric.typing

from pmm_geo.data import BipartiteAdjacency, get_adjacency, modalities
from pmm_geo.data.hetero import EDGE_TYPE, REV_EDGE_TYPE
from pmm_geo.data.sampler import NegativeSampler
from pmm_geo.data.subgraph import SampledAdjacency
from pmm_geo.data.subgraph_loader import (SubgraphLoader, check_fanouts,
                                         check_node_budget)
from pmm_geo.data.synthetic import synthetic
from pmm_geo.nn import BPRLoss, LATTICE, LightGCNStudent, MultimodalTeacher

needs_sampling = pytest.mark.skipif(
    not (torch_geometric.typing.WITH_PYG_LIB
         or torch_geometric.typing.WITH_TORCH_SPARSE),
    reason="neighbour sampling needs torch-sparse or pyg-lib (the 'sparse' "
    "extra)")


@pytest.fixture(scope='module')
def data():
    return synthetic(num_users=90, num_items=50, num_interactions=900,
                     modalities={'image': 12, 'text': 6}, seed=3)


def features_of(data):
    return {m: data['item'][m] for m in modalities(data)}


def batch_of(data, size=16, seed=0):
    sampler = NegativeSampler.from_data(data)
    gen = torch.Generator().manual_seed(seed)
    users, pos, neg = next(sampler.epoch_batches(size, generator=gen))
    lists = sampler.candidate_lists(users, pos, 4, generator=gen)
    return users, pos, neg, lists


def teacher_of(data, features, **kwargs):
    # A small teacher without dropout (so a subgraph's rows are exact).
    return MultimodalTeacher(
        data['user'].num_nodes, data['item'].num_nodes,
        {m: x.size(1) for m, x in features.items()}, embedding_dim=8,
        dropout=0., **kwargs)


def teacher_on_a_small_subgraph(data, frozen, random_bias=False, **kwargs):
    # A 2-layer teacher with item graphs (k = 5), frozen and cached in
    # stage 2, and a one-hop subgraph of a 4-triplet batch, whose items'
    # kNN neighbours lie mostly outside it.
    features = features_of(data)
    users, pos, neg, _ = batch_of(data, size=4)
    torch.manual_seed(1)
    teacher = teacher_of(data, features, num_layers=2, item_graph=True,
                         knn_k=5, **kwargs)
    teacher.init_prompt(data, features)
    if random_bias:
        for projector in teacher.projectors.values():  # Zero at init.
            torch.nn.init.normal_(projector.lin.bias)
    if frozen:
        teacher.freeze()
        teacher.cache_frozen(data, features)
    batch = SubgraphLoader(data, [2], num_hops=1).sample(users, pos, neg)
    return features, teacher, batch


def assert_rows_equal(sub, full, local, global_, atol=1e-5):
    assert torch.allclose(sub[local], full[global_], atol=atol), \
        (sub[local] - full[global_]).abs().max()


# ----------------------------------------------------------------------
# The subgraph adjacency


def test_sampled_weights_rescale_to_the_full_aggregation():
    # Users 0..3 interact with item 0 only, user 4 with item 1.
    edges = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 0, 0, 1]])
    root = BipartiteAdjacency(edges, 5, 2)
    # A sample of item 0's users {1, 2} (local users 0, 1; local item 0),
    # and user 1's only item.
    sub = SampledAdjacency(root, torch.tensor([1, 2]), torch.tensor([0]),
                           user_to_item=torch.tensor([[0, 1], [0, 0]]),
                           item_to_user=torch.tensor([[0], [0]]))
    _, weight, _ = sub.user_to_item('edge_index')
    # 1 / sqrt(deg(u) deg(i)) = 1 / sqrt(1 * 4), times deg(i) / 2 sampled.
    assert torch.allclose(weight, torch.full((2, ), 0.5 * 4 / 2))
    # All of user 1's items were sampled: its weight is the full one.
    _, weight, _ = sub.item_to_user('edge_index')
    assert torch.allclose(weight, torch.tensor([0.5]))
    # Item 0's users all have degree 1: the rescaled sum is exact.
    out = sub.user_to_item('edge_index')[1].sum()
    assert torch.allclose(out, root.to_dense().t().sum(1)[0])
    assert sub.root is root and sub.num_users == 2 and sub.num_items == 1
    assert torch.equal(sub.global_users(torch.tensor([1, 0])),
                       torch.tensor([2, 1]))


def test_fanouts_are_checked():
    assert check_fanouts([10, -1]) == (10, -1)
    for bad in ([], [0], [-2, 3]):
        with pytest.raises(ValueError, match="'fanouts' must be"):
            check_fanouts(bad)


def test_missing_backend_names_the_extra(data, monkeypatch):
    monkeypatch.setattr(torch_geometric.typing, 'WITH_PYG_LIB', False)
    monkeypatch.setattr(torch_geometric.typing, 'WITH_TORCH_SPARSE', False)
    with pytest.raises(ImportError, match=r"pmm_geo\[sparse\]"):
        SubgraphLoader(data, [-1], 2)


# ----------------------------------------------------------------------
# Equivalence: all neighbours sampled == the full graph


@needs_sampling
def test_subgraph_covers_the_seeds(data):
    users, pos, neg, lists = batch_of(data)
    loader = SubgraphLoader(data, [3, 2], num_hops=2)
    batch = loader.sample(users, pos, neg, lists)
    graph = batch.graph
    assert torch.equal(graph.user_id[batch.users], users)
    assert torch.equal(graph.item_id[batch.items[0]], pos)
    assert torch.equal(graph.item_id[batch.items[1]], neg)
    assert torch.equal(graph.item_id[batch.items[2]], lists)
    assert graph.num_users < data['user'].num_nodes
    # Every sampled edge is a train edge.
    root = get_adjacency(data)
    keys = set((root.edge_index[0] * 1000 + root.edge_index[1]).tolist())
    for view in (graph.user_to_item('edge_index'),
                 graph.item_to_user('edge_index')):
        (src, dst), _, size = view
        if size[0] == graph.num_users:  # user -> item
            user, item = graph.user_id[src], graph.item_id[dst]
        else:
            user, item = graph.user_id[dst], graph.item_id[src]
        assert set((user * 1000 + item).tolist()) <= keys


@needs_sampling
@pytest.mark.parametrize('layout', ['edge_index', 'edge_index_fused', 'csr'])
def test_student_subgraph_equals_full_graph(data, layout):
    users, pos, neg, _ = batch_of(data)
    torch.manual_seed(0)
    student = LightGCNStudent(data['user'].num_nodes, data['item'].num_nodes,
                              8, num_layers=3, layout=layout)
    full_user, full_item = student.get_embedding(data)
    batch = SubgraphLoader(data, [-1], num_hops=3).sample(users, pos, neg)
    user, item = student.get_embedding(batch.graph)
    assert_rows_equal(user, full_user, batch.users, users)
    for local, global_ in zip(batch.items, (pos, neg)):
        assert_rows_equal(item, full_item, local, global_)

    # The BPR loss and its gradient are the full graph's too.
    def loss_grad(u, i, uu, pp, nn, graph):
        ids = (graph.global_users(uu), graph.global_items(pp))
        student.zero_grad()
        pos_s, neg_s = (u[uu] * i[pp]).sum(-1), (u[uu] * i[nn]).sum(-1)
        loss = BPRLoss(1e-3)(pos_s, neg_s, [student.user_embedding(ids[0]),
                                            student.item_embedding(ids[1])])
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in student.parameters()]

    user, item = student.get_embedding(batch.graph)
    sub_loss, sub_grads = loss_grad(user, item, batch.users, *batch.items,
                                    batch.graph)
    full_user, full_item = student.get_embedding(data)
    full_loss, full_grads = loss_grad(full_user, full_item, users, pos, neg,
                                      get_adjacency(data))
    assert torch.allclose(sub_loss, full_loss, atol=1e-6)
    for a, b in zip(sub_grads, full_grads):
        assert torch.allclose(a, b, atol=1e-6)


@needs_sampling
@pytest.mark.parametrize('frozen', [False, True])
@pytest.mark.parametrize('item_graph', [False, True])
def test_teacher_subgraph_equals_full_graph(data, frozen, item_graph):
    # With item graphs the subgraph's item-item terms come from the kNN
    # neighbours' rows (FrozenItemGraph.neighbours), not from its own items.
    features = features_of(data)
    users, pos, neg, lists = batch_of(data)
    torch.manual_seed(0)
    teacher = teacher_of(data, features, num_layers=3, item_graph=item_graph,
                         knn_k=4)
    teacher.init_prompt(data, features)
    if frozen:  # Stage 2: cached prompt-independent parts.
        teacher.freeze()
        teacher.cache_frozen(data, features)
    full = teacher(data, features)
    batch = SubgraphLoader(data, [-1], num_hops=3).sample(users, pos, neg,
                                                          lists)
    sub = teacher(batch.graph, features)
    assert_rows_equal(sub.user, full.user, batch.users, users)
    for local, global_ in zip(batch.items, (pos, neg, lists)):
        assert_rows_equal(sub.item, full.item, local, global_)
        for m in features:
            assert_rows_equal(sub.modal_item[m], full.modal_item[m], local,
                              global_)
    for m in features:
        assert_rows_equal(sub.modal_user[m], full.modal_user[m], batch.users,
                          users)
    # The stage-1 loss with the subgraph's local ids is the full one.
    sub_loss = teacher.loss(sub, batch.users, batch.items[0], batch.items[1],
                            graph=batch.graph)
    full_loss = teacher.loss(full, users, pos, neg)
    assert torch.allclose(sub_loss, full_loss, atol=1e-5)


@needs_sampling
@pytest.mark.parametrize('frozen', [False, True])
def test_teacher_item_graph_rows_on_a_small_subgraph(data, frozen):
    # Most kNN neighbours of a small subgraph's items lie outside it; its
    # item-item terms are still the full graph's rows of S_m E and S_m F_m.
    features, teacher, batch = teacher_on_a_small_subgraph(
        data, frozen, random_bias=True)
    cache = teacher._cache
    ids = batch.graph.item_id
    nbr, _ = teacher.item_graphs['text'].neighbours(ids)
    assert not torch.isin(nbr, ids).all()
    assert torch.allclose(teacher._content_rows(ids),
                          teacher._content_items()[ids], atol=1e-6)
    _, prompt = teacher.prompt()
    moments = teacher._moments(batch.graph, features)
    for m, x in features.items():
        full = teacher.item_graphs[m](teacher.projectors[m](x, prompt))
        table = None if cache is None else cache.projected[m]
        sub = teacher._item_graph_term(batch.graph, None, m, x, moments[m],
                                       table)
        assert torch.allclose(sub, full[ids], atol=1e-5)


@needs_sampling
@pytest.mark.parametrize('beta,frozen,blocks', [(0., False, 0),
                                                  (0.1, False, 1),
                                                  (0., True, 1)])
def test_teacher_item_graph_term_builds_a_neighbour_block_only_when_used(
        data, beta, frozen, blocks, monkeypatch):
    # The block serves the gathered projected table (the frozen cache) and
    # the prompt term; with neither (beta 0, no cache) none is built, and
    # the rows are still the full graph's.
    features, teacher, batch = teacher_on_a_small_subgraph(data, frozen,
                                                           beta=beta)
    cache = teacher._cache
    ids = batch.graph.item_id
    conv = teacher.item_graphs['text']
    assert not conv.rows_by_product(ids)
    built, build = [], type(conv).neighbour_block
    monkeypatch.setattr(conv, 'neighbour_block',
                        lambda *args: built.append(1) or build(conv, *args))
    _, prompt = teacher.prompt()
    moments = teacher._moments(batch.graph, features)
    x = features['text']
    full = conv(teacher.projectors['text'](x, prompt))
    table = None if cache is None else cache.projected['text']
    sub = teacher._item_graph_term(batch.graph, None, 'text', x,
                                   moments['text'], table)
    assert torch.allclose(sub, full[ids], atol=1e-5)
    assert len(built) == blocks


@needs_sampling
@pytest.mark.parametrize('frozen', [False, True])
def test_teacher_forward_builds_each_neighbour_block_once(data, frozen,
                                                          monkeypatch):
    # One block per item graph and step, shared by the item-graph term and
    # the content rows S_m E: the outputs of each term building its own.
    features, teacher, batch = teacher_on_a_small_subgraph(data, frozen)
    graph = batch.graph
    teacher._neighbour_blocks = lambda adj: {}  # Each term builds one.
    ref = teacher(graph, features)
    del teacher._neighbour_blocks
    built = []
    for conv in teacher.item_graphs.values():
        assert not conv.rows_by_product(graph.item_id)
        build = type(conv).neighbour_block
        monkeypatch.setattr(conv, 'neighbour_block',
                            lambda *args, conv=conv, build=build:
                            built.append(1) or build(conv, *args))
    sub = teacher(graph, features)
    assert len(built) == len(teacher.item_graphs) == 2
    for a, b in [(sub.user, ref.user), (sub.item, ref.item)] + [
            (sub.modal_item[m], ref.modal_item[m]) for m in features]:
        assert torch.equal(a, b)


@needs_sampling
@pytest.mark.parametrize('item_graph,size', [(False, 32), (True, 8)])
def test_teacher_catalogue_projection_equals_the_subgraph_rows(
        data, item_graph, size):
    # When a subgraph would project at least as many feature rows as the
    # catalogue has, the teacher projects every item once instead: the same
    # outputs, dropout masks and gradients as the subgraph's own rows.
    features = features_of(data)
    users, pos, neg, lists = batch_of(data, size=size)
    torch.manual_seed(4)
    teacher = MultimodalTeacher(
        data['user'].num_nodes, data['item'].num_nodes,
        {m: x.size(1) for m, x in features.items()}, embedding_dim=8,
        num_layers=2, dropout=0.3, item_graph=item_graph, knn_k=4)
    teacher.init_prompt(data, features)
    for projector in teacher.projectors.values():  # Zero at init.
        torch.nn.init.normal_(projector.lin.bias)
    batch = SubgraphLoader(data, [2], num_hops=2).sample(users, pos, neg,
                                                         lists)
    graph = batch.graph
    # Without item graphs only a subgraph of every item qualifies; with
    # them one of half the items (45 of 50 here: the neighbours' rows of
    # S_m X_m are then gathered from the catalogue's projection).
    rows = graph.num_items * (2 if item_graph else 1)
    assert rows >= teacher.num_items
    assert (graph.num_items < teacher.num_items) == item_graph
    assert teacher._catalogue_projection(graph, 'image',
                                         features['image']) is not None

    def run(catalogue):
        teacher.zero_grad()
        if not catalogue:  # The subgraph's own rows, whatever the size.
            teacher._catalogue_projection = lambda *args: None
        torch.manual_seed(5)
        out = teacher(graph, features)
        teacher.__dict__.pop('_catalogue_projection', None)
        loss = teacher.loss(out, batch.users, batch.items[0], batch.items[1],
                            graph=graph)
        loss.backward()
        grads = {name: p.grad.to_dense().clone()
                 for name, p in teacher.named_parameters()
                 if p.grad is not None}
        return out, grads

    (out, grads), (ref, ref_grads) = run(True), run(False)
    for a, b in [(out.user, ref.user), (out.item, ref.item)] + [
            (out.modal_item[m], ref.modal_item[m]) for m in features]:
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert grads.keys() == ref_grads.keys()
    assert 'projectors.image.lin.weight' in grads
    for name, grad in grads.items():
        assert torch.allclose(grad, ref_grads[name], atol=1e-5), name


@needs_sampling
def test_teacher_projects_a_small_subgraph_rows_only(data):
    features = features_of(data)
    users, pos, neg, _ = batch_of(data, size=4)
    teacher = teacher_of(data, features, item_graph=True, knn_k=4)
    teacher.init_prompt(data, features)
    graph = SubgraphLoader(data, [1], num_hops=1).sample(users, pos,
                                                         neg).graph
    assert 2 * graph.num_items < teacher.num_items
    assert teacher._catalogue_projection(graph, 'text',
                                         features['text']) is None
    table = teacher._catalogue_projection(
        get_adjacency(data), 'text', features['text'])
    assert table is None  # The full graph projects its items as it is.


@needs_sampling
def test_student_item_graph_rows_on_a_small_subgraph(data):
    # The student's S E rows of a small subgraph's items come from
    # neighbours mostly outside it: still the full graph's rows, with a
    # sparse gradient to exactly the neighbours' rows.
    from pmm_geo.nn import FrozenItemGraph
    users, pos, neg, _ = batch_of(data, size=4)
    graph = FrozenItemGraph.from_features(features_of(data), k=5)
    torch.manual_seed(2)
    student = LightGCNStudent(data['user'].num_nodes, data['item'].num_nodes,
                              8, num_layers=1, item_graph=graph)
    batch = SubgraphLoader(data, [2], num_hops=1).sample(users, pos, neg)
    ids = batch.graph.item_id
    nbr, _ = graph.neighbours(ids)
    assert not torch.isin(nbr, ids).all()
    table = student.item_embedding.weight
    sub = student._item_graph_rows(batch.graph)
    full = graph(table)[ids]
    assert torch.allclose(sub, full, atol=1e-6)
    sub.sum().backward()
    grad = table.grad
    assert grad.is_sparse
    touched = grad.coalesce().indices()[0]
    assert torch.equal(touched, nbr.unique())


@needs_sampling
@pytest.mark.parametrize('item_graph', [False, True])
def test_teacher_projects_only_the_sampled_items(data, item_graph):
    features = features_of(data)
    users, pos, neg, _ = batch_of(data, size=4)
    teacher = teacher_of(data, features, num_layers=1, item_graph=item_graph,
                         knn_k=5)
    teacher.init_prompt(data, features)
    teacher(data, features)  # Feature statistics, computed once.
    batch = SubgraphLoader(data, [2], num_hops=2).sample(users, pos, neg)
    if item_graph:  # S_m X_m once per feature table, then rows of it.
        teacher(batch.graph, features)
    seen = []
    for m, projector in teacher.projectors.items():
        projector.lin.register_forward_hook(
            lambda module, args, out: seen.append(args[0].size(0)))
    teacher(batch.graph, features)
    assert seen == [batch.graph.num_items] * 2
    assert batch.graph.num_items < data['item'].num_nodes


@needs_sampling
def test_lattice_subgraph_equals_full_graph(data):
    features = features_of(data)
    users, pos, neg, _ = batch_of(data)
    torch.manual_seed(0)
    model = LATTICE(data['user'].num_nodes, data['item'].num_nodes,
                    dict(features), embedding_dim=8, num_layers=2, knn_k=4)
    full_user, full_item = model(data, features, build_item_graph=True)
    batch = SubgraphLoader(data, [-1], num_hops=2).sample(users, pos, neg)
    user, item = model(batch.graph, features, build_item_graph=False)
    assert_rows_equal(user, full_user, batch.users, users)
    for local, global_ in zip(batch.items, (pos, neg)):
        assert_rows_equal(item, full_item, local, global_)


# ----------------------------------------------------------------------
# Training steps: all neighbours sampled == a full-graph step


def _first_gradients(data, model, batching, **changes):
    from pmm_geo.train import Trainer, TrainConfig
    config = TrainConfig(model=model, batching=batching, fanouts=[-1],
                         batch_size=64, embedding_dim=8, student_dim=8,
                         num_layers=2, student_layers=2, lattice_layers=2,
                         lattice_knn_k=4, num_list_negatives=3,
                         teacher_dropout=0.0, teacher_prune_ratio=0.0,
                         **changes)  # No random dropout, no edge pruning.
    trainer = Trainer(data, config, quiet=True)
    out = {}
    for stage in trainer.stages():
        optimizer = stage.optimizer()
        stage.train_mode()
        users, pos, neg = next(trainer.sampler.epoch_batches(
            64, trainer.generator))
        loss, _ = stage.step(stage.batch(users, pos, neg))
        optimizer.zero_grad()
        loss.backward()
        out[stage.name] = (loss.detach(), {
            f'{name}.{key}': param.grad.to_dense()
            for name, module in stage.modules.items()
            for key, param in module.named_parameters()
            if param.grad is not None})
        optimizer.step()  # Adam, and SparseAdam on the sampled tables.
    return out


@needs_sampling
@pytest.mark.parametrize('model,changes', [
    ('promptmm', {}),
    ('promptmm', {'teacher_item_graph': True, 'teacher_knn_k': 4}),
    ('promptmm', {'student_item_graph': True, 'student_knn_k': 4}),
    ('lightgcn', {}),
    ('lattice', {}),
])
def test_sampled_training_steps_equal_full_graph_steps(data, model, changes):
    # With every neighbour sampled, a step's subgraph holds the batch's
    # whole receptive field: its loss and the gradients of every weight
    # (sparse for the tables it gathers) are the full-graph ones, rows
    # outside it getting no gradient either way; then the optimizers step.
    full = _first_gradients(data, model, 'full', **changes)
    sampled = _first_gradients(data, model, 'sampled', **changes)
    assert full.keys() == sampled.keys()
    for stage, (loss, grads) in full.items():
        assert torch.allclose(sampled[stage][0], loss, atol=1e-6)
        assert grads.keys() == sampled[stage][1].keys(), stage
        for key, grad in grads.items():
            assert torch.allclose(sampled[stage][1][key], grad,
                                  atol=1e-6), (stage, key)


# ----------------------------------------------------------------------
# Per-hop node budget


def _edge_pairs(graph):
    # Global (user, item) pairs of both directions' sampled edges.
    out = []
    for view in (graph.user_to_item('edge_index'),
                 graph.item_to_user('edge_index')):
        (src, dst), _, size = view
        user, item = (src, dst) if size[0] == graph.num_users else (dst, src)
        pairs = graph.user_id[user] * 10**6 + graph.item_id[item]
        out.append(set(pairs.tolist()))
    return out


def _hops(batch, num_hops):
    # Breadth-first from the seeds along the sampled edges, from each
    # destination to its sources: the hop of every local user and item.
    graph = batch.graph
    hop = [torch.full((graph.num_users, ), -1),
           torch.full((graph.num_items, ), -1)]
    hop[0][batch.users] = 0
    for items in batch.items:
        hop[1][items.reshape(-1)] = 0
    (iu_src, iu_dst), _, _ = graph.item_to_user('edge_index')
    (ui_src, ui_dst), _, _ = graph.user_to_item('edge_index')
    for h in range(1, num_hops + 1):
        users = ui_src[(hop[1][ui_dst] == h - 1) & (hop[0][ui_src] == -1)]
        items = iu_src[(hop[0][iu_dst] == h - 1) & (hop[1][iu_src] == -1)]
        hop[0][users], hop[1][items] = h, h
    assert (hop[0] >= 0).all() and (hop[1] >= 0).all()  # All reachable.
    return hop


def _new_per_hop(batch, num_hops):
    # New users and items per hop.
    hop = _hops(batch, num_hops)
    return [(int((hop[0] == h).sum()), int((hop[1] == h).sum()))
            for h in range(1, num_hops + 1)]


def _budget_sample(data, budget, seed=7):
    users, pos, neg, lists = batch_of(data)
    torch.manual_seed(seed)
    loader = SubgraphLoader(data, [3, 2], num_hops=3, node_budget=budget)
    return loader.sample(users, pos, neg, lists), torch.rand(4)


@needs_sampling
@pytest.mark.skipif(torch_geometric.typing.WITH_PYG_LIB, reason="pyg-lib "
                    "draws a block of random numbers per sampler call, so "
                    "hop-by-hop calls cannot replay one multi-hop call's "
                    "draws; the equality holds for torch-sparse")
def test_node_budget_above_the_reach_is_todays_subgraph(data):
    # The hop-wise path with a budget that never binds replays the
    # LinkNeighborLoader's draws: the same subgraph and random state.
    (today, after), (budget, budget_after) = (_budget_sample(data, 0),
                                              _budget_sample(data, 10**6))
    assert torch.equal(after, budget_after)  # Same random state after.
    assert torch.equal(today.users, budget.users)
    for a, b in zip(today.items, budget.items):
        assert torch.equal(a, b)
    for key in ('user_id', 'item_id'):
        assert torch.equal(getattr(today.graph, key),
                           getattr(budget.graph, key))
    for view in ('user_to_item', 'item_to_user'):
        (a, w_a, _), (b, w_b, _) = (getattr(g.graph, view)('edge_index')
                                    for g in (today, budget))
        assert torch.equal(a, b) and torch.equal(w_a, w_b)
    student = LightGCNStudent(data['user'].num_nodes, data['item'].num_nodes,
                              8, num_layers=3)
    for x, y in zip(student.get_embedding(today.graph),
                    student.get_embedding(budget.graph)):
        assert torch.equal(x, y)


@needs_sampling
@pytest.mark.parametrize('budget', [1, 4])
def test_node_budget_bounds_every_hop(data, budget, monkeypatch):
    from torch_geometric.sampler import NeighborSampler
    users, pos, neg, lists = batch_of(data)
    full, _ = _budget_sample(data, 0)
    # Record each call of PyG's sampler: its seeds and its sampled global
    # (user, item) edges into items and into users.
    calls, sample = [], NeighborSampler._sample

    def record(self, seed, *args, **kwargs):
        out = sample(self, seed, *args, **kwargs)
        edges = []
        for edge_type, flip in ((EDGE_TYPE, False), (REV_EDGE_TYPE, True)):
            src = out.node[edge_type[0]][out.row[edge_type]]
            dst = out.node[edge_type[-1]][out.col[edge_type]]
            user, item = (dst, src) if flip else (src, dst)
            edges.append(set((user * 10**6 + item).tolist()))
        calls.append(({t: set(s.tolist()) for t, s in seed.items()}, edges))
        return out

    monkeypatch.setattr(NeighborSampler, '_sample', record)
    thin, _ = _budget_sample(data, budget)
    graph = thin.graph
    # Seeds all present, at the places the batch gives.
    assert torch.equal(graph.user_id[thin.users], users)
    for local, global_ in zip(thin.items, (pos, neg, lists)):
        assert torch.equal(graph.item_id[local], global_)
    for users_new, items_new in _new_per_hop(thin, 3):
        assert users_new <= budget and items_new <= budget
    new_full = _new_per_hop(full, 3)
    assert max(max(c) for c in new_full) > budget  # The budget binds.
    # One sampler hop per layer, each from the kept nodes first reached at
    # the hop before (the batch's seeds first): dropped nodes are never
    # expanded.
    assert len(calls) == 3
    hop = _hops(thin, 3)
    for h, (seed, _) in enumerate(calls):
        assert seed == {'user': set(graph.user_id[hop[0] == h].tolist()),
                        'item': set(graph.item_id[hop[1] == h].tolist())}
    # The kept edges are exactly the sampled edges between kept nodes, all
    # of them interactions of the graph.
    users_kept, items_kept = set(graph.user_id.tolist()), set(
        graph.item_id.tolist())
    assert len(users_kept) < full.graph.num_users
    interactions = set((data[EDGE_TYPE].edge_index[0] * 10**6
                        + data[EDGE_TYPE].edge_index[1]).tolist())
    for t, kept in enumerate(_edge_pairs(graph)):
        sampled = set().union(*(edges[t] for _, edges in calls))
        assert sampled <= interactions
        assert kept == {p for p in sampled if p // 10**6 in users_kept
                        and p % 10**6 in items_kept}


@needs_sampling
def test_node_budget_estimate_is_unbiased_on_average(monkeypatch):
    # All neighbours of the kept frontier sampled at each hop, the new ones
    # thinned to 10 per type: the mean of a 2-layer LightGCN's seed outputs
    # over many draws approaches the full-graph outputs (0.027 relative
    # error: the ratio estimator's small bias and the Monte Carlo noise);
    # without the inclusion weights it does not (0.13: the never-dropped
    # seeds outweigh the thinned neighbours).
    data = synthetic(num_users=40, num_items=20, num_interactions=400,
                     modalities={'image': 4}, seed=5)
    users, pos, _, _ = batch_of(data, size=4)
    torch.manual_seed(0)
    student = LightGCNStudent(40, 20, 4, num_layers=2)
    with torch.no_grad():
        full_user, full_item = student.get_embedding(data)
    loader = SubgraphLoader(data, [-1], num_hops=2, node_budget=10)

    def error(draws=300):
        torch.manual_seed(1)
        user, item = 0, 0
        with torch.no_grad():
            for _ in range(draws):
                batch = loader.sample(users, pos)
                assert batch.graph.num_users < 40  # The budget binds.
                out_user, out_item = student.get_embedding(batch.graph)
                user = user + out_user[batch.users] / draws
                item = item + out_item[batch.items[0]] / draws
        return max(float((user - full_user[users]).norm()
                         / full_user[users].norm()),
                   float((item - full_item[pos]).norm()
                         / full_item[pos].norm()))

    assert error() < 0.06
    init = SampledAdjacency.__init__
    monkeypatch.setattr(
        SampledAdjacency, '__init__', lambda self, *args, user_prob=None,
        item_prob=None, **kwargs: init(self, *args, **kwargs))
    assert error() > 0.10


def test_node_budget_is_checked():
    from pmm_geo.train import ConfigError, TrainConfig
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="'node_budget' must be"):
            check_node_budget(bad)
    with pytest.raises(ConfigError, match=r"'node_budget' must be >= 0 .* "
                       r"got -3"):
        TrainConfig(node_budget=-3)
    with pytest.raises(ConfigError, match=r"cfg\.json: 'node_budget' must "
                       r"be int, got 2\.5"):
        TrainConfig.from_dict({'node_budget': 2.5}, source='cfg.json')
    with pytest.raises(ConfigError, match=r"'node_budget': 8 applies to "
                       r"sampled batching, got batching='full'"):
        TrainConfig(batching='full', node_budget=8)
    assert TrainConfig(batching='auto', node_budget=8).node_budget == 8


@needs_sampling
def test_trainer_passes_the_node_budget(data):
    from pmm_geo.train import Trainer, TrainConfig
    trainer = Trainer(data, TrainConfig(model='lightgcn', batching='sampled',
                                        node_budget=5, batch_size=64,
                                        student_dim=8), quiet=True)
    stage = next(trainer.stages())
    assert stage.loader.node_budget == 5
    assert 'node_budget=5' in repr(stage.loader)
