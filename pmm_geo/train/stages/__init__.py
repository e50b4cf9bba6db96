r"""The training stages the engine runs, one file per model: the multimodal
teacher (PromptMM stage 1), the distilled student (PromptMM stage 2), and
the :obj:`lightgcn` and :obj:`lattice` baselines. Each stage builds its
modules, its optimizer, a loss per batch and the embeddings it is evaluated
on, and exports its model; the epoch loop, model selection and checkpoints
live in :class:`pmm_geo.train.Trainer`, the list of models in
:mod:`pmm_geo.train.registry`."""
from .base import (Batch, BPRStage, EpochPruning, ModelSpec, Optimizers,
                   Stage, StageContext, adam, count_parameters, input_tables)
from .freedom import FreedomStage
from .lattice import LatticeStage
from .lightgcn import LightGCNStage, build_student
from .promptmm import (DistillStage, TeacherStage, build_objective,
                       build_teacher, select_output)

__all__ = ['Stage', 'BPRStage', 'Batch', 'EpochPruning', 'Optimizers',
           'StageContext', 'ModelSpec', 'TeacherStage', 'DistillStage',
           'LightGCNStage', 'LatticeStage', 'FreedomStage', 'count_parameters',
           'adam', 'input_tables', 'build_teacher', 'build_student',
           'build_objective', 'select_output']
