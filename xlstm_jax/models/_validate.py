"""Field checks shared by the model configs: each raises a ValueError that names the field."""

from __future__ import annotations

import jax.numpy as jnp

DTYPES = ("float32", "bfloat16", "float16", "float64")


def check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be True or False")


def check_positive(name: str, value, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        accepted = "a positive number or None" if allow_none else "a positive number"
        raise ValueError(f"{name}={value!r} must be {accepted}")


def check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {choices}")


def dtype_name(name: str, value) -> str:
    """The canonical name of a dtype given as a string or dtype (None is rejected, not float64)."""
    try:
        dtype = None if value is None else jnp.dtype(value).name
    except TypeError:
        dtype = None
    if dtype not in DTYPES:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {DTYPES}")
    return dtype
