r"""Recommendation models: the multimodal teacher, the LightGCN student and
the LATTICE baseline."""
from .student import LightGCNStudent
from .lattice import LATTICE

__all__ = classes = [
    'LightGCNStudent',
    'LATTICE',
]
