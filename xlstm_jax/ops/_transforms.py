"""How the public ops meet JAX transformations: static settings and forward-mode autodiff.

Every public op is a plain function that checks its settings and then calls a jitted
implementation, so ``jax.jit(op)`` traces the array arguments while the settings
(``chunk_size``, ``eps``) must stay Python values::

    jax.jit(mlstm_chunkwise, static_argnames=("chunk_size", "eps"))
    jax.jit(functools.partial(mlstm_chunkwise, chunk_size=64))

A traced setting gets an error that says this. ``mlstm_chunkwise`` and ``slstm_scan``
have hand-written reverse-mode gradients (``jax.custom_vjp``), which JAX cannot run in
forward mode; under ``jax.jvp``, ``jax.jacfwd`` or ``jax.linearize`` they raise an
error naming the alternatives.
"""

from __future__ import annotations

import contextlib

import jax


def static_setting(op: str, name: str, value):
    """``value`` unchanged if it is a Python value, else a ``TypeError`` that says how to jit ``op``."""
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"{op}: {name} must be a Python value known when tracing, got a traced {value.aval.str_short()}; "
            f"under jax.jit mark it static, jax.jit({op}, static_argnames=({name!r},)), "
            f"or bind it first, jax.jit(functools.partial({op}, {name}=...))"
        )
    return value


@contextlib.contextmanager
def reverse_mode_only(op: str, alternatives: str):
    """Turn JAX's "can't apply forward-mode autodiff to a custom_vjp function" into advice."""
    try:
        yield
    except TypeError as err:
        if "forward-mode" not in str(err):
            raise
        raise TypeError(
            f"{op} has a hand-written reverse-mode gradient (jax.custom_vjp) and no forward mode, "
            f"so jax.jvp, jax.jacfwd, jax.linearize and jax.hessian cannot go through it: {alternatives}"
        ) from err


# The name scope of a ``lax.cond`` branch that runs only on exceptional inputs (the chunkwise mLSTM's
# guarded pass, taken when the final state is not finite). FLOP counts leave such branches out: a
# cond counts as its most expensive other branch (``train/flops.py``).
RARE_BRANCH = "rare_branch"


def rare_branch(fn):
    """``fn`` traced under the name scope ``RARE_BRANCH``: a ``lax.cond`` branch taken only on
    exceptional inputs, which FLOP counts leave out."""

    def scoped(*args):
        with jax.named_scope(RARE_BRANCH):
            return fn(*args)

    return scoped
