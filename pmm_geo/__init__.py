r"""pmm_geo: multimodal recommendation by prompt-tuned knowledge distillation
(PromptMM, WWW 2024) for PyTorch Geometric."""
__version__ = '0.1.0'

from .evaluation import evaluate
from .train.run import load_graph, load_model

__all__ = [
    'evaluate',
    'load_model',
    'load_graph',
]
