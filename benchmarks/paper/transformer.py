"""A small causal Transformer baseline for the paper experiments (kept here, not in the library).

Pre-LayerNorm blocks of multi-head self-attention and a GELU MLP, rotary position embeddings
(no learned positions, so evaluation lengths beyond the training lengths get defined positions),
a final LayerNorm and an untied LM head. Same call signature as ``xLSTMLMModel``: ids (B, S) int ->
logits (B, S, V) float32.

``conv_kernel > 0`` puts a short depthwise causal convolution (``xlstm_jax.nn.CausalConv1d``) plus
SiLU in front of the queries and keys, as the mLSTM block has in front of its q and k (values from the
unconvolved input): the variant that tests whether the baseline's MQAR plateau is the missing short
convolution.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from xlstm_jax.nn import CausalConv1d


def rotary(x: jax.Array) -> jax.Array:
    """Rotary position embedding of x (B, S, H, Dh), Dh even; position t rotates pair i by t / 10000^(2i/Dh)."""
    seq, dh = x.shape[1], x.shape[-1]
    inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh))  # (Dh/2,)
    angles = jnp.arange(seq, dtype=jnp.float32)[:, None] * inv_freq[None, :]  # (S, Dh/2)
    cos, sin = jnp.cos(angles)[None, :, None, :], jnp.sin(angles)[None, :, None, :]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.reshape(x.shape)


class Attention(nnx.Module):
    """Causal multi-head self-attention: x (B, S, D) -> (B, S, D)."""

    def __init__(self, width: int, num_heads: int, *, rngs: nnx.Rngs):
        if width % num_heads or (width // num_heads) % 2:
            raise ValueError(f"width must be a multiple of 2 * num_heads={2 * num_heads}, got {width!r}")
        self.num_heads = num_heads
        self.qkv = nnx.Linear(width, 3 * width, use_bias=False, rngs=rngs)
        self.out = nnx.Linear(width, width, use_bias=False, rngs=rngs)

    def __call__(self, x: jax.Array, qk_input: jax.Array | None = None) -> jax.Array:
        """q and k from ``qk_input`` (B, S, D) when given, else from x; v from x."""
        b, s, d = x.shape
        if qk_input is None:
            q, k, v = jnp.split(self.qkv(x).reshape(b, s, 3 * self.num_heads, d // self.num_heads), 3, axis=2)
        else:
            w_q, w_k, w_v = jnp.split(self.qkv.kernel[...], 3, axis=1)
            heads = lambda t: t.reshape(b, s, self.num_heads, d // self.num_heads)
            q, k, v = heads(qk_input @ w_q), heads(qk_input @ w_k), heads(x @ w_v)
        q, k = rotary(q), rotary(k)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(d // self.num_heads))
        causal = jnp.tril(jnp.ones((s, s), bool))
        weights = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
        return self.out(jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, s, d))


class Block(nnx.Module):
    """x + Attention(LN(x)), then x + MLP(LN(x)); (B, S, D) -> (B, S, D)."""

    def __init__(self, width: int, num_heads: int, mlp_factor: int, *, conv_kernel: int = 0, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(width, rngs=rngs)
        init = nnx.initializers.lecun_normal(in_axis=0, out_axis=())  # fan-in = kernel size, per channel
        self.conv = CausalConv1d(width, conv_kernel, init=init, rngs=rngs) if conv_kernel else None
        self.attention = Attention(width, num_heads, rngs=rngs)
        self.norm2 = nnx.LayerNorm(width, rngs=rngs)
        self.up = nnx.Linear(width, mlp_factor * width, rngs=rngs)
        self.down = nnx.Linear(mlp_factor * width, width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.norm1(x)
        x = x + self.attention(h, None if self.conv is None else jax.nn.silu(self.conv(h)[0]))
        return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class CausalTransformer(nnx.Module):
    """Token embedding, ``num_blocks`` pre-LN blocks, LayerNorm, LM head: ids (B, S) -> logits (B, S, V)."""

    def __init__(
        self,
        vocab_size: int,
        width: int,
        *,
        num_blocks: int = 2,
        num_heads: int = 2,
        mlp_factor: int = 4,
        conv_kernel: int = 0,
        rngs: nnx.Rngs,
    ):
        self.embedding = nnx.Embed(vocab_size, width, rngs=rngs)
        self.blocks = nnx.List(
            [Block(width, num_heads, mlp_factor, conv_kernel=conv_kernel, rngs=rngs) for _ in range(num_blocks)]
        )
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, vocab_size, use_bias=False, rngs=rngs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        x = self.embedding(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)).astype(jnp.float32)
