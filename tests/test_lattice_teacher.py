import pytest
import torch

from pmm_geo.data import BipartiteAdjacency
from pmm_geo.nn import (FREEDOM, LATTICE, LightGCNStudent, LATTICETeacher,
                        MultimodalTeacher)
from pmm_geo.nn.losses import BPRLoss
from pmm_geo.nn.models import TeacherOutput, check_teacher

from test_lattice import make_graph

NUM_USERS, NUM_ITEMS = 30, 50


def make_features(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {'image': torch.randn(NUM_ITEMS, 12, generator=gen),
            'text': torch.randn(NUM_ITEMS, 7, generator=gen)}


def make_teacher(features, graph, **kwargs):
    torch.manual_seed(0)
    teacher = LATTICETeacher(NUM_USERS, NUM_ITEMS, features, embedding_dim=8,
                             knn_k=5, **kwargs)
    return teacher.init_prompt(graph, features)


def test_fused_output_is_lattice_and_branches_match_dense():
    features, graph = make_features(), make_graph(NUM_USERS, NUM_ITEMS)
    teacher = make_teacher(features, graph, beta=0.).eval()
    # A LATTICE with the same weights (beta = 0: the prompt term vanishes
    # and the prompted projections are LATTICE's linear ones).
    lattice = LATTICE(NUM_USERS, NUM_ITEMS, features, embedding_dim=8,
                      knn_k=5)
    state = {k.replace('.lin.', '.'): v for k, v in
             teacher.state_dict().items() if not k.startswith('prompt.')}
    lattice.load_state_dict(state)
    lattice.eval()
    with torch.no_grad():
        out = teacher(graph, features)
        user, item = lattice(graph, features)
    assert isinstance(out, TeacherOutput)
    assert torch.allclose(out.user, user, atol=1e-6)
    assert torch.allclose(out.item, item, atol=1e-6)
    # Branches: A z_m and A^T A z_m (dense).
    adj = graph.to_dense()
    for m, x in features.items():
        z = teacher.projections[m].lin(x).detach()
        assert torch.allclose(out.modal_user[m], adj @ z, atol=1e-5)
        assert torch.allclose(out.modal_item[m], adj.t() @ (adj @ z),
                              atol=1e-5)
    # The prompt term changes the projections, hence graph and branches.
    teacher.projections['text'].beta = 1.0
    with torch.no_grad():
        prompted = teacher(graph, features)
    assert (prompted.modal_item['text'] - out.modal_item['text']).abs().max(
    ) > 1e-3


def test_graph_schedule_once_per_epoch():
    features, graph = make_features(), make_graph(NUM_USERS, NUM_ITEMS)
    teacher = make_teacher(features, graph).train()
    mix = teacher.modality_weight  # LATTICE's learned modality weights.
    grads = []
    for _ in range(3):  # The first forward after train() rebuilds.
        teacher.zero_grad()
        out = teacher(graph, features)
        out.item.sum().backward()
        grads.append(mix.grad)
    assert grads[0] is not None and grads[0].abs().sum() > 0
    assert grads[1] is None and grads[2] is None
    teacher.train()  # Next epoch.
    teacher.zero_grad()
    teacher(graph, features).item.sum().backward()
    assert mix.grad is not None


def test_loss_is_bpr_plus_branch_bpr_plus_reg():
    features, graph = make_features(), make_graph(NUM_USERS, NUM_ITEMS)
    teacher = make_teacher(features, graph, modality_weight=0.3,
                           lambda_reg=0.01)
    out = teacher(graph, features)
    users = torch.tensor([0, 4, 9])
    pos, neg = torch.tensor([1, 2, 3]), torch.tensor([7, 8, 9])

    def bpr(u, i, params=None, reg=0.):
        return BPRLoss(reg)((u[users] * i[pos]).sum(-1),
                            (u[users] * i[neg]).sum(-1), params)

    params = [teacher.user_embedding(users), teacher.item_embedding(pos),
              teacher.item_embedding(neg)]
    expected = bpr(out.user, out.item, params, 0.01) + 0.3 * sum(
        bpr(out.modal_user[m], out.modal_item[m]) for m in features)
    assert torch.allclose(teacher.loss(out, users, pos, neg), expected)


def test_frozen_cache_and_prompt_gradient():
    features, graph = make_features(), make_graph(NUM_USERS, NUM_ITEMS)
    teacher = make_teacher(features, graph, beta=0.5).freeze()
    reference = teacher(graph, features)
    teacher.cache_frozen(graph, features)
    cached = teacher(graph, features)
    for a, b in ((cached.user, reference.user),
                 (cached.item, reference.item),
                 (cached.modal_item['image'], reference.modal_item['image'])):
        assert torch.allclose(a, b, atol=1e-5)
    # Only the prompt learns, through the modality branches.
    loss = sum(x.pow(2).sum() for x in cached.modal_item.values())
    loss.backward()
    for name, param in teacher.named_parameters():
        if name.startswith('prompt.'):
            assert param.requires_grad
        else:
            assert not param.requires_grad and param.grad is None, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in teacher.prompt.parameters())
    with torch.no_grad():
        teacher.item_embedding.weight.add_(1.)
    with pytest.raises(RuntimeError, match='changed'):
        teacher(graph, features)


def test_teacher_interface_and_errors():
    features, graph = make_features(), make_graph(NUM_USERS, NUM_ITEMS)
    teacher = make_teacher(features, graph)
    check_teacher(teacher)
    check_teacher(MultimodalTeacher(3, 4, {'a': 2}))
    for model in (LightGCNStudent(3, 4), LATTICE(3, 4, {'a': torch.randn(
            4, 2)}, knn_k=2), FREEDOM(3, 4, {'a': torch.randn(4, 2)},
                                     knn_k=2)):
        with pytest.raises(TypeError, match=f'{type(model).__name__} cannot '
                           f'be the teacher: it lacks'):
            check_teacher(model)
    with pytest.raises(ValueError, match="'modality_weight' must be"):
        LATTICETeacher(3, 4, {'a': torch.randn(4, 2)}, knn_k=2,
                       modality_weight=-1.)
    class Subgraph(BipartiteAdjacency):  # Stand-in: not its own root.
        root = graph

    sub = Subgraph(graph.edge_index, NUM_USERS, NUM_ITEMS)
    with pytest.raises(ValueError, match="batching='full'"):
        teacher(sub, features)
