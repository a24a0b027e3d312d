"""The pre-up-projection mLSTM layer of the NeurIPS xLSTM (official ``blocks/mlstm/layer.py`` + ``cell.py``).

    x (B, S, D) -> proj_up -> [x_m | z] (B, S, I) each
    xc = SiLU(CausalConv1d(x_m));  q, k = blockdiag(xc);  v = blockdiag(x_m)
    i, f = Linear(3I -> NH)(concat(q, k, v))            (float32)
    h = MultiHeadLayerNorm(mLSTM(q, k, v, i, f)) + learnable_skip * xc
    y = proj_down(h * SiLU(z))                          (B, S, D)

Cell convention: the official NeurIPS cell scales k by 1/sqrt(DH), the
``mlstm_kernels`` cells (used here via ``backends.mlstm``) scale q. The outputs h
are the same; the states are not: our (c, n) equal sqrt(DH) times the official
NeurIPS step's (c, n), and n and m have the ``mlstm_kernels`` shapes (B, NH, DH)
and (B, NH) instead of (B, NH, DH, 1) and (B, NH, 1, 1).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from xlstm_jax import backends, nn, ops

from ._config import mLSTMLayerConfig, required_width


class mLSTMBlockState(NamedTuple):
    """cell: ``ops.MLSTMState`` (c (B, NH, DH, DH), n (B, NH, DH), m (B, NH));
    conv: the last K - 1 inputs of the conv, (B, K - 1, I)."""

    cell: ops.MLSTMState
    conv: jax.Array


class mLSTMLayer(nnx.Module):  # noqa: N801 (the official name)
    """The mLSTM layer; ``mLSTMLayer(mLSTMLayerConfig(embedding_dim=D, ...), rngs=...)`` on its own."""

    def __init__(self, config: mLSTMLayerConfig, *, rngs: nnx.Rngs):
        cfg, d = config, required_width(config, "mlstm")
        inner = cfg.inner_dim(d)
        blocks = inner // cfg.qkv_proj_blocksize
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        kw = dict(dtype=dtype, param_dtype=pdtype, rngs=rngs)
        self.proj_up = nn.Linear(
            d, 2 * inner, use_bias=cfg.bias, kernel_init=nn.small_init(d), names=("embed", "heads"), **kw
        )
        conv_bound = cfg.conv1d_kernel_size**-0.5  # PyTorch's Conv1d default, fan_in = K (depthwise)
        self.conv1d = nn.CausalConv1d(
            inner,
            cfg.conv1d_kernel_size,
            init=nn.uniform(conv_bound),
            bias_init=nn.uniform(conv_bound),
            **kw,
        )
        bs = cfg.qkv_proj_blocksize
        self.q_proj = nn.HeadwiseLinear(blocks, bs, bs, use_bias=cfg.bias, init=nn.small_init(d), **kw)
        self.k_proj = nn.HeadwiseLinear(blocks, bs, bs, use_bias=cfg.bias, init=nn.small_init(d), **kw)
        self.v_proj = nn.HeadwiseLinear(blocks, bs, bs, use_bias=cfg.bias, init=nn.small_init(d), **kw)
        # Gate pre-activations in float32 whatever the compute dtype; weights 0, bias always on.
        gate_kw = dict(
            use_bias=True, kernel_init=nn.zeros, names=("heads", None), dtype=jnp.float32, param_dtype=pdtype
        )
        self.igate = nn.Linear(3 * inner, cfg.num_heads, bias_init=nn.normal(0.1), **gate_kw, rngs=rngs)
        self.fgate = nn.Linear(3 * inner, cfg.num_heads, bias_init=nn.linspace(3.0, 6.0), **gate_kw, rngs=rngs)
        self.outnorm = nn.MultiHeadLayerNorm(
            inner, eps=1e-5, residual_weight=True, names=("heads",), dtype=dtype, param_dtype=pdtype
        )
        self.learnable_skip = nn.param(None, nn.ones, (inner,), ("heads",), pdtype)
        self.proj_down = nn.Linear(
            inner,
            d,
            use_bias=cfg.bias,
            kernel_init=nn.wang_init(d, cfg.num_blocks),
            names=("heads", "embed"),
            **kw,
        )
        self.num_heads, self.backend, self.chunk_size = cfg.num_heads, cfg.backend, cfg.chunk_size

    def __call__(
        self,
        x: jax.Array,
        state: mLSTMBlockState | None = None,
        *,
        return_state: bool = False,
        resets: jax.Array | None = None,
    ) -> tuple[jax.Array, mLSTMBlockState | None]:
        """x (B, S, D) -> (y (B, S, D), the new state if ``return_state`` else None).

        ``resets`` (B, S) bool marks each document's first token: the memory is erased
        there (forget gate exactly 0) and the conv does not reach across it.
        """
        b, s, _ = x.shape
        x_m, z = jnp.split(self.proj_up(x), 2, axis=-1)  # (B, S, I) each
        conv, conv_state = self.conv1d(x_m, None if state is None else state.conv, resets)
        xc = jax.nn.silu(conv)

        def heads(t):  # (B, S, I) -> (B, NH, S, DH)
            return jnp.swapaxes(t.reshape(b, s, self.num_heads, -1), 1, 2)

        # q, k, v straight in the cell's head-major layout: two transposes (of xc and x_m) instead
        # of three, and the block-diagonal maps elementwise.
        xc_h, xm_h = heads(xc), heads(x_m)
        q, k, v = self.q_proj.heads_major(xc_h), self.k_proj.heads_major(xc_h), self.v_proj.heads_major(xm_h)
        i, f = self._gate_preactivations(xc, x_m)
        if resets is not None:
            f = jnp.where(resets[:, None, :], -jnp.inf, f)

        out = backends.mlstm(
            q,
            k,
            v,
            i,
            f,
            backend=self.backend,
            chunk_size=self.chunk_size,
            initial_state=None if state is None else state.cell,
            return_state=return_state,
        )
        h, cell_state = out if return_state else (out, None)
        h = self.outnorm(jnp.swapaxes(h, 1, 2))  # (B, S, I)
        h = (h + self.learnable_skip[...].astype(h.dtype) * xc) * jax.nn.silu(z)
        y = self.proj_down(h)
        return y, (mLSTMBlockState(cell_state, conv_state) if return_state else None)

    def _gate_preactivations(self, xc: jax.Array, x_m: jax.Array) -> tuple[jax.Array, jax.Array]:
        """i, f (B, NH, S) float32: ``igate`` and ``fgate`` applied to concat(q, k, v), computed as
        xc @ W_xc + x_m @ W_xm + bias, the q/k/v maps folded into the gates' kernels (one skinny
        matmul per input instead of a (B, S, 3I) concatenation read by two)."""
        inner, nh = xc.shape[-1], self.num_heads
        f32 = jnp.float32
        kernel = jnp.concatenate([self.igate.kernel[...], self.fgate.kernel[...]], axis=1).astype(f32)
        bias = jnp.concatenate([self.igate.bias[...], self.fgate.bias[...]]).astype(f32)  # (2 NH,)
        parts = [kernel[j * inner : (j + 1) * inner] for j in range(3)]  # (I, 2 NH) for q, k, v
        for proj, part in zip((self.q_proj, self.k_proj, self.v_proj), parts):
            if proj.bias is not None:
                bias = bias + jnp.dot(proj.bias[...].astype(proj.dtype).astype(f32), part)
        w_xc = self.q_proj.fold_into(parts[0]) + self.k_proj.fold_into(parts[1])
        w_xm = self.v_proj.fold_into(parts[2])
        gates = nn.matmul_rows(xc.astype(f32), w_xc) + nn.matmul_rows(x_m.astype(f32), w_xm) + bias  # (B, S, 2 NH)
        gates = jnp.swapaxes(gates, 1, 2)
        return gates[:, :nh], gates[:, nh:]
