"""Codecs: token ids <-> what a person reads, for the embedded tasks (their symbols) and for text
(the tokenizer). ``codec_for(data_config)`` picks the one of a run.

    codec = codec_for(DataConfig(kind="parity"))
    codec.format([2, 1, 2, 2], [2], [2])   # '1 0 1 1 -> odd (expected odd)'
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from xlstm_jax.train.data.config import DataConfig


class Codec:
    """Ids to text: ``decode(ids)`` for a sequence, ``format(prompt, generated, expected)`` for a
    sample (``prompt -> generated (expected ...)``)."""

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(str(int(i)) for i in np.asarray(ids).reshape(-1))

    def decode_answer(self, ids: Sequence[int]) -> str:
        return self.decode(ids)

    def format(
        self,
        prompt: Sequence[int],
        generated: Sequence[int],
        expected: Sequence[int] | None = None,
        *,
        max_prompt: int | None = None,
    ) -> str:
        """``prompt -> generated (expected ...)``; a prompt longer than ``max_prompt`` ids shows its
        first and last 10."""
        prompt = [int(i) for i in np.asarray(prompt).reshape(-1)]
        if max_prompt is not None and len(prompt) > max_prompt:
            shown = f"{self.decode(prompt[:10])} ... {self.decode(prompt[-10:])}"
        else:
            shown = self.decode(prompt)
        text = f"{shown} -> {self.decode_answer(generated)}"
        return text if expected is None else f"{text} (expected {self.decode_answer(expected)})"


class TaskCodec(Codec):
    """The symbols of an embedded task: ``symbols[id]`` for inputs, ``answers[id]`` for answers."""

    def __init__(self, kind: str, symbols: dict[int, str], answers: dict[int, str] | None = None):
        self.kind, self.symbols, self.answers = kind, symbols, answers or symbols

    @staticmethod
    def _lookup(table: dict[int, str], ids) -> str:
        return " ".join(table.get(int(i), f"<{int(i)}>") for i in np.asarray(ids).reshape(-1))

    def decode(self, ids: Sequence[int]) -> str:
        return self._lookup(self.symbols, ids)

    def decode_answer(self, ids: Sequence[int]) -> str:
        return self._lookup(self.answers, ids)

    def __repr__(self) -> str:
        return f"TaskCodec({self.kind!r})"


class TextCodec(Codec):
    """Decoded text through the run's tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def encode(self, text: str) -> np.ndarray:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(np.asarray(ids).reshape(-1))

    def format(
        self,
        prompt: Sequence[int],
        generated: Sequence[int],
        expected: Sequence[int] | None = None,
        *,
        max_prompt: int | None = None,
    ) -> str:
        """``'prompt text' -> 'generated text' (expected 'text')``; ``max_prompt`` keeps the last ids."""
        prompt = np.asarray(prompt).reshape(-1)
        if max_prompt is not None and prompt.size > max_prompt:
            prompt = prompt[-max_prompt:]
        text = f"{self.decode(prompt)!r} -> {self.decode(generated)!r}"
        return text if expected is None else f"{text} (expected {self.decode(expected)!r})"

    def __repr__(self) -> str:
        return f"TextCodec({self.tokenizer!r})"


def codec_for(cfg: DataConfig) -> Codec:
    """The codec of a run's data: task symbols, the tokenizer's text, or plain ids (token files
    without a tokenizer file)."""
    if cfg.kind in ("parity", "even_pairs"):
        bits = {1: "0", 2: "1"} if cfg.kind == "parity" else {1: "a", 2: "b"}
        return TaskCodec(cfg.kind, {0: "_", **bits}, {0: "_", 1: "even", 2: "odd"})
    if cfg.kind == "modular_arithmetic":
        table = {0: "_", 1: "+", 2: "-", 3: "*", 4: "=", **{5 + v: str(v) for v in range(cfg.modulus)}}
        return TaskCodec(cfg.kind, table)
    if cfg.kind == "cycle_navigation":
        table = {0: "_", 1: "stay", 2: "+1", 3: "-1", **{4 + p: f"@{p}" for p in range(cfg.cycle_length)}}
        return TaskCodec(cfg.kind, table)
    if cfg.kind == "mqar":
        return Codec()
    if cfg.kind == "text" or cfg.tokenizer != "byte":
        from xlstm_jax.train.data.tokenizers import load_tokenizer

        return TextCodec(load_tokenizer(cfg.tokenizer))
    return Codec()
