r"""The two computations every pmm_geo recommender shares: the bipartite
LightGCN layer stack and the dot-product scoring of user-item pairs."""
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import Module


def lightgcn_propagate(
    conv: Module,
    adj,
    x_user: Tensor,
    x_item: Tensor,
    num_layers: int,
    layout: str = 'edge_index_fused',
    alpha: Optional[Sequence[float]] = None,
) -> Tuple[Tensor, Tensor]:
    r"""The LightGCN layer stack of `"LightGCN: Simplifying and Powering
    Graph Convolution Network for Recommendation"
    <https://arxiv.org/abs/2002.02126>`_ on the bipartite user-item graph:
    users aggregate items and items aggregate users, both from the previous
    layer (a simultaneous update), and the layers are combined,

    .. math::
        \mathbf{E}_u^{(l+1)} = \hat{\mathbf{A}} \mathbf{E}_i^{(l)}, \qquad
        \mathbf{E}_i^{(l+1)} = \hat{\mathbf{A}}^{\top} \mathbf{E}_u^{(l)},
        \qquad \mathbf{e} = \sum_{l=0}^{L} \alpha_l \mathbf{E}^{(l)}

    with :math:`\alpha_l = 1 / (L + 1)` (the mean, summed then scaled)
    unless :obj:`alpha` is given.

    Args:
        conv (torch.nn.Module): The light convolution,
            :class:`pmm_geo.nn.BipartiteConv`.
        adj (pmm_geo.data.BipartiteAdjacency): The normalized adjacency
            :math:`\hat{\mathbf{A}}`.
        x_user (torch.Tensor): Layer-0 user embeddings :obj:`[U, d]`.
        x_item (torch.Tensor): Layer-0 item embeddings :obj:`[I, d]`.
        num_layers (int): Number of layers :math:`L`.
        layout (str, optional): Adjacency layout (see
            :class:`~pmm_geo.data.BipartiteAdjacency`).
            (default: :obj:`"edge_index_fused"`)
        alpha (Sequence[float], optional): Layer weights :math:`\alpha_l`,
            :obj:`num_layers + 1` Python floats (one fused add-with-scale
            kernel per layer and side). (default: :obj:`None`, the mean)
    """
    item_to_user = adj.item_to_user(layout)
    user_to_item = adj.user_to_item(layout)
    weights = [1.] * (num_layers + 1) if alpha is None else alpha
    # The sums accumulate in place, in tensors made here: on CPU an in-place
    # add is about 3x faster than one that allocates its output, and no
    # backward needs the partial sums. (x * 1. is x exactly: the mean's
    # results are those of summing first, to the bit.)
    out_user, out_item = x_user * weights[0], x_item * weights[0]
    for layer in range(num_layers):
        x_user, x_item = (conv(x_item, *item_to_user),
                          conv(x_user, *user_to_item))
        out_user.add_(x_user, alpha=weights[layer + 1])
        out_item.add_(x_item, alpha=weights[layer + 1])
    if alpha is None:
        scale = 1. / (num_layers + 1)
        out_user.mul_(scale)
        out_item.mul_(scale)
    return out_user, out_item


def gather_rows(table: Tensor, ids: Tensor) -> Tensor:
    r"""The rows :obj:`table[ids]` (:obj:`ids` of any shape), through
    :meth:`~torch.Tensor.index_select`: its backward accumulates the
    gradient rows with one :obj:`index_add_`, about 1.8x cheaper on CPU
    than :func:`~torch.nn.functional.embedding`'s dense backward and 2x
    cheaper than advanced indexing (:obj:`aten::index` and its
    :obj:`index_put_` backward) for the :obj:`[B, n]` id blocks of
    candidate lists (one thread, 2,048 x 11 ids, 64 dimensions)."""
    rows = table.index_select(0, ids.reshape(-1))
    return rows.view(*ids.shape, *table.shape[1:])


class _GatheredDot(torch.autograd.Function):
    r"""The scores :math:`s_{b,j} = \mathbf{u}_{users_b}^{\top}
    \mathbf{v}_{items_{b,j}}` of :obj:`items` :obj:`[B, n]` against
    :obj:`users` :obj:`[B]`, with a backward that never broadcasts: the
    user rows' gradient is one batched product
    :math:`\sum_j g_{b,j} \mathbf{v}_{items_{b,j}}` and the item rows'
    gradient one :obj:`index_add_` of :math:`g_{b,j} \mathbf{u}_{users_b}`
    (the broadcast :obj:`(u * v).sum(-1)` spends most of its time in two
    broadcast :obj:`[B, n, d]` products in its backward: 4.2 against 3.0
    ms forward and backward for stage 2's :obj:`[2048, 11]` candidate
    lists at 64 dimensions, one CPU thread)."""
    @staticmethod
    def forward(ctx, user_emb: Tensor, item_emb: Tensor, users: Tensor,
                items: Tensor) -> Tensor:
        user = gather_rows(user_emb, users)
        item = gather_rows(item_emb, items)
        ctx.save_for_backward(users, items, user, item)
        ctx.num_users, ctx.num_items = user_emb.size(0), item_emb.size(0)
        return torch.linalg.vecdot(user.unsqueeze(1), item)

    @staticmethod
    @once_differentiable  # The saved rows carry no graph.
    def backward(ctx, grad: Tensor):
        users, items, user, item = ctx.saved_tensors
        grad_user = grad_item = None
        if ctx.needs_input_grad[0]:
            rows = torch.bmm(grad.unsqueeze(1), item).squeeze(1)
            grad_user = rows.new_zeros(ctx.num_users, rows.size(1))
            grad_user.index_add_(0, users, rows)
        if ctx.needs_input_grad[1]:
            rows = grad.unsqueeze(-1) * user.unsqueeze(1)
            grad_item = rows.new_zeros(ctx.num_items, rows.size(-1))
            grad_item.index_add_(0, items.reshape(-1),
                                 rows.reshape(-1, rows.size(-1)))
        return grad_user, grad_item, None, None


def pair_scores(user_emb: Tensor, item_emb: Tensor, users: Tensor,
                items: Tensor) -> Tensor:
    r"""The scores :math:`\hat{y}_{u,i} = \mathbf{e}_u^{\top}
    \mathbf{e}_i` of user-item pairs: :obj:`items` :obj:`[B]` gives
    :obj:`[B]` scores, :obj:`[B, n]` (e.g. candidate lists) :obj:`[B, n]`.
    Rows are gathered, never the whole :obj:`[U, I]` score matrix built.

    Args:
        user_emb (torch.Tensor): User embeddings :obj:`[U, d]`.
        item_emb (torch.Tensor): Item embeddings :obj:`[I, d]`.
        users (torch.Tensor): User ids :obj:`[B]`.
        items (torch.Tensor): Item ids :obj:`[B]` or :obj:`[B, n]`.
    """
    if items.dim() == 2 and items.size(1) > 4:
        return _GatheredDot.apply(user_emb, item_emb, users, items)
    # A column or a few: the broadcast product is as cheap (bmm's per-row
    # overhead would dominate the custom backward).
    return _dot(gather_rows(user_emb, users), gather_rows(item_emb, items))


def _dot(user: Tensor, item: Tensor) -> Tensor:
    # item is [B, d] or [B, n, d] (n candidates per row).
    if item.dim() == 3:
        user = user.unsqueeze(1)
    return (user * item).sum(-1)


def bpr_scores(user_emb: Tensor, item_emb: Tensor, users: Tensor,
               pos: Tensor, neg: Tensor) -> Tuple[Tensor, Tensor]:
    r"""The scores of BPR triplets, :obj:`(pos [B], neg [B] or [B, n])`,
    as :func:`pair_scores` with the users' rows gathered once (one
    gradient accumulation per row in the backward pass).

    Args:
        user_emb (torch.Tensor): User embeddings :obj:`[U, d]`.
        item_emb (torch.Tensor): Item embeddings :obj:`[I, d]`.
        users (torch.Tensor): User ids :obj:`[B]`.
        pos (torch.Tensor): Positive item ids :obj:`[B]`.
        neg (torch.Tensor): Negative item ids :obj:`[B]` or :obj:`[B, n]`.
    """
    user = gather_rows(user_emb, users)
    return (_dot(user, gather_rows(item_emb, pos)),
            _dot(user, gather_rows(item_emb, neg)))


__all__ = ['lightgcn_propagate', 'gather_rows', 'pair_scores', 'bpr_scores']
