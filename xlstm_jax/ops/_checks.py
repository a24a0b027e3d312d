"""Input validation shared by every op: ranks, named dimensions, dtypes.

Every check raises a ``ValueError`` that names the offending argument and the
expected shape, so a caller never meets silent broadcasting or an XLA shape
error deep inside a kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np


def _shape_text(dims: Sequence[str], bound: dict[str, int]) -> str:
    parts = [f"{d}={bound[d]}" if d in bound else d for d in dims]
    return "(" + ", ".join(parts) + ")"


def check_float(name: str, x) -> None:
    """Reject anything that is not a floating-point array (ints, bools, complex)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        raise ValueError(f"{name} must be a floating-point array, got {type(x).__name__}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{name} must have a floating-point dtype, got {dtype}")


def check_shapes(specs: Sequence[tuple[str, object, Sequence[str]]]) -> dict[str, int]:
    """Check arrays against symbolic shapes and return the bound dimension sizes.

    Args:
      specs: ``(argument_name, array, dims)`` triples, e.g.
        ``("q", q, ("B", "NH", "S", "DHQK"))``. A dimension name used by several
        arrays must have the same size in all of them. Arrays that are ``None``
        are skipped.

    Returns:
      ``{dim_name: size}`` for every dimension seen.
    """
    bound: dict[str, int] = {}
    origin: dict[str, str] = {}
    for name, x, dims in specs:
        if x is None:
            continue
        check_float(name, x)
        shape = tuple(np.shape(x))
        if len(shape) != len(dims):
            raise ValueError(
                f"{name} must have rank {len(dims)} with shape {_shape_text(dims, bound)}, got shape {shape}"
            )
        for dim, size in zip(dims, shape):
            if dim in bound and bound[dim] != size:
                raise ValueError(
                    f"{name} must have shape {_shape_text(dims, bound)} "
                    f"({dim}={bound[dim]} from {origin[dim]}), got shape {shape}"
                )
            bound.setdefault(dim, size)
            origin.setdefault(dim, name)
    for dim, size in bound.items():
        if size == 0:
            raise ValueError(f"dimension {dim} of {origin[dim]} must be non-empty, got 0")
    return bound


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_eps(eps) -> float:
    if not isinstance(eps, (int, float, np.floating)) or not eps >= 0:
        raise ValueError(f"eps must be a non-negative float, got {eps!r}")
    return float(eps)


def compute_dtype(*arrays) -> jnp.dtype:
    """float64 if any input is float64 (x64 mode), else float32.

    Gates, stabilizers and states are always computed in at least float32, even
    for bfloat16 or float16 inputs.
    """
    dtypes = [a.dtype for a in arrays if a is not None]
    return jnp.result_type(jnp.float32, *dtypes)
