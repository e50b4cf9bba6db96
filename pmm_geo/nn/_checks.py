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
