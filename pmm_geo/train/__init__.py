r"""Training: the two-stage PromptMM engine (and the LightGCN / LATTICE
baselines), its configuration, checkpoints and progress reporting."""
from .checkpoint import (
    CheckpointError,
    data_fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from .config import MODELS, ConfigError, TrainConfig
from .engine import SELECT_METRIC, Trainer, TrainingInterrupted
from .progress import ProgressLogger, plot_curves
from .run import SERVED, Recommender, RunDir, load_recommender
from .threads import (
    ThreadWarning,
    available_cores,
    default_threads,
    set_threads,
)

__all__ = [
    'TrainConfig',
    'ConfigError',
    'MODELS',
    'Trainer',
    'TrainingInterrupted',
    'SELECT_METRIC',
    'CheckpointError',
    'save_checkpoint',
    'load_checkpoint',
    'data_fingerprint',
    'ProgressLogger',
    'plot_curves',
    'RunDir',
    'Recommender',
    'load_recommender',
    'SERVED',
    'set_threads',
    'default_threads',
    'available_cores',
    'ThreadWarning',
]
