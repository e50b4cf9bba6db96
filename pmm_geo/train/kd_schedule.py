r"""The weight of the distillation terms over a stage-2 run, driven by the
student's validation score."""
import torch
from torch.nn import Module

SCHEDULES = ('plateau', 'constant')


class KDSchedule(Module):
    r"""Scales the distillation terms of the student's objective by a factor
    :math:`s_t` that the **validation** scores measured inside the run
    drive:

    .. math::
        \mathcal{L}_t = \mathcal{L}_{BPR} + s_t \left(\lambda_{pair}
        \mathcal{L}_{pair} + \lambda_{list} \sum_m \mathcal{L}_{list}^m
        + \lambda_{emb} \sum_m \mathcal{L}_{emb}^m\right), \qquad
        s_{t+1} = \begin{cases}
        0 & \text{no new best } R^S \text{ in } p \text{ evaluations} \\
        \rho\, s_t & R^S_t \geq (1 + m) R^T \\
        s_t & \text{otherwise}
        \end{cases}

    from :math:`s_0 = 1`, where :math:`R^S_t` is the student's validation
    Recall@20 at evaluation :math:`t`, :math:`R^T` the teacher's,
    :math:`m \geq 0` a margin (the stage's :obj:`kd_fade_margin`), and
    :math:`s = 0` for good once it falls below :obj:`min_scale`.

    The teacher's targets are a regularizer whose right weight depends on
    the data: on sparse data they lift the student for hundreds of epochs;
    on dense data (many interactions per user) they hold it on a plateau
    where BPR alone would keep improving; a teacher whose targets are noise
    only pulls it down, while a teacher a few percent below the student
    still carries ranking information the student lacks. So the
    distillation fades while the student beats the teacher by more than
    the margin (a noise teacher: from the first evaluations), and is
    switched off when the student stops improving under it: where early
    stopping would have ended the stage (:obj:`p` is the engine's
    patience), the student continues on BPR alone from what the teacher
    taught it, until its validation score stalls again. Until
    either happens the run is the paper's (fixed weights); while the
    student stays below that bar, the run only goes on longer than the
    paper's, so the selected student is at least as good on validation.
    :meth:`step` returns :obj:`True` on each change, and the engine
    restarts its early-stopping count and the optimizer's state (Adam's
    second moments of the old objective would otherwise shrink the new
    one's steps for about :math:`1/(1-\beta_2)` steps).

    With :obj:`mode="constant"` the scale stays 1 (the paper's fixed
    weights).

    The state (:obj:`scale`, the evaluations since the last improvement) is
    kept in buffers, so it is checkpointed and resumed with the stage's
    modules.

    Args:
        mode (str): :obj:`"plateau"` or :obj:`"constant"`.
            (default: :obj:`"plateau"`)
        patience (int): Evaluations :math:`p` without a new best validation
            score after which the distillation is switched off (the
            engine's early-stopping patience). (default: :obj:`100`)
        factor (float): The decay :math:`\rho \in (0, 1)` at each
            evaluation where the student scores at least the teacher.
            (default: :obj:`0.5`)
        min_scale (float): Below this the scale becomes 0 (BPR alone).
            (default: :obj:`0.1`)
    """
    def __init__(self, mode: str = 'plateau', patience: int = 100,
                 factor: float = 0.5, min_scale: float = 0.1):
        super().__init__()
        if mode not in SCHEDULES:
            raise ValueError(f"KDSchedule: 'mode' must be one of "
                             f"{SCHEDULES}, got {mode!r}")
        if int(patience) < 1:
            raise ValueError(f"KDSchedule: 'patience' must be >= 1, got "
                             f'{patience}')
        if not 0 < factor < 1:
            raise ValueError(f"KDSchedule: 'factor' must be in (0, 1), got "
                             f'{factor}')
        if not 0 <= min_scale < 1:
            raise ValueError(f"KDSchedule: 'min_scale' must be in [0, 1), "
                             f'got {min_scale}')
        self.mode, self.patience = mode, int(patience)
        self.factor, self.min_scale = float(factor), float(min_scale)
        self.register_buffer('_scale', torch.ones(()))
        self.register_buffer('_stale', torch.zeros((), dtype=torch.long))
        self.reset_parameters()

    def reset_parameters(self):
        self._scale.fill_(1.)
        self._stale.zero_()

    @property
    def scale(self) -> float:
        r"""The current factor :math:`s_t` of the distillation terms."""
        return float(self._scale)

    def step(self, improved: bool, caught_up: bool = False) -> bool:
        r"""Records one validation pass and returns :obj:`True` when the
        scale changed (the engine then restarts its early-stopping count).

        Args:
            improved (bool): The student reached a new best score.
            caught_up (bool): The student beats the teacher by at least
                the margin. (default: :obj:`False`)
        """
        if self.mode == 'constant' or self.scale == 0.:
            return False
        self._stale.fill_(0 if improved else int(self._stale) + 1)
        if int(self._stale) >= self.patience:
            scale = 0.
        elif caught_up:
            scale = self.scale * self.factor
        else:
            return False
        self._scale.fill_(scale if scale >= self.min_scale else 0.)
        self._stale.zero_()
        return True

    def extra_repr(self) -> str:
        if self.mode == 'constant':
            return "mode='constant'"
        return (f"mode='plateau', patience={self.patience}, "
                f'factor={self.factor}, min_scale={self.min_scale}, '
                f'scale={self.scale:g}')


__all__ = ['KDSchedule', 'SCHEDULES']
