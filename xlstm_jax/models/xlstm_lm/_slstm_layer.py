"""The sLSTM layer of the NeurIPS xLSTM (official ``blocks/slstm/layer.py`` + ``cell.py``).

    x (B, S, D);  xc = SiLU(CausalConv1d(x))   (xc = x without conv)
    gates (B, S, 4, NH, DH) = [igate(xc) | fgate(xc) | zgate(x) | ogate(x)]   block-diagonal, float32
    h = sLSTM(gates, recurrent_kernel, bias)    (B, S, NH, DH)
    y = per-head LayerNorm(h)                   (B, S, D)

Naming: here ``igate`` produces the input gate and ``fgate`` the forget gate. The
official layer computes ``i, f = fgate(xc), igate(xc)``, so its state-dict tensor
``fgate.weight`` is our ``igate.weight`` and vice versa (the converter swaps them).
``recurrent_kernel`` (NH, DH, 4, DH) and ``bias`` (NH, 4, DH) are the official
"external" layouts, gate order i, f, z, o.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xlstm_jax import backends, nn, ops

from ._config import required_width, sLSTMLayerConfig

_GATES = 4  # i, f, z, o
_EPS = 1e-5


class sLSTMBlockState(NamedTuple):
    """cell: ``ops.SLSTMState`` (h, c, n, m), each (B, NH, DH);
    conv: the last K - 1 conv inputs, (B, K - 1, D), or (B, 0, D) without conv."""

    cell: ops.SLSTMState
    conv: jax.Array


def slstm_bias_init(kind: str, num_heads: int, head_dim: int, hidden: int, block_idx: int, num_blocks: int) -> nn.Init:
    """The official ``sLSTMCellBase.reset_parameters`` bias init, for a (NH, 4, DH) bias.

    ``powerlaw_blockdependent``: forget gate ``-(-5 + 12 (j / (DH-1)) ** (0.3 + 1.3 r))``,
    r = block_idx / (num_blocks - 1) (0 for one block), other gates 0;
    ``small_init``: forget gate linspace(3, 6, DH), other gates 0;
    ``standard``: all U(+-1/sqrt(D)); ``zeros``.
    """
    if kind == "standard":
        return nn.uniform(hidden**-0.5)
    if kind == "zeros":
        return nn.zeros
    if kind == "powerlaw_blockdependent":
        ratio = block_idx / (num_blocks - 1) if num_blocks > 1 else 0.0
        forget = -(-5.0 + 12.0 * (np.arange(head_dim) / (head_dim - 1)) ** (0.3 + 1.3 * ratio))
    elif kind == "small_init":
        forget = np.linspace(3.0, 6.0, head_dim)
    else:
        raise ValueError(f"slstm.bias_init={kind!r} is not supported")
    bias = np.zeros((num_heads, _GATES, head_dim))
    bias[:, 1] = forget
    return lambda key, shape, dtype: jnp.asarray(bias, dtype)


def _head_norm(h: jax.Array) -> jax.Array:
    """Per-head LayerNorm without a scale: h (B, S, NH, DH) -> (B, S, NH * DH), float32."""
    h = h.astype(jnp.float32)
    h = h - jnp.mean(h, axis=-1, keepdims=True)
    h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + _EPS)
    return h.reshape(*h.shape[:-2], -1)


class sLSTMLayer(nnx.Module):  # noqa: N801 (the official name)
    """The sLSTM layer; ``sLSTMLayer(sLSTMLayerConfig(embedding_dim=D, ...), rngs=...)`` on its own.

    ``block_idx`` (the position in the model) only shapes the ``powerlaw_blockdependent`` bias init.
    """

    def __init__(self, config: sLSTMLayerConfig, *, block_idx: int = 0, rngs: nnx.Rngs):
        cfg, d = config, required_width(config, "slstm")
        nh, dh = cfg.num_heads, d // cfg.num_heads
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.backend = cfg.backend
        if cfg.conv1d_kernel_size > 0:
            bound = cfg.conv1d_kernel_size**-0.5  # PyTorch's Conv1d default, fan_in = K (depthwise)
            self.conv1d = nn.CausalConv1d(
                d,
                cfg.conv1d_kernel_size,
                init=nn.uniform(bound),
                bias_init=nn.uniform(bound),
                dtype=dtype,
                param_dtype=pdtype,
                rngs=rngs,
            )
        else:
            self.conv1d = None

        def gate() -> nn.HeadwiseLinear:  # block-diagonal, no bias, float32 pre-activations
            init = nn.small_init(d)
            return nn.HeadwiseLinear(
                nh, dh, dh, use_bias=False, init=init, dtype=jnp.float32, param_dtype=pdtype, rngs=rngs
            )

        self.igate, self.fgate, self.zgate, self.ogate = gate(), gate(), gate(), gate()
        recurrent_init = nn.zeros if cfg.recurrent_weight_init == "zeros" else nn.uniform(d**-0.5)
        self.recurrent_kernel = nn.param(
            rngs, recurrent_init, (nh, dh, _GATES, dh), ("heads", None, None, None), pdtype
        )
        bias_init = slstm_bias_init(cfg.bias_init, nh, dh, d, block_idx, cfg.num_blocks)
        self.bias = nn.param(rngs, bias_init, (nh, _GATES, dh), ("heads", None, None), pdtype)
        if cfg.group_norm_weight:
            self.group_norm = nn.MultiHeadLayerNorm(
                d, eps=_EPS, residual_weight=True, names=("heads",), dtype=dtype, param_dtype=pdtype
            )
        else:
            self.group_norm = None
        self.num_heads, self.dtype = nh, dtype

    def __call__(
        self,
        x: jax.Array,
        state: sLSTMBlockState | None = None,
        *,
        return_state: bool = False,
        resets: jax.Array | None = None,
    ) -> tuple[jax.Array, sLSTMBlockState | None]:
        """x (B, S, D) -> (y (B, S, D), the new state if ``return_state`` else None).

        ``resets`` (B, S) bool: the cell state is zeroed before each marked token and
        the conv does not reach across it.
        """
        b, s, d = x.shape
        if self.conv1d is not None:
            conv, conv_state = self.conv1d(x, None if state is None else state.conv, resets)
            xc = jax.nn.silu(conv)
        else:
            xc, conv_state = x, jnp.zeros((b, 0, d), self.dtype)
        gates = jnp.stack([self.igate(xc), self.fgate(xc), self.zgate(x), self.ogate(x)], axis=2)  # (B, S, 4, D)
        h, cell_state = backends.slstm(
            gates.reshape(b, s, _GATES, self.num_heads, -1),
            self.recurrent_kernel[...].astype(jnp.float32),
            self.bias[...].astype(jnp.float32),
            backend=self.backend,
            initial_state=None if state is None else state.cell,
            resets=resets,
        )  # h (B, S, NH, DH)
        y = self.group_norm(h) if self.group_norm is not None else _head_norm(h).astype(self.dtype)
        return y, (sLSTMBlockState(cell_state, conv_state) if return_state else None)
