from typing import Optional, Sequence, Union

import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.loss import _Loss

from ._utils import (check_non_negative, check_reduction, check_rows,
                     format_repr, reduce_rows)

Params = Union[Tensor, Sequence[Tensor]]


class BPRLoss(_Loss):
    r"""The Bayesian Personalized Ranking loss of `"BPR: Bayesian
    Personalized Ranking from Implicit Feedback"
    <https://arxiv.org/abs/1205.2618>`_, as used by LightGCN
    (`paper <https://arxiv.org/abs/2002.02126>`__), with an optional
    :math:`L_2` penalty.

    For each batch row :math:`b` (a user with one positive item and
    :math:`n \geq 1` negative items),

    .. math::
        \ell_b = \frac{1}{n} \sum_{j=1}^{n} - \log \sigma \left(
        \hat{y}_{b,+} - \hat{y}_{b,j} \right)
        + \frac{\lambda}{B} \sum_{\mathbf{P} \in \mathcal{P}}
        \| \mathbf{P} \|_F^2 ,

    computed with :func:`torch.nn.functional.logsigmoid`, so it stays
    finite for any finite score gap. The penalty is shared equally by the
    :math:`B` rows, so that :obj:`reduction='mean'` gives the usual
    :math:`\textrm{mean}_b(\textrm{BPR}_b) + \lambda \sum \|\mathbf{P}\|^2
    / B` (as :class:`torch_geometric.nn.models.lightgcn.BPRLoss`),
    :obj:`'sum'` gives :math:`\sum_b \textrm{BPR}_b + \lambda \sum
    \|\mathbf{P}\|^2`, and :obj:`'none'` returns the :math:`B` per-row
    values :math:`\ell_b`, which add up to the :obj:`'sum'` result.

    Args:
        lambda_reg (float, optional): The :math:`L_2` regularization strength
            :math:`\lambda` (default: :obj:`0.`).
        reduction (str, optional): How the per-row losses are reduced over
            the batch: :obj:`'mean'`, :obj:`'sum'` or :obj:`'none'`
            (default: :obj:`'mean'`).

    Shapes:
        - **input:** positive scores :math:`(B)`, negative scores
          :math:`(B)` or :math:`(B, n)`, optional parameters (any shapes)
        - **output:** scalar, or :math:`(B)` if :obj:`reduction='none'`
    """
    __constants__ = ['lambda_reg', 'reduction']
    lambda_reg: float

    def __init__(self, lambda_reg: float = 0., reduction: str = 'mean'):
        name = self.__class__.__name__
        super().__init__(reduction=check_reduction(name, reduction))
        self.lambda_reg = check_non_negative(name, 'lambda_reg', lambda_reg)

    def forward(self, pos_scores: Tensor, neg_scores: Tensor,
                params: Optional[Params] = None) -> Tensor:
        r"""Computes the loss.

        Args:
            pos_scores (torch.Tensor): The score of each row's positive item,
                shape :obj:`[B]`.
            neg_scores (torch.Tensor): The scores of each row's negative
                items, shape :obj:`[B]` or :obj:`[B, n]`.
            params (torch.Tensor or [torch.Tensor], optional): The tensors to
                penalize, typically the batch's layer-0 embeddings. Ignored
                when :obj:`lambda_reg=0`; no penalty when :obj:`None`
                (default: :obj:`None`).
        """
        name = self.__class__.__name__
        check_rows(name, 'pos_scores', pos_scores, (1, ), 'one-dimensional '
                   '[B]')
        check_rows(name, 'neg_scores', neg_scores, (1, 2), '[B] or [B, n]')
        if neg_scores.size(0) != pos_scores.size(0) or neg_scores.numel() == 0:
            raise ValueError(f"{name}: 'neg_scores' must be [B] or [B, n] "
                             f"with n >= 1 and B matching 'pos_scores' (got "
                             f"{tuple(neg_scores.shape)} and "
                             f"{tuple(pos_scores.shape)})")
        if neg_scores.dim() == 1:
            neg_scores = neg_scores.unsqueeze(-1)

        loss = -F.logsigmoid(pos_scores.unsqueeze(-1) - neg_scores).mean(-1)
        if self.lambda_reg != 0 and params is not None:
            num_rows = max(pos_scores.size(0), 1)
            loss = loss + self.lambda_reg * _squared_norm(params) / num_rows
        return reduce_rows(loss, self.reduction)

    def __repr__(self) -> str:
        return format_repr(self.__class__.__name__,
                           f'lambda_reg={self.lambda_reg}', self.reduction)


def _squared_norm(params: Params) -> Tensor:
    if isinstance(params, Tensor):
        return params.pow(2).sum()
    if isinstance(params, (list, tuple)) and len(params) > 0 and all(
            isinstance(p, Tensor) for p in params):
        return sum(p.pow(2).sum() for p in params)
    raise TypeError(f"BPRLoss: 'params' must be a tensor or a non-empty "
                    f"list/tuple of tensors (got {type(params).__name__})")
