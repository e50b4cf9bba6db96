r"""Training: the two-stage PromptMM engine (and the LightGCN / LATTICE
baselines), its configuration, checkpoints and progress reporting."""
from .checkpoint import (
    CheckpointError,
    data_fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from .config import ConfigError, TrainConfig
from .engine import (
    SELECT_METRIC,
    EarlyStopping,
    Trainer,
    TrainingInterrupted,
    train_step,
)
from .kd_schedule import KDSchedule
from .progress import ProgressLogger, plot_curves
from .registry import (
    MODELS,
    ModelSpec,
    get_model,
    model_names,
    register_model,
)
from .run import (
    Recommender,
    RunDir,
    load_graph,
    load_model,
    load_recommender,
)
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
    'ModelSpec',
    'get_model',
    'model_names',
    'register_model',
    'Trainer',
    'TrainingInterrupted',
    'KDSchedule',
    'SELECT_METRIC',
    'EarlyStopping',
    'train_step',
    'CheckpointError',
    'save_checkpoint',
    'load_checkpoint',
    'data_fingerprint',
    'ProgressLogger',
    'plot_curves',
    'RunDir',
    'Recommender',
    'load_recommender',
    'load_model',
    'load_graph',
    'set_threads',
    'default_threads',
    'available_cores',
    'ThreadWarning',
]
