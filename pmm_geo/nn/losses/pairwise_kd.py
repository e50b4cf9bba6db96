import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.loss import _Loss

from ._utils import (check_positive, check_reduction, check_rows,
                     check_same_shape, format_repr, reduce_rows)


class PairwiseKDLoss(_Loss):
    r"""The pairwise (ranking) distillation loss of `"PromptMM: Multi-Modal
    Knowledge Distillation for Recommendation with Prompt-Tuning"
    <https://arxiv.org/abs/2402.17188>`_: the student learns the teacher's
    probability that the positive item outranks the negative one.

    With the margins :math:`\Delta = \hat{y}_{u,+} - \hat{y}_{u,-}` of the
    student (:math:`S`) and the teacher (:math:`T`),
    :math:`s = \Delta^S / \tau`, :math:`t = \Delta^T / \tau` and
    :math:`p^T = \sigma(t)`, each row contributes the Bernoulli KL divergence

    .. math::
        \ell_b = \tau^2 \, \mathrm{KL}\left( \sigma(t) \,\|\, \sigma(s)
        \right) = \tau^2 \left[ p^T \left( \log\sigma(t) - \log\sigma(s)
        \right) + (1 - p^T) \left( \log\sigma(-t) - \log\sigma(-s) \right)
        \right],

    evaluated with :func:`torch.nn.functional.logsigmoid` so that it stays
    finite (and so do its gradients) for any finite margin. It is zero when
    the margins agree, positive otherwise, and its gradient
    :math:`\partial \ell_b / \partial \Delta^S = \tau \, (\sigma(s) - p^T)`
    raises the student's margin whenever the teacher's is larger. (The
    reference PromptMM code fed BPR *losses* into
    :class:`torch.nn.KLDivLoss`, which always lowers the student's margin.)
    The :math:`\tau^2` factor (Hinton et al., 2015) keeps the gradient scale
    independent of the temperature, as in :class:`ListwiseKDLoss`.

    With :obj:`one_sided=True` a row counts only where the teacher is the
    surer of the two, :math:`\ell_b \cdot \mathbb{1}[t > s]`: the loss then
    never lowers the student's margin (where the student already ranks the
    positive higher than the teacher, the two-sided KL would pull it back
    to the teacher's margin, a cap on a student that outgrows its teacher).

    The loss does not detach :obj:`teacher_margin`: in stage 2 the soft
    prompt learns through the teacher's targets. Call :meth:`detach` on the
    teacher's margin yourself where it must stay a constant.

    Args:
        tau (float, optional): The temperature :math:`\tau > 0`
            (default: :obj:`1.`).
        reduction (str, optional): How the per-row losses are reduced over
            the batch: :obj:`'mean'`, :obj:`'sum'` or :obj:`'none'`
            (default: :obj:`'mean'`).
        one_sided (bool, optional): If :obj:`True`, only rows where the
            teacher's margin exceeds the student's count (default:
            :obj:`False`).

    Shapes:
        - **input:** student margin :math:`(B)` or :math:`(B, n)`, teacher
          margin of the same shape (with :math:`n` negatives per row the
          row's loss is the mean over them)
        - **output:** scalar, or :math:`(B)` if :obj:`reduction='none'`
    """
    __constants__ = ['tau', 'reduction', 'one_sided']
    tau: float
    one_sided: bool

    def __init__(self, tau: float = 1., reduction: str = 'mean',
                 one_sided: bool = False):
        name = self.__class__.__name__
        super().__init__(reduction=check_reduction(name, reduction))
        self.tau = check_positive(name, 'tau', tau)
        self.one_sided = bool(one_sided)

    def forward(self, student_margin: Tensor, teacher_margin: Tensor) -> Tensor:
        r"""Computes the loss.

        Args:
            student_margin (torch.Tensor): The student's score margins
                :math:`\Delta^S` (the input).
            teacher_margin (torch.Tensor): The teacher's score margins
                :math:`\Delta^T` (the target), same shape.
        """
        name = self.__class__.__name__
        check_same_shape(name, 'student_margin', student_margin,
                         'teacher_margin', teacher_margin)
        check_rows(name, 'student_margin', student_margin, (1, 2),
                   '[B] or [B, n]')

        s = student_margin / self.tau
        t = teacher_margin / self.tau
        # σ(-t) rather than 1 - σ(t) keeps the small mass exact. A weight
        # that underflows to 0 multiplies a finite log-ratio (logsigmoid
        # is finite for every finite argument), never an infinite one.
        kl = (t.sigmoid() * (F.logsigmoid(t) - F.logsigmoid(s)) +
              (-t).sigmoid() * (F.logsigmoid(-t) - F.logsigmoid(-s)))
        loss = kl * self.tau**2
        if self.one_sided:
            loss = loss * (t > s).detach().to(loss.dtype)
        if loss.dim() == 2:
            loss = loss.mean(-1)
        return reduce_rows(loss, self.reduction)

    def __repr__(self) -> str:
        extra = ', one_sided=True' if self.one_sided else ''
        return format_repr(self.__class__.__name__, f'tau={self.tau}{extra}',
                           self.reduction)
