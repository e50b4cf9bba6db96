r"""Models, propagation layers and distillation losses."""
from .conv import BipartiteConv

__all__ = [
    'BipartiteConv',
]
