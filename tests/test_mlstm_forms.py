"""All mLSTM forms agree with each other and with float64 truth: h, final state, gradients.

Truth is ``mlstm_recurrent`` (the step definition) in float64; ``test_parity_official``
ties that to the official PyTorch kernels. Tolerances (docs/design.md §Numerical bounds): float32 forward within
1e-4 x max|ref|, gradients within 1e-3 x max|ref| per tensor; state passing within 1e-5.
"""

from __future__ import annotations

import functools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_close, assert_tree_close, cast, mlstm_inputs, mlstm_state
from xlstm_jax.ops import MLSTMState, mlstm_chunkwise, mlstm_parallel, mlstm_recurrent, mlstm_step

FWD_TOL, GRAD_TOL = 1e-4, 1e-3


def _form(name: str):
    """(q, k, v, i, f, state) -> (h, state) for each sequence form."""
    if name == "recurrent":
        return lambda *a, st: mlstm_recurrent(*a, initial_state=st)
    if name.startswith("chunkwise"):
        chunk = int(name.split("_")[1])
        return lambda *a, st: mlstm_chunkwise(*a, chunk_size=chunk, initial_state=st)
    if name == "parallel":
        return lambda *a, st: (mlstm_parallel(*a), None)
    raise ValueError(name)


@partial(jax.jit, static_argnames=("form",))
def _value_and_grads(form, args, state, cot_h, cot_state):
    """Forward outputs and the VJP wrt every input and the initial state."""
    fn = _form(form)
    if form == "parallel":
        h, pullback = jax.vjp(lambda a: fn(*a, st=None)[0], args)
        return (h, None), pullback(cot_h)[0]
    (h, final), pullback = jax.vjp(lambda a, st: fn(*a, st=st), args, state)
    return (h, final), pullback((cot_h, cot_state))


def _cotangents(seed, h_shape, state):
    rng = np.random.default_rng(seed)
    cot_h = rng.normal(size=h_shape)
    cot_state = MLSTMState(*(rng.normal(size=np.shape(x)) for x in state))
    return cot_h, cot_state


CASES = {
    # name: (gates, with_initial_state, shape kwargs)
    "normal": ("normal", False, {}),
    "normal_state": ("normal", True, {}),
    "extreme_state": ("extreme", True, {}),
    "dhqk_ne_dhv": ("normal", True, dict(dhqk=4, dhv=10, s=20)),
    "resets_state": ("resets", True, {}),
}


@functools.cache
def _case(name: str) -> dict:
    """Inputs, cotangents and float64 truth (recurrent form under x64) for one case."""
    gates, with_state, shape = CASES[name]
    args = mlstm_inputs(1, gates=gates, **shape)
    b, nh, s, dhqk = args[0].shape
    dhv = args[2].shape[-1]
    if with_state:
        state = mlstm_state(2, b, nh, dhqk, dhv)
    else:
        state = MLSTMState(np.zeros((b, nh, dhqk, dhv)), np.zeros((b, nh, dhqk)), np.zeros((b, nh)))
    cot_h, cot_state = _cotangents(3, (b, nh, s, dhv), state)
    zero_cot_state = MLSTMState(*(np.zeros_like(x) for x in cot_state))
    with jax.enable_x64(True):
        truth = _value_and_grads(
            "recurrent",
            cast(args, jnp.float64),
            cast(state, jnp.float64),
            jnp.asarray(cot_h),
            cast(cot_state, jnp.float64),
        )
        # Gradients of the h term alone, for the parallel form (which returns no state).
        _, (grads_h_only, _) = _value_and_grads(
            "recurrent",
            cast(args, jnp.float64),
            cast(state, jnp.float64),
            jnp.asarray(cot_h),
            cast(zero_cot_state, jnp.float64),
        )
    return dict(
        name=name,
        args=args,
        state=state,
        with_state=with_state,
        cot_h=cot_h,
        cot_state=cot_state,
        truth=jax.tree.map(np.asarray, truth),
        grads_h_only=jax.tree.map(np.asarray, grads_h_only),
    )


SEQUENCE_FORMS = ["recurrent", "chunkwise_16", "chunkwise_5", "chunkwise_64"]
# The parallel form takes no initial state, so it runs on the zero-state cases only.
FORM_CASES = [(c, f) for c in sorted(CASES) for f in SEQUENCE_FORMS + (["parallel"] if not CASES[c][1] else [])]


@pytest.mark.parametrize("case_name,form", FORM_CASES)
def test_float32_forms_match_float64_truth(case_name, form):
    case = _case(case_name)
    f32 = lambda t: cast(t, jnp.float32)
    (h, final), grads = _value_and_grads(
        form, f32(case["args"]), f32(case["state"]), f32(case["cot_h"]), f32(case["cot_state"])
    )
    (h_ref, final_ref), grads_ref = case["truth"]
    assert h.dtype == jnp.float32
    assert_close(h, h_ref, FWD_TOL, f"{form} h")
    if form == "parallel":
        for name, g, g_ref in zip("qkvif", grads, case["grads_h_only"]):
            assert_close(g, g_ref, GRAD_TOL, f"{form} d{name}")
        return
    assert_tree_close(final, final_ref, FWD_TOL, f"{form} final state")
    grads_args, grads_state = grads
    for name, g, g_ref in zip("qkvif", grads_args, grads_ref[0]):
        assert_close(g, g_ref, GRAD_TOL, f"{form} d{name}")
    for name, g, g_ref in zip("cnm", grads_state, grads_ref[1]):
        # d m0 = <c0, dc0> + <n0, dn0> + O(eps): with a zero initial memory only the
        # O(1e-6) eps term is left, so it is measured on the scale of dc0.
        floor = float(np.max(np.abs(grads_ref[1].c))) if name == "m" else 1e-30
        assert_close(g, g_ref, GRAD_TOL, f"{form} d initial {name}", floor=floor)


@pytest.mark.parametrize("case_name", sorted(CASES))
def test_chunkwise_float64_equals_recurrent_float64(case_name):
    """In float64 the chunkwise form is the recurrent form up to rounding (1e-10)."""
    case = _case(case_name)
    with jax.enable_x64(True):
        f64 = lambda t: cast(t, jnp.float64)
        out, grads = _value_and_grads(
            "chunkwise_16", f64(case["args"]), f64(case["state"]), f64(case["cot_h"]), f64(case["cot_state"])
        )
    assert_tree_close(out, case["truth"][0], 1e-10, "chunkwise f64 outputs")
    assert_tree_close(grads, case["truth"][1], 1e-9, "chunkwise f64 grads")


def test_step_matches_recurrent():
    args = cast(mlstm_inputs(4, s=6), jnp.float32)
    state = cast(mlstm_state(5), jnp.float32)
    h_seq, final_seq = mlstm_recurrent(*args, initial_state=state)
    hs = []
    for t in range(args[0].shape[2]):
        h_t, state = mlstm_step(*(x[:, :, t] for x in args), state)
        hs.append(h_t)
    np.testing.assert_array_equal(np.stack(hs, axis=2), h_seq)
    assert_tree_close(state, final_seq, 0.0, "step state")


@pytest.mark.parametrize("form", ["chunkwise_16", "recurrent"])
def test_state_passing_four_pieces_equals_whole(form):
    """A sequence processed in four pieces with the carried state equals the whole."""
    args = cast(mlstm_inputs(6, s=70), jnp.float32)
    state0 = cast(mlstm_state(7), jnp.float32)
    fn = _form(form)
    h_whole, final_whole = fn(*args, st=state0)
    bounds = [0, 13, 32, 48, 70]  # uneven pieces, none a multiple of the chunk size
    state, pieces = state0, []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        h, state = fn(*(x[:, :, lo:hi] for x in args), st=state)
        pieces.append(h)
    assert_close(jnp.concatenate(pieces, axis=2), h_whole, 1e-5, f"{form} h")
    assert_tree_close(state, final_whole, 1e-5, f"{form} state")


def test_padding_leaves_final_state_exact():
    """S not a multiple of the chunk: the padded tail neither writes to nor decays the memory."""
    with jax.enable_x64(True):
        args = cast(mlstm_inputs(8, s=21), jnp.float64)
        state = cast(mlstm_state(9), jnp.float64)
        _, padded = mlstm_chunkwise(*args, chunk_size=8, initial_state=state)  # 21 = 2*8 + 5
        _, exact = mlstm_chunkwise(*args, chunk_size=7, initial_state=state)  # 21 = 3*7
    assert_tree_close(padded, exact, 1e-12, "final state")


def test_stabilizer_prevents_float32_overflow():
    """Input-gate spikes of +100 overflow exp() in float32; every form stays finite."""
    args = cast(mlstm_inputs(10, gates="extreme"), jnp.float32)
    assert not np.all(np.isfinite(jnp.exp(args[3]))), "the spikes must overflow exp() without the stabilizer"
    for h in (mlstm_parallel(*args), mlstm_chunkwise(*args, chunk_size=16)[0], mlstm_recurrent(*args)[0]):
        assert np.all(np.isfinite(np.asarray(h)))


def test_bfloat16_inputs():
    """bf16 in, bf16 out; computed in float32 inside.

    Documented tolerance: against float64 truth on the same (bf16-rounded) inputs,
    h within 1e-2 x max|ref| and gradients within 2e-2 x max|ref| (bf16 has an
    8-bit mantissa: one rounding of the output costs up to 4e-3 relative).
    """
    args64 = mlstm_inputs(11)
    args = cast(args64, jnp.bfloat16)
    rounded = cast(args, jnp.float32)
    cot = np.random.default_rng(12).normal(size=args[2].shape[:3] + (args[2].shape[3],))
    loss = lambda fn, a: jnp.sum(fn(*a)[0].astype(jnp.float32) * cot)
    with jax.enable_x64(True):
        r64 = cast(rounded, jnp.float64)
        h_ref = mlstm_recurrent(*r64)[0]
        g_ref = jax.grad(lambda a: loss(mlstm_recurrent, a))(r64)
    for name, fn in [
        ("chunkwise", partial(mlstm_chunkwise, chunk_size=16)),
        ("recurrent", mlstm_recurrent),
        ("parallel", lambda *a: (mlstm_parallel(*a),)),
    ]:
        h = fn(*args)[0]
        assert h.dtype == jnp.bfloat16, name
        assert_close(h, h_ref, 1e-2, f"bf16 {name} h")
        grads = jax.grad(lambda a, fn=fn: loss(fn, a))(args)
        for gname, g, gr in zip("qkvif", grads, g_ref):
            assert g.dtype == jnp.bfloat16
            assert_close(g, gr, 2e-2, f"bf16 {name} d{gname}")


def test_long_sequence_chunkwise_vs_recurrent():
    """S = 16384: chunkwise and recurrent (float32) both match float64 truth."""
    args = mlstm_inputs(13, b=1, nh=1, s=16384, dhqk=8, dhv=8)
    with jax.enable_x64(True):
        h_ref, state_ref = jax.tree.map(np.asarray, mlstm_recurrent(*cast(args, jnp.float64)))
    args32 = cast(args, jnp.float32)
    h_c, state_c = mlstm_chunkwise(*args32, chunk_size=64)
    h_r, state_r = mlstm_recurrent(*args32)
    assert_close(h_c, h_ref, FWD_TOL, "chunkwise h")
    assert_close(h_r, h_ref, FWD_TOL, "recurrent h")
    assert_tree_close(state_c, state_ref, FWD_TOL, "chunkwise state")


def test_jit_vmap_grad_compose():
    args = cast(mlstm_inputs(14, b=3, s=9), jnp.float32)
    per_example = jax.vmap(
        lambda q, k, v, i, f: mlstm_chunkwise(q[None], k[None], v[None], i[None], f[None], chunk_size=4)[0][0]
    )
    assert_close(per_example(*args), mlstm_chunkwise(*args, chunk_size=4)[0], 1e-6, "vmap")
    g = jax.jit(jax.grad(lambda a: jnp.sum(mlstm_chunkwise(*a, chunk_size=4)[0] ** 2)))(args)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in g)


def test_reset_makes_packed_documents_independent():
    """f = -inf at a document's first token: its outputs equal running it alone."""
    args = cast(mlstm_inputs(15, s=40, gates="resets"), jnp.float32)  # resets at 3, 8, 9, 20, 38
    h_packed, _ = mlstm_chunkwise(*args, chunk_size=16, initial_state=cast(mlstm_state(16), jnp.float32))
    for lo, hi in [(9, 20), (20, 38)]:
        h_alone, _ = mlstm_chunkwise(*(x[:, :, lo:hi] for x in args), chunk_size=16)
        assert_close(h_packed[:, :, lo:hi], h_alone, 1e-5, f"document [{lo}, {hi})")
        assert_close(mlstm_parallel(*(x[:, :, lo:hi] for x in args)), h_alone, 1e-5, "parallel")


def test_reset_free_path_is_bit_identical_and_resets_still_take_the_segmented_math():
    """Without a reset (no f = -inf) the primal call runs the reset-free math (``decay.by_resets``):
    bit-identical to the segmented math; with one it runs the segmented math."""
    from xlstm_jax.ops._chunkwise_fwd import forward

    free = cast(mlstm_inputs(16, s=32), jnp.float32)
    reset = cast(mlstm_inputs(15, s=32, gates="resets"), jnp.float32)
    state = MLSTMState.zeros(*free[0].shape[:2], free[0].shape[3], free[2].shape[3], jnp.float32)
    run = jax.jit(
        lambda q, k, v, i, f, c: forward(q, k, v, jax.nn.log_sigmoid(f), i, *state, 8, 1e-6, check_resets=c)[0],
        static_argnums=5,
    )
    for name, (q, k, v, i, f) in (("no reset", free), ("resets", reset)):
        checked, segmented = run(q, k, v, i, f, True), run(q, k, v, i, f, False)
        for x, y in zip(checked, segmented):
            assert np.array_equal(np.asarray(x), np.asarray(y)), name
    h_free, _ = mlstm_chunkwise(*free, chunk_size=8)
    assert_close(h_free, mlstm_recurrent(*free)[0], 1e-5, "reset-free path against recurrent")
