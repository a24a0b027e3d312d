"""The compiled parts of generation: prefill of a left-padded prompt batch, and a decode loop.

Compiled programs are keyed only by shapes: the prompt width and the number of decode
steps come in power-of-two buckets (``bucket``), and the sampling settings, the end ids,
the pad id and the number of tokens to generate are traced values.

Both run under the logical-axis rules ``rules`` (``backends.axis_rules``; a static argument,
so that programs traced under other rules are not reused): under a mesh whose ``length``
rule names an axis, the prefill splits the prompt over it (context parallelism), and the
decode runs one token at a time with the ``length`` rule off (the state is the same on
every device of that axis).
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from xlstm_jax import backends

from ._sampling import sample

MIN_BUCKET = 16


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
    """The smallest power of two >= max(n, minimum)."""
    return max(minimum, 1 << max(n - 1, 0).bit_length())


class Settings(NamedTuple):
    """Traced decoding settings (scalars unless noted)."""

    temperature: jax.Array  # float32; 0: greedy
    top_k: jax.Array  # int32; 0: off
    top_p: jax.Array  # float32; 1: off
    eos_ids: jax.Array  # (E,) int32, E a multiple of 8; -1 entries never match
    pad_id: jax.Array  # int32
    max_new_tokens: jax.Array  # int32


class Carry(NamedTuple):
    """Decoding state between calls of ``decode`` (one generation, B rows)."""

    logits: jax.Array  # (B, V) float32: the next token's logits
    model_state: object
    count: jax.Array  # (B,) int32 tokens generated so far
    done: jax.Array  # (B,) bool
    step: jax.Array  # int32 steps taken (for the rng)
    rng: jax.Array


Rules = tuple[tuple[str, tuple[str, ...]], ...]  # hashable ``backends.axis_rules``


def frozen_rules(rules, **changes) -> Rules:
    """``rules`` (a mapping of logical axis -> mesh axes) with ``changes``, hashable for ``jax.jit``."""
    rules = {**rules, **changes}
    return tuple(sorted((k, (v,) if isinstance(v, str) else tuple(v)) for k, v in rules.items()))


def decode_form(model):
    """The model as the decode loop runs it: ``model.decode_form()`` where the model has one (xLSTM-7B:
    per-block fused weights, a copy of the parameters), else the model itself."""
    return model.decode_form() if hasattr(model, "decode_form") else model


@partial(jax.jit, static_argnames=("graphdef",))
def _decode_form_jit(graphdef, params):
    return decode_form(nnx.merge(graphdef, params))


def build_decode_form(model):
    """``decode_form(model)`` as one compiled call per model structure (built op by op it would
    dispatch one small op per weight: ~0.2 s per ``generate`` call at D=256, against ~0.02 s)."""
    if not hasattr(model, "decode_form"):
        return model
    return _decode_form_jit(*nnx.split(model))


def _rules(rules: Rules | None):
    """The context of ``rules``; None: the rules in effect at the call."""
    return contextlib.nullcontext() if rules is None else backends.axis_rules(dict(rules))


@partial(jax.jit, static_argnames=("graphdef", "rules"))
def prefill(graphdef, params, ids, segment_ids, rng, max_new_tokens, *, rules: Rules | None = None) -> Carry:
    """ids (B, W) left-padded prompts; segment_ids (B, W) 0 on the padding and 1 on the prompt,
    so that every recurrent state restarts at the prompt's first token: the state after the
    padded row equals the state after the prompt alone."""
    model = nnx.merge(graphdef, params)
    with _rules(rules):
        logits, state = model(ids, return_state=True, segment_ids=segment_ids)
    batch = ids.shape[0]
    return Carry(
        logits=logits[:, -1].astype(jnp.float32),
        model_state=state,
        count=jnp.zeros((batch,), jnp.int32),
        done=jnp.full((batch,), max_new_tokens <= 0),
        step=jnp.zeros((), jnp.int32),
        rng=rng,
    )


@partial(jax.jit, static_argnames=("graphdef", "steps", "rules"))
def decode(
    graphdef, params, carry: Carry, settings: Settings, *, steps: int, rules: Rules | None = None
) -> tuple[jax.Array, Carry]:
    """Up to ``steps`` tokens per row, stopping once every row is done.

    ``graphdef``/``params`` are best those of ``decode_form(model)`` (``generate`` passes them): for
    a model with another decode form, it is built here, a copy of the weights on every call.

    Returns:
      tokens (B, steps) int32 (``pad_id`` where a row emitted nothing) and the new carry.
    """
    model = decode_form(nnx.merge(graphdef, params))
    batch = carry.count.shape[0]

    def cond(s):
        i, _, c = s
        return (i < steps) & jnp.logical_not(jnp.all(c.done))

    def body(s):
        i, out, c = s
        token = sample(c.logits, jax.random.fold_in(c.rng, c.step), *settings[:3])
        emit = ~c.done
        out = out.at[:, i].set(jnp.where(emit, token, settings.pad_id))
        count = c.count + emit
        ends = jnp.any(token[:, None] == settings.eos_ids[None, :], axis=1)
        done = c.done | (emit & ends) | (count >= settings.max_new_tokens)
        logits, state = model(token[:, None], state=c.model_state, return_state=True)
        c = Carry(logits[:, -1].astype(jnp.float32), state, count, done, c.step + 1, c.rng)
        return i + 1, out, c

    out = jnp.full((batch, steps), settings.pad_id, jnp.int32)
    with _rules(rules):
        _, out, carry = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), out, carry))
    return out, carry
