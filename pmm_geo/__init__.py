r"""pmm_geo: multimodal recommendation by prompt-tuned knowledge distillation
(PromptMM, WWW 2024) for PyTorch Geometric."""
__version__ = '0.1.0'

from .evaluation import evaluate

__all__ = [
    'evaluate',
]
