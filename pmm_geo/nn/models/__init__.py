r"""Recommendation models: the multimodal teacher, the LightGCN student and
the LATTICE and FREEDOM baselines."""
from .student import LightGCNStudent
from .lattice import LATTICE
from .freedom import FREEDOM
from .teacher import MultimodalTeacher, TeacherOutput

__all__ = classes = [
    'LightGCNStudent',
    'LATTICE',
    'FREEDOM',
    'MultimodalTeacher',
    'TeacherOutput',
]
