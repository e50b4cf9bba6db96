r"""Models, propagation layers and distillation losses."""
from .conv import BipartiteConv
from .models import LightGCNStudent
from .models import LATTICE
from .losses import (BPRLoss, EmbeddingKDLoss, ListwiseKDLoss,
                     PairwiseKDLoss)

__all__ = [
    'BipartiteConv',
    'LightGCNStudent',
    'LATTICE',
    'BPRLoss',
    'PairwiseKDLoss',
    'ListwiseKDLoss',
    'EmbeddingKDLoss',
]
