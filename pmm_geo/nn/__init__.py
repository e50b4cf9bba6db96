r"""Models, propagation layers and distillation losses."""
from .conv import BipartiteConv, FrozenItemGraph
from .prompt import PromptLearner
from .projector import PromptedProjector
from .models import LightGCNStudent, MultimodalTeacher
from .models import FREEDOM, LATTICE, LATTICETeacher
from .losses import (BPRLoss, EmbeddingKDLoss, ListwiseKDLoss,
                     PairwiseKDLoss)
from .objective import ObjectiveOutput, PromptMMObjective

__all__ = [
    'BipartiteConv',
    'FrozenItemGraph',
    'LightGCNStudent',
    'LATTICE',
    'FREEDOM',
    'PromptLearner',
    'PromptedProjector',
    'MultimodalTeacher',
    'LATTICETeacher',
    'BPRLoss',
    'PairwiseKDLoss',
    'ListwiseKDLoss',
    'EmbeddingKDLoss',
    'PromptMMObjective',
    'ObjectiveOutput',
]
