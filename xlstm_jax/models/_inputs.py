"""The inputs of both language models: token ids or embeddings, checked.

Token ids are checked against the vocabulary where their values are known: an eager call
raises a ValueError naming the first bad id and its position. Under ``jax.jit`` the ids are
traced values and are not checked by default (an id >= vocab_size gives NaN logits, a negative
id counts from the end of the vocabulary, as ``jnp.take``); ``check_ids=True`` adds a
``checkify`` check, which needs the jitted function wrapped by ``checked`` (or ``chex.chexify``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify


def checked(fn: Callable) -> Callable:
    """``fn`` (typically ``jax.jit``-ed) with the ``checkify`` checks inside it (``check_ids=True``)
    functionalized: a failed check raises a ValueError with its message when ``fn`` returns.

    Wrap the outermost function (``checked(jax.jit(f))``, as ``chex.chexify``); the result waits
    for ``fn``'s outputs before returning.
    """
    checkified = checkify.checkify(fn, errors=checkify.user_checks)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        error, out = checkified(*args, **kwargs)
        message = error.get()
        if message is not None:
            raise ValueError(message)
        return out

    return wrapper


def _check_shape(field: str, shape: tuple[int, ...], rank: int, what: str) -> None:
    if len(shape) != rank or 0 in shape:
        raise ValueError(f"{field} must be {what} with B >= 1 and S >= 1, got shape {tuple(shape)}")


def check_ids(ids, vocab_size: int, *, traced: bool) -> jax.Array:
    """ids (B, S) int, each in [0, vocab_size); ``traced``: add a checkify check for traced ids."""
    if not isinstance(ids, jax.core.Tracer):
        ids = np.asarray(ids) if not isinstance(ids, jax.Array) else ids
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"ids must be an integer array of shape (B, S), got {ids.dtype} {ids.shape}")
    _check_shape("ids", ids.shape, 2, "an integer array of shape (B, S)")
    accepted = f"token ids in [0, {vocab_size}) (vocab_size={vocab_size})"
    if not isinstance(ids, jax.core.Tracer):
        values = np.asarray(ids)
        bad = (values < 0) | (values >= vocab_size)
        if bad.any():
            where = tuple(int(j) for j in np.argwhere(bad)[0])
            raise ValueError(
                f"ids must be {accepted}, got {int(values[where])} at position {where} ({int(bad.sum())} bad)"
            )
    elif traced:
        bad = (ids < 0) | (ids >= vocab_size)
        first = ids.ravel()[jnp.argmax(bad.ravel())]
        # Outside xlstm_jax.checked (or checkify), JAX refuses this check at trace time:
        # "Cannot abstractly evaluate a checkify.check which was not functionalized".
        checkify.check(~jnp.any(bad), f"ids must be {accepted}, got {{first}}", first=first)
    return jnp.asarray(ids)


def check_embeds(inputs_embeds, width: int) -> jax.Array:
    """inputs_embeds (B, S, D) float with D = the model's embedding_dim."""
    x = jnp.asarray(inputs_embeds)
    if x.ndim != 3 or x.shape[-1] != width or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"inputs_embeds must be a float array of shape (B, S, {width}), got {x.dtype} {x.shape}")
    _check_shape("inputs_embeds", x.shape, 3, f"a float array of shape (B, S, {width})")
    return x


def one_input(ids, inputs_embeds) -> None:
    if (ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of ids (B, S) and inputs_embeds (B, S, D)")
