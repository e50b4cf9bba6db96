r"""The models the engine trains, in one place.

Each model declares a :class:`~pmm_geo.train.stages.ModelSpec`: its name
(:obj:`TrainConfig.model`, :obj:`pmm-geo train --model`), whether it needs
item features, and its stages (each builds its modules from the
:class:`~pmm_geo.train.TrainConfig` and exports :obj:`<stage>.pt` with the
model's class, constructor arguments and weights, which
:func:`pmm_geo.load_model` reads back). Config validation, the command
line and the benchmarks read the model names from here.

Adding a model: its :mod:`pmm_geo.nn` class (exported from
:mod:`pmm_geo.nn`, with an :meth:`init_args` method), a stage module beside
the others in :mod:`pmm_geo.train.stages` that defines :obj:`SPEC`, and
that module in :obj:`_BUILTIN` below (or :func:`register_model` from
outside the package).
"""
from typing import Dict, Tuple, Type

from .stages import Stage, freedom, lattice, lightgcn, promptmm
from .stages.base import ModelSpec

#: The built-in models, in the order the command line lists them.
_BUILTIN = (promptmm, lightgcn, lattice, freedom)

#: Every registered model by name.
MODELS: Dict[str, ModelSpec] = {module.SPEC.name: module.SPEC
                                for module in _BUILTIN}


def register_model(spec: ModelSpec) -> ModelSpec:
    r"""Adds a model to the registry (its name must be new)."""
    if spec.name in MODELS:
        raise ValueError(f"a model named '{spec.name}' is already "
                         f'registered')
    MODELS[spec.name] = spec
    return spec


def model_names() -> Tuple[str, ...]:
    r"""The names of the registered models."""
    return tuple(MODELS)


def get_model(name: str) -> ModelSpec:
    r"""The :class:`ModelSpec` of model :obj:`name`."""
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}' (expected one of "
                         f'{model_names()})')
    return MODELS[name]


def output_names() -> Tuple[str, ...]:
    r"""Every model a run can write (:obj:`<name>.pt`, a key of
    :obj:`metrics.json`), e.g. :obj:`('teacher', 'student', 'lightgcn',
    'lattice')`."""
    return tuple(dict.fromkeys(name for spec in MODELS.values()
                               for name in spec.outputs))


def stage_class(output: str) -> Type[Stage]:
    r"""The stage that trains and exports :obj:`output`."""
    for spec in MODELS.values():
        stage = spec.stage(output)
        if stage is not None:
            return stage
    raise ValueError(f"no registered model writes '{output}' (expected one "
                     f'of {output_names()})')


__all__ = ['MODELS', 'ModelSpec', 'register_model', 'model_names',
           'get_model', 'output_names', 'stage_class']
