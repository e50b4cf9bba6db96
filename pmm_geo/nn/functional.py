r"""The two computations every pmm_geo recommender shares: the bipartite
LightGCN layer stack and the dot-product scoring of user-item pairs."""
from typing import Optional, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor
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
    if alpha is None:
        out_user, out_item = x_user, x_item
    else:
        out_user, out_item = x_user * alpha[0], x_item * alpha[0]
    for layer in range(num_layers):
        x_user, x_item = (conv(x_item, *item_to_user),
                          conv(x_user, *user_to_item))
        if alpha is None:
            out_user, out_item = out_user + x_user, out_item + x_item
        else:
            out_user = out_user.add(x_user, alpha=alpha[layer + 1])
            out_item = out_item.add(x_item, alpha=alpha[layer + 1])
    if alpha is None:
        scale = 1. / (num_layers + 1)
        return out_user * scale, out_item * scale
    return out_user, out_item


def gather_rows(table: Tensor, ids: Tensor) -> Tensor:
    r"""The rows :obj:`table[ids]` (:obj:`ids` of any shape), through
    :func:`~torch.nn.functional.embedding`: an :obj:`index_select` forward
    and a dense row-accumulating backward, 2-3x cheaper on CPU than
    advanced indexing (:obj:`aten::index` and its :obj:`index_put_`
    backward) for the :obj:`[B, n]` id blocks of candidate lists."""
    return F.embedding(ids, table)


def _dot(user: Tensor, item: Tensor) -> Tensor:
    # item is [B, d] or [B, n, d] (n candidates per row).
    if item.dim() == 3:
        user = user.unsqueeze(1)
    return (user * item).sum(-1)


def pair_scores(user_emb: Tensor, item_emb: Tensor, users: Tensor,
                items: Tensor) -> Tensor:
    r"""The scores :math:`\hat{y}_{u,i} = \mathbf{e}_u^{\top}
    \mathbf{e}_i` of user-item pairs: :obj:`items` :obj:`[B]` gives
    :obj:`[B]` scores, :obj:`[B, n]` (e.g. candidate lists) :obj:`[B, n]`.

    Args:
        user_emb (torch.Tensor): User embeddings :obj:`[U, d]`.
        item_emb (torch.Tensor): Item embeddings :obj:`[I, d]`.
        users (torch.Tensor): User ids :obj:`[B]`.
        items (torch.Tensor): Item ids :obj:`[B]` or :obj:`[B, n]`.
    """
    return _dot(gather_rows(user_emb, users), gather_rows(item_emb, items))


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
