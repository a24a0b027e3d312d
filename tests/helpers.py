"""Shared test utilities: random cell inputs (normal and extreme), tolerance checks, perturbed model
weights and the check that the official PyTorch packages are importable."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from xlstm_jax.ops import MLSTMState, SLSTMState


def assert_close(actual, ref, rel: float, name: str = "", floor: float = 1e-30, context: str = "") -> float:
    """Assert max|actual - ref| <= rel * max(max|ref|, floor); return that relative error.

    ``floor`` is for quantities whose true value is tiny compared with the rest
    of the computation (e.g. a gradient that exists only through eps).
    """
    actual = np.asarray(actual, np.float64)
    ref = np.asarray(ref, np.float64)
    assert actual.shape == ref.shape, f"{name}: shape {actual.shape} != {ref.shape}"
    bad = np.argwhere(~np.isfinite(actual))
    assert bad.size == 0, f"{name}: non-finite values at {bad[:5].tolist()}{context}"
    scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, floor)
    err = np.abs(actual - ref)
    max_err = float(err.max()) if err.size else 0.0
    if scale == 0.0:  # an exactly zero reference must be matched exactly
        assert max_err == 0.0, f"{name}: reference is 0, actual has max |value| {max_err:.3e}{context}"
        return 0.0
    rel_err = max_err / scale
    if rel_err > rel:
        idx = np.unravel_index(int(np.argmax(err)), err.shape)
        raise AssertionError(
            f"{name}: max error {rel_err:.3e} x scale {scale:.3e} exceeds {rel:.1e} (worst at "
            f"{tuple(int(j) for j in idx)}: actual {actual[idx]:.8e}, ref {ref[idx]:.8e}){context}"
        )
    return rel_err


def assert_tree_close(actual, ref, rel: float, name: str = "") -> None:
    leaves_a, tree_a = jax.tree.flatten(actual)
    leaves_r, tree_r = jax.tree.flatten(ref)
    assert tree_a == tree_r, f"{name}: {tree_a} != {tree_r}"
    for idx, (a, r) in enumerate(zip(leaves_a, leaves_r)):
        assert_close(a, r, rel, f"{name}[{idx}]")


def mlstm_inputs(seed: int, b=2, nh=2, s=37, dhqk=8, dhv=12, *, gates="normal", dtype=np.float64):
    """q, k, v, i, f as numpy arrays.

    gates:
      "normal":  i ~ N(0, 1), f ~ N(3, 1) (forget gates mostly open, as after init).
      "extreme": pre-activations drawn from +-30, a run of f = -30 (memory wiped),
                 a run of i = +30, and isolated input-gate spikes of +100, whose
                 exp overflows float32 without the stabilizer.
      "resets":  "normal" with f = -inf (an exact reset of the memory, as at document
                 boundaries) at two adjacent tokens and a few more.
    """
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, nh, s, dhqk))
    k = rng.normal(size=(b, nh, s, dhqk))
    v = rng.normal(size=(b, nh, s, dhv))
    if gates == "normal":
        i = rng.normal(size=(b, nh, s))
        f = rng.normal(size=(b, nh, s)) + 3.0
    elif gates == "resets":
        i = rng.normal(size=(b, nh, s))
        f = rng.normal(size=(b, nh, s)) + 3.0
        f[..., [3, s // 5, s // 5 + 1, s // 2, s - 2]] = -np.inf
    elif gates == "extreme":
        i = rng.uniform(-30, 30, size=(b, nh, s))
        f = rng.uniform(-30, 30, size=(b, nh, s))
        f[..., s // 4 : s // 4 + 6] = -30.0
        i[..., s // 2 : s // 2 + 5] = 30.0
        i[..., 3 :: max(s // 3, 1)] = 100.0
    else:
        raise ValueError(gates)
    return tuple(x.astype(dtype) for x in (q, k, v, i, f))


def mlstm_state(seed: int, b=2, nh=2, dhqk=8, dhv=12, dtype=np.float64) -> MLSTMState:
    rng = np.random.default_rng(seed)
    return MLSTMState(
        c=rng.normal(size=(b, nh, dhqk, dhv)).astype(dtype),
        n=rng.normal(size=(b, nh, dhqk)).astype(dtype),
        m=rng.uniform(-1, 1, size=(b, nh)).astype(dtype),
    )


def slstm_inputs(seed: int, b=2, s=11, nh=2, dh=6, *, scale=1.0, dtype=np.float64):
    """gates_x (B,S,4,NH,DH), recurrent_kernel (NH,DH,4,DH), bias (NH,4,DH)."""
    rng = np.random.default_rng(seed)
    gates_x = scale * rng.normal(size=(b, s, 4, nh, dh))
    kernel = rng.normal(size=(nh, dh, 4, dh)) / np.sqrt(dh)
    bias = rng.normal(size=(nh, 4, dh))
    return tuple(x.astype(dtype) for x in (gates_x, kernel, bias))


def slstm_state(seed: int, b=2, nh=2, dh=6, dtype=np.float64) -> SLSTMState:
    rng = np.random.default_rng(seed)
    return SLSTMState(
        h=rng.normal(size=(b, nh, dh)).astype(dtype),
        c=rng.normal(size=(b, nh, dh)).astype(dtype),
        n=rng.uniform(0.5, 2.0, size=(b, nh, dh)).astype(dtype),
        m=rng.uniform(-1, 1, size=(b, nh, dh)).astype(dtype),
    )


def cast(tree, dtype):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def perturbed(model, seed: int = 0, scale: float = 0.1):
    """``model`` with ``scale * N(0, 1)`` noise added to every parameter (keys split from ``seed``),
    so that zero-initialized weights (gates, norms, recurrent kernels) matter in a comparison."""
    graphdef, params = nnx.split(model)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))


_OPT_FLAG = "--xla_backend_optimization_level=0"


def xla_flags(*flags: str) -> str:
    """``XLA_FLAGS`` for a test's subprocess: ``flags`` plus the test run's compile-speed flag when
    ``conftest.py`` set it (see there), so a subprocess compiles the way the test process does."""
    own = os.environ.get("XLA_FLAGS", "").split()
    return " ".join([*flags, *([_OPT_FLAG] if _OPT_FLAG in own else [])])


OFFICIAL_PACKAGES = ("torch", "mlstm_kernels", "xlstm")


def require_official():
    """Skip the calling test unless the official PyTorch packages import; returns ``torch``."""
    for mod in OFFICIAL_PACKAGES:
        pytest.importorskip(mod, reason=f"live parity needs the official {mod!r} package (not importable)")
    import torch

    return torch


def layout_rounding_bound(config) -> float:
    """How far two float32 evaluations of one model that differ only in summation order may drift apart,
    relative to max|logits|, for an ``xLSTMLargeConfig``.

    The fused layout computes the same dot products as the single one (q, k, v and o share one
    matmul, so do i and f, and the FFN's two up-projections), but XLA may block and sum the longer
    fused matmuls in another order. A length-K float32 dot product carries a rounding error of at most
    K u sum|x w| (Higham's gamma_K, u = 2^-24), so two orders differ by up to 2 K u there. First order,
    these differences add up along the path from the embedding to the logits, and the norms rescale
    rather than amplify them: per block the projections (K = D), the cell (K = chunk_size within a
    chunk + DHQK for q.k), out_proj (K = v_dim), the FFN (K = D up, ffn_dim down); then the head (K = D).
    """
    u = float(np.finfo(np.float32).eps) / 2
    per_block = (
        config.embedding_dim + config.chunk_size + config.qk_head_dim + config.v_dim
        + config.embedding_dim + config.ffn_dim
    )  # fmt: skip
    return 2 * u * (config.num_blocks * per_block + config.embedding_dim)
