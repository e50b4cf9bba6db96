r"""Argument checks shared by the modules of :mod:`pmm_geo.nn`."""


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
