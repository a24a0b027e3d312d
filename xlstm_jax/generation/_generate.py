"""Text generation for the xLSTM models: the whole decode loop is one compiled ``lax.while_loop``.

Works with any model that follows the xlstm-jax model API,
``model(ids (B, S), state=..., return_state=True) -> (logits (B, S, V), state)``,
both ``xLSTMLMModel`` and ``xLSTMLarge``.

Prompts of different lengths: the shortest common prefix is prefilled in one call
(the chunkwise form), then the loop feeds each row its remaining prompt tokens one
at a time before it starts sampling. A recurrent model needs no padding or masks
for that, and its state, hence the memory per sequence, stays constant however
many tokens are generated.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .config import GenerationConfig, generation_config_of


class Generation(NamedTuple):
    """tokens (B, max_new_tokens) int32, padded with ``pad_id`` after each row's end;
    lengths (B,) int32: tokens generated per row, an EOS token included;
    text: with a tokenizer, the B generated texts (special tokens skipped), else None."""

    tokens: jax.Array
    lengths: jax.Array
    text: list[str] | None = None


def _vocab_size(model) -> int:
    cfg = getattr(model, "config", None)
    for name in ("vocab_size",):
        if cfg is not None and hasattr(cfg, name):
            return int(getattr(cfg, name))
    raise ValueError("model has no config.vocab_size; generate() needs an xlstm-jax model")


def _encode(prompts, tokenizer):
    """Text prompts (a string or a list of strings) -> lists of token ids; other prompts unchanged."""
    texts = [prompts] if isinstance(prompts, str) else prompts
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
        if isinstance(texts, (list, tuple)) and any(isinstance(t, str) for t in texts):
            raise ValueError("prompts must be all strings or all token-id sequences, not a mix")
        return prompts
    if tokenizer is None:
        raise ValueError(
            "the prompt is text: pass tokenizer= (e.g. tokenizer=xlstm_jax.load_tokenizer('NX-AI/xLSTM-7b')) "
            "to encode it, or pass token ids"
        )
    return [enc.ids for enc in tokenizer.encode_batch(list(texts))]


def _decode(tokenizer, out: Generation) -> Generation:
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    rows = [row[:n].tolist() for row, n in zip(tokens, lengths)]
    return out._replace(text=tokenizer.decode_batch(rows, skip_special_tokens=True))


def _prompts_to_array(prompt_ids, prompt_lengths, pad_id: int):
    """(B, P) int32 array and (B,) lengths from a list of sequences or a padded array."""
    if isinstance(prompt_ids, (list, tuple)) and prompt_ids and not np.isscalar(prompt_ids[0]):
        if prompt_lengths is not None:
            raise ValueError("prompt_lengths is only for a padded (B, P) array; a list of prompts has its own lengths")
        rows = [np.asarray(p) for p in prompt_ids]
        for b, row in enumerate(rows):
            if row.ndim != 1:
                raise ValueError(f"prompt_ids[{b}] must be a 1-D sequence of token ids, got shape {row.shape}")
            if row.size and not np.issubdtype(row.dtype, np.integer):
                raise ValueError(f"prompt_ids[{b}] must hold integer token ids, got dtype {row.dtype}")
        lengths = np.array([len(r) for r in rows], np.int32)
        ids = np.full((len(rows), max(int(lengths.max()), 1)), pad_id, np.int32)
        for b, row in enumerate(rows):
            ids[b, : len(row)] = row
        return ids, lengths
    ids = np.asarray(prompt_ids)
    if ids.ndim != 2:
        raise ValueError(f"prompt_ids must be a list of token sequences or a (B, P) array, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"prompt_ids must hold integer token ids, got dtype {ids.dtype}")
    if prompt_lengths is None:
        lengths = np.full((ids.shape[0],), ids.shape[1], np.int32)
    else:
        lengths = np.asarray(prompt_lengths)
        if lengths.shape != (ids.shape[0],) or not np.issubdtype(lengths.dtype, np.integer):
            raise ValueError(f"prompt_lengths must be ({ids.shape[0]},) integers, got {lengths.shape} {lengths.dtype}")
        if np.any(lengths > ids.shape[1]):
            raise ValueError(f"prompt_lengths must be <= the padded width {ids.shape[1]}, got max {lengths.max()}")
    return ids.astype(np.int32), lengths.astype(np.int32)


def _check(ids, lengths, vocab: int, max_new_tokens, temperature, top_k, top_p, rng, eos_id, pad_id) -> None:
    if ids.shape[0] == 0:
        raise ValueError("prompt_ids is empty: give at least one prompt")
    if np.any(lengths <= 0):
        raise ValueError(f"every prompt needs at least one token; empty prompts at rows {np.flatnonzero(lengths <= 0)}")
    valid = np.arange(ids.shape[1])[None, :] < lengths[:, None]
    bad = valid & ((ids < 0) | (ids >= vocab))
    if bad.any():
        b, t = np.argwhere(bad)[0]
        raise ValueError(f"token id {ids[b, t]} at prompt_ids[{b}, {t}] is outside the vocabulary [0, {vocab})")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature must be a float >= 0 (0 is greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= vocab):
        raise ValueError(f"top_k must be an integer in [1, {vocab}] or None, got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")
    if temperature > 0 and rng is None:
        raise ValueError("sampling (temperature > 0) needs rng, e.g. rng=jax.random.key(0)")
    for name, value in (*(("eos_id", e) for e in eos_id), ("pad_id", pad_id)):
        if value is not None and (not isinstance(value, (int, np.integer)) or not 0 <= value < vocab):
            raise ValueError(f"{name} must be a token id in [0, {vocab}) or None, got {value!r}")


def _sample(logits, key, temperature: float, top_k: int | None, top_p: float | None) -> jax.Array:
    """logits (B, V) float32 -> token ids (B,). Greedy for temperature 0."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        drop_sorted = cum - jax.nn.softmax(sorted_logits, axis=-1) >= top_p  # keeps the first token always
        drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
        logits = jnp.where(drop, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


class _Loop(NamedTuple):
    step: jax.Array  # loop counter
    pos: jax.Array  # position of the last token fed to the model (same for every row)
    logits: jax.Array  # (B, V) logits after that token
    model_state: object
    out: jax.Array  # (B, max_new_tokens)
    count: jax.Array  # (B,) tokens generated so far
    done: jax.Array  # (B,) bool


@partial(jax.jit, static_argnames=("graphdef", "prefill", "max_new_tokens", "temperature", "top_k", "top_p"))
def _generate(graphdef, params, ids, lengths, rng, eos_id, pad_id, *, prefill, max_new_tokens, temperature, top_k,
              top_p):  # fmt: skip
    model = nnx.merge(graphdef, params)
    batch, width = ids.shape
    logits, model_state = model(ids[:, :prefill], return_state=True)
    rows = jnp.arange(batch)

    def cond(s: _Loop):
        return jnp.logical_not(jnp.all(s.done))

    def body(s: _Loop) -> _Loop:
        token = _sample(s.logits.astype(jnp.float32), jax.random.fold_in(rng, s.step), temperature, top_k, top_p)
        in_prompt = s.pos + 1 < lengths  # the next token is still given by the prompt
        emit = jnp.logical_and(~in_prompt, ~s.done)
        out = s.out.at[rows, jnp.where(emit, s.count, max_new_tokens)].set(token, mode="drop")
        count = s.count + emit
        done = s.done | (emit & jnp.any(token[:, None] == eos_id, axis=1)) | (count >= max_new_tokens)
        prompt_next = ids[rows, jnp.minimum(s.pos + 1, width - 1)]
        feed = jnp.where(in_prompt, prompt_next, token)
        step_logits, model_state = model(feed[:, None], state=s.model_state, return_state=True)
        return _Loop(s.step + 1, s.pos + 1, step_logits[:, -1], model_state, out, count, done)

    init = _Loop(
        step=jnp.zeros((), jnp.int32),
        pos=jnp.full((), prefill - 1, jnp.int32),
        logits=logits[:, -1],
        model_state=model_state,
        out=jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
        count=jnp.zeros((batch,), jnp.int32),
        done=jnp.full((batch,), max_new_tokens == 0),
    )
    final = jax.lax.while_loop(cond, body, init)
    return Generation(final.out, final.count)


def generate(
    model,
    prompt_ids: Sequence[Sequence[int]] | np.ndarray | jax.Array,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: jax.Array | None = None,
    eos_id: int | Sequence[int] | None = None,
    pad_id: int | None = None,
    prompt_lengths=None,
    tokenizer=None,
) -> Generation:
    """Generate up to ``max_new_tokens`` tokens after each prompt.

    Args:
      model: an xlstm-jax model (``xLSTMLMModel`` or ``xLSTMLarge``).
      prompt_ids: a list of token-id sequences (any lengths >= 1), a (B, P) integer
        array, right-padded when ``prompt_lengths`` is given, or (with ``tokenizer``) a
        string or a list of strings.
      max_new_tokens: tokens to generate per row (a row stops early at ``eos_id``).
      temperature: 0 for greedy decoding, else the softmax temperature for sampling.
      top_k, top_p: optional top-k and nucleus filtering when sampling.
      rng: a ``jax.random.key``; required when sampling.
      eos_id: token (or tokens) that ends a row (it is emitted and counted); None: the
        model's ``generation_config.eos_token_id`` if it has one; ``()``: no end token.
      pad_id: filler after a row's end in the output; None: the model's
        ``generation_config.pad_token_id``, else 0.
      prompt_lengths: (B,) lengths for a padded array of prompts.
      tokenizer: a ``tokenizers.Tokenizer`` (``xlstm_jax.load_tokenizer``): encodes text
        prompts and decodes the generated tokens into ``Generation.text``.

    Returns:
      ``Generation(tokens (B, max_new_tokens) int32, lengths (B,) int32, text)``.

    Every argument is checked before anything is compiled. One compiled program
    serves all calls with the same batch, padded width, prefill length and settings.
    """
    gc = generation_config_of(model) or GenerationConfig()
    if eos_id is None:
        eos_id = gc.eos_token_ids
    eos_id = tuple(eos_id) if isinstance(eos_id, (list, tuple)) else (eos_id,)
    if pad_id is None:
        pad_id = 0 if gc.pad_token_id is None else gc.pad_token_id
    ids, lengths = _prompts_to_array(_encode(prompt_ids, tokenizer), prompt_lengths, pad_id)
    vocab = _vocab_size(model)
    _check(ids, lengths, vocab, max_new_tokens, temperature, top_k, top_p, rng, eos_id, pad_id)
    graphdef, params = nnx.split(model)
    out = _generate(
        graphdef,
        params,
        jnp.asarray(ids),
        jnp.asarray(lengths),
        rng if rng is not None else jax.random.key(0),
        jnp.asarray(eos_id or (-1,), jnp.int32),
        jnp.int32(pad_id),
        prefill=int(lengths.min()),
        max_new_tokens=int(max_new_tokens),
        temperature=float(temperature),
        top_k=top_k,
        top_p=None if top_p is None else float(top_p),
    )
    return out if tokenizer is None else _decode(tokenizer, out)
