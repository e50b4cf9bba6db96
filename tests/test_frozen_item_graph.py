import pytest
import torch
from torch_geometric.typing import WITH_TORCH_SPARSE

from pmm_geo.nn import FrozenItemGraph
from pmm_geo.nn.conv import mix_item_graphs, modality_mix_weights
from pmm_geo.nn.knn import knn_item_graph

LAYOUTS = ['edge_index', 'edge_index_fused', 'csr']
if WITH_TORCH_SPARSE:
    LAYOUTS.append('sparse_tensor')

# ---------------------------------------------------------------------------
# Dense references: FREEDOM's graph as MMRec builds it (freedom.py,
# get_knn_adj_mat / compute_normalized_laplacian: binary kNN on the cosine
# of the raw features, D^-1/2 A D^-1/2 with D the row sums, then the image
# and text graphs mixed 0.1 / 0.9) and LATTICE's cosine-weighted one.


def dense_knn_graph(x, k, weighted):
    z = x / x.norm(dim=-1, keepdim=True)
    sim = z @ z.t()
    values, index = sim.topk(k, dim=-1)
    adj = torch.zeros_like(sim).scatter_(
        -1, index, values if weighted else torch.ones_like(values))
    d_inv_sqrt = adj.sum(-1).pow(-0.5)
    return d_inv_sqrt.view(-1, 1) * adj * d_inv_sqrt.view(1, -1)


def make_features(num_items, dims, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {m: torch.randn(num_items, d, generator=gen, dtype=torch.float64)
            for m, d in dims.items()}


def test_modality_mix_weights_rule():
    assert modality_mix_weights(['image', 'text']) == {'image': 0.1,
                                                       'text': 0.9}
    assert modality_mix_weights(['text', 'image'], 0.3) == {
        'text': pytest.approx(0.7), 'image': 0.3}
    assert modality_mix_weights(['text']) == {'text': 1.0}
    assert modality_mix_weights(['image', 'text', 'audio']) == {
        'image': 1 / 3, 'text': 1 / 3, 'audio': 1 / 3}
    assert modality_mix_weights(['a', 'b']) == {'a': 0.5, 'b': 0.5}
    with pytest.raises(ValueError, match="'modalities' must be distinct"):
        modality_mix_weights([])
    with pytest.raises(ValueError, match="'modalities' must be distinct"):
        modality_mix_weights(['text', 'text'])
    with pytest.raises(ValueError, match="'image_weight' must be in"):
        modality_mix_weights(['image', 'text'], 1.5)


@pytest.mark.parametrize('weighted', [False, True])
def test_knn_item_graph_matches_dense(weighted):
    x = make_features(53, {'a': 9})['a']
    edge_index, edge_weight = knn_item_graph(x, 6, weighted, block_size=10)
    assert edge_index.size(1) == 53 * 6
    assert torch.equal(edge_index[0], torch.arange(53).repeat_interleave(6))
    dense = torch.zeros(53, 53, dtype=torch.float64).index_put(
        tuple(edge_index), edge_weight, accumulate=True)
    assert torch.allclose(dense, dense_knn_graph(x, 6, weighted), atol=1e-12)
    if not weighted:  # Binary rows of k entries: every weight is 1 / k.
        assert torch.allclose(edge_weight, torch.full_like(edge_weight, 1 / 6))


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('num_layers', [1, 2])
def test_freedom_graph_and_propagation_match_dense(layout, num_layers):
    features = make_features(61, {'image': 12, 'text': 7})
    conv = FrozenItemGraph.from_features(features, k=10,
                                         num_layers=num_layers,
                                         block_size=16, layout=layout)
    dense = (0.1 * dense_knn_graph(features['image'], 10, False) +
             0.9 * dense_knn_graph(features['text'], 10, False))
    assert torch.allclose(conv.to_dense(), dense, atol=1e-12)
    # k entries per item and modality (pairs in both graphs stay twice).
    assert conv.edge_index.size(1) == 2 * 61 * 10

    x = torch.randn(61, 5, dtype=torch.float64, requires_grad=True)
    out = conv(x)
    expected = torch.linalg.matrix_power(dense, num_layers) @ x
    assert torch.allclose(out, expected, atol=1e-10)
    grad = torch.randn_like(out)
    (g_sparse, ) = torch.autograd.grad(out, x, grad)
    (g_dense, ) = torch.autograd.grad(expected, x, grad)
    assert torch.allclose(g_sparse, g_dense, atol=1e-10)


def test_weighted_graph_and_explicit_weights_match_dense():
    features = make_features(40, {'a': 6, 'b': 8, 'c': 5}, seed=3)
    weights = {'a': 0.5, 'b': 0.2, 'c': 0.3}
    conv = FrozenItemGraph.from_features(features, k=4,
                                         modality_weights=weights,
                                         weighted=True)
    dense = sum(w * dense_knn_graph(features[m], 4, True)
                for m, w in weights.items())
    assert torch.allclose(conv.to_dense(), dense, atol=1e-12)
    # Default for three modalities: equal weights.
    conv = FrozenItemGraph.from_features(features, k=4)
    dense = sum(dense_knn_graph(x, 4, False) for x in features.values()) / 3
    assert torch.allclose(conv.to_dense(), dense, atol=1e-12)


def test_zero_feature_rows_get_no_neighbours():
    features = make_features(30, {'image': 6, 'text': 4})
    features['text'][[2, 9]] = 0  # Items without text.
    conv = FrozenItemGraph.from_features(features, k=5)
    dense = conv.to_dense()
    assert torch.isfinite(dense).all()
    # Their rows hold the image graph only (weight 0.1, 1 / k per edge).
    for item in (2, 9):
        assert torch.allclose(dense[item].sum(), torch.tensor(
            0.1, dtype=dense.dtype))
    x = torch.randn(30, 3, dtype=torch.float64)
    assert torch.isfinite(conv(x)).all()


def test_neighbours_are_the_rows_of_the_dense_graph():
    # Row i of S x from the neighbours' rows of x only.
    x = make_features(25, {'a': 7})['a']
    edge_index, edge_weight = knn_item_graph(x, 4, weighted=True)
    conv = FrozenItemGraph(edge_index, edge_weight, 25)
    index = torch.tensor([3, 0, 24, 3])
    nbr, weight = conv.neighbours(index)
    assert nbr.shape == weight.shape == (4, 4)
    h = torch.randn(25, 5, dtype=torch.float64)
    rows = (weight.unsqueeze(-1) * h[nbr]).sum(1)
    assert torch.allclose(rows, (conv.to_dense() @ h)[index])
    assert torch.allclose(conv.rows(h, index), rows)
    # The blocks follow a refilled graph (a reloaded state dict).
    conv.edge_weight.mul_(2.)
    assert torch.allclose(conv.neighbours(index)[1], 2 * weight)


@pytest.mark.parametrize('num_rows,num_ids', [(3, 60), (14, 60), (34, 8)])
def test_rows_match_the_dense_graph_with_a_sparse_gradient(num_rows, num_ids):
    # Up to half the items, one product over the rows' distinct neighbours;
    # from there, one over all items (34 rows, repeats of 8 items, whose
    # neighbours are a part of the catalogue). Either way: the dense rows of
    # S x, and a trainable table gets a sparse gradient on exactly the
    # neighbours' rows, S[index]^T g.
    from pmm_geo.nn.conv import frozen_item_graph
    features = make_features(60, {'image': 6, 'text': 4}, seed=1)
    conv = FrozenItemGraph.from_features(features, k=3)
    gen = torch.Generator().manual_seed(num_rows)
    index = torch.randint(0, num_ids, (num_rows, ), generator=gen)
    assert conv.rows_by_product(index) == (
        num_rows >= frozen_item_graph.ROWS_BY_PRODUCT * 60) == (num_rows > 30)
    nbr, _ = conv.neighbours(index)
    assert nbr.unique().numel() < 60
    table = torch.nn.Parameter(torch.randn(60, 5, dtype=torch.float64))
    dense = conv.to_dense().to(table.dtype)
    grad_out = torch.randn(num_rows, 5, dtype=table.dtype, generator=gen)
    out = conv.rows(table, index)
    assert torch.allclose(out, (dense @ table)[index])
    out.backward(grad_out)
    grad = table.grad.coalesce()
    assert grad.is_sparse
    assert torch.equal(grad.indices()[0], nbr.unique())
    assert torch.allclose(grad.to_dense(), dense[index].t() @ grad_out)
    # A computed tensor gets its dense gradient back.
    h = torch.randn(60, 5, dtype=table.dtype, requires_grad=True)
    (conv.rows(h * 1., index) * grad_out).sum().backward()
    assert not h.grad.is_sparse
    assert torch.allclose(h.grad, dense[index].t() @ grad_out)


def test_neighbours_need_one_layer_and_equal_rows():
    x = make_features(12, {'a': 5})['a']
    edge_index, edge_weight = knn_item_graph(x, 3)
    with pytest.raises(ValueError, match=r'one layer \(got 2\)'):
        FrozenItemGraph(edge_index, edge_weight, 12,
                        num_layers=2).neighbours(torch.tensor([0]))
    # A graph where item 0 has one entry fewer than the others.
    drop = (edge_index[0] == 0).nonzero()[0, 0]
    keep = torch.arange(edge_index.size(1)) != drop
    with pytest.raises(ValueError, match='from 2 to 3 per item'):
        FrozenItemGraph(edge_index[:, keep], edge_weight[keep],
                        12).neighbours(torch.tensor([0]))


def test_neighbours_of_a_mixed_graph():
    # Two kNN graphs concatenated (FREEDOM's S): k_a + k_b entries per row,
    # not stored row by row.
    features = make_features(15, {'a': 5, 'b': 4})
    graphs = {m: knn_item_graph(x, k, weighted=False)
              for (m, x), k in zip(features.items(), (3, 4))}
    conv = FrozenItemGraph(*mix_item_graphs(graphs, {'a': 0.3, 'b': 0.7}), 15)
    index = torch.tensor([14, 0, 7])
    nbr, weight = conv.neighbours(index)
    assert nbr.shape == (3, 7)
    h = torch.randn(15, 2, dtype=torch.float64)
    rows = (weight.unsqueeze(-1) * h[nbr]).sum(1)
    assert torch.allclose(rows, (conv.to_dense() @ h)[index])


def test_state_dict_repr_and_errors():
    features = make_features(20, {'image': 4, 'text': 3})
    conv = FrozenItemGraph.from_features(features, k=3)
    assert repr(conv) == (f'FrozenItemGraph(20, num_edges='
                          f'{conv.edge_index.size(1)}, num_layers=1)')
    assert sum(p.numel() for p in conv.parameters()) == 0
    other = FrozenItemGraph(conv.edge_index.clone(),
                            torch.zeros_like(conv.edge_weight), 20)
    x = torch.randn(20, 2, dtype=torch.float64)
    assert (other(x) == 0).all()
    other.load_state_dict(conv.state_dict())  # The cached view follows.
    assert torch.allclose(other(x), conv(x))

    with pytest.raises(ValueError, match="'k' must be an integer in"):
        FrozenItemGraph.from_features(features, k=21)
    with pytest.raises(ValueError, match="non-empty dict"):
        FrozenItemGraph.from_features({}, k=3)
    with pytest.raises(ValueError, match="features\\['text'\\] has 19 rows"):
        FrozenItemGraph.from_features(
            {'image': features['image'], 'text': features['text'][:19]})
    with pytest.raises(ValueError, match="2-D floating point"):
        FrozenItemGraph.from_features({'image': torch.ones(20, 3).long()})
    with pytest.raises(ValueError, match="'weights' must name exactly"):
        FrozenItemGraph.from_features(features, k=3,
                                      modality_weights={'image': 1.})
    with pytest.raises(ValueError, match="'num_layers' must be an integer"):
        FrozenItemGraph(conv.edge_index, conv.edge_weight, 20, num_layers=0)
    with pytest.raises(ValueError, match="Unknown 'layout'"):
        FrozenItemGraph(conv.edge_index, conv.edge_weight, 20,
                        layout='dense')
    with pytest.raises(ValueError, match='ids outside'):
        FrozenItemGraph(conv.edge_index, conv.edge_weight, 10)
    with pytest.raises(ValueError, match="'edge_weight' \\[E\\]"):
        FrozenItemGraph(conv.edge_index, conv.edge_weight[1:], 20)
    with pytest.raises(ValueError, match='Expected item features \\[20'):
        conv(torch.randn(19, 2))


def test_mix_item_graphs_sums_shared_edges():
    # Hand-computed: the edge (0, 1) is in both graphs.
    a = (torch.tensor([[0, 1], [1, 0]]), torch.tensor([1., 1.]))
    b = (torch.tensor([[0, 0], [1, 0]]), torch.tensor([0.5, 0.5]))
    edge_index, edge_weight = mix_item_graphs({'a': a, 'b': b},
                                              {'a': 0.25, 'b': 1.})
    assert edge_index.tolist() == [[0, 1, 0, 0], [1, 0, 1, 0]]
    assert edge_weight.tolist() == [0.25, 0.25, 0.5, 0.5]
    conv = FrozenItemGraph(edge_index, edge_weight, 2)
    assert conv.to_dense().tolist() == [[0.5, 0.75], [0.25, 0.]]
    x = torch.tensor([[1.], [2.]])
    assert conv(x).tolist() == [[2.], [0.25]]
