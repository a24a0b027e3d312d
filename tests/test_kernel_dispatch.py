"""The Pallas kernels reached through ``xlstm_jax.backends`` (interpret mode on CPU).

The kernels' own tests (``test_pallas_*.py``) compare each kernel with its pure-JAX twin in
detail; here the dispatch point is checked: kernel backends give the XLA form's outputs and
gradients, shapes a kernel cannot tile fall back to XLA with a logged reason, the kernels run
under ``jax.shard_map`` inside a mesh, and whole models give the same logits with either backend.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from helpers import (
    assert_close,
    cast,
    mlstm_inputs,
    mlstm_state,
    perturbed,
    slstm_inputs,
    slstm_state,
    xla_flags,
)
from xlstm_jax import backends, ops

KERNELS = ("pallas_tpu", "pallas_gpu")
MLSTM_KERNELS = (*KERNELS, "cpu_ffi")  # the C++ CPU kernel has no sLSTM
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("backend", MLSTM_KERNELS)
def test_mlstm_kernel_backends_match_xla(backend):
    q, k, v, i, f = cast(mlstm_inputs(21, s=37, dhqk=16, dhv=32), jnp.float32)
    state = cast(mlstm_state(22, dhqk=16, dhv=32), jnp.float32)

    def loss(fn_backend, q, k, v, i, f, state):
        h, final = backends.mlstm(q, k, v, i, f, backend=fn_backend, chunk_size=16, initial_state=state,
                                  return_state=True)  # fmt: skip
        return jnp.sum(h * jnp.cos(h)) + sum(jnp.sum(jnp.sin(x)) for x in final), (h, final)

    grad = jax.grad(loss, argnums=(1, 2, 3, 4, 5, 6), has_aux=True)
    ref_grads, (ref_h, ref_state) = grad("chunkwise", q, k, v, i, f, state)
    grads, (h, final) = grad(backend, q, k, v, i, f, state)
    assert_close(h, ref_h, 1e-4, f"{backend} h")
    for name, a, b in zip("cnm", final, ref_state):
        assert_close(a, b, 1e-4, f"{backend} state.{name}")
    for name, a, b in zip(("q", "k", "v", "i", "f", "state"), grads, ref_grads):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            assert_close(x, y, 1e-3, f"{backend} d{name}")


@pytest.mark.parametrize("backend", KERNELS)
def test_slstm_kernel_backends_match_xla(backend):
    gates_x, kernel, bias = cast(slstm_inputs(23, b=3, s=11, nh=2, dh=16), jnp.float32)
    state = cast(slstm_state(24, b=3, nh=2, dh=16), jnp.float32)
    resets = jnp.zeros((3, 11), bool).at[1, 5].set(True)

    def loss(fn_backend, gates_x, kernel, bias, state):
        h, final = backends.slstm(gates_x, kernel, bias, backend=fn_backend, initial_state=state, resets=resets)
        return jnp.sum(h * jnp.cos(h)) + sum(jnp.sum(jnp.sin(x)) for x in final), (h, final)

    grad = jax.grad(loss, argnums=(1, 2, 3, 4), has_aux=True)
    ref_grads, (ref_h, ref_state) = grad("scan", gates_x, kernel, bias, state)
    grads, (h, final) = grad(backend, gates_x, kernel, bias, state)
    assert_close(h, ref_h, 1e-4, f"{backend} h")
    for name, a, b in zip("hcnm", final, ref_state):
        assert_close(a, b, 1e-4, f"{backend} state.{name}")
    for name, a, b in zip(("gates_x", "recurrent_kernel", "bias", "state"), grads, ref_grads):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            assert_close(x, y, 1e-3, f"{backend} d{name}")


def test_untileable_shapes_fall_back_to_xla_with_a_reason(caplog):
    """The GPU (Triton) sLSTM kernel needs a head dim it can tile: DH=6 runs the XLA scan. (An mLSTM head
    dim that is not a power of 2 runs the kernel zero-padded: test_pallas_mlstm_gpu.py.)"""
    gates_x, kernel, bias = cast(slstm_inputs(26, dh=6), jnp.float32)
    with caplog.at_level(logging.WARNING, logger="xlstm_jax.backends"):
        hs, _ = backends.slstm(gates_x, kernel, bias, backend="pallas_gpu")
    assert_close(hs, ops.slstm_scan(gates_x, kernel, bias)[0], 1e-6, "sLSTM fallback")
    text = caplog.text
    assert "sLSTM backend 'pallas_gpu' cannot run" in text and "DH=6 must be a multiple of 16" in text, text


def test_auto_runs_the_xla_mlstm_for_head_dims_not_measured_on_gpu(monkeypatch, caplog):
    """On a GPU, mLSTM ``auto`` takes the kernel for power-of-2 head dims and the XLA form for others
    (the padded kernel is not measured on hardware); ``pallas_gpu`` takes the kernel for both."""
    monkeypatch.setattr(backends, "_platform", lambda: "gpu")
    ran = []  # the kernel cannot run here (not interpreted on a "gpu"): a stand-in records the call

    def stand_in(q, k, v, i, f, *, initial_state, chunk_size, eps, blocks, interpret):
        ran.append(q.shape[-1])
        return ops.mlstm_chunkwise(q, k, v, i, f, initial_state=initial_state, chunk_size=16, eps=eps)

    spy = dataclasses.replace(backends.IMPLEMENTATIONS["mlstm", "pallas_gpu"], run=stand_in)
    monkeypatch.setitem(backends.IMPLEMENTATIONS, ("mlstm", "pallas_gpu"), spy)
    wide = cast(mlstm_inputs(25, s=9, dhqk=24, dhv=32), jnp.float32)
    with caplog.at_level(logging.INFO, logger="xlstm_jax.backends"):
        h = backends.mlstm(*wide, backend="auto")
    assert_close(h, ops.mlstm_chunkwise(*wide)[0], 1e-6, "XLA form")
    assert "mLSTM backend 'auto' runs the XLA form for head dims (24, 32) on GPU" in caplog.text, caplog.text
    assert ran == []
    backends.mlstm(*wide, backend="pallas_gpu")
    backends.mlstm(*cast(mlstm_inputs(25, s=9, dhqk=16, dhv=32), jnp.float32), backend="auto")
    assert ran == [24, 16]


@pytest.mark.parametrize("dh", [64, 128])
def test_auto_runs_the_slstm_scan_on_gpu(monkeypatch, caplog, dh):
    """On a GPU, sLSTM ``auto`` runs the XLA scan at every head dim (faster than the kernel for
    forward+backward on an H200), while ``pallas_gpu`` still reaches the kernel."""
    monkeypatch.setattr(backends, "_platform", lambda: "gpu")
    gates_x, kernel, bias = cast(slstm_inputs(28, b=1, s=3, nh=1, dh=dh), jnp.float32)
    ran = []  # the kernel cannot run here (not interpreted on a "gpu"): a stand-in records the call

    def stand_in(gates_x, kernel, bias, *, initial_state, resets, blocks, interpret):
        ran.append(blocks)
        return ops.slstm_scan(gates_x, kernel, bias, initial_state=initial_state, resets=resets)

    spy = dataclasses.replace(backends.IMPLEMENTATIONS["slstm", "pallas_gpu"], run=stand_in)
    monkeypatch.setitem(backends.IMPLEMENTATIONS, ("slstm", "pallas_gpu"), spy)
    with caplog.at_level(logging.INFO, logger="xlstm_jax.backends"):
        h, _ = backends.slstm(gates_x, kernel, bias, backend="auto")
    assert_close(h, ops.slstm_scan(gates_x, kernel, bias)[0], 1e-6, "scan")
    assert "sLSTM backend 'auto' runs the XLA scan on GPU" in caplog.text, caplog.text
    assert not ran
    backends.slstm(gates_x, kernel, bias, backend="pallas_gpu")
    assert len(ran) == 1


def test_kernels_for_another_accelerator_are_refused_on_it(monkeypatch):
    q, k, v, i, f = cast(mlstm_inputs(27, s=8), jnp.float32)
    monkeypatch.setattr(backends, "_platform", lambda: "tpu")
    with pytest.raises(ValueError, match="backend 'pallas_gpu' needs a GPU; this is a tpu"):
        backends.mlstm(q, k, v, i, f, backend="pallas_gpu")


_SHARDED = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType
from helpers import assert_close, cast, mlstm_inputs, slstm_inputs
from xlstm_jax import backends, ops
assert jax.device_count() == 4, jax.devices()
meshes = {t: jax.make_mesh((2, 1, 2), ("data", "fsdp", "tensor"), axis_types=(t,) * 3)
          for t in (AxisType.Explicit, AxisType.Auto)}
q, k, v, i, f = cast(mlstm_inputs(31, b=2, nh=2, s=20, dhqk=16, dhv=32), jnp.float32)
gates_x, kernel, bias = cast(slstm_inputs(32, b=2, s=7, nh=2, dh=16), jnp.float32)
ref_m, ref_m_state = ops.mlstm_chunkwise(q, k, v, i, f, chunk_size=8)
ref_s, ref_s_state = ops.slstm_scan(gates_x, kernel, bias)
for axis_type, backend in ((AxisType.Explicit, "pallas_tpu"), (AxisType.Auto, "pallas_gpu")):
    with jax.set_mesh(meshes[axis_type]):
        fm = jax.jit(lambda *a: backends.mlstm(*a, backend=backend, chunk_size=8, return_state=True))
        text = fm.lower(q, k, v, i, f).as_text()
        assert "shard_map" in text or "sdy.manual_computation" in text, "mLSTM kernel not under shard_map"
        h, st = fm(q, k, v, i, f)
        assert_close(h, ref_m, 1e-4, backend + " sharded mLSTM h")
        assert_close(st.c, ref_m_state.c, 1e-4, backend + " sharded mLSTM c")
        loss = lambda name: lambda *a: jnp.sum(jnp.sin(backends.mlstm(*a, backend=name, chunk_size=8)))
        dq, di = jax.jit(jax.grad(loss(backend), argnums=(0, 3)))(q, k, v, i, f)
        ref_dq, ref_di = jax.grad(loss("chunkwise"), argnums=(0, 3))(q, k, v, i, f)
        assert_close(dq, ref_dq, 1e-3, backend + " sharded mLSTM dq")
        assert_close(di, ref_di, 1e-3, backend + " sharded mLSTM di")
        fs = jax.jit(lambda *a: backends.slstm(*a, backend=backend))
        text = fs.lower(gates_x, kernel, bias).as_text()
        assert "shard_map" in text or "sdy.manual_computation" in text, "sLSTM kernel not under shard_map"
        hs, sst = fs(gates_x, kernel, bias)
        assert_close(hs, ref_s, 1e-4, backend + " sharded sLSTM h")
        assert_close(sst.c, ref_s_state.c, 1e-4, backend + " sharded sLSTM c")
        loss = lambda name: lambda *a: jnp.sum(jnp.sin(backends.slstm(*a, backend=name)[0]))
        dg, dr = jax.jit(jax.grad(loss(backend), argnums=(0, 1)))(gates_x, kernel, bias)
        ref_dg, ref_dr = jax.grad(loss("scan"), argnums=(0, 1))(gates_x, kernel, bias)
        assert_close(dg, ref_dg, 1e-3, backend + " sharded sLSTM dgates_x")
        assert_close(dr, ref_dr, 1e-3, backend + " sharded sLSTM drecurrent_kernel")
        if axis_type == AxisType.Auto:  # the C++ CPU mLSTM kernel, one call per device under shard_map
            fm = jax.jit(lambda *a: backends.mlstm(*a, backend="cpu_ffi", chunk_size=8, return_state=True))
            text = fm.lower(q, k, v, i, f).as_text()
            assert "shard_map" in text or "sdy.manual_computation" in text, "CPU mLSTM kernel not under shard_map"
            h, st = fm(q, k, v, i, f)
            assert_close(h, ref_m, 1e-4, "cpu_ffi sharded mLSTM h")
            assert_close(st.c, ref_m_state.c, 1e-4, "cpu_ffi sharded mLSTM c")
            mloss = lambda name: lambda *a: jnp.sum(jnp.sin(backends.mlstm(*a, backend=name, chunk_size=8)))
            dq, di = jax.jit(jax.grad(mloss("cpu_ffi"), argnums=(0, 3)))(q, k, v, i, f)
            ref_dq, ref_di = jax.grad(mloss("chunkwise"), argnums=(0, 3))(q, k, v, i, f)
            assert_close(dq, ref_dq, 1e-3, "cpu_ffi sharded mLSTM dq")
            assert_close(di, ref_di, 1e-3, "cpu_ffi sharded mLSTM di")
# Logical-axis rules: batch over tensor and heads over data give the same numbers; a mesh that cannot
# divide the batch or the sequence is a ValueError naming the axes and sizes.
with jax.set_mesh(meshes[AxisType.Auto]):
    with backends.axis_rules({"batch": "tensor", "heads": ["data"], "embed": ["fsdp"]}):
        assert backends.mesh_axes(2, 2) == (("tensor",), ("data",))
        h = jax.jit(lambda *a: backends.mlstm(*a, backend="pallas_gpu", chunk_size=8))(q, k, v, i, f)
        assert_close(h, ref_m, 1e-4, "mLSTM h with swapped axis rules")
    assert backends.mesh_axes(2, 2) == (("data",), ("tensor",))  # the defaults again
    for fn, args in ((lambda *a: backends.mlstm(*a, backend="pallas_tpu"), (q[:1], k[:1], v[:1], i[:1], f[:1])),
                     (lambda *a: backends.slstm(*a, backend="pallas_gpu"), (gates_x[:1], kernel, bias))):
        try:
            fn(*args)
            raise AssertionError("a batch of 1 on a data=2 mesh ran")
        except ValueError as err:
            assert "batch 1 is not divisible by its mesh axes {'data': 2}" in str(err), err
    with backends.axis_rules({"length": ["tensor"]}):  # context parallelism: tests/test_context_parallel.py
        try:
            backends.mlstm(*(x[:, :, :19] for x in (q, k, v, i, f)), backend="pallas_tpu")
            raise AssertionError("a sequence of 19 split over tensor=2 ran")
        except ValueError as err:
            assert "length 19 is not divisible by its mesh axes {'tensor': 2}" in str(err), err
print("SHARDED-OK")
"""


def test_kernels_run_under_shard_map_in_a_mesh():
    """4 fake CPU devices, mesh (data=2, fsdp=1, tensor=2): batch and heads split across shards;
    Explicit mesh axes (``jax.make_mesh``'s default) and Auto ones (the trainer's); the logical-axis
    rules decide the split, and a mesh that cannot split the batch is an error."""
    env = {**os.environ, "XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=4"), "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_SHARDED)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0 and "SHARDED-OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def _lm_logits(backend: str, slstm_backend: str, ids):
    from xlstm_jax.models.xlstm_lm import mLSTMLayerConfig, sLSTMLayerConfig, xLSTMLMConfig, xLSTMLMModel

    config = xLSTMLMConfig(
        vocab_size=50,
        embedding_dim=32,
        num_blocks=2,
        slstm_at=(1,),
        mlstm=mLSTMLayerConfig(num_heads=2),  # inner dim 64: DHQK = DHV = 32
        slstm=sLSTMLayerConfig(num_heads=2),  # DH = 16
        backend=backend,
        slstm_backend=slstm_backend,
        chunk_size=8,
    )
    return perturbed(xLSTMLMModel(config, rngs=nnx.Rngs(0)), seed=1)(ids)


@pytest.mark.parametrize("backend", MLSTM_KERNELS)
def test_models_give_the_same_logits_with_kernel_backends(backend):
    ids = jax.random.randint(jax.random.key(2), (2, 19), 0, 50)
    ref = _lm_logits("chunkwise", "scan", ids)
    slstm_backend = backend if backend in KERNELS else "scan"
    assert_close(_lm_logits(backend, slstm_backend, ids), ref, 1e-4, f"xLSTMLMModel {backend}")


@pytest.mark.parametrize("backend", MLSTM_KERNELS)
def test_xlstm_large_gives_the_same_logits_with_kernel_backends(backend):
    from xlstm_jax.models.xlstm_large import xLSTMLarge, xLSTMLargeConfig

    def logits(name):
        config = xLSTMLargeConfig(
            vocab_size=50, embedding_dim=64, num_heads=2, num_blocks=2, backend=name, chunk_size=8
        )  # DHQK = 16, DHV = 32
        return perturbed(xLSTMLarge(config, rngs=nnx.Rngs(3)), seed=1)(ids)

    ids = jax.random.randint(jax.random.key(4), (2, 19), 0, 50)
    assert_close(logits(backend), logits("chunkwise"), 1e-4, f"xLSTMLarge {backend}")
