r"""Recommendation models: the multimodal teacher, the LightGCN student and
the LATTICE baseline."""
from .student import LightGCNStudent
from .lattice import LATTICE
from .teacher import MultimodalTeacher, TeacherOutput

__all__ = classes = [
    'LightGCNStudent',
    'LATTICE',
    'MultimodalTeacher',
    'TeacherOutput',
]
