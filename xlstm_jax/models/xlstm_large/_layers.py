"""The xLSTM-7B block: RMSNorm -> mLSTM layer -> residual -> RMSNorm -> SwiGLU -> residual.

Matches ``xlstm.xlstm_large.model`` (``mLSTMLayer``, ``FeedForward``, ``mLSTMBlock``).
Parameter names follow the official state_dict (``q``, ``k``, ``v``, ``ogate_preact``,
``igate_preact``, ``fgate_preact`` / fused ``qkv_opreact``, ``ifgate_preact``;
``proj_up_gate``, ``proj_up`` / fused ``proj_up_gate_z``; ``proj_down``), kernels (in, out).

Inits: the xlstm-jax 7B recipe (the code that trained xLSTM-7B): q, k, v and the FFN
up-projections small_init(D); the output gate and the i/f gate weights 0; i bias -10,
f bias linspace(3, 6) over heads; out_proj and proj_down wang_init(D, num_blocks);
other biases 0; norm weights 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from xlstm_jax import backends, ops
from xlstm_jax.nn import LayerNorm, Linear, MultiHeadLayerNorm, constant, linspace, small_init, wang_init, zeros
from xlstm_jax.nn.params import Init

from ._config import mLSTMBlockConfig, xLSTMLargeConfig


def soft_cap(x: jax.Array, cap: float | None) -> jax.Array:
    """``cap * tanh(x / cap)``; identity when cap is None."""
    return x if cap is None else cap * jnp.tanh(x / cap)


def concat_init(*parts: tuple[Init, int]) -> Init:
    """Init of a fused parameter: ``parts`` (init, size) concatenated along the last axis."""

    def init(key, shape, dtype):
        keys = jax.random.split(key, len(parts))
        return jnp.concatenate([fn(k, (*shape[:-1], size), dtype) for k, (fn, size) in zip(keys, parts)], axis=-1)

    return init


def block_config(config: mLSTMBlockConfig | xLSTMLargeConfig) -> mLSTMBlockConfig:
    """The block config of a model config; a block config as is."""
    if isinstance(config, xLSTMLargeConfig):
        return config.block
    if not isinstance(config, mLSTMBlockConfig):
        raise ValueError(f"config must be an mLSTMBlockConfig or xLSTMLargeConfig, got {type(config).__name__}")
    return config


def rms_norm(config: mLSTMBlockConfig | xLSTMLargeConfig) -> LayerNorm:
    """RMSNorm over D, weight applied directly (init 1), bias if ``use_bias``."""
    return LayerNorm(
        config.embedding_dim,
        eps=config.norm_eps,
        use_bias=config.use_bias,
        center=False,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
    )


FUSED_GROUPS = {  # weight_mode "fused" parameter: the "single" ones it concatenates, in order
    ("mlstm_layer", "qkv_opreact"): ("q", "k", "v", "ogate_preact"),
    ("mlstm_layer", "ifgate_preact"): ("igate_preact", "fgate_preact"),
    ("ffn", "proj_up_gate_z"): ("proj_up_gate", "proj_up"),
}


def fuse_block_params(params: dict) -> dict:
    """One block's parameters (a pure dict, ``nnx.to_pure_dict``) from weight_mode "single" to "fused".

    Kernels (D, N_j) and biases (N_j,) are concatenated along their last axis in ``FUSED_GROUPS``
    order, the layout the "fused" modules split again; every other entry is passed through.
    """
    out = {name: dict(sub) for name, sub in params.items()}
    for (module, fused), parts in FUSED_GROUPS.items():
        subs = [out[module].pop(part) for part in parts]
        out[module][fused] = {k: jnp.concatenate([sub[k] for sub in subs], axis=-1) for k in subs[0]}
    return out


class mLSTMLayer(nnx.Module):
    """x (B, S, D) -> (y (B, S, D), state): projections, soft-capped gates, cell, per-head norm, o-gate.

    On its own: ``mLSTMLayer(mLSTMBlockConfig(embedding_dim=D, num_heads=NH), rngs=...)``.
    """

    def __init__(self, config: mLSTMBlockConfig | xLSTMLargeConfig, *, rngs: nnx.Rngs):
        c = block_config(config)
        d, nh = c.embedding_dim, c.num_heads
        self.config = c
        dtype, param_dtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        proj = dict(use_bias=c.use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # Gates are computed in float32 (or wider) whatever the compute dtype.
        self.gate_dtype = jnp.promote_types(jnp.float32, dtype)
        gate = dict(use_bias=True, dtype=self.gate_dtype, param_dtype=param_dtype, rngs=rngs)
        qkv_init, to_heads, to_gates = small_init(d), ("embed", "heads"), ("embed", None)
        i_bias, f_bias = constant(-10.0), linspace(3.0, 6.0)
        if c.weight_mode == "single":
            self.q = Linear(d, c.qk_dim, kernel_init=qkv_init, names=to_heads, **proj)
            self.k = Linear(d, c.qk_dim, kernel_init=qkv_init, names=to_heads, **proj)
            self.v = Linear(d, c.v_dim, kernel_init=qkv_init, names=to_heads, **proj)
            self.ogate_preact = Linear(d, c.v_dim, kernel_init=zeros, names=to_heads, **proj)
            self.igate_preact = Linear(d, nh, kernel_init=zeros, bias_init=i_bias, names=to_gates, **gate)
            self.fgate_preact = Linear(d, nh, kernel_init=zeros, bias_init=f_bias, names=to_gates, **gate)
        else:
            qkvo_init = concat_init((qkv_init, c.qk_dim), (qkv_init, c.qk_dim), (qkv_init, c.v_dim), (zeros, c.v_dim))
            self.qkv_opreact = Linear(d, 2 * c.qk_dim + 2 * c.v_dim, kernel_init=qkvo_init, names=to_heads, **proj)
            if_bias = concat_init((i_bias, nh), (f_bias, nh))
            self.ifgate_preact = Linear(d, 2 * nh, kernel_init=zeros, bias_init=if_bias, names=to_gates, **gate)
        self.multihead_norm = MultiHeadLayerNorm(
            c.v_dim, eps=c.norm_eps, use_bias=c.use_bias, names=("heads",), dtype=dtype, param_dtype=param_dtype
        )
        self.out_proj = Linear(c.v_dim, d, kernel_init=wang_init(d, c.num_blocks), names=("heads", "embed"), **proj)

    def _projections(self, x: jax.Array) -> tuple[jax.Array, ...]:
        """q, k (B, S, qk_dim), v, o (B, S, v_dim), i, f (B, S, NH) float32 soft-capped."""
        c = self.config
        if c.weight_mode == "single":
            q, k, v, o = self.q(x), self.k(x), self.v(x), self.ogate_preact(x)
            i, f = self.igate_preact(x), self.fgate_preact(x)
        else:
            q, k, v, o = jnp.split(self.qkv_opreact(x), [c.qk_dim, 2 * c.qk_dim, 2 * c.qk_dim + c.v_dim], axis=-1)
            i, f = jnp.split(self.ifgate_preact(x), [c.num_heads], axis=-1)
        return q, k, v, o, soft_cap(i, c.gate_soft_cap), soft_cap(f, c.gate_soft_cap)

    def __call__(
        self,
        x: jax.Array,
        state: ops.MLSTMState | None = None,
        *,
        return_state: bool = False,
        resets: jax.Array | None = None,
    ) -> tuple[jax.Array, ops.MLSTMState | None]:
        """``resets`` (B, S) bool: the memory is erased before these tokens (forget gate exactly 0)."""
        c = self.config
        b, s, _ = x.shape
        q, k, v, o, i, f = self._projections(x)
        if resets is not None:
            f = jnp.where(resets[..., None], -jnp.inf, f)
        heads = lambda t: t.reshape(b, s, c.num_heads, -1).transpose(0, 2, 1, 3)
        out = backends.mlstm(
            heads(q),
            heads(k),
            heads(v),
            i.transpose(0, 2, 1),
            f.transpose(0, 2, 1),
            backend=c.backend,
            chunk_size=c.chunk_size,
            initial_state=state,
            return_state=return_state,
            eps=c.eps,
        )
        h, state = out if return_state else (out, None)  # h (B, NH, S, DHV)
        h = self.multihead_norm(h.transpose(0, 2, 1, 3))  # (B, S, NH * DHV)
        h = jax.nn.sigmoid(o.astype(self.gate_dtype)) * h.astype(self.gate_dtype)
        return self.out_proj(h.astype(jnp.dtype(c.dtype))), state


class FeedForward(nnx.Module):
    """SwiGLU: proj_down(SiLU(proj_up_gate(x)) * proj_up(x)), width ``config.ffn_dim``."""

    def __init__(self, config: mLSTMBlockConfig | xLSTMLargeConfig, *, rngs: nnx.Rngs):
        c = block_config(config)
        d, p = c.embedding_dim, c.ffn_dim
        self.fused = c.weight_mode == "fused"
        kw = dict(use_bias=c.use_bias, dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype), rngs=rngs)
        if self.fused:
            self.proj_up_gate_z = Linear(d, 2 * p, kernel_init=small_init(d), names=("embed", "mlp"), **kw)
        else:
            self.proj_up_gate = Linear(d, p, kernel_init=small_init(d), names=("embed", "mlp"), **kw)
            self.proj_up = Linear(d, p, kernel_init=small_init(d), names=("embed", "mlp"), **kw)
        self.proj_down = Linear(p, d, kernel_init=wang_init(d, c.num_blocks), names=("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.fused:
            gate, z = jnp.split(self.proj_up_gate_z(x), 2, axis=-1)
        else:
            gate, z = self.proj_up_gate(x), self.proj_up(x)
        return self.proj_down(jax.nn.silu(gate) * z)


class mLSTMBlock(nnx.Module):
    """x (B, S, D) -> x + mLSTM(RMSNorm(x)), then + FFN(RMSNorm(.)); returns the cell state too."""

    def __init__(self, config: mLSTMBlockConfig | xLSTMLargeConfig, *, rngs: nnx.Rngs):
        config = block_config(config)
        self.norm_mlstm = rms_norm(config)
        self.mlstm_layer = mLSTMLayer(config, rngs=rngs)
        self.norm_ffn = rms_norm(config)
        self.ffn = FeedForward(config, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        state: ops.MLSTMState | None = None,
        *,
        return_state: bool = False,
        resets: jax.Array | None = None,
    ) -> tuple[jax.Array, ops.MLSTMState | None]:
        h, state = self.mlstm_layer(self.norm_mlstm(x), state, return_state=return_state, resets=resets)
        x = x + h
        x = x + self.ffn(self.norm_ffn(x))
        return x, state
