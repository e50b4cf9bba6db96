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
