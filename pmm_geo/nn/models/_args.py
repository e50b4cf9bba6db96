r"""Recording a model's constructor arguments, so a checkpoint can rebuild
it (:func:`pmm_geo.load_model`)."""
import inspect
from typing import Any, Dict

from torch.nn import Module


def init_args(module: Module, **given: Any) -> Dict[str, Any]:
    r"""The keyword arguments that rebuild :obj:`module`: every parameter of
    its class's constructor, from :obj:`given` or else from the attribute
    of the same name (the PyG convention, e.g. :obj:`self.num_layers`)."""
    params = inspect.signature(type(module).__init__).parameters
    out = {}
    for name, param in list(params.items())[1:]:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name in given:
            out[name] = given[name]
        elif hasattr(module, name):
            out[name] = getattr(module, name)
        else:
            raise AttributeError(f'{type(module).__name__} keeps no '
                                 f"attribute '{name}' to record its "
                                 f'constructor argument')
    return out
