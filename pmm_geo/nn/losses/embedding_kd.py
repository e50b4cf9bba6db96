from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.loss import _Loss

from ._utils import check_reduction, check_rows, format_repr, reduce_rows


class EmbeddingKDLoss(_Loss):
    r"""The modality-aware embedding distillation loss of `"PromptMM:
    Multi-Modal Knowledge Distillation for Recommendation with
    Prompt-Tuning" <https://arxiv.org/abs/2402.17188>`_: the scaled cosine
    error of `"GraphMAE: Self-Supervised Masked Graph Autoencoders"
    <https://arxiv.org/abs/2205.10803>`_ between each student embedding
    :math:`\mathbf{s}_i` and the teacher's embedding :math:`\mathbf{h}_i` of
    the same node,

    .. math::
        \ell_i = \left( 1 - \frac{g(\mathbf{s}_i)^{\top} \mathbf{h}_i}
        {\max(\|g(\mathbf{s}_i)\|, \epsilon) \,
        \max(\|\mathbf{h}_i\|, \epsilon)} \right)^{\alpha},
        \qquad \alpha \geq 1,

    where :math:`g` is the identity, or a linear head
    :math:`g(\mathbf{s}) = \mathbf{W} \mathbf{s} + \mathbf{b}` when both
    :obj:`in_channels` and :obj:`out_channels` are given (a student narrower
    than the teacher). The head is a training-only helper owned by the loss:
    it is not part of the served student, so put this module's parameters in
    the optimizer next to the student's. :math:`\alpha > 1` down-weights
    rows that already agree; :math:`\alpha \geq 1` keeps the gradient
    finite at :math:`\cos = 1`. A zero row has cosine 0 (loss 1) and finite
    gradients.

    The loss does not detach :obj:`teacher_emb`: detach the teacher's
    embeddings yourself where they must stay constant.

    Args:
        alpha (float, optional): The scaling exponent :math:`\alpha \geq 1`
            (default: :obj:`2.`).
        in_channels (int, optional): The student's embedding width, for the
            head (default: :obj:`None`).
        out_channels (int, optional): The teacher's embedding width, for the
            head (default: :obj:`None`).
        eps (float, optional): The norm floor :math:`\epsilon`
            (default: :obj:`1e-8`).
        reduction (str, optional): How the per-row losses are reduced over
            the rows: :obj:`'mean'`, :obj:`'sum'` or :obj:`'none'`
            (default: :obj:`'mean'`).

    Shapes:
        - **input:** student embeddings :math:`(B, d_s)`, teacher embeddings
          :math:`(B, d)` (:math:`d_s = d` without a head)
        - **output:** scalar, or :math:`(B)` if :obj:`reduction='none'`
    """
    __constants__ = ['alpha', 'in_channels', 'out_channels', 'eps',
                     'reduction']
    alpha: float
    eps: float

    def __init__(self, alpha: float = 2., in_channels: Optional[int] = None,
                 out_channels: Optional[int] = None, eps: float = 1e-8,
                 reduction: str = 'mean'):
        name = self.__class__.__name__
        super().__init__(reduction=check_reduction(name, reduction))
        if not alpha >= 1:
            raise ValueError(f"{name}: 'alpha' must be >= 1 (got {alpha})")
        if not eps > 0:
            raise ValueError(f"{name}: 'eps' must be positive (got {eps})")
        if (in_channels is None) != (out_channels is None):
            raise ValueError(f"{name}: give both 'in_channels' and "
                             f"'out_channels' for the head, or neither (got "
                             f"{in_channels} and {out_channels})")
        for arg, value in (('in_channels', in_channels),
                           ('out_channels', out_channels)):
            if value is not None and (not isinstance(value, int)
                                      or isinstance(value, bool)
                                      or value < 1):
                raise ValueError(f"{name}: '{arg}' must be a positive int "
                                 f"(got {value!r})")
        self.alpha = float(alpha)
        self.eps = float(eps)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.head: Optional[torch.nn.Linear] = None
        if in_channels is not None:
            self.head = torch.nn.Linear(in_channels, out_channels)

    def reset_parameters(self) -> None:
        r"""Resets the head's parameters (if any)."""
        if self.head is not None:
            self.head.reset_parameters()

    def forward(self, student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
        r"""Computes the loss.

        Args:
            student_emb (torch.Tensor): The student's embeddings (the input),
                shape :obj:`[B, d_s]`.
            teacher_emb (torch.Tensor): The teacher's embeddings of the same
                nodes (the target), shape :obj:`[B, d]`.
        """
        name = self.__class__.__name__
        check_rows(name, 'student_emb', student_emb, (2, ), '[B, d_s]')
        check_rows(name, 'teacher_emb', teacher_emb, (2, ), '[B, d]')
        expected = (self.in_channels, self.out_channels)
        if self.head is None:
            expected = (teacher_emb.size(1), ) * 2
        if (student_emb.size(0) != teacher_emb.size(0)
                or student_emb.size(1) != expected[0]
                or teacher_emb.size(1) != expected[1]):
            head = ('' if self.head is None else
                    f' with a head {self.in_channels} -> '
                    f'{self.out_channels}')
            raise ValueError(f"{name}: 'student_emb' must be [B, "
                             f"{expected[0]}] and 'teacher_emb' [B, "
                             f"{expected[1]}]{head} (got "
                             f"{tuple(student_emb.shape)} and "
                             f"{tuple(teacher_emb.shape)})")

        if self.head is not None:
            student_emb = self.head(student_emb)
        # F.normalize clamps the norm, so zero rows give 0 (not 0/0) and
        # finite gradients; the clamp below absorbs cos = 1 + rounding.
        cos = (F.normalize(student_emb, dim=-1, eps=self.eps) *
               F.normalize(teacher_emb, dim=-1, eps=self.eps)).sum(-1)
        loss = (1 - cos).clamp(min=0).pow(self.alpha)
        return reduce_rows(loss, self.reduction)

    def __repr__(self) -> str:
        args = f'alpha={self.alpha}'
        if self.head is not None:
            args += (f', in_channels={self.in_channels}, '
                     f'out_channels={self.out_channels}')
        return format_repr(self.__class__.__name__, args, self.reduction)
