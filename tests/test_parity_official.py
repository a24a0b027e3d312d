"""Parity of ``xlstm_jax.ops`` with the official PyTorch xLSTM code.

Two sources of truth:
  * fixtures (``tests/fixtures/official_*.npz``, written by ``tests/generate_reference.py``): the
    official mlstm_kernels 2.0.6 / xlstm 2.0.6 outputs and autograd gradients in float64 for fixed
    inputs (float32 values). No torch needed.
  * live: the official code run now on freshly drawn inputs (skipped when torch, xlstm or
    mlstm_kernels cannot be imported).

Checks, always like with like (JAX parallel vs official parallel, chunkwise vs chunkwise with the
same chunk size, recurrent vs recurrent: the parallel form has no m_0 = 0 term, so it differs from
the other two where the exp(-m) floor is active):
  * JAX float32 vs official float64: forward outputs within 1e-4 * max|ref|, gradients within
    1e-3 * max|ref|, per tensor.
  * JAX float64 vs official float64: within 1e-10 * max|ref|.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_close
from official_reference import mlstm_official, slstm_official
from xlstm_jax.ops import (
    MLSTMState,
    SLSTMState,
    mlstm_chunkwise,
    mlstm_parallel,
    mlstm_recurrent,
    slstm_scan,
)

HERE = Path(__file__).resolve().parent

FIXTURES = HERE / "fixtures"
TOL_FWD_F32 = 1e-4
TOL_GRAD_F32 = 1e-3
TOL_F64 = 1e-10
MLSTM_GRAD_NAMES = ("q", "k", "v", "i", "f", "c0", "n0", "m0")
SLSTM_GRAD_NAMES = ("gates_x", "recurrent_kernel", "bias", "h0", "c0", "n0", "m0")


def _grad_floor(name: str, grads_ref: dict, has_state: bool, gate_key: str) -> float:
    """Scale for comparing a gradient.

    Per tensor (max|ref|), except d/dm0 with a zero initial state: m0 then acts only through eps
    (and, for sLSTM, not at all), so that gradient is ~1e-6 or exactly 0, i.e. pure rounding noise
    on its own scale; it is compared on the scale of the gate gradient (same log-space units).
    """
    if name == "m0" and not has_state:
        return float(np.abs(grads_ref[gate_key]).max())
    return 1e-30


@functools.cache
def _load(fname: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / fname) as data:
        return {k: data[k] for k in data.files}


def _mlstm_case_ids() -> list[tuple[str, str]]:
    d = _load("official_mlstm.npz")
    return [(str(c), str(form)) for c in d["cases"] for form in d[f"{c}.forms"]]


def _slstm_case_ids() -> list[str]:
    return [str(c) for c in _load("official_slstm.npz")["cases"]]


# ----------------------------------------------------------------------------- jitted JAX calls
# Each function is jitted twice: with XLA's default options for float32 (the numerics users get),
# and with LLVM optimisation off for float64, whose checks are about the math (1e-10), not about
# codegen; that halves the compile time, which dominates this file on CPU.
_F64_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def _jit_pair(fn, static_argnames=()):
    fast = jax.jit(fn, static_argnames=static_argnames)
    x64 = jax.jit(fn, static_argnames=static_argnames, compiler_options=_F64_COMPILER_OPTIONS)
    return {np.dtype(np.float32): fast, np.dtype(np.float64): x64}


def _mlstm_fwd_vjp(args, state, cots, *, form: str, chunk_size: int):
    """(h, final state or None, grads dict) of sum(h*dh) + sum(c*dc) + sum(n*dn)."""
    if form == "parallel":
        h, pull = jax.vjp(lambda *a: mlstm_parallel(*a), *args)
        return h, None, dict(zip("qkvif", pull(cots[0])))

    def fn(q, k, v, i, f, c0, n0, m0):
        init = MLSTMState(c0, n0, m0)
        if form == "chunkwise":
            h, st = mlstm_chunkwise(q, k, v, i, f, chunk_size=chunk_size, initial_state=init)
        else:
            h, st = mlstm_recurrent(q, k, v, i, f, initial_state=init)
        return h, (st.c, st.n, st.m)

    (h, st), pull = jax.vjp(fn, *args, *state)
    dh, dc, dn = cots
    grads = pull((dh, (dc, dn, jnp.zeros_like(st[2]))))
    return h, st, dict(zip(MLSTM_GRAD_NAMES, grads))


_MLSTM_FWD_VJP = _jit_pair(_mlstm_fwd_vjp, static_argnames=("form", "chunk_size"))


@functools.partial(jax.jit, static_argnames=("form", "chunk_size"))
def _mlstm_fwd_no_state(args, *, form: str, chunk_size: int):
    if form == "chunkwise":
        h, st = mlstm_chunkwise(*args, chunk_size=chunk_size)
    else:
        h, st = mlstm_recurrent(*args)
    return h, (st.c, st.n, st.m)


def _slstm_fwd_vjp(args, state, cots):
    def fn(gx, r, b, h0, c0, n0, m0):
        h, st = slstm_scan(gx, r, b, initial_state=SLSTMState(h0, c0, n0, m0))
        return h, (st.h, st.c, st.n, st.m)

    (h, st), pull = jax.vjp(fn, *args, *state)
    dh, dh_last, dc, dn = cots
    grads = pull((dh, (dh_last, dc, dn, jnp.zeros_like(st[3]))))
    return h, st, dict(zip(SLSTM_GRAD_NAMES, grads))


_SLSTM_FWD_VJP = _jit_pair(_slstm_fwd_vjp)


@jax.jit
def _slstm_fwd_no_state(args):
    h, st = slstm_scan(*args)
    return h, (st.h, st.c, st.n, st.m)


def _run_jax_mlstm(form, chunk_size, inputs, state, cots, dtype):
    cast = lambda x: jnp.asarray(np.asarray(x, dtype=dtype))
    B, NH, S, DHQK = inputs[0].shape
    DHV = inputs[2].shape[-1]
    if state is None and form != "parallel":
        state = (np.zeros((B, NH, DHQK, DHV)), np.zeros((B, NH, DHQK)), np.zeros((B, NH)))
    h, st, grads = _MLSTM_FWD_VJP[np.dtype(dtype)](
        tuple(cast(x) for x in inputs),
        None if form == "parallel" else tuple(cast(x) for x in state),
        tuple(cast(x) for x in cots),
        form=form,
        chunk_size=chunk_size,
    )
    for x in jax.tree_util.tree_leaves((h, st, grads)):
        assert x.dtype == dtype, f"JAX {form} returned {x.dtype} for {np.dtype(dtype)} inputs"
    return (
        np.asarray(h),
        None if st is None else [np.asarray(s) for s in st],
        {k: np.asarray(g) for k, g in grads.items()},
    )


def _run_jax_slstm(inputs, state, cots, dtype):
    cast = lambda x: jnp.asarray(np.asarray(x, dtype=dtype))
    B, S, _, NH, DH = inputs[0].shape
    if state is None:
        state = (np.zeros((B, NH, DH)),) * 4
    h, st, grads = _SLSTM_FWD_VJP[np.dtype(dtype)](
        tuple(cast(x) for x in inputs), tuple(cast(x) for x in state), tuple(cast(x) for x in cots)
    )
    for x in jax.tree_util.tree_leaves((h, st, grads)):
        assert x.dtype == dtype, f"JAX slstm_scan returned {x.dtype} for {np.dtype(dtype)} inputs"
    return np.asarray(h), [np.asarray(s) for s in st], {k: np.asarray(g) for k, g in grads.items()}


# ------------------------------------------------------------------------------ mLSTM fixtures


def _mlstm_fixture(case: str, form: str):
    d = _load("official_mlstm.npz")
    inputs = tuple(d[f"{case}.{n}"] for n in "qkvif")
    has_state = f"{case}.c0" in d
    state = tuple(d[f"{case}.{n}"] for n in ("c0", "n0", "m0")) if has_state else None
    cots = (d[f"{case}.dh"],) if form == "parallel" else (d[f"{case}.dh"], d[f"{case}.dc"], d[f"{case}.dn"])
    prefix = f"{case}.{form}"
    ref = {k[len(prefix) + 5 :]: d[k] for k in d if k.startswith(f"{prefix}.f64.")}
    off32 = {k[len(prefix) + 5 :]: d[k] for k in d if k.startswith(f"{prefix}.f32.")}
    return inputs, state, cots, int(d[f"{case}.chunk_size"]), has_state, ref, off32


def _check_mlstm(form, h, st, grads, ref, has_state, tol_fwd, tol_grad, label, off32=None):
    def ctx(key):
        if off32 is None or key not in off32:
            return f" [{label}]"
        e = np.abs(off32[key] - ref[key]).max() / max(np.abs(ref[key]).max(), 1e-300)
        return f" [{label}; the official float32 code is off by {e:.2e} here]"

    assert_close(h, ref["h"], tol_fwd, f"{form} h", context=ctx("h"))
    if form != "parallel":
        for key, val in zip("cnm", st):
            assert_close(val, ref[key], tol_fwd, f"{form} final {key}", context=ctx(key))
    grads_ref = {k[5:]: v for k, v in ref.items() if k.startswith("grad.")}
    assert set(grads) == set(grads_ref), f"gradient names {sorted(grads)} != {sorted(grads_ref)}"
    for name in grads_ref:
        assert_close(
            grads[name],
            grads_ref[name],
            tol_grad,
            f"{form} d/d{name}",
            floor=_grad_floor(name, grads_ref, has_state, "i"),
            context=f" [{label}]",
        )


@pytest.mark.parametrize(("case", "form"), _mlstm_case_ids())
def test_mlstm_float32_vs_official_float64(case, form):
    inputs, state, cots, cs, has_state, ref, off32 = _mlstm_fixture(case, form)
    h, st, grads = _run_jax_mlstm(form, cs, inputs, state, cots, np.float32)
    _check_mlstm(form, h, st, grads, ref, has_state, TOL_FWD_F32, TOL_GRAD_F32, f"case {case}, float32", off32)


@pytest.mark.parametrize(("case", "form"), _mlstm_case_ids())
def test_mlstm_float64_vs_official_float64(case, form):
    inputs, state, cots, cs, has_state, ref, _ = _mlstm_fixture(case, form)
    with jax.enable_x64(True):
        h, st, grads = _run_jax_mlstm(form, cs, inputs, state, cots, np.float64)
    _check_mlstm(form, h, st, grads, ref, has_state, TOL_F64, TOL_F64, f"case {case}, float64")


@pytest.mark.parametrize("form", ["chunkwise", "recurrent"])
def test_mlstm_default_initial_state_vs_official(form):
    """initial_state=None must behave like the official kernels' zero state (m_0 = 0)."""
    inputs, _, _, cs, _, ref, _ = _mlstm_fixture("rand", form)
    h, st = _mlstm_fwd_no_state(tuple(jnp.asarray(x) for x in inputs), form=form, chunk_size=cs)
    assert_close(h, ref["h"], TOL_FWD_F32, f"{form} h (initial_state=None)")
    for key, val in zip("cnm", st):
        assert_close(val, ref[key], TOL_FWD_F32, f"{form} final {key} (initial_state=None)")


# ------------------------------------------------------------------------------ sLSTM fixtures


def _slstm_fixture(case: str):
    d = _load("official_slstm.npz")
    inputs = tuple(d[f"{case}.{n}"] for n in ("gates_x", "recurrent_kernel", "bias"))
    has_state = f"{case}.h0" in d
    state = tuple(d[f"{case}.{n}"] for n in ("h0", "c0", "n0", "m0")) if has_state else None
    cots = tuple(d[f"{case}.{n}"] for n in ("dh", "dh_last", "dc", "dn"))
    ref = {k[len(case) + 5 :]: d[k] for k in d if k.startswith(f"{case}.f64.")}
    off32 = {k[len(case) + 5 :]: d[k] for k in d if k.startswith(f"{case}.f32.")}
    return inputs, state, cots, has_state, ref, off32


def _check_slstm(h, st, grads, ref, has_state, tol_fwd, tol_grad, label, off32=None):
    def ctx(key):
        if off32 is None:
            return f" [{label}]"
        e = np.abs(off32[key] - ref[key]).max() / max(np.abs(ref[key]).max(), 1e-300)
        return f" [{label}; the official float32 code is off by {e:.2e} here]"

    assert_close(h, ref["h"], tol_fwd, "slstm h", context=ctx("h"))
    for key, val in zip("hcnm", st):
        assert_close(val, ref[f"state_{key}"], tol_fwd, f"slstm final {key}", context=ctx(f"state_{key}"))
    grads_ref = {k[5:]: v for k, v in ref.items() if k.startswith("grad.")}
    assert set(grads) == set(grads_ref), f"gradient names {sorted(grads)} != {sorted(grads_ref)}"
    for name in grads_ref:
        assert_close(
            grads[name],
            grads_ref[name],
            tol_grad,
            f"slstm d/d{name}",
            floor=_grad_floor(name, grads_ref, has_state, "gates_x"),
            context=f" [{label}]",
        )


@pytest.mark.parametrize("case", _slstm_case_ids())
def test_slstm_float32_vs_official_float64(case):
    inputs, state, cots, has_state, ref, off32 = _slstm_fixture(case)
    h, st, grads = _run_jax_slstm(inputs, state, cots, np.float32)
    _check_slstm(h, st, grads, ref, has_state, TOL_FWD_F32, TOL_GRAD_F32, f"case {case}, float32", off32)


@pytest.mark.parametrize("case", _slstm_case_ids())
def test_slstm_float64_vs_official_float64(case):
    inputs, state, cots, has_state, ref, _ = _slstm_fixture(case)
    with jax.enable_x64(True):
        h, st, grads = _run_jax_slstm(inputs, state, cots, np.float64)
    _check_slstm(h, st, grads, ref, has_state, TOL_F64, TOL_F64, f"case {case}, float64")


def test_slstm_default_initial_state_vs_official():
    inputs, _, _, _, ref, _ = _slstm_fixture("rand")
    h, st = _slstm_fwd_no_state(tuple(jnp.asarray(x) for x in inputs))
    assert_close(h, ref["h"], TOL_FWD_F32, "slstm h (initial_state=None)")
    for key, val in zip("hcnm", st):
        assert_close(val, ref[f"state_{key}"], TOL_FWD_F32, f"slstm final {key} (initial_state=None)")


# ----------------------------------------------------------------------- live official code


def _fresh_rng() -> tuple[int, np.random.Generator]:
    seed = int(np.random.SeedSequence().entropy % 2**32)
    return seed, np.random.default_rng(seed)


@pytest.mark.parametrize("form", ["parallel", "chunkwise", "recurrent"])
def test_mlstm_live_vs_official(official_torch, form):
    seed, rng = _fresh_rng()
    B, NH, S, DHQK, DHV, cs = 2, 1, 32, 24, 8, 16  # fixture "dims" shapes: shares compiled functions
    f32 = lambda *shape, scale=1.0, shift=0.0: (scale * rng.normal(size=shape) + shift).astype(np.float32)
    inputs = (
        f32(B, NH, S, DHQK),
        f32(B, NH, S, DHQK),
        f32(B, NH, S, DHV),
        f32(B, NH, S, scale=3.0),
        f32(B, NH, S, scale=3.0, shift=2.0),
    )
    state = None
    cots = (f32(B, NH, S, DHV),)
    if form != "parallel":
        state = (f32(B, NH, DHQK, DHV), f32(B, NH, DHQK), rng.uniform(-1, 1, size=(B, NH)).astype(np.float32))
        cots += (f32(B, NH, DHQK, DHV), f32(B, NH, DHQK))
    cot_dict = dict(zip(("dh", "dc", "dn"), (c.astype(np.float64) for c in cots)))
    off = mlstm_official(
        form,
        *(x.astype(np.float64) for x in inputs),
        initial_state=None if state is None else tuple(x.astype(np.float64) for x in state),
        chunk_size=cs,
        cotangents=cot_dict,
    )
    ref = {"h": off["h"], **{f"grad.{k}": g for k, g in off["grads"].items()}}
    if off["state"] is not None:
        ref.update(zip("cnm", off["state"]))
    label = f"live, seed {seed}"
    h, st, grads = _run_jax_mlstm(form, cs, inputs, state, cots, np.float32)
    _check_mlstm(form, h, st, grads, ref, state is not None, TOL_FWD_F32, TOL_GRAD_F32, label + ", float32")
    with jax.enable_x64(True):
        h, st, grads = _run_jax_mlstm(form, cs, inputs, state, cots, np.float64)
    _check_mlstm(form, h, st, grads, ref, state is not None, TOL_F64, TOL_F64, label + ", float64")


@pytest.mark.parametrize("with_state", [False, True])
def test_slstm_live_vs_official(official_torch, with_state):
    seed, rng = _fresh_rng()
    B, S, NH, DH = 2, 16, 2, 8  # fixture shapes: shares compiled functions
    f32 = lambda *shape, scale=1.0: (scale * rng.normal(size=shape)).astype(np.float32)
    inputs = (f32(B, S, 4, NH, DH, scale=2.0), f32(NH, DH, 4, DH, scale=0.5), f32(NH, 4, DH))
    state = None
    if with_state:  # n nonzero everywhere (the official first-step rule tests all(n == 0) globally)
        state = (
            f32(B, NH, DH),
            f32(B, NH, DH),
            rng.uniform(0.2, 3.0, size=(B, NH, DH)).astype(np.float32),
            rng.uniform(-2, 2, size=(B, NH, DH)).astype(np.float32),
        )
    cots = (f32(B, S, NH, DH), f32(B, NH, DH), f32(B, NH, DH), f32(B, NH, DH))
    off = slstm_official(
        *(x.astype(np.float64) for x in inputs),
        initial_state=None if state is None else tuple(x.astype(np.float64) for x in state),
        cotangents=dict(zip(("dh", "dh_last", "dc", "dn"), (c.astype(np.float64) for c in cots))),
    )
    ref = {
        "h": off["h"],
        **{f"state_{k}": s for k, s in zip("hcnm", off["state"])},
        **{f"grad.{k}": g for k, g in off["grads"].items()},
    }
    label = f"live, seed {seed}"
    h, st, grads = _run_jax_slstm(inputs, state, cots, np.float32)
    _check_slstm(h, st, grads, ref, with_state, TOL_FWD_F32, TOL_GRAD_F32, label + ", float32")
    with jax.enable_x64(True):
        h, st, grads = _run_jax_slstm(inputs, state, cots, np.float64)
    _check_slstm(h, st, grads, ref, with_state, TOL_F64, TOL_F64, label + ", float64")
