"""mLSTM chunkwise form: public function and its custom VJP.

Forward math in ``_chunkwise_fwd``, the analytic backward in ``_chunkwise_bwd``.
Any S works: the sequence is padded to a multiple of L with tokens that neither
write to nor decay the memory (i = -inf, log forget gate = 0), which leaves h
and the final state exactly unchanged.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from ._checks import check_eps, check_positive_int
from ._chunkwise_bwd import backward
from ._chunkwise_fwd import Residuals, forward
from ._states import MLSTMState
from ._transforms import rare_branch, reverse_mode_only, static_setting
from .chunkwise_math import pad_to_chunks
from .context_parallel import context_states
from .mlstm_inputs import isolate_nonfinite, prepare


@partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def _chunkwise(q, k, v, logf, i, c0, n0, m0, chunk_size, eps):
    return forward(q, k, v, logf, i, c0, n0, m0, chunk_size, eps, check_resets=True)[0]


def _chunkwise_fwd(q, k, v, logf, i, c0, n0, m0, chunk_size, eps):
    return forward(q, k, v, logf, i, c0, n0, m0, chunk_size, eps, check_resets=False)


def _chunkwise_bwd(chunk_size, eps, res: Residuals, cotangents):
    return backward(res, cotangents, eps)


_chunkwise.defvjp(_chunkwise_fwd, _chunkwise_bwd)


def mlstm_chunkwise(
    q,
    k,
    v,
    i,
    f,
    *,
    chunk_size: int = 64,
    initial_state: MLSTMState | None = None,
    eps: float = 1e-6,
    context_axis: str | tuple[str, ...] | None = None,
):
    """Chunkwise-parallel mLSTM, linear in S (the form to train with on XLA).

    The gradient is a hand-derived backward pass (``_chunkwise_bwd``) that
    recomputes the intra-chunk matrices instead of storing them: the memory kept
    for backward is O(S (DHQK + DHV) + (S / L) DHQK DHV) per head. It is exact
    (stabilizer and eps terms included), tested against autodiff of
    ``mlstm_recurrent`` in float64.

    Args:
      q, k: (B, NH, S, DHQK). q is scaled by DHQK**-0.5 inside.
      v: (B, NH, S, DHV).
      i, f: (B, NH, S) input- and forget-gate pre-activations.
      chunk_size: chunk length L (any positive integer; S need not be a multiple).
        Sequences shorter than L run as one chunk of length S.
      initial_state: ``MLSTMState`` with c (B, NH, DHQK, DHV), n (B, NH, DHQK),
        m (B, NH); zeros when None.
      eps: added to the normalizer.
      context_axis: the mesh axis name (or names) the sequence is split over, in order, when called
        inside ``jax.shard_map`` (context parallelism, ``ops.context_parallel``): S is then this
        device's slice, ``initial_state`` the state before the whole sequence and the returned state
        the one after it, the same on every device of the axis. Costs one ``all_gather`` of a
        (B, NH, DHQK, DHV) memory per device. None: the whole sequence is here.

    Returns:
      ``(h, state)``: h (B, NH, S, DHV) in the dtype of q, k, v; the final state in
      float32 (float64 for float64 inputs). Equal to ``mlstm_recurrent`` up to
      floating-point rounding. A NaN or inf in k or v at step s makes h (and the
      final c, n) NaN from s on and not before, as in the recurrent form.

    Forward-mode autodiff (``jax.jvp``, ``jax.jacfwd``) is not available through the
    custom VJP: use ``jax.jacrev`` / ``jax.vjp``, or ``mlstm_recurrent``.
    """
    chunk_size = check_positive_int("chunk_size", static_setting("mlstm_chunkwise", "chunk_size", chunk_size))
    eps = check_eps(static_setting("mlstm_chunkwise", "eps", eps))
    with reverse_mode_only("mlstm_chunkwise", _FORWARD_MODE_ALTERNATIVES):
        if context_axis is not None:
            return _context_op(q, k, v, i, f, chunk_size=chunk_size, initial_state=initial_state, eps=eps,
                               axis=static_setting("mlstm_chunkwise", "context_axis", context_axis))  # fmt: skip
        return _chunkwise_op(q, k, v, i, f, chunk_size=chunk_size, initial_state=initial_state, eps=eps)


_FORWARD_MODE_ALTERNATIVES = (
    "use jax.jacrev, jax.vjp or jax.grad, or mlstm_recurrent or mlstm_parallel (the same function, "
    "differentiated by plain autodiff) for forward mode"
)


@partial(jax.jit, static_argnames=("chunk_size", "eps"))
def _chunkwise_op(q, k, v, i, f, *, chunk_size: int, initial_state: MLSTMState | None, eps: float):
    return chunkwise_with(_chunkwise, q, k, v, i, f, chunk_size=chunk_size, initial_state=initial_state, eps=eps)


def chunkwise_with(core, q, k, v, i, f, *, chunk_size: int, initial_state: MLSTMState | None, eps: float):
    """``mlstm_chunkwise`` (no context axis) with ``core`` doing the pass over padded chunks.

    ``core(q, k, v, logf, i, c0, n0, m0, chunk_size, eps) -> (h, c, n, m)`` has the contract of
    ``_chunkwise`` (inputs padded to a multiple of ``chunk_size``, log forget gates; a custom VJP
    where it is differentiated); everything around it (input checks, padding, the guard against a
    non-finite k or v) is shared, so a kernel with this contract is the same function as this form.
    """
    x = prepare(q, k, v, i, f, initial_state, sequence=True, state_name="initial_state")
    run = partial(_run, chunk_size=min(chunk_size, x.q.shape[2]), eps=eps, core=core)
    h, c, n, m = _guard_when_nonfinite(run, x.q, x.k, x.v, x.i, x.f, *x.state)
    return h.astype(x.out_dtype), MLSTMState(c, n, m)


def _run(q, k, v, i, f, c0, n0, m0, *, chunk_size: int, eps: float, guard: bool, core=_chunkwise):
    """The chunkwise pass on prepared (B, NH, S, ...) inputs; returns (h, c, n, m).

    ``guard``: keep a non-finite k or v from reaching earlier outputs (``isolate_nonfinite``), one
    elementwise pass over k and v (about 15% of the forward on the CPU).
    """
    seq_len = q.shape[2]
    if guard:
        k, v, reached = isolate_nonfinite(k, v)
    q, k, v, logf, i = pad_to_chunks(chunk_size, q, k, v, jax.nn.log_sigmoid(f), i)
    h, c, n, m = core(q, k, v, logf, i, c0, n0, m0, chunk_size, eps)
    h = h[:, :, :seq_len]
    if guard:
        (c, n), h = reached.state(c, n), reached.h(h)
    return h, c, n, m


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _guard_when_nonfinite(run, *args):
    """``run(*args, guard=True)``, computed without the guard when that changes nothing.

    A non-finite entry of k or v always reaches the final memory: it enters its chunk's sum
    ``sum_t w_t k_t v_t^T`` (or ``sum_t w_t k_t``) as inf or NaN, even with a write weight
    ``w_t = 0`` (0 * inf = NaN), and every later chunk keeps it (``decay * C``: 0 * NaN = NaN).
    So the unguarded pass runs first, and the guarded one only when its final c or n is not
    finite (``tests/test_mlstm_chunkwise_guard.py`` checks the claim). Finite inputs skip the
    guard's pass; under ``vmap`` with batched inputs both branches of the ``lax.cond`` run.

    Gradients likewise: the unguarded pass's pullback, which equals the guarded one's when k and v
    are finite (the guard is then the identity), runs outside any ``lax.cond``, so that XLA still
    shares the forward's intra-chunk matrices with the backward (``_chunkwise_fwd.forward``) and
    fuses the gradients into their consumers; only for a non-finite final state does a ``lax.cond``
    recompute the guarded pass and take its pullback instead.
    """
    out = run(*args, guard=False)
    return _guarded_if(_nonfinite(out), run, args, out)


def _nonfinite(out) -> jax.Array:
    c, n = out[1], out[2]
    return ~jnp.isfinite(jnp.sum(c) + jnp.sum(n))  # also true if the sum overflows: then guard


def _guarded_if(nonfinite, run, args, out):
    """``out``, or the guarded pass recomputed when ``nonfinite``."""
    return jax.lax.cond(nonfinite, rare_branch(lambda a, _: run(*a, guard=True)), lambda _, o: o, args, out)


def _guard_fwd(run, *args):
    out, pullback = jax.vjp(partial(run, guard=False), *args)
    nonfinite = _nonfinite(out)
    return _guarded_if(nonfinite, run, args, out), (pullback, nonfinite, args)


def _guard_bwd(run, res, cotangents):
    pullback, nonfinite, args = res
    unguarded = pullback(cotangents)

    def guarded(a, ct, _):
        return jax.vjp(partial(run, guard=True), *a)[1](ct)

    return jax.lax.cond(nonfinite, rare_branch(guarded), lambda a, ct, g: g, args, cotangents, unguarded)


_guard_when_nonfinite.defvjp(_guard_fwd, _guard_bwd)


def _context_op(q, k, v, i, f, *, chunk_size: int, initial_state, eps: float, axis):
    """The local chunkwise pass from the exact state before this device's tokens (``context_states``)."""
    x = prepare(q, k, v, i, f, initial_state, sequence=True, state_name="initial_state")
    before, final = context_states(x.k, x.v, jax.nn.log_sigmoid(x.f), x.i, x.state, axis)
    h, _ = _chunkwise_op(x.q, x.k, x.v, x.i, x.f, chunk_size=chunk_size, initial_state=before, eps=eps)
    return h.astype(x.out_dtype), final
