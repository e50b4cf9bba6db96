from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Dropout, Linear, Module

# Guards the row normalization of all-zero rows (items without content in a
# modality): F.normalize divides by max(norm, eps) and its gradient is 0 there.
NORM_EPS = 1e-12


class PromptedProjector(Module):
    r"""The prompt-conditioned feature reduction of `"PromptMM: Multi-Modal
    Knowledge Distillation for Recommendation with Prompt-Tuning"
    <https://arxiv.org/abs/2402.17188>`_: raw item features of one modality
    are smoothed through the item prompt space, then projected to the
    teacher's width.

    .. math::
        \mathbf{F}_m = \mathrm{Dropout}\left(\mathbf{W}_m \left(\mathbf{X}_m
        + \beta \cdot \mathrm{rownorm}\left(\mathbf{P}_i
        (\mathbf{P}_i^{\top} \mathbf{X}_m)\right)\right) + \mathbf{b}_m
        \right)

    :math:`\mathbf{P}_i (\mathbf{P}_i^{\top} \mathbf{X}_m)` is a rank-:math:`d`
    smoothing of the features, computed right to left (cost
    :math:`O(I \cdot d \cdot d_m)`): never an :math:`I \times I` matrix, and
    not even an :math:`I \times d_m` one (see :meth:`forward`).

    Args:
        in_channels (int): Feature width :math:`d_m`.
        out_channels (int): Output width :math:`d`.
        dropout (float): Dropout on the projected features.
            (default: :obj:`0.`)
        beta (float): Weight :math:`\beta` of the prompt term.
            (default: :obj:`0.1`)
        bias (bool): Whether :math:`\mathbf{W}_m` has a bias.
            (default: :obj:`True`)

    Shapes:
        - **input:** features :math:`(I, d_m)`, item prompts :math:`(I, d)`
        - **output:** :math:`(I, d)`
    """
    def __init__(self, in_channels: int, out_channels: int,
                 dropout: float = 0., beta: float = 0.1, bias: bool = True):
        super().__init__()
        if not 0. <= dropout < 1.:
            raise ValueError(f"'dropout' must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.beta = float(beta)
        self.lin = Linear(in_channels, out_channels, bias=bias)
        self.dropout = Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self):
        torch.nn.init.xavier_uniform_(self.lin.weight)
        if self.lin.bias is not None:
            torch.nn.init.zeros_(self.lin.bias)

    def prompt_features(self, x: Tensor, prompt: Tensor) -> Tensor:
        r"""Returns :math:`\mathrm{rownorm}(\mathbf{P}_i (\mathbf{P}_i^{\top}
        \mathbf{X}_m))` explicitly, shape :math:`(I, d_m)` (for inspection;
        :meth:`forward` never builds it)."""
        return F.normalize(prompt @ (prompt.t() @ x), dim=-1, eps=NORM_EPS)

    def forward(self, x: Optional[Tensor], prompt: Optional[Tensor],
                projected: Optional[Tensor] = None,
                moment: Optional[Tensor] = None) -> Tensor:
        r"""Args:
            x (torch.Tensor, optional): Item features :math:`(I, d_m)`
                (may be :obj:`None` when :obj:`projected` and :obj:`moment`
                are given).
            prompt (torch.Tensor, optional): Item prompts :math:`(I, d)`
                (:obj:`None` or :obj:`beta=0` skips the prompt term).
            projected (torch.Tensor, optional): :math:`\mathbf{W}_m
                \mathbf{X}_m + \mathbf{b}_m` when already known (a frozen
                projector in stage 2). (default: :obj:`None`)
            moment (torch.Tensor, optional): :math:`\mathbf{P}_i^{\top}
                \mathbf{X}_m` :math:`(d, d_m)` over all items when already
                known (:meth:`pmm_geo.nn.PromptLearner.item_moment`); then
                :obj:`x` and :obj:`prompt` may hold only some items' rows,
                and the output holds those rows. (default: :obj:`None`)

        The prompt term is computed without any :math:`I \times d_m`
        intermediate: row scaling commutes with :math:`\mathbf{W}_m`, so
        with :math:`\mathbf{M} = \mathbf{P}_i^{\top} \mathbf{X}_m`
        (:math:`d \times d_m`)

        .. math::
            \mathbf{W}_m \mathrm{rownorm}(\mathbf{P}_i \mathbf{M}) =
            \frac{\mathbf{P}_i (\mathbf{M} \mathbf{W}_m^{\top})}
            {\|\mathbf{P}_i \mathbf{M}\|_{\mathrm{row}}}, \qquad
            \|\mathbf{p} \mathbf{M}\|^2 = \mathbf{p} (\mathbf{M}
            \mathbf{M}^{\top}) \mathbf{p}^{\top}

        (the :math:`d \times d` Gram matrix and the quadratic forms in
        float64, so no cancellation). Two passes over :math:`\mathbf{X}_m`
        (one when :obj:`projected` is given) instead of three, and autograd
        keeps only :math:`(I, d)` tensors.
        """
        if x is not None and (x.dim() != 2 or x.size(-1) != self.in_channels):
            raise ValueError(f"Expected features of shape [num_items, "
                             f"{self.in_channels}], got {list(x.shape)}")
        if projected is None:
            if x is None:
                raise ValueError("'x' is needed when 'projected' is not given")
            projected = self.lin(x)
        if prompt is not None and self.beta != 0.:
            if prompt.size(0) != projected.size(0):
                raise ValueError(f"'prompt' has {prompt.size(0)} rows but "
                                 f"the features have {projected.size(0)}")
            if moment is None:
                if x is None:
                    raise ValueError("'x' is needed when 'moment' is not "
                                     "given")
                moment = prompt.t() @ x  # [d, d_m]
            projected = projected + self.beta * self.prompt_term(moment,
                                                                  prompt)
        return self.dropout(projected)

    def prompt_term(self, moment: Tensor, prompt: Tensor) -> Tensor:
        r"""The prompt term :math:`\mathbf{W}_m \mathrm{rownorm}(\mathbf{P}_i
        \mathbf{M})` of the rows :obj:`prompt` :math:`(R, d)` (any items'),
        from the moment :math:`\mathbf{M} = \mathbf{P}_i^{\top}
        \mathbf{X}_m` :math:`(d, d_m)` over all items (see
        :meth:`forward`); without :math:`\beta`, bias and dropout."""
        gram = moment.double() @ moment.double().t()  # [d, d]
        p64 = prompt.double()
        sq_norm = ((p64 @ gram) * p64).sum(dim=-1, keepdim=True)
        # clamp_min before sqrt: zero gradient (not NaN) at zero-norm rows,
        # the same guard as F.normalize(eps=NORM_EPS).
        norm = sq_norm.clamp_min(NORM_EPS**2).sqrt().to(prompt.dtype)
        return prompt @ (moment @ self.lin.weight.t()) / norm

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.out_channels}, dropout={self.dropout.p}, '
                f'beta={self.beta})')
