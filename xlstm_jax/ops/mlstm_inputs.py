"""Validation and dtype handling shared by the mLSTM forms and kernels.

``prepare`` checks q, k, v, the gates and a state against the shapes of the contract and casts
them to the compute dtype; ``check_eps`` and ``check_positive_int`` check the scalar arguments.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import check_eps, check_positive_int, check_shapes, compute_dtype, match_varying
from ._states import MLSTMState

SEQ_DIMS = {
    "q": ("B", "NH", "S", "DHQK"),
    "k": ("B", "NH", "S", "DHQK"),
    "v": ("B", "NH", "S", "DHV"),
    "i": ("B", "NH", "S"),
    "f": ("B", "NH", "S"),
}
STEP_DIMS = {
    "q": ("B", "NH", "DHQK"),
    "k": ("B", "NH", "DHQK"),
    "v": ("B", "NH", "DHV"),
    "i": ("B", "NH"),
    "f": ("B", "NH"),
}
STATE_DIMS = {
    "c": ("B", "NH", "DHQK", "DHV"),
    "n": ("B", "NH", "DHQK"),
    "m": ("B", "NH"),
}


class MLSTMInputs(NamedTuple):
    """Validated inputs, cast to the compute dtype (float32, or float64 in x64 mode)."""

    q: jax.Array
    k: jax.Array
    v: jax.Array
    i: jax.Array
    f: jax.Array
    state: MLSTMState
    out_dtype: jnp.dtype  # dtype of h: the common dtype of q, k and v


def prepare(q, k, v, i, f, state, *, sequence: bool, state_name: str) -> MLSTMInputs:
    """Check shapes and dtypes, build a zero state if ``state`` is None, upcast.

    Args:
      sequence: True for (B, NH, S, ...) inputs, False for one step (B, NH, ...).
      state_name: the argument name used in error messages ("initial_state" or "state").
    """
    dims = SEQ_DIMS if sequence else STEP_DIMS
    arrays = {"q": q, "k": k, "v": v, "i": i, "f": f}
    specs = [(name, arrays[name], dims[name]) for name in dims]
    if state is not None:
        if not isinstance(state, tuple) or len(state) != 3:
            raise ValueError(
                f"{state_name} must be an MLSTMState(c, n, m) or a (c, n, m) tuple, got {type(state).__name__}"
            )
        state = MLSTMState(*state)
        specs += [(f"{state_name}.{name}", getattr(state, name), STATE_DIMS[name]) for name in STATE_DIMS]
    bound = check_shapes(specs)
    dtype = compute_dtype(q, k, v, i, f, *(state or ()))
    if state is None:
        state = MLSTMState.zeros(bound["B"], bound["NH"], bound["DHQK"], bound["DHV"], dtype)
    out_dtype = jnp.result_type(q, k, v)
    cast = lambda x: jnp.asarray(x, dtype)
    q, k, v, i, f, state = match_varying((cast(q), cast(k), cast(v), cast(i), cast(f), MLSTMState(*map(cast, state))))
    return MLSTMInputs(q=q, k=k, v=v, i=i, f=f, state=state, out_dtype=out_dtype)


def normalizer_floor(m: jax.Array) -> jax.Array:
    """``exp(-m)``, the normalizer's floor (the constant 1 before stabilization).

    Where the stabilizer m is very negative (gates of -1e4: nothing was written
    that survives), ``exp(-m)`` overflows to inf and h = num / inf = 0, which is
    right; but the gradient then multiplies the zero cotangent of the floor by its
    infinite derivative, 0 * inf = NaN. Capping the exponent just below overflow
    keeps the floor finite (h is then num / 1e38 or num / 1e307: zero to the
    precision of any output) and its gradient finite (zero through the cap).
    """
    cap = float(np.log(np.finfo(m.dtype).max)) - 1.0
    return jnp.exp(jnp.minimum(-m, cap))


class NonFinite(NamedTuple):
    """Where a NaN or inf in k or v has reached, per component: from its first bad step on.

    Kept as the first bad step per component (S where there is none), not as (B, NH, S, D)
    masks: the masks are compared against the step index inside the one pass that puts NaN
    back, so no sequence-length array is materialized for the guard.
    """

    k: jax.Array  # (B, NH, 1, DHQK) int32: first step with a non-finite key component, or S
    v: jax.Array  # (B, NH, 1, DHV) int32: the same for value components
    length: int  # S
    any: jax.Array  # () bool: some entry of k or v is non-finite

    def h(self, h: jax.Array) -> jax.Array:
        """h (B, NH, S, DHV) with NaN where the recurrent form has it: every component
        after a bad key (it enters the normalizer), component e after a bad value[e].
        Finite k and v (the common case) skip the pass over h."""

        def put_nan(h):
            first = jnp.minimum(jnp.min(self.k, axis=-1, keepdims=True), self.v)  # (B, NH, 1, DHV)
            step = jnp.arange(h.shape[2], dtype=jnp.int32)[:, None]  # (S, 1)
            return _nan_where(step >= first, h)

        return jax.lax.cond(self.any, put_nan, lambda h: h, h)

    def state(self, c: jax.Array, n: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Final c (B, NH, DHQK, DHV) and n (B, NH, DHQK): NaN in the rows of bad key
        components and the columns of bad value components."""
        k, v = self.k[..., 0, :] < self.length, self.v[..., 0, :] < self.length
        return _nan_where(k[..., :, None] | v[..., None, :], c), _nan_where(k, n)


def isolate_nonfinite(k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array, NonFinite]:
    """Keep a non-finite key or value from reaching earlier outputs in the masked forms.

    In the recurrent form a NaN or inf in k or v at step s reaches the memory, and the
    outputs from s on, and nothing before s. The parallel and chunkwise forms multiply
    masked (future) entries by zero inside matrix products, and 0 * NaN = NaN would
    reach outputs before s. So those forms zero the non-finite entries and put NaN
    back where the recurrent form has it (``NonFinite``): the same causality for the
    cost of one elementwise pass over k and v; the search for the first bad step and the
    pass over h run only when some entry is non-finite (``lax.cond``).

    Args:
      k: (B, NH, S, DHQK); v: (B, NH, S, DHV).

    Returns:
      ``(k, v, reached)`` with the non-finite entries of k and v zeroed.
    """
    bad_k, bad_v = ~jnp.isfinite(k), ~jnp.isfinite(v)
    zero = lambda x, bad: jnp.where(bad, jnp.zeros((), x.dtype), x)
    any_bad = jnp.any(bad_k) | jnp.any(bad_v)
    s = k.shape[2]
    none = lambda bad: match_varying((jnp.full((*bad.shape[:2], 1, bad.shape[3]), s, jnp.int32), bad))[0]
    first = jax.lax.cond(any_bad, lambda: (_first(bad_k), _first(bad_v)), lambda: (none(bad_k), none(bad_v)))
    return zero(k, bad_k), zero(v, bad_v), NonFinite(*first, s, any_bad)


def _first(bad: jax.Array) -> jax.Array:
    """(B, NH, 1, D) int32: the first step with a non-finite entry, per component; S if none.

    A reduction over S, O(S) per component. (XLA's CPU backend lowers ``lax.cummax`` to a
    reduce-window of the whole length, O(S^2), which took 5% of a training step at S=256.)
    """
    s = bad.shape[2]
    step = jnp.arange(s, dtype=jnp.int32)[:, None]  # (S, 1)
    return jnp.min(jnp.where(bad, step, s), axis=2, keepdims=True)


def _nan_where(mask, x):
    return jnp.where(mask, jnp.asarray(jnp.nan, x.dtype), x)


__all__ = [
    "MLSTMInputs",
    "NonFinite",
    "check_eps",
    "check_positive_int",
    "isolate_nonfinite",
    "normalizer_floor",
    "prepare",
]
