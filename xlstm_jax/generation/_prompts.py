"""Prompts and arguments of ``generate``: text encoding, ragged prompts to arrays, the checks."""

from __future__ import annotations

import numpy as np

from xlstm_jax._validation import check_int, check_number


def vocab_size(model) -> int:
    cfg = getattr(model, "config", None)
    for name in ("vocab_size",):
        if cfg is not None and hasattr(cfg, name):
            return int(getattr(cfg, name))
    raise ValueError("model has no config.vocab_size; generate() needs an xlstm-jax model")


def encode(prompts, tokenizer):
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


def decode(tokenizer, tokens, lengths) -> list[str]:
    """The texts of each row's first ``lengths[b]`` tokens (special tokens skipped)."""
    rows = [row[:n].tolist() for row, n in zip(np.asarray(tokens), np.asarray(lengths))]
    return tokenizer.decode_batch(rows, skip_special_tokens=True)


def prompts_to_array(prompt_ids, prompt_lengths, pad_id: int):
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


def _python(value):
    """numpy scalars as Python numbers (so that the checks accept ``np.int32(5)``)."""
    return value.item() if isinstance(value, np.generic) else value


def check(ids, lengths, vocab: int, max_new_tokens, temperature, top_k, top_p, rng, eos_id, pad_id) -> None:
    if ids.shape[0] == 0:
        raise ValueError("prompt_ids is empty: give at least one prompt")
    if np.any(lengths <= 0):
        raise ValueError(f"every prompt needs at least one token; empty prompts at rows {np.flatnonzero(lengths <= 0)}")
    valid = np.arange(ids.shape[1])[None, :] < lengths[:, None]
    bad = valid & ((ids < 0) | (ids >= vocab))
    if bad.any():
        b, t = np.argwhere(bad)[0]
        raise ValueError(f"token id {ids[b, t]} at prompt_ids[{b}, {t}] is outside the vocabulary [0, {vocab})")
    check_int("max_new_tokens", _python(max_new_tokens), 0)
    check_number("temperature", _python(temperature), 0)  # 0 is greedy; NaN and inf refused
    check_int("top_k", _python(top_k), 1, vocab, optional=True)
    check_number("top_p", _python(top_p), 0, 1, low_open=True, optional=True)
    if temperature > 0 and rng is None:
        raise ValueError("sampling (temperature > 0) needs rng, e.g. rng=jax.random.key(0)")
    for name, value in (*(("eos_id", e) for e in eos_id), ("pad_id", pad_id)):
        if value is not None and (not isinstance(value, (int, np.integer)) or not 0 <= value < vocab):
            raise ValueError(f"{name} must be a token id in [0, {vocab}) or None, got {value!r}")
