"""``generate`` and ``stream``: text generation for the xLSTM models, compiled once per shape bucket.

Works with any model that follows the xlstm-jax model API,
``model(ids (B, S), state=..., return_state=True, segment_ids=...) -> (logits (B, S, V), state)``,
both ``xLSTMLMModel`` and ``xLSTMLarge``.

Prompts of different lengths are left-padded to a common width and prefilled in one call;
``segment_ids`` restart every recurrent state at each prompt's first token, so a padded
row's state equals the state after its prompt alone, and the rows decode in lockstep. A
recurrent model's state, hence the memory per sequence, stays constant however many tokens
are generated.

Long prompts across devices: under ``jax.set_mesh(mesh)`` and ``backends.axis_rules`` whose
``length`` rule names a mesh axis, the prefill splits the (left-padded) prompt over that axis
(context parallelism; the width is rounded up to a multiple of the axis size) and decoding then
runs token by token with the state every device of the axis holds::

    mesh = jax.make_mesh((4,), ("ctx",), axis_types=(AxisType.Auto,))
    with jax.set_mesh(mesh), backends.axis_rules({"length": "ctx"}):
        out = generate(model, [long_prompt], 32)

Compiles: the prompt width and the number of decode steps are rounded up to powers of two
(at least 16); temperature, top-k, top-p, the end ids (up to 8 without a recompile), the pad
id and ``max_new_tokens`` are traced values. A new batch size, width bucket or step bucket
compiles again; nothing else does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xlstm_jax import backends

from . import _loop
from ._prompts import check, decode, encode, prompts_to_array, vocab_size
from .config import GenerationConfig, generation_config_of


class Generation(NamedTuple):
    """tokens (B, max_new_tokens) int32, padded with ``pad_id`` after each row's end;
    lengths (B,) int32: tokens generated per row, an EOS token included;
    text: with a tokenizer, the B generated texts (special tokens skipped), else None.

    ``stream`` yields one per chunk, holding that chunk's tokens."""

    tokens: jax.Array
    lengths: jax.Array
    text: list[str] | None = None


class _Prepared(NamedTuple):
    graphdef: object  # of the model's decode form
    params: object
    carry: _loop.Carry
    settings: _loop.Settings
    max_new_tokens: int
    decode_rules: _loop.Rules  # the axis rules of decoding: the current ones with ``length`` off


def _defaults(model, max_new_tokens, temperature, top_k, top_p, eos_id, pad_id):
    """Arguments left None take the model's ``generation_config`` (``from_pretrained`` attaches it)."""
    gc = generation_config_of(model)
    sample = gc is not None and gc.do_sample
    gc = gc or GenerationConfig()
    if max_new_tokens is None:
        if gc.max_new_tokens is None:
            raise ValueError("max_new_tokens must be given (the model's generation_config has none)")
        max_new_tokens = gc.max_new_tokens
    if temperature is None:
        temperature = gc.temperature if sample else 0.0
    if top_k is None and sample and gc.top_k:
        top_k = min(gc.top_k, vocab_size(model))
    if top_p is None and sample and gc.top_p < 1:
        top_p = gc.top_p
    if eos_id is None:
        eos_id = gc.eos_token_ids
    eos_id = tuple(eos_id) if isinstance(eos_id, (list, tuple)) else (eos_id,)
    if pad_id is None:
        pad_id = 0 if gc.pad_token_id is None else gc.pad_token_id
    return max_new_tokens, temperature, top_k, top_p, eos_id, pad_id


def _prepare(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, rng, eos_id, pad_id, prompt_lengths,
             tokenizer, buckets: bool) -> _Prepared:  # fmt: skip
    """Checks every argument (before anything compiles), then prefills the prompts."""
    max_new_tokens, temperature, top_k, top_p, eos_id, pad_id = _defaults(
        model, max_new_tokens, temperature, top_k, top_p, eos_id, pad_id
    )
    ids, lengths = prompts_to_array(encode(prompt_ids, tokenizer), prompt_lengths, pad_id)
    check(ids, lengths, vocab_size(model), max_new_tokens, temperature, top_k, top_p, rng, eos_id, pad_id)
    batch, longest = ids.shape[0], int(lengths.max())
    rules = backends.current_axis_rules()
    width = _loop.bucket(longest) if buckets else longest
    width = -(-width // _context_shards(rules)) * _context_shards(rules)  # the prefill splits it evenly
    left = np.full((batch, width), pad_id, np.int32)  # right-aligned prompts
    segments = np.zeros((batch, width), np.int32)
    for b, n in enumerate(lengths):
        left[b, width - n :] = ids[b, :n]
        segments[b, width - n :] = 1
    settings = _loop.Settings(
        temperature=jnp.float32(temperature),
        top_k=jnp.int32(top_k or 0),
        top_p=jnp.float32(1.0 if top_p is None else top_p),
        eos_ids=jnp.asarray(eos_id + (-1,) * (-len(eos_id) % 8 or 8 * (not eos_id)), jnp.int32),
        pad_id=jnp.int32(pad_id),
        max_new_tokens=jnp.int32(max_new_tokens),
    )
    graphdef, params = nnx.split(model)
    rng = rng if rng is not None else jax.random.key(0)
    carry = _loop.prefill(graphdef, params, jnp.asarray(left), jnp.asarray(segments), rng, settings.max_new_tokens,
                          rules=_loop.frozen_rules(rules))  # fmt: skip
    graphdef, params = nnx.split(_loop.build_decode_form(model))  # built once, for every decode call
    return _Prepared(graphdef, params, carry, settings, int(max_new_tokens), _loop.frozen_rules(rules, length=()))


def _context_shards(rules) -> int:
    """How many devices the prefill splits the prompt over: the mesh axes of the ``length`` rule."""
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty else math.prod(mesh.shape.get(axis, 1) for axis in rules.get("length", ()))


def _head(tokens: jax.Array, n: int) -> jax.Array:
    """tokens[:, :n], cut on the host: a device slice (or ``jnp.asarray``) would compile once per n."""
    return jax.device_put(np.asarray(tokens)[:, :n]) if n < tokens.shape[1] else tokens


def generate(
    model,
    prompt_ids: Sequence[Sequence[int]] | np.ndarray | jax.Array | str | Sequence[str],
    max_new_tokens: int | None = None,
    *,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: jax.Array | None = None,
    eos_id: int | Sequence[int] | None = None,
    pad_id: int | None = None,
    prompt_lengths=None,
    tokenizer=None,
    buckets: bool = True,
) -> Generation:
    """Generate up to ``max_new_tokens`` tokens after each prompt.

    Args:
      model: an xlstm-jax model (``xLSTMLMModel`` or ``xLSTMLarge``).
      prompt_ids: a list of token-id sequences (any lengths >= 1), a (B, P) integer
        array, right-padded when ``prompt_lengths`` is given, or (with ``tokenizer``) a
        string or a list of strings.
      max_new_tokens: tokens to generate per row (a row stops early at ``eos_id``); None:
        the model's ``generation_config.max_new_tokens``.
      temperature: 0 for greedy decoding, else the softmax temperature for sampling. None:
        greedy, or the model's ``generation_config`` sampling settings when its
        ``do_sample`` is True (then also for ``top_k``/``top_p`` left None).
      top_k, top_p: optional top-k and nucleus filtering when sampling.
      rng: a ``jax.random.key``; required when sampling.
      eos_id: token (or tokens) that ends a row (it is emitted and counted); None: the
        model's ``generation_config.eos_token_id`` if it has one; ``()``: no end token.
      pad_id: filler after a row's end in the output; None: the model's
        ``generation_config.pad_token_id``, else 0.
      prompt_lengths: (B,) lengths for a padded array of prompts.
      tokenizer: a ``tokenizers.Tokenizer`` (``xlstm_jax.load_tokenizer``): encodes text
        prompts and decodes the generated tokens into ``Generation.text``.
      buckets: round the prompt width and the decode steps up to powers of two, so that
        calls with other lengths reuse the compiled programs (the results are the same).

    Returns:
      ``Generation(tokens (B, max_new_tokens) int32, lengths (B,) int32, text)``.

    Every argument is checked before anything is compiled (errors name the argument).
    """
    p = _prepare(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, rng, eos_id, pad_id, prompt_lengths,
                 tokenizer, buckets)  # fmt: skip
    steps = _loop.bucket(p.max_new_tokens) if buckets else p.max_new_tokens
    tokens, carry = _loop.decode(p.graphdef, p.params, p.carry, p.settings, steps=steps, rules=p.decode_rules)
    out = Generation(_head(tokens, p.max_new_tokens), carry.count)
    return out if tokenizer is None else out._replace(text=decode(tokenizer, out.tokens, out.lengths))


def stream(
    model,
    prompt_ids,
    max_new_tokens: int | None = None,
    *,
    chunk_size: int = 16,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: jax.Array | None = None,
    eos_id: int | Sequence[int] | None = None,
    pad_id: int | None = None,
    prompt_lengths=None,
    tokenizer=None,
    buckets: bool = True,
) -> Iterator[Generation]:
    """``generate``, yielding the tokens as they come: one ``Generation`` per ``chunk_size`` steps.

    Each chunk holds ``tokens`` (B, n) (n <= ``chunk_size``; ``pad_id`` where a row has ended),
    ``lengths`` (B,) the tokens of each row in this chunk and, with a tokenizer, their
    ``text`` (decoded per chunk: a character split across chunks may show as a replacement
    character; decode the joined tokens for the exact text). The chunks joined along the
    token axis equal ``generate``'s tokens for the same arguments. Arguments as ``generate``.
    """
    from xlstm_jax._validation import check_int

    check_int("chunk_size", chunk_size, 1)
    p = _prepare(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, rng, eos_id, pad_id, prompt_lengths,
                 tokenizer, buckets)  # fmt: skip
    carry, produced = p.carry, 0
    while produced < p.max_new_tokens and not bool(jnp.all(carry.done)):
        before = np.asarray(carry.count)
        tokens, carry = _loop.decode(p.graphdef, p.params, carry, p.settings, steps=chunk_size, rules=p.decode_rules)
        n = min(chunk_size, p.max_new_tokens - produced)
        produced += n
        chunk = Generation(_head(tokens, n), jax.device_put(np.asarray(carry.count) - before))
        yield chunk if tokenizer is None else chunk._replace(text=decode(tokenizer, chunk.tokens, chunk.lengths))
