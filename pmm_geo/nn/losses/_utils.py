r"""Helpers shared by the losses: argument checks and the batch reduction."""
from typing import Tuple

from torch import Tensor

from pmm_geo.nn._checks import check_non_negative, check_positive  # noqa: F401

REDUCTIONS: Tuple[str, ...] = ('mean', 'sum', 'none')


def check_reduction(owner: str, reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{owner}: 'reduction' must be one of {REDUCTIONS} "
                         f"(got {reduction!r})")
    return reduction


def check_same_shape(owner: str, name_a: str, a: Tensor, name_b: str,
                     b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{owner}: '{name_a}' and '{name_b}' must have the "
                         f"same shape (got {tuple(a.shape)} and "
                         f"{tuple(b.shape)})")


def check_rows(owner: str, name: str, x: Tensor, dims: Tuple[int, ...],
               what: str) -> None:
    if x.dim() not in dims:
        raise ValueError(f"{owner}: '{name}' must be {what} "
                         f"(got shape {tuple(x.shape)})")


def reduce_rows(loss: Tensor, reduction: str) -> Tensor:
    r"""Reduces a per-row loss of shape :obj:`[B]` over the batch."""
    if reduction == 'mean':
        return loss.mean()
    if reduction == 'sum':
        return loss.sum()
    return loss


def format_repr(name: str, args: str, reduction: str) -> str:
    # Only a non-default reduction is shown, to keep the common repr short.
    if reduction != 'mean':
        args = f'{args}, reduction={reduction!r}'
    return f'{name}({args})'
