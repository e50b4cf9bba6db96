from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.loss import _Loss

from ._utils import (check_non_negative, check_positive, check_reduction,
                     check_rows, check_same_shape, format_repr, reduce_rows)


class ListwiseKDLoss(_Loss):
    r"""The modality-aware, disentangled list-wise distillation loss of
    `"PromptMM: Multi-Modal Knowledge Distillation for Recommendation with
    Prompt-Tuning" <https://arxiv.org/abs/2402.17188>`_ (after the decoupled
    KD of `"Decoupled Knowledge Distillation"
    <https://arxiv.org/abs/2203.08679>`_).

    Each row holds the logits :math:`\mathbf{z} \in \mathbb{R}^{1+n}` of one
    user's candidate list: column 0 is the user's positive item, columns
    :math:`1..n` are sampled negatives. With
    :math:`\mathbf{p} = \mathrm{softmax}(\mathbf{z} / \tau)`, the target
    split :math:`\mathbf{b} = [p_0, 1 - p_0]` and the distribution over the
    negatives :math:`\mathbf{q} = \mathrm{softmax}(\mathbf{z}_{1:} / \tau)`,

    .. math::
        \ell_b = \tau^2 \left[ \alpha \, \mathrm{KL}\left(\mathbf{b}^T \,\|\,
        \mathbf{b}^S\right) + \beta \, w \, \mathrm{KL}\left(\mathbf{q}^T
        \,\|\, \mathbf{q}^S\right) \right], \qquad
        w = \begin{cases} 1 - p^T_0 & \text{if reweight} \\
        1 & \text{otherwise,} \end{cases}

    with :math:`w` detached from the graph. When the teacher logits come
    from one modality's branch, lists where that modality is sure about the
    positive (small :math:`1 - p^T_0`) pass on less of their ranking of the
    negatives: the paper's modality-aware re-weighting. All terms are
    computed in log space (:math:`\log(1 - p_0) =
    \mathrm{logsumexp}(\mathbf{z}_{1:}/\tau) -
    \mathrm{logsumexp}(\mathbf{z}/\tau)`), so they stay finite for any
    finite logits. The :math:`\tau^2` factor (Hinton et al., 2015) is the
    same as in :class:`PairwiseKDLoss`.

    With :obj:`one_sided=True` a row counts only where the teacher puts
    more probability on the positive than the student,
    :math:`\ell_b \cdot \mathbb{1}[p^T_0 > p^S_0]`: the loss then never
    pulls a student that is surer of a known positive back to its teacher
    (on dense data the two-sided target term caps the student at its
    teacher's confidence).

    The loss does not detach :obj:`teacher_logits` (only the weight
    :math:`w` and the row mask): in stage 2 the soft prompt learns through
    the teacher's targets. Detach the teacher's logits yourself where they
    must stay constant.

    Args:
        tau (float, optional): The temperature :math:`\tau > 0`
            (default: :obj:`1.`).
        alpha (float, optional): The weight :math:`\alpha \geq 0` of the
            target (positive vs. rest) term (default: :obj:`1.`).
        beta (float, optional): The weight :math:`\beta \geq 0` of the
            non-target (among negatives) term (default: :obj:`1.`).
        reweight (bool, optional): If :obj:`True`, the non-target term of a
            row is weighted by the teacher's non-target mass
            :math:`1 - p^T_0` (default: :obj:`True`).
        reduction (str, optional): How the per-row losses are reduced over
            the batch: :obj:`'mean'`, :obj:`'sum'` or :obj:`'none'`
            (default: :obj:`'mean'`).
        one_sided (bool, optional): If :obj:`True`, only rows where
            :math:`p^T_0 > p^S_0` count (default: :obj:`False`).

    Shapes:
        - **input:** student logits :math:`(B, 1 + n)`, teacher logits
          :math:`(B, 1 + n)`, :math:`n \geq 1`, column 0 the positive
        - **output:** scalar, or :math:`(B)` if :obj:`reduction='none'`
    """
    __constants__ = ['tau', 'alpha', 'beta', 'reweight', 'reduction',
                     'one_sided']
    tau: float
    alpha: float
    beta: float
    reweight: bool
    one_sided: bool

    def __init__(self, tau: float = 1., alpha: float = 1., beta: float = 1.,
                 reweight: bool = True, reduction: str = 'mean',
                 one_sided: bool = False):
        name = self.__class__.__name__
        super().__init__(reduction=check_reduction(name, reduction))
        self.tau = check_positive(name, 'tau', tau)
        self.alpha = check_non_negative(name, 'alpha', alpha)
        self.beta = check_non_negative(name, 'beta', beta)
        self.reweight = bool(reweight)
        self.one_sided = bool(one_sided)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        r"""Computes the loss.

        Args:
            student_logits (torch.Tensor): The student's scores of each
                candidate list (the input), shape :obj:`[B, 1 + n]`.
            teacher_logits (torch.Tensor): The teacher's scores of the same
                lists (the target), shape :obj:`[B, 1 + n]`.
        """
        name = self.__class__.__name__
        check_same_shape(name, 'student_logits', student_logits,
                         'teacher_logits', teacher_logits)
        check_rows(name, 'student_logits', student_logits, (2, ),
                   'two-dimensional [B, 1 + n]')
        if student_logits.size(1) < 2:
            raise ValueError(f"{name}: 'student_logits' needs at least one "
                             f"negative column after the positive one (got "
                             f"shape {tuple(student_logits.shape)})")

        log_b_s, log_q_s = _split_log_probs(student_logits / self.tau)
        log_b_t, log_q_t = _split_log_probs(teacher_logits / self.tau)
        target_kl = _kl(log_b_t, log_b_s)
        non_target_kl = _kl(log_q_t, log_q_s)
        if self.reweight:
            non_target_kl = non_target_kl * log_b_t[:, 1].exp().detach()

        loss = self.alpha * target_kl + self.beta * non_target_kl
        if self.one_sided:
            surer = (log_b_t[:, 0] > log_b_s[:, 0]).detach()
            loss = loss * surer.to(loss.dtype)
        return reduce_rows(loss * self.tau**2, self.reduction)

    def __repr__(self) -> str:
        return format_repr(
            self.__class__.__name__,
            f'tau={self.tau}, alpha={self.alpha}, beta={self.beta}, '
            f'reweight={self.reweight}'
            f"{', one_sided=True' if self.one_sided else ''}", self.reduction)


def _split_log_probs(z: Tensor) -> Tuple[Tensor, Tensor]:
    r"""Returns :math:`\log [p_0, 1 - p_0]` of shape :obj:`[B, 2]` and
    :math:`\log \mathrm{softmax}(\mathbf{z}_{1:})` of shape :obj:`[B, n]`."""
    log_total = z.logsumexp(dim=-1)
    log_rest = z[:, 1:].logsumexp(dim=-1)
    log_b = torch.stack([z[:, 0] - log_total, log_rest - log_total], dim=-1)
    log_q = z[:, 1:] - log_rest.unsqueeze(-1)
    return log_b, log_q


def _kl(log_target: Tensor, log_input: Tensor) -> Tensor:
    r"""Per-row :math:`\mathrm{KL}(\mathrm{target} \,\|\, \mathrm{input})`
    from log-probabilities (finite even where a probability underflows)."""
    return F.kl_div(log_input, log_target, reduction='none',
                    log_target=True).sum(-1)
