"""Shared NNX layers and the single backend dispatch point."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import assert_close, cast, layout_rounding_bound, mlstm_inputs
from xlstm_jax import backends, nn, ops


def test_causal_conv_streaming_equals_whole_sequence():
    conv = nn.CausalConv1d(3, 4, init=nn.uniform(0.5), bias_init=nn.uniform(0.5), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 9, 3))
    y, state = conv(x)
    # Definition: tap j multiplies x[t - K + 1 + j], zeros before the start.
    padded = jnp.pad(x, ((0, 0), (3, 0), (0, 0)))
    ref = sum(padded[:, j : j + 9] * conv.kernel[...][j] for j in range(4)) + conv.bias[...]
    assert_close(y, ref, 1e-6, "conv")
    pieces, st = [], None
    for lo, hi in [(0, 1), (1, 5), (5, 6), (6, 9)]:
        out, st = conv(x[:, lo:hi], st)
        pieces.append(out)
    assert_close(jnp.concatenate(pieces, 1), y, 1e-6, "streamed")
    assert_close(st, state, 0.0, "state")


def test_norms_and_headwise_linear():
    x = jax.random.normal(jax.random.key(2), (2, 5, 3, 4)) * 3 + 1
    mh = nn.MultiHeadLayerNorm(12, eps=1e-5, residual_weight=True)
    mh.weight[...] = jnp.arange(12.0) / 10
    ref = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-5)
    assert_close(mh(x), ref.reshape(2, 5, 12) * (1 + jnp.arange(12.0) / 10), 1e-5, "multi-head LN")
    rms = nn.LayerNorm(4, eps=1e-6, center=False)
    assert_close(rms(x), x / jnp.sqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6), 1e-6, "RMSNorm")
    with jax.enable_x64(True):
        x64 = jnp.asarray(np.random.default_rng(3).normal(size=(4, 8)))
        out = nn.LayerNorm(8, eps=0.0, param_dtype=jnp.float64, dtype=jnp.float64)(x64)
        assert out.dtype == jnp.float64
        assert_close(out, (x64 - x64.mean(-1, keepdims=True)) / x64.std(-1, keepdims=True), 1e-12, "float64 LN")
    hw = nn.HeadwiseLinear(3, 2, 5, use_bias=False, init=nn.normal(1.0), rngs=nnx.Rngs(4))
    xin = jax.random.normal(jax.random.key(5), (7, 6))
    w = hw.weight[...]  # (3, 5, 2)
    dense = jax.scipy.linalg.block_diag(*[w[b].T for b in range(3)])  # (6, 15)
    assert_close(hw(xin), xin @ dense, 1e-6, "block diagonal")


@pytest.mark.parametrize(
    "blocks, size, heads, bias",
    [(8, 4, 2, True), (8, 4, 1, False), (6, 2, 4, True), (2, 12, 2, False)],
    ids=["elementwise", "one-head", "blocks-straddle-heads", "wide-blocks"],
)
def test_headwise_linear_forms_against_float64(blocks, size, heads, bias):
    """Token-major ``__call__`` and head-major ``heads_major`` (elementwise for small blocks with a
    custom backward; a batched dot for wide ones; through the token layout when the heads split a
    block) against the dense block-diagonal matrix in float64, values and gradients."""
    hw = nn.HeadwiseLinear(blocks, size, size, use_bias=bias, init=nn.normal(1.0), rngs=nnx.Rngs(6))
    if bias:
        hw.bias[...] = jnp.linspace(-1.0, 1.0, blocks * size)
    b, s, width = 2, 3, blocks * size
    x = np.random.default_rng(7).normal(size=(b, s, width))
    ct = np.random.default_rng(8).normal(size=(b, s, width))
    w64, b64 = np.asarray(hw.weight[...], np.float64), np.asarray(hw.bias[...], np.float64) if bias else 0.0
    dense = jax.scipy.linalg.block_diag(*[w64[j].T for j in range(blocks)])
    ref, dx_ref = x @ dense + b64, ct @ dense.T
    dw_ref = np.einsum("nbo,nbi->boi", ct.reshape(-1, blocks, size), x.reshape(-1, blocks, size))

    def to_heads(t):
        return jnp.swapaxes(t.reshape(b, s, heads, -1), 1, 2)

    graphdef, params = nnx.split(hw)
    forms = {
        "token": lambda m, t: m(t),
        "heads": lambda m, t: jnp.swapaxes(m.heads_major(to_heads(t)), 1, 2).reshape(b, s, width),
    }
    for name, form in forms.items():
        loss = lambda p, t: jnp.sum(form(nnx.merge(graphdef, p), t) * ct)  # noqa: B023
        y = form(hw, jnp.asarray(x, jnp.float32))
        assert_close(y, ref, 2e-5, f"{name} forward")
        dp, dx = jax.grad(loss, argnums=(0, 1))(params, jnp.asarray(x, jnp.float32))
        assert_close(dx, dx_ref, 2e-5, f"{name} dx")
        assert_close(dp["weight"][...], dw_ref, 2e-5, f"{name} dweight")


def test_mlstm_dispatch():
    q, k, v, i, f = cast(mlstm_inputs(6, s=9), jnp.float32)
    h, state = ops.mlstm_chunkwise(q, k, v, i, f)
    for backend in (*backends.MLSTM_XLA_FORMS, "xla", "auto"):  # auto is the C++ kernel on a CPU (float32)
        assert_close(backends.mlstm(q, k, v, i, f, backend=backend), h, 1e-5, backend)
        # parallel with a state runs chunkwise (the same function)
        h_b, st_b = backends.mlstm(q, k, v, i, f, backend=backend, return_state=True)
        assert_close(h_b, h, 1e-5, backend)
        # one token with a state takes the step path
        h1, st1 = backends.mlstm(*(x[:, :, :1] for x in (q, k, v, i, f)), backend=backend, initial_state=None,
                                 return_state=True)  # fmt: skip
        assert_close(h1, h[:, :, :1], 1e-5, f"{backend} one token")
    with pytest.raises(ValueError, match=r"^mLSTM backend must be one of 'auto', .*, got 'cuda'"):
        backends.mlstm(q, k, v, i, f, backend="cuda")
    with pytest.raises(ValueError, match="backend 'triton' needs a GPU; this is a cpu"):
        backends.mlstm(q, k, v, i, f, backend="triton")
    with pytest.raises(ValueError, match=r"^sLSTM backend must be one of 'auto', .*, got 'cuda'"):
        backends.slstm(None, None, None, backend="cuda")


def test_causal_conv_resets_isolate_documents():
    conv = nn.CausalConv1d(2, 3, init=nn.uniform(0.5), bias_init=nn.uniform(0.5), rngs=nnx.Rngs(7))
    x = jax.random.normal(jax.random.key(8), (1, 8, 2))
    resets = jnp.zeros((1, 8), bool).at[0, 3].set(True).at[0, 7].set(True)
    state = jax.random.normal(jax.random.key(9), (1, 2, 2))
    y, new_state = conv(x, state, resets=resets)
    assert_close(y[:, 3:7], conv(x[:, 3:7])[0], 1e-6, "document [3, 7) alone")
    assert_close(y[:, :3], conv(x[:, :3], state)[0], 1e-6, "first document continues the state")
    # the returned state holds only the last document's inputs (one token), zeros before it
    assert_close(new_state, jnp.stack([jnp.zeros(2), x[0, 7]])[None], 0.0, "state")
    assert_close(conv(x, state, resets=jnp.zeros((1, 8), bool))[0], conv(x, state)[0], 0.0, "no resets")


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_policies_give_the_same_gradients(policy):
    from xlstm_jax.models.xlstm_large import xLSTMLarge, xLSTMLargeConfig

    ids = jnp.asarray(np.random.default_rng(0).integers(0, 40, size=(2, 9)))
    grads = {}
    for remat in (False, True):
        cfg = xLSTMLargeConfig(embedding_dim=32, num_heads=2, num_blocks=2, vocab_size=40, chunk_size=4,
                               remat=remat, remat_policy=policy)  # fmt: skip
        graphdef, params = nnx.split(xLSTMLarge(cfg, rngs=nnx.Rngs(0)))
        grads[remat] = jax.grad(lambda p, g=graphdef: jnp.sum(nnx.merge(g, p)(ids) ** 2))(params)
    # Remat recomputes the forward pass in another fusion: float32 summation order may differ in the
    # forward and again in the backward pass, so twice the forward path's bound (measured: 3.6e-6 with
    # the chunkwise form's non-finite isolation, below 1e-6 without it).
    bound = 2 * layout_rounding_bound(cfg)
    for a, b in zip(jax.tree.leaves(grads[True]), jax.tree.leaves(grads[False])):
        assert_close(a, b, bound, policy)
    with pytest.raises(
        ValueError, match="remat_policy must be one of 'full', 'dots', 'dots_no_batch', got 'everything'"
    ):
        xLSTMLargeConfig(embedding_dim=32, num_heads=2, num_blocks=2, vocab_size=40, remat_policy="everything")


def test_triton_backend_reports_what_it_needs():
    """The official-TFLA backend imports jax_triton lazily and says how to get it."""
    from xlstm_jax.pallas_kernels.mlstm import triton_tfla

    try:
        import jax_triton  # noqa: F401

        pytest.skip("jax_triton is installed here (a GPU machine): the message test is for machines without it")
    except ImportError:
        pass
    q, k, v, i, f = cast(mlstm_inputs(9, s=8), jnp.float32)
    with pytest.raises(ImportError, match=r'pip install "xlstm-jax\[gpu\]" mlstm_kernels'):
        triton_tfla.mlstm_chunkwise_tfla(q, k, v, i, f)
