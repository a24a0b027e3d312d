"""Gate pre-activations of +-1e4: every mLSTM form's output and gradients are finite and agree.

Before the fix, ``exp(-m)`` (the normalizer's floor) overflowed where the stabilizer m
reached -1e4, and its infinite derivative met a zero cotangent (0 * inf = NaN) in the
gradients of the parallel and recurrent forms wrt i and f, in float64 too.

Truth is the recurrent form (the step definition) in float64, itself checked against a
central finite difference of its loss. The seven gate patterns are stacked along the
batch axis, so each form and dtype compiles once.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_close
from xlstm_jax.ops import mlstm_chunkwise, mlstm_parallel, mlstm_recurrent

NH, S, DHQK, DHV = 2, 8, 4, 3
BIG = 1e4
_t = np.arange(S)
PATTERNS = {
    # name: (i, f) pre-activations, each (S,)
    "all_plus": (np.full(S, BIG), np.full(S, BIG)),
    "all_minus": (np.full(S, -BIG), np.full(S, -BIG)),
    "alternating": (np.where(_t % 2 == 0, BIG, -BIG), np.where(_t % 2 == 0, -BIG, BIG)),
    "runs": (np.where(_t // 3 % 2 == 0, BIG, -BIG), np.where(_t // 2 % 2 == 0, BIG, -BIG)),
    "spikes": (np.where(_t % 4 == 1, BIG, 0.0), np.where(_t % 4 == 2, -BIG, 0.0)),
    "i_plus_f_minus": (np.full(S, BIG), np.full(S, -BIG)),
    "i_minus_f_plus": (np.full(S, -BIG), np.full(S, BIG)),
}
FORMS = {
    "recurrent": lambda *a: mlstm_recurrent(*a)[0],
    "parallel": mlstm_parallel,
    "chunkwise": lambda *a: mlstm_chunkwise(*a, chunk_size=3)[0],  # padded, three chunks
}
NAMES = ("h", "dq", "dk", "dv", "di", "df")
# All +1e4 gates make exact ties in m_t = max(logf_t + m_{t-1}, i_t). h depends on m only
# through eps, so at a tie the forms take different (equally valid) one-sided derivatives of
# that O(eps) term: float64 agreement is to ~eps, not to rounding. In float32 a log weight
# such as (F[t] - F[s]) + i[s] with |F|, |i| ~ 1e4 is rounded to ulp(1e4) / 2 = 5e-4 at each
# step before the cancellation, so weights, and h, carry relative errors of that order.
REL = {"float64": 1e-6, "float32": 1e-3}


def _inputs():
    """(q, k, v, i, f) with one pattern per batch row, and a cotangent for h (float64 numpy)."""
    rng = np.random.default_rng(0)
    b = len(PATTERNS)
    q, k = rng.normal(size=(2, b, NH, S, DHQK))
    v = rng.normal(size=(b, NH, S, DHV))
    i, f = (np.stack([np.broadcast_to(p[j], (NH, S)) for p in PATTERNS.values()]) for j in (0, 1))
    return (q, k, v, i, f), rng.normal(size=(b, NH, S, DHV))


@partial(jax.jit, static_argnames="form")
def _value_and_grads(form, args, cot):
    h, pullback = jax.vjp(FORMS[form], *args)
    return (h, *pullback(cot))


@pytest.fixture(scope="module")
def truth():
    """Float64 recurrent h and gradients, every pattern at once."""
    args, cot = _inputs()
    with jax.enable_x64(True):
        return [np.asarray(x) for x in _value_and_grads("recurrent", args, jnp.asarray(cot))]


def test_truth_matches_finite_difference(truth):
    """The float64 recurrent gradient is the derivative of its loss (central difference)."""
    args, cot = _inputs()
    direction = [np.random.default_rng(1).normal(size=a.shape) for a in args]
    step = 1e-5

    @jax.jit
    def losses(args):  # per pattern (batch row)
        return jnp.sum(FORMS["recurrent"](*args) * cot, axis=(1, 2, 3))

    with jax.enable_x64(True):
        plus, minus = (np.asarray(losses([a + s * step * d for a, d in zip(args, direction)])) for s in (1, -1))
    numeric = (plus - minus) / (2 * step)
    analytic = sum(np.sum(g * d, axis=(1, 2, 3) if g.ndim == 4 else (1, 2)) for g, d in zip(truth[1:], direction))
    for name, n, a in zip(PATTERNS, numeric, analytic):
        assert np.isfinite(a) and abs(n - a) <= 1e-6 * max(1.0, abs(a)), (name, n, a)


@pytest.mark.parametrize("dtype", sorted(REL))
@pytest.mark.parametrize("form", sorted(FORMS))
def test_finite_and_equal_to_truth(form, dtype, truth):
    args, cot = _inputs()
    with jax.enable_x64(dtype == "float64"):
        out = _value_and_grads(form, [jnp.asarray(a, dtype) for a in args], jnp.asarray(cot, dtype))
    for row, pattern in enumerate(PATTERNS):
        # Some gradients exist only through eps (e.g. dq where each token's memory holds one
        # write): they are measured on the scale of the pattern's largest gradient.
        grad_scale = max(float(np.max(np.abs(g[row]))) for g in truth[1:])
        for name, actual, ref in zip(NAMES, out, truth):
            floor = grad_scale if name != "h" else 1e-30
            assert_close(actual[row], ref[row], REL[dtype], f"{pattern}/{form}/{dtype}/{name}", floor=floor)
