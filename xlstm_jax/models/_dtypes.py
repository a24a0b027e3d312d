"""The dtypes a model config accepts for computation and parameters."""

from __future__ import annotations

import jax.numpy as jnp

from xlstm_jax._validation import check_choice

DTYPES = ("float32", "bfloat16", "float16", "float64")


def dtype_name(field: str, value) -> str:
    """The canonical name of a dtype given as a string or dtype; the error names ``field``."""
    try:
        name = None if value is None else jnp.dtype(value).name
    except TypeError:
        name = None
    check_choice(field, name if name in DTYPES else value, DTYPES)
    return name
