r"""Argument checks shared by the modules of :mod:`pmm_geo.nn`."""
from typing import Dict, Mapping, Optional, Union

from torch import Tensor


def check_positive(owner: str, name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{owner}: '{name}' must be positive (got {value})")
    return float(value)


def check_non_negative(owner: str, name: str, value: float) -> float:
    if not value >= 0:
        raise ValueError(f"{owner}: '{name}' must be non-negative "
                         f"(got {value})")
    return float(value)


def check_int(name: str, value, low: int) -> int:
    r"""Refuses anything but an integer :math:`\ge` :obj:`low` (a bool
    included), naming the argument."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"'{name}' must be an integer >= {low}, got "
                         f"{value!r}")
    return value


def check_recommender(owner: str, num_users: int, num_items: int,
                      embedding_dim: int, num_layers: int,
                      layout: str) -> None:
    r"""The arguments every user-item graph model shares: positive sizes, a
    non-negative depth and a known adjacency layout."""
    from pmm_geo.data.adjacency import LAYOUTS
    for name, value in (('num_users', num_users), ('num_items', num_items),
                        ('embedding_dim', embedding_dim)):
        check_positive(owner, name, value)
    if int(num_layers) < 0:
        raise ValueError(f"{owner}: 'num_layers' must be non-negative "
                         f"(got {num_layers})")
    if layout not in LAYOUTS:
        raise ValueError(f"{owner}: Unknown 'layout' {layout!r} (expected "
                         f"one of {LAYOUTS})")


def check_item_graph_model(num_users: int, num_items: int,
                           embedding_dim: int, num_layers: int, knn_k: int,
                           item_graph_layers: int, knn_block_size: int,
                           min_item_graph_layers: int = 0) -> None:
    r"""The integer arguments of the models that propagate over kNN
    item-item graphs (LATTICE, FREEDOM)."""
    for name, value, low in (('num_users', num_users, 1),
                             ('num_items', num_items, 1),
                             ('embedding_dim', embedding_dim, 1),
                             ('num_layers', num_layers, 0),
                             ('knn_k', knn_k, 1),
                             ('item_graph_layers', item_graph_layers,
                              min_item_graph_layers),
                             ('knn_block_size', knn_block_size, 1)):
        check_int(name, value, low)


def check_feature(modality: str, x: Tensor, num_items: int,
                  dim: Optional[int] = None) -> None:
    r"""Refuses an item feature table that is not a floating-point
    :obj:`[num_items, dim]` tensor, naming the modality."""
    if not isinstance(x, Tensor) or x.dim() != 2:
        shape = list(x.shape) if isinstance(x, Tensor) else type(x)
        raise ValueError(f"features['{modality}'] must be a 2-D tensor "
                         f"[num_items, dim], got {shape}")
    if x.size(0) != num_items:
        raise ValueError(f"features['{modality}'] has {x.size(0)} rows, "
                         f"expected num_items={num_items}")
    if not x.is_floating_point():
        raise ValueError(f"features['{modality}'] must be floating "
                         f"point, got {x.dtype}")
    if dim is not None and x.size(1) != dim:
        raise ValueError(f"features['{modality}'] has width {x.size(1)}, "
                         f"expected {dim} as at construction")


def feature_widths(features: Mapping[str, Union[Tensor, int]],
                   num_items: int) -> Dict[str, int]:
    r"""The width of each modality of :obj:`features`, given as feature
    tables (checked) or as widths (what a saved model is rebuilt from)."""
    if not isinstance(features, Mapping) or not features:
        raise ValueError("'features' must be a non-empty dict "
                         "{modality: [num_items, dim] tensor}")
    widths = {}
    for m, x in features.items():
        if isinstance(x, int) and not isinstance(x, bool) and x > 0:
            widths[m] = x
            continue
        check_feature(m, x, num_items)
        widths[m] = x.size(1)
    return widths
