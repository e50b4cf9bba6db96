r"""Distillation and ranking losses (each a reusable module)."""
from .bpr import BPRLoss
from .pairwise_kd import PairwiseKDLoss
from .listwise_kd import ListwiseKDLoss
from .embedding_kd import EmbeddingKDLoss

__all__ = [
    'BPRLoss',
    'PairwiseKDLoss',
    'ListwiseKDLoss',
    'EmbeddingKDLoss',
]
