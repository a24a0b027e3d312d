"""Context parallelism for the mLSTM: the sequence split in order over a named mesh axis.

Called inside ``jax.shard_map`` (docs/design.md §Context parallelism). Device p of the axis holds
tokens ``[p S_loc, (p + 1) S_loc)``. Because the forget gate is one scalar per head and token, the
memory after the whole sequence is a decayed sum of per-device contributions:

    C_after(p) = exp(G_p) C_after(p - 1) + exp(m_p) C_p          (n alike)

where, for device p alone started from an empty memory, ``C_p`` is its memory at log scale ``m_p``
(``shard_contribution``) and ``G_p = sum of its log forget gates`` (-inf when it contains a
reset). One ``all_gather`` of (C_p, n_p, m_p, G_p) gives every device all of them, and the
closed form (``combine``) of that recurrence gives any prefix in log space, in float32:

    M(p) = max(m0 + sum_{l<p} G_l,  max_{j<p} (m_j + sum_{j<l<p} G_l))
    C(p) = exp(m0 + sum_{l<p} G_l - M(p)) c0 + sum_{j<p} exp(m_j + sum_{j<l<p} G_l - M(p)) C_j

which is exactly the stabilized state the unsharded chunkwise form holds at that token (its chunk
scale M is the same max over the same terms). Device p then runs its local chunkwise pass from
``C(p)`` (exact h for its tokens), and every device returns ``C(P)``, the state after the whole
sequence. Everything here is plain JAX and differentiated by autodiff (the transpose of
``all_gather`` sums each device's cotangents back), so gradients of q, k, v, the gates and the
initial state are exact. The XLA form (``ops.mlstm_chunkwise(..., context_axis=...)``) and the
Pallas kernels (through ``xlstm_jax.backends``) both use ``context_states``: the kernels need only
an initial state.

Resets (forget-gate pre-activation -inf) inside a shard zero the weight of every earlier token
(``shard_contribution``) and make ``G_p = -inf``, which erases every earlier device's contribution
in ``combine``; a reset on a shard's first token does the same. So documents may cross shard
boundaries freely.

The sLSTM has no such decomposition (its recurrence is nonlinear), but its heads are independent
(block-diagonal recurrence): ``heads_parallel`` switches from sequence-sharded to head-sharded with
one ``all_to_all``, runs the whole sequence for NH / P heads per device, and switches back. When P
does not divide NH it gathers the whole sequence on every device instead (each runs all heads), and
logs why once.

Shapes: k (B, NH, S_loc, DHQK), v (B, NH, S_loc, DHV), logf and i (B, NH, S_loc); states
c (B, NH, DHQK, DHV), n (B, NH, DHQK), m (B, NH); gathered arrays carry a leading axis of size P.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._states import MLSTMState, SLSTMState
from .decay import cumulative_forget

log = logging.getLogger(__name__)
_LOGGED: set[tuple[int, int]] = set()


class Contribution(NamedTuple):
    """One device's part of the memory: the state after its tokens from an empty memory, and its decay."""

    c: jax.Array  # (..., B, NH, DHQK, DHV) at scale exp(m)
    n: jax.Array  # (..., B, NH, DHQK)
    m: jax.Array  # (..., B, NH) log scale (-inf: nothing written)
    g: jax.Array  # (..., B, NH) sum of the log forget gates (-inf: a reset)


def shard_contribution(k, v, logf, i) -> Contribution:
    """The memory written by this device's tokens alone, at its own log scale (the states-only pass).

    Token t's write reaches the end of the shard with log weight ``a_t = sum_{r>t} logf_r + i_t``
    (-inf when a reset lies after t); ``m = max_t a_t``, ``c = sum_t exp(a_t - m) k_t v_tᵀ``,
    ``n = sum_t exp(a_t - m) k_t``. One matmul over the shard, O(S DHQK DHV); no h.
    """
    cf = cumulative_forget(logf)
    last = cf.seg[..., -1:]
    a = ((cf.hi[..., -1:] - cf.hi) + (cf.lo[..., -1:] - cf.lo)) + i
    a = jnp.where(cf.seg == last, a, -jnp.inf)
    m = jnp.max(a, axis=-1)
    w = jnp.exp(a - jnp.where(jnp.isfinite(m), m, 0.0)[..., None])  # (B, NH, S), <= 1
    c = jnp.einsum("bhsd,bhse->bhde", k * w[..., None], v)
    n = jnp.einsum("bhsd,bhs->bhd", k, w)
    g = jnp.where(last[..., 0] == 0, cf.hi[..., -1] + cf.lo[..., -1], -jnp.inf)
    return Contribution(c, n, m, g)


def combine(parts: Contribution, initial: MLSTMState, upto) -> MLSTMState:
    """The state after the first ``upto`` devices (``upto`` = 0..P, may be traced), from the
    gathered ``parts`` (leading axis P) and the state before the whole sequence."""
    num = parts.g.shape[0]
    j = jnp.arange(num)
    # after[j] = sum of G_l over j < l < upto: the decay from device j's end to device upto's start.
    between = (j[:, None] < j[None, :]) & (j[None, :] < upto)  # (j, l)
    g = parts.g[None]  # (1, P, B, NH)
    after = jnp.sum(jnp.where(between[:, :, None, None], g, 0.0), axis=1)  # (P, B, NH)
    before_all = jnp.sum(jnp.where((j < upto)[:, None, None], parts.g, 0.0), axis=0)  # (B, NH)
    log_w = jnp.where((j < upto)[:, None, None], parts.m + after, -jnp.inf)  # (P, B, NH)
    log_w0 = initial.m + before_all
    m = jnp.maximum(log_w0, jnp.max(log_w, axis=0))
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    w, w0 = jnp.exp(log_w - m_safe), jnp.exp(log_w0 - m_safe)
    c = w0[..., None, None] * initial.c + jnp.sum(w[..., None, None] * parts.c, axis=0)
    n = w0[..., None] * initial.n + jnp.sum(w[..., None] * parts.n, axis=0)
    return MLSTMState(c, n, m)


def context_states(k, v, logf, i, initial: MLSTMState, axis_name) -> tuple[MLSTMState, MLSTMState]:
    """Inside ``shard_map`` over ``axis_name`` (sequence split in order): (the state before this
    device's tokens, the state after the whole sequence, the same on every device).

    ``initial`` is the state before the whole sequence (the same on every device). One all_gather of
    ``Contribution`` (P (B, NH, DHQK, DHV) memories) over the axis; the rest is local.
    """
    part = shard_contribution(k, v, logf, i)
    parts = Contribution(*(jax.lax.all_gather(x, axis_name) for x in part))
    index = jax.lax.axis_index(axis_name)
    final = combine(parts, initial, parts.g.shape[0])
    return combine(parts, initial, index), from_last_device(final, axis_name)


def from_last_device(tree, axis_name):
    """``tree`` (the same value on every device) as the last device's copy, made invariant over the axis
    by a psum, so that ``shard_map(..., check_vma=True)`` accepts it as replicated and the psum's
    transpose hands the cotangent to that one copy."""
    last = jax.lax.axis_index(axis_name) == jax.lax.axis_size(axis_name) - 1
    return jax.tree.map(lambda x: jax.lax.psum(jnp.where(last, x, jnp.zeros((), x.dtype)), axis_name), tree)


def heads_parallel(run: Callable, gates_x, recurrent_kernel, bias, initial: SLSTMState | None, resets, axis_name):
    """A whole-sequence sLSTM ``run(gates_x, recurrent_kernel, bias, state, resets) -> (h, state)`` on
    this device's slice of the sequence, inside ``shard_map`` over ``axis_name`` (split in order).

    Args:
      gates_x: (B, S_loc, 4, NH, DH); recurrent_kernel (NH, DH, 4, DH), bias (NH, 4, DH) and
        ``initial`` (fields (B, NH, DH), or None) the same on every device; resets (B, S_loc) or None.

    Returns:
      h (B, S_loc, NH, DH) for this device's tokens, and the state after the whole sequence (the same
      on every device).
    """
    size = jax.lax.axis_size(axis_name)
    index = jax.lax.axis_index(axis_name)
    nh, s_loc = gates_x.shape[3], gates_x.shape[1]
    gather_seq = lambda x: None if x is None else jax.lax.all_gather(x, axis_name, axis=1, tiled=True)
    if initial is None:
        initial = SLSTMState.zeros(
            gates_x.shape[0], nh, gates_x.shape[4], jnp.promote_types(gates_x.dtype, jnp.float32)
        )
    if nh % size:
        if (nh, size) not in _LOGGED:
            _LOGGED.add((nh, size))
            log.warning("sLSTM context parallelism: %d heads do not split over %d devices of axis %r; every "
                        "device gathers the whole sequence and runs all heads", nh, size, axis_name)  # fmt: skip
        h, final = run(gather_seq(gates_x), recurrent_kernel, bias, initial, gather_seq(resets))
        return jax.lax.dynamic_slice_in_dim(h, index * s_loc, s_loc, axis=1), from_last_device(final, axis_name)
    per = nh // size
    mine = lambda x, axis: jax.lax.dynamic_slice_in_dim(x, index * per, per, axis=axis)
    local = SLSTMState(*(mine(jnp.asarray(x), 1) for x in initial))
    heads = jax.lax.all_to_all(gates_x, axis_name, split_axis=3, concat_axis=1, tiled=True)  # (B, S, 4, NH/P, DH)
    h, final = run(heads, mine(recurrent_kernel, 0), mine(bias, 0), local, gather_seq(resets))
    h = jax.lax.all_to_all(h, axis_name, split_axis=1, concat_axis=2, tiled=True)  # (B, S_loc, NH, DH)

    def place(x):  # this device's heads into the full (B, NH, DH) state; the psum fills the rest
        full = jnp.zeros((*x.shape[:1], nh, *x.shape[2:]), x.dtype)
        return jax.lax.psum(jax.lax.dynamic_update_slice_in_dim(full, x, index * per, axis=1), axis_name)

    return h, SLSTMState(*(place(x) for x in final))


__all__ = ["Contribution", "combine", "context_states", "from_last_device", "heads_parallel", "shard_contribution"]
