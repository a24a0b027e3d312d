"""Input validation shared by every op: ranks, named dimensions, dtypes.

Every check raises a ``ValueError`` that names the offending argument and the
expected shape, so a caller never meets silent broadcasting or an XLA shape
error deep inside a kernel. Scalar arguments go through ``xlstm_jax._validation``
(the project's one message format: "{field} must be {accepted}, got {value!r}").
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xlstm_jax._validation import check_int, check_number


def _shape_text(dims: Sequence[str | int], bound: dict[str, int]) -> str:
    parts = [str(d) if isinstance(d, int) else f"{d}={bound[d]}" if d in bound else d for d in dims]
    return "(" + ", ".join(parts) + ")"


def check_float(name: str, x) -> None:
    """Reject anything that is not a floating-point array (ints, bools, complex)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        raise ValueError(f"{name} must be a floating-point array, got {type(x).__name__}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{name} must have a floating-point dtype, got {dtype}")


def check_shapes(specs: Sequence[tuple[str, object, Sequence[str | int]]]) -> dict[str, int]:
    """Check arrays against symbolic shapes and return the bound dimension sizes.

    Args:
      specs: ``(argument_name, array, dims)`` triples, e.g.
        ``("q", q, ("B", "NH", "S", "DHQK"))``. A dimension name used by several
        arrays must have the same size in all of them; an int is a fixed size.
        Arrays that are ``None`` are skipped.

    Returns:
      ``{dim_name: size}`` for every named dimension.
    """
    specs = [(name, x, tuple(dims)) for name, x, dims in specs if x is not None]
    for name, x, _ in specs:
        check_float(name, x)
    # Bind every name from the first array of the right rank, so that the message
    # for a bad array can state the full expected shape.
    bound: dict[str, int] = {}
    origin: dict[str, str] = {}
    for name, x, dims in specs:
        if len(np.shape(x)) == len(dims):
            for dim, size in zip(dims, np.shape(x)):
                if isinstance(dim, str) and dim not in bound:
                    bound[dim], origin[dim] = size, name
    for name, x, dims in specs:
        shape = tuple(np.shape(x))
        if len(shape) != len(dims):
            raise ValueError(
                f"{name} must have rank {len(dims)} with shape {_shape_text(dims, bound)}, got shape {shape}"
            )
        for dim, size in zip(dims, shape):
            expected = dim if isinstance(dim, int) else bound[dim]
            if size != expected:
                source = (
                    "" if isinstance(dim, int) or origin[dim] == name else f" ({dim}={expected} from {origin[dim]})"
                )
                raise ValueError(f"{name} must have shape {_shape_text(dims, bound)}{source}, got shape {shape}")
    for dim, size in bound.items():
        if size == 0:
            raise ValueError(f"dimension {dim} of {origin[dim]} must be non-empty, got 0")
    return bound


def check_positive_int(name: str, value) -> int:
    """``value`` as an ``int`` >= 1 (NumPy integers accepted, bools not)."""
    value = int(value) if isinstance(value, np.integer) else value
    check_int(name, value, low=1)
    return value


def check_eps(eps) -> float:
    """``eps`` as a finite ``float`` >= 0 (NumPy floats accepted)."""
    eps = float(eps) if isinstance(eps, np.floating) else eps
    check_number("eps", eps, low=0.0)
    return float(eps)


def compute_dtype(*arrays) -> jnp.dtype:
    """float64 if any input is float64 (x64 mode), else float32.

    Gates, stabilizers and states are always computed in at least float32, even
    for bfloat16 or float16 inputs.
    """
    dtypes = [a.dtype for a in arrays if a is not None]
    return jnp.result_type(jnp.float32, *dtypes)


def _varying_axes(x) -> frozenset[str]:
    """The ``shard_map`` mesh axes over which ``x`` is typed as varying (empty outside ``shard_map``)."""
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)  # jax 0.10.2; other releases may name it ``aval.vma``
    return frozenset(manual.varying if manual is not None else getattr(aval, "vma", ()))


def to_varying(x, axes):
    """``x`` typed as varying over the mesh ``axes`` inside ``shard_map`` (a no-op on values; autodiff
    sums the cotangent of an invariant ``x`` over ``axes``)."""
    missing = tuple(sorted(frozenset((axes,) if isinstance(axes, str) else axes) - _varying_axes(x)))
    if not missing:
        return x
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(x, missing, to="varying")
    return jax.lax.pvary(x, missing)


def match_varying(tree):
    """Every array of ``tree`` typed as varying over the union of the arrays' varying mesh axes.

    Inside ``jax.shard_map(..., check_vma=True)`` a ``lax.scan`` needs its carry to keep one type and a
    ``jax.custom_vjp`` backward must return cotangents of its inputs' types; a zero initial state or a
    replicated weight is invariant while the data are varying over the batch (or sequence) axes. The ops
    call this once on their prepared inputs, so all of their internals see one type. Outside
    ``shard_map`` it returns ``tree`` unchanged.
    """
    leaves = jax.tree.leaves(tree)
    axes = frozenset().union(*(_varying_axes(x) for x in leaves))
    return jax.tree.map(lambda x: to_varying(x, axes), tree) if axes else tree
