"""Extreme inputs: every mLSTM form behaves like the recurrent definition.

Gate pre-activations of +-1e4: every form's output and gradients are finite and agree.

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


# A non-finite value in one input at step BAD_STEP, one case per batch row: the outputs it
# reaches, as in the recurrent form (q is read by its own step only; k, v, i, f by every
# later step through the memory or the stabilizer).
BAD_STEP = 5
NONFINITE = {"nan_q": (0, np.nan), "nan_k": (1, np.nan), "nan_v": (2, np.nan), "inf_k": (1, np.inf)}
NONFINITE |= {"neg_inf_v": (2, -np.inf), "nan_i": (3, np.nan), "nan_f": (4, np.nan)}


def test_nonfinite_inputs_reach_only_later_outputs():
    rng = np.random.default_rng(2)
    b = len(NONFINITE)
    clean = [rng.normal(size=(b, NH, S, d)) for d in (DHQK, DHQK, DHV)] + list(rng.normal(size=(2, b, NH, S)))
    args = [a.copy() for a in clean]
    for row, (arg, value) in enumerate(NONFINITE.values()):
        args[arg][row, :, BAD_STEP] = value
    expected = np.zeros((b, NH, S), bool)
    for row, (arg, _) in enumerate(NONFINITE.values()):
        expected[row, :, BAD_STEP:] = True
        if arg == 0:
            expected[row, :, BAD_STEP + 1 :] = False
    f32 = lambda xs: [jnp.asarray(a, jnp.float32) for a in xs]  # noqa: E731
    reference = np.asarray(mlstm_recurrent(*f32(clean))[0])
    for form, fn in FORMS.items():
        h = np.asarray(fn(*f32(args)))
        for row, case in enumerate(NONFINITE):
            nan_at = np.isnan(h[row]).all(axis=-1)
            assert (nan_at == expected[row]).all(), f"{form}/{case}: NaN outputs at {np.argwhere(nan_at).tolist()}"
            before = ~expected[row]
            assert_close(h[row][before], reference[row][before], 1e-5, f"{form}/{case}: unaffected outputs")


def test_one_nonfinite_component_reaches_what_it_reaches_in_the_recurrent_form():
    """A NaN in one component of v spoils that component of h and that column of c; one in
    a key component spoils every component of h (through the normalizer), a row of c, n[d]."""
    rng = np.random.default_rng(3)
    args = [rng.normal(size=(2, NH, S, d)).astype(np.float32) for d in (DHQK, DHQK, DHV)]
    args += list(rng.normal(size=(2, 2, NH, S)).astype(np.float32))
    args[2][0, 0, BAD_STEP, 1] = np.nan  # batch 0, head 0: value component 1
    args[1][1, 0, BAD_STEP, 2] = np.nan  # batch 1, head 0: key component 2
    h_ref, state_ref = mlstm_recurrent(*args)
    nan_ref = [np.isnan(np.asarray(x)) for x in (h_ref, state_ref.c, state_ref.n)]
    assert nan_ref[0][0, 0, BAD_STEP:, 1].all() and not nan_ref[0][0, 0, :, [0, 2]].any()
    assert nan_ref[0][1, 0, BAD_STEP:].all() and not nan_ref[0][:, 1].any()
    h, state = mlstm_chunkwise(*args, chunk_size=3)
    for name, nan, ref in zip(("h", "c", "n"), (h, state.c, state.n), nan_ref):
        assert (np.isnan(np.asarray(nan)) == ref).all(), name
    assert (np.isnan(np.asarray(mlstm_parallel(*args))) == nan_ref[0]).all(), "parallel h"
    assert np.isfinite(np.asarray(state.m)).all()


@pytest.mark.slow
def test_bfloat16_long_sequence_without_forgetting_follows_the_condition_bound():
    """S = 65,536, forget gates ~1 (pre-activation 30): the normalizer q.n_t is a sum of up to S
    terms that can nearly cancel, with condition kappa_t = sum_s w_ts |q_t.k_s| / max(|q_t.n_t|, 1)
    (unstabilized weights w_ts = exp(i_s + sum_{r=s+1..t} logf_r)). Measured against float64 truth
    on the same rounded inputs, each token's error is within 2**-8 kappa_t max|h_t| for bf16 and
    2**-20 kappa_t max|h_t| for float32 arithmetic (measured 2.9e-3 and 3.7e-7 x kappa_t max|h_t|);
    relative to max|h| over the sequence, 2.4e-3 (bf16) and 2.2e-4 / 1.2e-3 (float32 chunkwise /
    recurrent) here, where kappa reaches 2.3e5."""
    s, d = 65536, 8
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(1, 1, s, d)) for _ in range(3))
    args_bf16 = [jnp.asarray(a, jnp.bfloat16) for a in (q, k, v, rng.normal(size=(1, 1, s)), np.full((1, 1, s), 30.0))]
    r64 = [np.asarray(a.astype(jnp.float32), np.float64) for a in args_bf16]
    with jax.enable_x64(True):
        ref = np.asarray(mlstm_recurrent(*map(jnp.asarray, r64))[0])[0, 0]
    qs, ks, i = r64[0][0, 0] * d**-0.5, r64[1][0, 0], r64[3][0, 0]
    log_w = i - np.cumsum(np.asarray(jax.nn.log_sigmoid(r64[4][0, 0])))  # + F_t: w_ts = exp(log_w_s + F_t)
    shift = log_w.max()
    scale = np.exp(shift + np.cumsum(np.asarray(jax.nn.log_sigmoid(r64[4][0, 0]))))[:, None]
    n = np.cumsum(np.exp(log_w - shift)[:, None] * ks, 0) * scale
    n_abs = np.cumsum(np.exp(log_w - shift)[:, None] * np.abs(ks), 0) * scale
    kappa = np.sum(np.abs(qs) * n_abs, -1) / np.maximum(np.abs(np.sum(qs * n, -1)), 1.0)
    bound = kappa * np.abs(ref).max(-1)
    h_bf16 = np.asarray(mlstm_chunkwise(*args_bf16, chunk_size=64)[0].astype(jnp.float32))[0, 0]
    h_f32 = np.asarray(mlstm_chunkwise(*[jnp.asarray(a, jnp.float32) for a in r64], chunk_size=64)[0])[0, 0]
    assert kappa.max() > 1e4  # the ill-conditioned regime this test is about
    assert np.all(np.abs(h_bf16 - ref).max(-1) <= 2.0**-8 * bound)
    assert np.all(np.abs(h_f32 - ref).max(-1) <= 2.0**-20 * bound)
