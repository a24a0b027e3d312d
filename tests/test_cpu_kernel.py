"""The C++ CPU chunkwise mLSTM kernels (backend ``cpu_ffi``) equal their slow twin ``ops.mlstm_chunkwise``.

The kernels (``pallas_kernels/mlstm/cpu_fwd.cc`` and ``cpu_bwd.cc``, XLA FFI custom calls compiled on
first use by ``pallas_kernels/native.py``) compute the forward and the backward with the stabilizers
fixed; the O(S) gate algebra around them is the XLA form's. Compared here: h, the final state and every
gradient against the XLA form (the tolerances of ``mlstm_kernel_cases``), h and the gradients against
float64 truth, the code paths of the
kernel (head dims and chunk lengths that are not multiples of its 16-float vectors, several row
blocks per chunk, resets, extreme gates), a non-finite k or v, bfloat16 inputs, ``vmap``, and the
build machinery (cache, a missing compiler, a compile error, the backend's fallback).
"""

from __future__ import annotations

import logging
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_close, cast, mlstm_inputs, mlstm_state
from mlstm_kernel_cases import (
    BF16_FWD_TOL,
    BF16_GRAD_TOL,
    FWD_TOL,
    GRAD_TOL,
    case,
    check,
    reference,
    value_and_vjp,
)
from xlstm_jax import backends
from xlstm_jax.ops import MLSTMState, mlstm_chunkwise, mlstm_recurrent
from xlstm_jax.pallas_kernels import native
from xlstm_jax.pallas_kernels.mlstm import cpu


@partial(jax.jit, static_argnames=("chunk_size",))
def _kernel(args, state, cot, chunk_size):
    return value_and_vjp(partial(cpu.mlstm_chunkwise_cpu, chunk_size=chunk_size), args, state, cot)


@pytest.mark.parametrize("gates", ["normal", "extreme", "resets"])
def test_forward_and_gradients_match_reference(gates):
    """S = 40: three chunks of 16, the last one padded; an initial state; all gradients."""
    args, state, cot = case(gates, 40)
    out, grads = _kernel(args, state, cot, chunk_size=16)
    out_ref, grads_ref = reference(args, state, cot, chunk_size=16)
    check(out, grads, out_ref, grads_ref, FWD_TOL, GRAD_TOL, gates)


@pytest.mark.parametrize(
    "dhqk,dhv,chunk_size,s",
    [
        (20, 24, 24, 70),  # head dims and chunk not multiples of 16: the kernel's scalar column tails
        (16, 32, 64, 150),  # 16 row blocks of 4 per chunk, causal bounds at every 16 columns
        (8, 12, 7, 37),  # a chunk shorter than one vector; rows left over after the blocks of 4
        (64, 48, 64, 64),  # one whole chunk, 4 vectors of 16 in a row of DHQK
    ],
)
@pytest.mark.parametrize("gates", ["normal", "resets"])
def test_kernel_paths_match_reference(dhqk, dhv, chunk_size, s, gates):
    args = cast(mlstm_inputs(5, b=2, nh=2, s=s, dhqk=dhqk, dhv=dhv, gates=gates), jnp.float32)
    state = cast(mlstm_state(6, b=2, nh=2, dhqk=dhqk, dhv=dhv), jnp.float32)
    rng = np.random.default_rng(7)
    cot = (
        jnp.asarray(rng.normal(size=(2, 2, s, dhv)), jnp.float32),
        MLSTMState(*(jnp.asarray(rng.normal(size=x.shape), jnp.float32) for x in state)),
    )
    out, grads = _kernel(args, state, cot, chunk_size=chunk_size)
    out_ref, grads_ref = reference(args, state, cot, chunk_size=chunk_size)
    check(out, grads, out_ref, grads_ref, FWD_TOL, GRAD_TOL, f"{gates} {dhqk}x{dhv} L={chunk_size}")


def test_forward_matches_float64_truth():
    """The forward at S = 256 (4 chunks of 64, several row blocks) against the recurrent form in float64."""
    args64 = mlstm_inputs(8, b=1, nh=2, s=256, dhqk=32, dhv=32)
    state64 = mlstm_state(9, b=1, nh=2, dhqk=32, dhv=32)
    with jax.enable_x64(True):
        h_true, final_true = mlstm_recurrent(*args64, initial_state=state64)
        h_true, final_true = np.asarray(h_true), jax.tree.map(np.asarray, final_true)
    h, final = cpu.mlstm_chunkwise_cpu(*cast(args64, jnp.float32), initial_state=cast(state64, jnp.float32))
    assert_close(h, h_true, FWD_TOL, "h vs float64")
    for name, x, x_true in zip("cnm", final, final_true):
        assert_close(x, x_true, FWD_TOL, f"final {name} vs float64")


def test_gradients_match_float64_truth():
    """Every gradient at S = 256 (4 chunks of 64: 16 row blocks each, the reverse walk over chunks, an
    initial state and a cotangent on the final state) against autodiff of the recurrent form in float64."""
    args64 = mlstm_inputs(14, b=1, nh=2, s=256, dhqk=32, dhv=48)
    state64 = mlstm_state(15, b=1, nh=2, dhqk=32, dhv=48)
    rng = np.random.default_rng(16)
    cot64 = (rng.normal(size=(1, 2, 256, 48)), MLSTMState(*(rng.normal(size=np.shape(x)) for x in state64)))
    with jax.enable_x64(True):
        _, grads_true = value_and_vjp(mlstm_recurrent, args64, state64, jax.tree.map(jnp.asarray, cot64))
        grads_true = jax.tree.map(np.asarray, grads_true)
    f32 = lambda x: cast(x, jnp.float32)
    _, grads = _kernel(f32(args64), f32(state64), jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), cot64), 64)
    for n, (g, g_true) in enumerate(zip(jax.tree.leaves(grads), jax.tree.leaves(grads_true))):
        assert_close(g, g_true, FWD_TOL, f"gradient {n} vs float64")


def test_primal_call_equals_the_forward_of_the_gradient():
    """Without a gradient the kernel skips writing the memories entering each chunk; h is the same up to
    the rounding of the gate algebra around it (XLA fuses it differently under ``jax.vjp``)."""
    args, state, cot = case("normal", 40)
    h, final = jax.jit(partial(cpu.mlstm_chunkwise_cpu, chunk_size=16))(*args, initial_state=state)
    (h_vjp, final_vjp), _ = _kernel(args, state, cot, chunk_size=16)
    assert_close(h, h_vjp, 1e-6, "primal h")
    for name, a, b in zip("cnm", final, final_vjp):
        assert_close(a, b, 1e-6, f"primal final {name}")


@pytest.mark.parametrize("name", ["k", "v"])
def test_a_nonfinite_k_or_v_reaches_only_later_outputs(name):
    """As the XLA form: a NaN at step s makes h NaN from s on and not before (the shared guard)."""
    q, k, v, i, f = cast(mlstm_inputs(10, b=1, nh=2, s=40, dhqk=16, dhv=16), jnp.float32)
    args = {"k": k, "v": v}
    args[name] = args[name].at[:, :, 21].set(jnp.nan)
    h, _ = cpu.mlstm_chunkwise_cpu(q, args["k"], args["v"], i, f, chunk_size=16)
    h_ref, _ = mlstm_chunkwise(q, args["k"], args["v"], i, f, chunk_size=16)
    assert np.all(np.isfinite(np.asarray(h[:, :, :21])))
    assert np.all(np.isnan(np.asarray(h[:, :, 21:])))
    assert_close(h[:, :, :21], h_ref[:, :, :21], FWD_TOL, f"h before the NaN in {name}")


def test_bfloat16_inputs():
    """bfloat16 q, k, v are computed in float32 (the XLA form's compute dtype); h comes back in bfloat16."""
    args, state, cot = case("normal", 40, dtype=jnp.bfloat16)
    out, grads = _kernel(args, state, cot, chunk_size=16)
    out_ref, grads_ref = reference(args, state, cot, chunk_size=16)
    assert out[0].dtype == jnp.bfloat16
    check(out, grads, out_ref, grads_ref, BF16_FWD_TOL, BF16_GRAD_TOL, "bfloat16")


def test_vmap_over_a_leading_axis():
    q, k, v, i, f = cast(mlstm_inputs(11, b=1, nh=2, s=24, dhqk=16, dhv=16), jnp.float32)
    stack = lambda x: jnp.stack([x, 0.5 * x, -x])
    batched = jax.vmap(lambda *a: cpu.mlstm_chunkwise_cpu(*a, chunk_size=8)[0])(*map(stack, (q, k, v, i, f)))
    for n in range(3):
        one = mlstm_chunkwise(*(stack(x)[n] for x in (q, k, v, i, f)), chunk_size=8)[0]
        assert_close(batched[n], one, FWD_TOL, f"vmapped h[{n}]")


def test_forward_mode_autodiff_is_refused_with_the_alternatives():
    args = cast(mlstm_inputs(18, s=8), jnp.float32)
    with pytest.raises(TypeError, match="mlstm_chunkwise_cpu has a hand-written reverse-mode gradient.*jax.jacrev"):
        jax.jvp(lambda q: cpu.mlstm_chunkwise_cpu(q, *args[1:])[0], (args[0],), (jnp.ones_like(args[0]),))


def test_float64_inputs_are_refused():
    with jax.enable_x64(True):
        args = cast(mlstm_inputs(12, s=8), jnp.float64)
        with pytest.raises(ValueError, match="CPU mLSTM kernel computes in float32, got inputs giving float64"):
            cpu.mlstm_chunkwise_cpu(*args)


def test_backend_matches_the_xla_form_and_falls_back_when_it_cannot_build(monkeypatch, caplog):
    q, k, v, i, f = cast(mlstm_inputs(13, s=37, dhqk=16, dhv=32), jnp.float32)
    ref = backends.mlstm(q, k, v, i, f, backend="chunkwise", chunk_size=16)
    assert_close(backends.mlstm(q, k, v, i, f, backend="cpu_ffi", chunk_size=16), ref, FWD_TOL, "cpu_ffi h")

    def no_build():
        raise native.NativeBuildError("no C++ compiler found (set CXX, or install g++ or clang++)")

    monkeypatch.setattr(cpu, "load", no_build)
    with caplog.at_level(logging.WARNING, logger="xlstm_jax.backends"):
        h = backends.mlstm(q, k, v, i, f, backend="cpu_ffi", chunk_size=16)
    np.testing.assert_array_equal(np.asarray(h), np.asarray(ref))
    assert "backend 'cpu_ffi' cannot run" in caplog.text and "no C++ compiler found" in caplog.text


def test_a_failed_build_is_not_retried_in_the_process(tmp_path, monkeypatch):
    """A source that does not compile is compiled once: later registrations raise the same error."""
    monkeypatch.setenv("XLSTM_JAX_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.cc"
    bad.write_text("this is not C++\n")
    compiles = []
    real = native.library_path
    monkeypatch.setattr(native, "library_path", lambda source: compiles.append(source) or real(source))
    target = f"xlstm_test_broken_{tmp_path.name}"
    with pytest.raises(native.NativeBuildError, match="compiling broken.cc failed") as first:
        native.register(bad, "Handler", target)
    with pytest.raises(native.NativeBuildError) as second:
        native.register(bad, "Handler", target)
    assert second.value is first.value and compiles == [bad]


def test_auto_runs_the_kernel_on_a_cpu_for_float32_only(monkeypatch, caplog):
    """``auto`` on a CPU: the C++ kernels for float32 (and bfloat16) inputs, the XLA form for float64
    inputs and where the kernels do not build (the reason logged once per process)."""
    q, k, v, i, f = cast(mlstm_inputs(17, s=37, dhqk=16, dhv=32), jnp.float32)
    lowered = lambda *a: jax.jit(partial(backends.mlstm, backend="auto", chunk_size=16)).lower(*a).as_text()
    assert cpu.KERNELS["fwd"][2] in lowered(q, k, v, i, f)
    assert cpu.KERNELS["fwd"][2] in lowered(*cast((q, k, v, i, f), jnp.bfloat16))
    assert_close(backends.mlstm(q, k, v, i, f, backend="auto", chunk_size=16),
                 mlstm_chunkwise(q, k, v, i, f, chunk_size=16)[0], FWD_TOL, "auto h")  # fmt: skip
    with jax.enable_x64(True):
        assert cpu.KERNELS["fwd"][2] not in lowered(*cast((q, k, v, i, f), jnp.float64))

    def no_build():
        raise native.NativeBuildError("no C++ compiler found")

    backends._cpu_kernel_builds.cache_clear()
    monkeypatch.setattr(cpu, "load", no_build)
    try:
        with caplog.at_level(logging.INFO, logger="xlstm_jax.backends"):
            assert cpu.KERNELS["fwd"][2] not in lowered(q, k, v, i, f)
            assert cpu.KERNELS["fwd"][2] not in lowered(q[:, :, :20], k[:, :, :20], v[:, :, :20], i[:, :, :20],
                                                        f[:, :, :20])  # fmt: skip
        assert caplog.text.count("runs the XLA chunkwise form on this CPU") == 1, caplog.text
        assert "no C++ compiler found" in caplog.text
    finally:
        backends._cpu_kernel_builds.cache_clear()


def test_build_cache_missing_compiler_and_compile_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("XLSTM_JAX_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "ok.cc"
    source.write_text('extern "C" int answer() { return 42; }\n')
    path = native.library_path(source)
    assert path.parent == tmp_path / "cache" and path.exists()
    stamp = path.stat().st_mtime_ns
    assert native.library_path(source) == path and path.stat().st_mtime_ns == stamp  # cached, not rebuilt
    source.write_text('extern "C" int answer() { return 43; }\n')
    assert native.library_path(source) != path  # a changed source builds anew
    path = native.library_path(source)

    (tmp_path / "common.h").write_text("// a header the source may include\n")
    with_header = native.library_path(source)
    assert with_header != path  # a header beside the source is part of the key

    bad = tmp_path / "bad.cc"
    bad.write_text("this is not C++\n")
    with pytest.raises(native.NativeBuildError, match="compiling bad.cc failed"):
        native.library_path(bad)
    assert all(p.name.startswith("ok-") for p in (tmp_path / "cache").iterdir())  # nothing half-written

    monkeypatch.setenv("CXX", "")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(native.NativeBuildError, match="no C\\+\\+ compiler found"):
        native.library_path(source)
