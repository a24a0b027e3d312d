"""Building blocks shared by both xLSTM architectures (Flax NNX).

Dtype policy: parameters are stored in ``param_dtype``; matmuls run in ``dtype``
(the compute dtype, e.g. bfloat16); normalizations always compute in float32 and
return the compute dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from xlstm_jax import backends
from xlstm_jax.ops import context_parallel

from .params import Init, ones, param, zeros


class Linear(nnx.Module):
    """y = x @ kernel (+ bias); kernel (in, out) with logical names ``names``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool,
        kernel_init: Init,
        names: tuple[str | None, str | None],
        bias_init: Init = zeros,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.kernel = param(rngs, kernel_init, (in_features, out_features), names, param_dtype)
        self.bias = param(rngs, bias_init, (out_features,), names[1:], param_dtype) if use_bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = matmul_rows(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class Embed(nnx.Module):
    """Token embedding (V, D); ``attend`` gives logits against it (tied heads)."""

    def __init__(self, vocab_size: int, dim: int, *, init: Init, dtype=jnp.float32, param_dtype=jnp.float32, rngs):
        self.embedding = param(rngs, init, (vocab_size, dim), ("vocab", "embed"), param_dtype)
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        return matmul_rows(x.astype(self.dtype), self.embedding[...].astype(self.dtype).T)


def matmul_rows(x: jax.Array, w: jax.Array) -> jax.Array:
    """x (..., K) @ w (K, N) -> (..., N), as one 2-D dot over the rows of x when merging its leading
    axes stays on each device (``backends.leading_axes_merge_locally``; the same products and sums).

    XLA:CPU differentiates a dot contracting two axes (B, S) by writing the output gradient
    transposed, fused with its producers into a strided copy: 36 ms of a 580 ms training step
    (``benchmarks/RESULTS.md``, session 27). The 2-D dot's weight gradient reads it in place.
    """
    if x.ndim > 2 and backends.leading_axes_merge_locally(x):
        return jnp.dot(x.reshape(-1, x.shape[-1]), w).reshape(*x.shape[:-1], w.shape[-1])
    return jnp.dot(x, w)


def _normalize(x: jax.Array, eps: float, *, center: bool) -> jax.Array:
    """Layer (center=True) or RMS (center=False) normalization over the last axis, in float32
    (float64 for float64 inputs)."""
    x = x.astype(jnp.promote_types(jnp.float32, x.dtype))
    if center:
        x = x - jnp.mean(x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis.

    ``residual_weight=True`` is the NeurIPS convention: the stored weight starts at 0
    and the applied scale is ``1 + weight``. Set ``center=False`` for RMSNorm.
    """

    def __init__(
        self,
        dim: int,
        *,
        eps: float,
        use_bias: bool = False,
        residual_weight: bool = False,
        center: bool = True,
        names: tuple[str | None] = ("embed",),
        dtype=jnp.float32,
        param_dtype=jnp.float32,
    ):
        init = zeros if residual_weight else ones
        self.weight = param(None, init, (dim,), names, param_dtype)
        self.bias = param(None, zeros, (dim,), names, param_dtype) if use_bias else None
        self.eps, self.residual_weight, self.center, self.dtype = eps, residual_weight, center, dtype

    def scale(self) -> jax.Array:
        w = self.weight[...].astype(jnp.promote_types(jnp.float32, self.weight.dtype))
        return 1.0 + w if self.residual_weight else w

    def __call__(self, x: jax.Array) -> jax.Array:
        y = _normalize(x, self.eps, center=self.center) * self.scale()
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return y.astype(self.dtype)


class MultiHeadLayerNorm(LayerNorm):
    """Per-head LayerNorm: x (..., NH, DH) is normalized over DH for each head, then
    scaled by a weight of NH * DH features (head-major, as the official group norm)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        nh, dh = x.shape[-2:]
        y = _normalize(x, self.eps, center=self.center).reshape(*x.shape[:-2], nh * dh) * self.scale()
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return y.astype(self.dtype)


# Blocks up to this width are applied elementwise (``blockwise``); wider ones as a batched dot.
ELEMENTWISE_MAX_BLOCK = 8


@jax.custom_vjp
def blockwise(x: jax.Array, w: jax.Array) -> jax.Array:
    """Small independent blocks, elementwise: x (B, H, S, J, DI), w (H, J, DO, DI) -> (B, H, S, J, DO),
    ``y[b, h, s, j, o] = sum_i x[b, h, s, j, i] w[h, j, o, i]``.

    DI multiply-adds per output, written as one elementwise expression: XLA fuses it with its
    neighbours into a single pass over x, where a batched (J, ., DI) x (J, DI, DO) dot needs the
    blocks moved to the leading axis and back (transposes of arrays whose minor axis is DI wide).
    The custom backward keeps dx elementwise too, and dw is a sum of products over the (B, S) positions.

    On a TPU (chosen when the program is lowered, ``jax.lax.platform_dependent``: an ahead-of-time
    compile for a TPU gets it too) the blocks are applied as dots with block-diagonal tiles up to
    ``TPU_TILE`` wide instead (``_tiled_apply``): the TPU lays out a DI-wide minor axis padded to
    128 lanes and splits the elementwise form into relayout copies and per-column passes through
    HBM; the tiles' extra (zero) FLOPs are nearly free on the matrix unit. The values are the same
    sums (float32 accumulation of the same products); ``benchmarks/RESULTS.md`` has the compiled
    counts.
    """
    return _apply(x, w[:, None])


# Block-diagonal tiles up to this width on a TPU. A whole head of the 125M preset (DH 384) is one
# tile: its dot is HBM-bound on v5p (2 x 384 FLOPs per bf16 element read and written, about the
# chip's ridge), and splitting the minor axis into narrower tiles costs a relayout copy
# (benchmarks/RESULTS.md, "The training step's hot spots in the compiled TPU program").
TPU_TILE = 512


def _group(j: int, most: int) -> int:
    """The largest divisor of ``j`` that is at most ``most`` (at least 1)."""
    return max(d for d in range(1, max(1, min(j, most)) + 1) if j % d == 0)


def _tiled_apply(x, w):
    """``_blockwise_apply`` as a dot: groups of neighbouring blocks form block-diagonal matrices up to
    ``TPU_TILE`` wide. x (B, H, S, J, DI), w (H, 1, J, DO, DI) -> (B, H, S, J, DO)."""
    b, h, s, j, di = x.shape
    do = w.shape[-2]
    g = _group(j, TPU_TILE // max(di, do))
    acc = jnp.promote_types(jnp.float32, x.dtype)
    blocks = w[:, 0].reshape(h, j // g, g, do, 1, di)
    eye = jnp.eye(g, dtype=w.dtype)[:, None, :, None]  # (G, 1, G, 1): block g' of tile row g
    tiles = (blocks * eye).reshape(h, j // g, g * do, g * di)
    y = jnp.einsum("bhsti,htoi->bhsto", x.reshape(b, h, s, j // g, g * di), tiles, preferred_element_type=acc)
    return y.reshape(b, h, s, j, do).astype(x.dtype)


def _apply(x, w):
    return jax.lax.platform_dependent(x, w, tpu=_tiled_apply, default=_blockwise_apply)


def _blockwise_apply(x, w):
    """x (B, H, S, J, DI), w (H, 1, J, DO, DI) -> (B, H, S, J, DO), accumulated in float32 (or wider)."""
    acc = jnp.promote_types(jnp.float32, x.dtype)
    y = x[..., 0:1].astype(acc) * w[..., 0].astype(acc)
    for i in range(1, x.shape[-1]):
        y = y + x[..., i : i + 1].astype(acc) * w[..., i].astype(acc)
    return y.astype(x.dtype)


def _blockwise_fwd(x, w):
    return blockwise(x, w), (x, w)


def _blockwise_bwd(res, dy):
    x, w = res
    # named: XLA keeps only the caller's frames for some of these ops; profiles find them by this name
    with jax.named_scope("blockwise_bwd"):
        dx = _apply(dy, jnp.swapaxes(w, -1, -2)[:, None])
        dw = jax.lax.platform_dependent(dy, x, tpu=_tiled_dw, default=_blockwise_dw)
        return dx, dw.astype(w.dtype)


def _tiled_dw(dy, x):
    """``_grouped_dw`` with groups up to ``TPU_TILE`` wide (the TPU's)."""
    return _grouped_dw(dy, x, TPU_TILE // max(dy.shape[-1], x.shape[-1]))


def _blockwise_dw(dy, x):
    """dw (H, J, DO, DI) = sum over (B, S) of dy[..., j, o] x[..., j, i], from dy (B, H, S, J, DO) and
    x (B, H, S, J, DI), accumulated in float32 (or wider).

    Elementwise products summed over the positions: XLA fuses the products into one reduction that
    reads dy and x where they lie. A dot contracting over (B, S) needs both operands transposed to
    positions-last first (``_grouped_dw``), and on the CPU those transposes, fused with the
    producers of dy and x, cost more than the dot: the training step of
    ``benchmarks/profile_step.py`` takes 0.94-0.97x the time this way (``benchmarks/RESULTS.md``,
    session 26)."""
    acc = jnp.promote_types(jnp.float32, x.dtype)
    return jnp.sum(dy.astype(acc)[..., :, None] * x.astype(acc)[..., None, :], axis=(0, 2))


def _grouped_dw(dy, x, most: int):
    """``_blockwise_dw`` as one dot per group of up to ``most`` neighbouring blocks (their full
    (G DO, G DI) products, of which the diagonal blocks are kept): a dot per single block
    contracts over (B, S) with a DI-wide minor axis, which XLA lays out by transposing both operands
    to positions-last; whole groups give it G times wider rows (G times the few FLOPs)."""
    b, h, s, j, do = dy.shape
    di = x.shape[-1]
    group = _group(j, most)
    acc = jnp.promote_types(jnp.float32, x.dtype)
    full = jnp.einsum(
        "bhsgo,bhsgi->hgoi",
        dy.reshape(b, h, s, j // group, group * do),
        x.reshape(b, h, s, j // group, group * di),
        preferred_element_type=acc,
    ).reshape(h, j // group, group, do, group, di)
    return jnp.moveaxis(jnp.diagonal(full, axis1=2, axis2=4), -1, 2).reshape(h, j, do, di)


blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


class HeadwiseLinear(nnx.Module):
    """Block-diagonal linear map: x (..., NB * DI) -> (..., NB * DO), weight (NB, DO, DI).

    The official ``LinearHeadwiseExpand``: ``y[..., b, o] = sum_i x[..., b, i] w[b, o, i]``.
    """

    def __init__(
        self,
        num_blocks: int,
        block_in: int,
        block_out: int,
        *,
        use_bias: bool,
        init: Init,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.weight = param(rngs, init, (num_blocks, block_out, block_in), ("heads", None, None), param_dtype)
        self.bias = param(rngs, zeros, (num_blocks * block_out,), ("heads",), param_dtype) if use_bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        nb, _, di = self.weight.shape
        lead = x.shape[:-1]
        w = self.weight[...].astype(self.dtype)
        if di <= ELEMENTWISE_MAX_BLOCK:
            y = blockwise(x.astype(self.dtype).reshape(-1, 1, 1, nb, di), w[None]).reshape(*lead, -1)
        else:
            # Wide blocks: one dot with the blocks on its leading (batch) axis.
            xb = jnp.swapaxes(x.astype(self.dtype).reshape(-1, nb, di), 0, 1)  # (NB, N, DI)
            y = jax.lax.dot_general(xb, w, (((2,), (2,)), ((0,), (0,))))  # (NB, N, DO)
            y = jnp.swapaxes(y, 0, 1).reshape(*lead, -1)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y

    def heads_major(self, x: jax.Array) -> jax.Array:
        """The same map on head-major activations: x (B, NH, S, DH) -> (B, NH, S, NB * DO / NH), the
        features of head h being h * DH ... (h + 1) * DH - 1 of ``self``'s input (and output).

        When NH divides NB and the blocks are small, elementwise in this layout (no transposes);
        otherwise through the token-major layout and back."""
        nb, do, di = self.weight.shape
        b, nh, s, dh = x.shape
        if nb % nh or di > ELEMENTWISE_MAX_BLOCK:
            y = self(jnp.swapaxes(x, 1, 2).reshape(b, s, nh * dh))
            return jnp.swapaxes(y.reshape(b, s, nh, -1), 1, 2)
        w = self.weight[...].astype(self.dtype).reshape(nh, nb // nh, do, di)
        y = blockwise(x.astype(self.dtype).reshape(b, nh, s, nb // nh, di), w).reshape(b, nh, s, -1)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype).reshape(nh, 1, -1)
        return y

    def fold_into(self, kernel: jax.Array) -> jax.Array:
        """The matrix M with ``self(x) @ kernel == x @ M`` (bias aside): kernel (NB * DO, C) -> (NB * DI, C)."""
        nb, do, di = self.weight.shape
        w = self.weight[...].astype(kernel.dtype)
        return jnp.einsum("boi,boc->bic", w, kernel.reshape(nb, do, -1)).reshape(nb * di, -1)


class CausalConv1d(nnx.Module):
    """Depthwise causal convolution over the sequence, with a streaming state.

    Output at t uses inputs t-K+1..t (zeros before the start), tap j multiplying
    x[t - K + 1 + j], as the official ``CausalConv1d``. ``state`` holds the last
    K - 1 inputs, (B, K - 1, C).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        *,
        use_bias: bool = True,
        init: Init,
        bias_init: Init = zeros,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.kernel = param(rngs, init, (kernel_size, channels), (None, "heads"), param_dtype)
        self.bias = param(rngs, bias_init, (channels,), ("heads",), param_dtype) if use_bias else None
        self.kernel_size, self.dtype = kernel_size, dtype

    def zero_state(self, batch: int) -> jax.Array:
        return jnp.zeros((batch, self.kernel_size - 1, self.kernel.shape[1]), self.dtype)

    def __call__(
        self,
        x: jax.Array,
        state: jax.Array | None = None,
        resets: jax.Array | None = None,
        *,
        context_axis: str | tuple[str, ...] | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """x (B, S, C) -> (y (B, S, C), new state (B, K - 1, C)).

        ``resets`` (B, S) bool marks the first token of a new document: no tap reaches
        across it (as zero padding at the document's start), and the returned state
        holds no inputs from before the last reset.

        ``context_axis``: inside ``jax.shard_map`` with the sequence split in order over this mesh
        axis, each device's state is the previous device's last K - 1 inputs (a ``ppermute`` halo,
        rows before a reset there zeroed); ``state`` is the one before the whole sequence (used by
        the first device) and the returned state the one after it, the same on every device.
        """
        k, s = self.kernel_size, x.shape[1]
        if state is None:
            state = self.zero_state(x.shape[0])
        if context_axis is not None:
            y, new_state = self(x, _halo(x, state, resets, k - 1, context_axis), resets)
            return y, context_parallel.from_last_device(new_state, context_axis)
        padded = jnp.concatenate([state.astype(self.dtype), x.astype(self.dtype)], axis=1)  # (B, K-1+S, C)
        kernel = self.kernel[...].astype(self.dtype)
        if resets is None:
            y = sum(padded[:, j : j + s] * kernel[j] for j in range(k))
            new_state = padded[:, s:]
        else:
            # count[t]: resets at or before t; tap j reads position t - K + 1 + j, which lies in
            # the same document iff no reset falls after it, up to t.
            count = jnp.cumsum(resets, axis=1, dtype=jnp.int32)  # (B, S)
            count_padded = jnp.concatenate([jnp.zeros_like(count[:, : k - 1]), count], axis=1)
            same = [(count == count_padded[:, j : j + s])[..., None] for j in range(k)]
            y = sum(jnp.where(same[j], padded[:, j : j + s] * kernel[j], 0) for j in range(k))
            keep = count[:, -1:] == count_padded[:, s:]  # state rows after the last reset
            new_state = jnp.where(keep[..., None], padded[:, s:], 0)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y, new_state


def _halo(x, state, resets, width: int, axis):
    """The K - 1 inputs before this device's first token: the previous device's last ones (rows before
    a reset among them zeroed, as ``CausalConv1d`` keeps its state), ``state`` on the first device."""
    if x.shape[1] < width:
        raise ValueError(f"the local sequence length must be at least kernel_size - 1 = {width}, got {x.shape[1]}")
    tail = x[:, x.shape[1] - width :].astype(state.dtype)
    if resets is not None:
        count = jnp.cumsum(resets, axis=1, dtype=jnp.int32)
        tail = jnp.where((count[:, -width:] == count[:, -1:])[..., None], tail, 0)
    size = jax.lax.axis_size(axis)
    received = jax.lax.ppermute(tail, axis, perm=[(j, j + 1) for j in range(size - 1)])  # zeros on device 0
    return jnp.where(jax.lax.axis_index(axis) == 0, state, received)
