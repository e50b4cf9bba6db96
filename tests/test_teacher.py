import pytest
import torch
import torch.nn.functional as F

from pmm_geo import evaluate
from pmm_geo.data import BipartiteAdjacency, modalities
from pmm_geo.data.sampler import NegativeSampler
from pmm_geo.data.synthetic import synthetic
from pmm_geo.nn import BPRLoss, MultimodalTeacher, PromptLearner
from pmm_geo.nn.conv import modality_mix_weights
from pmm_geo.nn.models import TeacherOutput

from test_frozen_item_graph import dense_knn_graph

NUM_USERS, NUM_ITEMS = 7, 9


WIDTHS = {'image': 6, 'text': 4, 'audio': 3}


def toy_graph():
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(NUM_USERS, NUM_ITEMS, generator=gen) < 0.35
    mask[torch.arange(NUM_USERS), torch.arange(NUM_USERS)] = True
    mask[0, 7:] = True  # Every item has a user.
    return BipartiteAdjacency(mask.nonzero().t(), NUM_USERS, NUM_ITEMS)


def toy_features(names, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {m: torch.randn(NUM_ITEMS, WIDTHS[m], generator=gen) + 1.0
            for m in names}


def make_teacher(names, adj, features, **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault('embedding_dim', 5)
    teacher = MultimodalTeacher(NUM_USERS, NUM_ITEMS,
                                {m: WIDTHS[m] for m in names}, **kwargs)
    teacher.init_prompt(adj, features)
    for projector in teacher.projectors.values():
        projector.lin.bias.data.uniform_(-0.5, 0.5)
    return teacher


def rownorm(x):
    norm = x.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, x / norm, torch.zeros_like(x))


def dense_teacher(teacher, adj, features):
    r"""The teacher's math with dense matrices and the homogeneous
    LightGCN adjacency [[0, A], [A^T, 0]] (float64)."""
    a = adj.to_dense().double()
    user_prompt, item_prompt = (p.double() for p in teacher.prompt())
    modal_user, modal_item = {}, {}
    for m, x in features.items():
        lin = teacher.projectors[m].lin
        x = x.double()
        smooth = rownorm(item_prompt @ item_prompt.t() @ x)
        projected = (x + teacher.projectors[m].beta * smooth) @ \
            lin.weight.double().t() + lin.bias.double()
        modal_user[m] = a @ projected
        modal_item[m] = a.t() @ modal_user[m]
        if teacher.item_graphs is not None:  # FREEDOM's frozen kNN graph.
            modal_item[m] += dense_knn_graph(x, teacher.knn_k,
                                             False) @ projected

    big = torch.zeros(NUM_USERS + NUM_ITEMS, NUM_USERS + NUM_ITEMS,
                      dtype=torch.float64)
    big[:NUM_USERS, NUM_USERS:] = a
    big[NUM_USERS:, :NUM_USERS] = a.t()
    x = torch.cat([
        teacher.user_embedding.weight.double() +
        teacher.gamma * rownorm(user_prompt),
        teacher.item_embedding.weight.double() +
        teacher.gamma * rownorm(item_prompt)
    ])
    layers = [x]
    for _ in range(teacher.num_layers):
        layers.append(big @ layers[-1])
    fused = torch.stack(layers).mean(0)
    if teacher.item_graphs is not None:
        weights = modality_mix_weights(list(features))
        fused[NUM_USERS:] += sum(
            weights[m] * dense_knn_graph(x.double(), teacher.knn_k, False)
            for m, x in features.items()) @ \
            teacher.item_embedding.weight.double()
    for m in features:
        fused = fused + teacher.fusion_weight * torch.cat(
            [rownorm(modal_user[m]), rownorm(modal_item[m])])
    return fused[:NUM_USERS], fused[NUM_USERS:], modal_user, modal_item


@pytest.mark.parametrize('names', [('image', ), ('image', 'text'),
                                   ('image', 'text', 'audio')])
@pytest.mark.parametrize('num_layers', [0, 1, 3])
@pytest.mark.parametrize('item_graph', [False, True])
def test_teacher_matches_dense_reference(names, num_layers, item_graph):
    adj = toy_graph()
    features = toy_features(names)
    teacher = make_teacher(names, adj, features, num_layers=num_layers,
                           gamma=0.3, beta=0.5, fusion_weight=0.7,
                           item_graph=item_graph, knn_k=4)
    teacher.eval()
    out = teacher(adj, features)
    assert isinstance(out, TeacherOutput)
    assert out.user.shape == (NUM_USERS, 5)
    assert out.item.shape == (NUM_ITEMS, 5)
    assert list(out.modal_user) == list(names)
    user, item, modal_user, modal_item = dense_teacher(teacher, adj, features)
    assert torch.allclose(out.user.double(), user, atol=1e-5)
    assert torch.allclose(out.item.double(), item, atol=1e-5)
    for m in names:
        assert torch.allclose(out.modal_user[m].double(), modal_user[m],
                              atol=1e-5)
        assert torch.allclose(out.modal_item[m].double(), modal_item[m],
                              atol=1e-5)
    embedding = teacher.get_embedding(adj, features)
    assert torch.equal(embedding[0], out.user)


def test_item_graphs_change_the_items():
    adj = toy_graph()
    features = toy_features(['image', 'text'])
    with_graphs = make_teacher(['image', 'text'], adj, features,
                               item_graph=True, knn_k=4).eval()
    plain = make_teacher(['image', 'text'], adj, features).eval()
    assert (with_graphs(adj, features).item -
            plain(adj, features).item).abs().max() > 1e-2


def test_item_graphs_cache_state_dict_and_errors():
    adj = toy_graph()
    features = toy_features(['image', 'text'])
    teacher = make_teacher(['image', 'text'], adj, features, beta=0.8,
                           gamma=0.2, item_graph=True, knn_k=3).freeze()
    assert repr(teacher).endswith('num_layers=3, item_graph=True, knn_k=3)')
    reference = teacher(adj, features)
    teacher.cache_frozen(adj, features)
    cached = teacher(adj, features)
    assert torch.allclose(cached.item, reference.item, atol=1e-5)
    assert torch.allclose(cached.modal_item['text'],
                          reference.modal_item['text'], atol=1e-5)
    # The prompt reaches the item-item term of the modality branch.
    grad = torch.autograd.grad(cached.modal_item['image'].sum(),
                               teacher.prompt.parameters(),
                               allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grad)

    state = teacher.state_dict()
    assert 'item_graphs.image.edge_index' in state
    clone = MultimodalTeacher(NUM_USERS, NUM_ITEMS, {'image': 6, 'text': 4},
                              embedding_dim=5, beta=0.8, gamma=0.2,
                              item_graph=True, knn_k=3)
    clone.load_state_dict(state)
    clone.eval()
    assert torch.allclose(clone(adj, features).item, reference.item,
                          atol=1e-6)
    with pytest.raises(ValueError, match="'knn_k' must be an integer in"):
        MultimodalTeacher(3, 4, {'a': 2}, item_graph=True, knn_k=5)


def test_num_layers_is_honoured_and_layouts_agree():
    adj = toy_graph()
    features = toy_features(['image', 'text'])
    outs = []
    for num_layers in (1, 2):
        teacher = make_teacher(['image', 'text'], adj, features,
                               num_layers=num_layers).eval()
        outs.append(teacher(adj, features).user)
    assert not torch.allclose(outs[0], outs[1], atol=1e-3)

    teacher.eval()
    reference = teacher(adj, features)
    teacher.layout = 'edge_index'
    plain = teacher(adj, features)
    assert torch.allclose(plain.user, reference.user, atol=1e-6)
    assert torch.allclose(plain.item, reference.item, atol=1e-6)


def test_loss_is_bpr_plus_modality_bpr_plus_reg():
    adj = toy_graph()
    features = toy_features(['image', 'text'])
    teacher = make_teacher(['image', 'text'], adj, features,
                           modality_weight=0.3, lambda_reg=0.01)
    teacher.eval()
    out = teacher(adj, features)
    users = torch.tensor([0, 1, 2, 3])
    pos = torch.tensor([0, 1, 2, 3])
    neg = torch.tensor([[5, 6], [4, 8], [6, 7], [8, 0]])

    def bpr(user, item):
        pos_scores = (user[users] * item[pos]).sum(-1, keepdim=True)
        neg_scores = (user[users].unsqueeze(1) * item[neg]).sum(-1)
        return -F.logsigmoid(pos_scores - neg_scores).mean()

    reg = (teacher.user_embedding.weight[users].square().sum() +
           teacher.item_embedding.weight[pos].square().sum() +
           teacher.item_embedding.weight[neg].square().sum())
    expected = (bpr(out.user, out.item) + 0.01 * reg / 4 + 0.3 *
                sum(bpr(out.modal_user[m], out.modal_item[m])
                    for m in ('image', 'text')))
    assert torch.allclose(teacher.loss(out, users, pos, neg), expected)
    assert torch.allclose(
        teacher.loss(out, users, pos, neg, lambda_reg=0.),
        expected - 0.01 * reg / 4)
    # One negative per row as a [B] tensor.
    flat = teacher.loss(out, users, pos, neg[:, 0])
    assert flat.dim() == 0 and torch.isfinite(flat)
    with pytest.raises(ValueError, match="'users' \\[B\\]"):
        teacher.loss(out, users, pos[:2], neg)


def test_zero_feature_items_give_finite_outputs_and_gradients():
    adj = toy_graph()
    features = toy_features(['image', 'text'])
    features['image'][[2, 5]] = 0.  # Items without an image.
    features['text'] = torch.zeros(NUM_ITEMS, WIDTHS['text'])  # No text.
    teacher = make_teacher(['image', 'text'], adj, features, beta=1.0)
    out = teacher(adj, features)
    for tensor in (out.user, out.item, *out.modal_user.values(),
                   *out.modal_item.values()):
        assert torch.isfinite(tensor).all()
    loss = teacher.loss(out, torch.tensor([0, 1]), torch.tensor([0, 1]),
                        torch.tensor([5, 2]))
    loss.backward()
    for name, param in teacher.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name


def student_side_loss(out, modality):
    # A stand-in for the distillation losses: a fixed "student" embedding
    # pulled towards the teacher's modality and fused embeddings.
    gen = torch.Generator().manual_seed(3)
    student_item = torch.randn(NUM_ITEMS, out.item.size(1), generator=gen)
    student_user = torch.randn(NUM_USERS, out.user.size(1), generator=gen)
    emb = (1 - F.cosine_similarity(student_item, out.modal_item[modality])
           ).square().mean()
    scores = (student_user @ student_item.t()).softmax(-1)
    teacher_scores = (out.user @ out.item.t()).log_softmax(-1)
    return emb + F.kl_div(teacher_scores, scores, reduction='batchmean')


@pytest.mark.parametrize('names', [('image', ), ('image', 'text'),
                                   ('image', 'text', 'audio')])
def test_frozen_teacher_passes_student_gradient_to_prompt_only(names):
    adj = toy_graph()
    features = toy_features(names)
    teacher = make_teacher(names, adj, features, dropout=0.5).freeze()
    assert not teacher.training
    assert not any(module.training for module in teacher.modules())

    for cached in (False, True):
        if cached:
            teacher.cache_frozen(adj, features)
        teacher.zero_grad(set_to_none=True)
        student_side_loss(teacher(adj, features), names[0]).backward()
        for name, param in teacher.named_parameters():
            if name.startswith('prompt.'):
                assert param.requires_grad
                assert param.grad is not None and \
                    param.grad.abs().sum() > 0, name
            else:
                assert not param.requires_grad and param.grad is None, name
    teacher.clear_cache()

    teacher.freeze(train_prompt=False)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_cached_forward_equals_uncached_forward():
    adj = toy_graph()
    features = toy_features(['image', 'text', 'audio'])
    teacher = make_teacher(['image', 'text', 'audio'], adj, features,
                           beta=0.8, gamma=0.2, dropout=0.3).freeze()
    reference = teacher(adj, features)
    teacher.cache_frozen(adj, features)
    cached = teacher(adj, features)
    assert torch.allclose(cached.user, reference.user, atol=1e-5)
    assert torch.allclose(cached.item, reference.item, atol=1e-5)
    for m in features:
        assert torch.allclose(cached.modal_item[m], reference.modal_item[m],
                              atol=1e-5)

    # The prompt keeps learning: still equal after a prompt update.
    optimizer = torch.optim.SGD(teacher.prompt.parameters(), lr=0.5)
    student_side_loss(cached, 'image').backward()
    optimizer.step()
    cached = teacher(adj, features)
    teacher.clear_cache()
    reference = teacher(adj, features)
    assert torch.allclose(cached.user, reference.user, atol=1e-5)
    assert torch.allclose(cached.item, reference.item, atol=1e-5)

    # The cache refuses to go stale.
    teacher.cache_frozen(adj, features)
    with torch.no_grad():
        teacher.user_embedding.weight.add_(1.)
    with pytest.raises(RuntimeError, match='changed'):
        teacher(adj, features)
    teacher.cache_frozen(adj, features)
    with pytest.raises(RuntimeError, match='other features'):
        teacher(adj, {m: x.clone() for m, x in features.items()})
    teacher.train()
    with pytest.raises(RuntimeError, match='train mode'):
        teacher(adj, features)
    with pytest.raises(RuntimeError, match='eval mode'):
        teacher.cache_frozen(adj, features)
    teacher.eval()
    teacher.user_embedding.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match='user_embedding'):
        teacher.cache_frozen(adj, features)


def test_state_dict_round_trip_restores_prompt_tokens():
    adj = toy_graph()
    features = toy_features(['image', 'text'])
    teacher = make_teacher(['image', 'text'], adj, features).eval()
    assert 'prompt.item_tokens' in teacher.state_dict()
    clone = MultimodalTeacher(NUM_USERS, NUM_ITEMS,
                              {'image': 6, 'text': 4}, embedding_dim=5)
    clone.load_state_dict(teacher.state_dict())
    clone.eval()
    assert torch.equal(clone(adj, features).user,
                       teacher(adj, features).user)


def test_teacher_repr_and_bad_input():
    adj = toy_graph()
    features = toy_features(['image', 'text'])
    teacher = MultimodalTeacher(NUM_USERS, NUM_ITEMS, {'image': 6, 'text': 4},
                                embedding_dim=5)
    assert repr(teacher) == ("MultimodalTeacher(7, 9, {'image': 6, "
                             "'text': 4}, 5, num_layers=3)")
    assert isinstance(teacher.prompt, PromptLearner)
    with pytest.raises(RuntimeError, match='init_prompt'):
        teacher(adj, features)
    teacher.init_prompt(adj, features)
    with pytest.raises(ValueError, match=r"lacks modalities \['text'\]"):
        teacher(adj, {'image': features['image']})
    with pytest.raises(ValueError, match=r"'features\['text'\]'"):
        teacher(adj, {'image': features['image'],
                      'text': torch.randn(NUM_ITEMS, 5)})
    with pytest.raises(ValueError, match='built for 7 users'):
        teacher(BipartiteAdjacency(adj.edge_index, 8, NUM_ITEMS), features)
    with pytest.raises(ValueError, match='feature_dims'):
        MultimodalTeacher(3, 4, {})
    with pytest.raises(ValueError, match="'feature_dims\\['a'\\]'"):
        MultimodalTeacher(3, 4, {'a': 0})
    with pytest.raises(ValueError, match='num_layers'):
        MultimodalTeacher(3, 4, {'a': 2}, num_layers=-1)
    with pytest.raises(ValueError, match='layout'):
        MultimodalTeacher(3, 4, {'a': 2}, layout='dense')


def train_teacher(data, features, seed, epochs=8):
    torch.manual_seed(seed)
    teacher = MultimodalTeacher(data['user'].num_nodes,
                                data['item'].num_nodes,
                                {m: x.size(1) for m, x in features.items()},
                                embedding_dim=32)
    teacher.init_prompt(data, features)
    optimizer = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    sampler = NegativeSampler.from_data(data)
    gen = torch.Generator().manual_seed(seed)
    epoch_losses = []
    for _ in range(epochs):
        teacher.train()
        losses = []
        for users, pos, neg in sampler.epoch_batches(1024, gen):
            loss = teacher.loss(teacher(data, features), users, pos, neg)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        epoch_losses.append(sum(losses) / len(losses))
    teacher.eval()
    with torch.no_grad():
        user, item = teacher.get_embedding(data, features)
    return epoch_losses, evaluate(user, item, data, 'val',
                                  ks=(20, ))['recall@20']


def test_teacher_learns_planted_signal_and_uses_features():
    # Sparse and cold (about 7 train interactions per user over 800 items,
    # no popularity bias to fall back on): the features carry what the
    # graph says little about. Measured: recall@20 0.157 with the features,
    # 0.057 with shuffled feature rows, 0.025 for random scores.
    data = synthetic(num_users=300, num_items=800, num_interactions=3000,
                     modalities={'image': 32, 'text': 16},
                     popularity_skew=0., seed=0)
    features = {m: data['item'][m] for m in modalities(data)}
    perm = torch.randperm(800, generator=torch.Generator().manual_seed(1))
    shuffled = {m: x[perm] for m, x in features.items()}

    gen = torch.Generator().manual_seed(0)
    random = evaluate(torch.randn(300, 32, generator=gen),
                      torch.randn(800, 32, generator=gen), data, 'val',
                      ks=(20, ))['recall@20']

    losses, recall = train_teacher(data, features, seed=0)
    print(f'random {random:.4f} teacher {recall:.4f}', end=' ')
    assert losses[-1] < 0.7 * losses[0]
    assert recall > random + 0.08
    _, recall_shuffled = train_teacher(data, shuffled, seed=0)
    print(f'shuffled features {recall_shuffled:.4f}')
    assert recall > recall_shuffled + 0.05
