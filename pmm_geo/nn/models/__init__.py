r"""Recommendation models: the multimodal teacher, the LightGCN student and
the LATTICE and FREEDOM baselines."""
from .student import LightGCNStudent
from .lattice import LATTICE
from .freedom import FREEDOM
from .teacher import MultimodalTeacher
from .teacher_api import TeacherMixin, TeacherOutput, check_teacher
from .lattice_teacher import LATTICETeacher

__all__ = classes = [
    'LightGCNStudent',
    'LATTICE',
    'FREEDOM',
    'MultimodalTeacher',
    'LATTICETeacher',
    'TeacherOutput',
    'TeacherMixin',
    'check_teacher',
]
