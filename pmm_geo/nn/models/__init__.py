r"""Recommendation models: the multimodal teacher, the LightGCN student and
the LATTICE baseline."""
from .student import LightGCNStudent

__all__ = classes = [
    'LightGCNStudent',
]
