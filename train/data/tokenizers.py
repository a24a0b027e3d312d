"""Tokenizers with one interface: ``encode``, ``decode``, ``vocab_size``, ``eos_id``, ``bos_id``, ``pad_id``.

``ByteTokenizer`` (the default) needs no file: ids 0..255 are the UTF-8 bytes, then BOS, EOS, PAD.
``HFTokenizer`` wraps a Hugging Face ``tokenizers`` JSON file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int | None
    bos_id: int | None
    pad_id: int | None

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, plus BOS=256, EOS=257, PAD=258: ``vocab_size`` 259."""

    bos_id = 256
    eos_id = 257
    pad_id = 258
    vocab_size = 259

    def encode(self, text: str) -> np.ndarray:
        """Text to ids, (n,) int32; no special tokens are added."""
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Ids to text; special ids are dropped and invalid UTF-8 is replaced (U+FFFD)."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        return ids[ids < 256].astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


_EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "[EOS]", "<|end_of_text|>", "[SEP]")
_BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>", "<|bos|>", "[BOS]", "[CLS]")
_PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]")


class HFTokenizer:
    """A Hugging Face ``tokenizers`` JSON file (``tokenizer.json``) behind the common interface.

    Special ids are looked up by token text (``eos_token`` etc.), else among common names
    ("</s>", "<|endoftext|>", ...); ``None`` where the vocabulary has none. Pickles as its path,
    so worker processes reload it.
    """

    def __init__(
        self, path: str, *, eos_token: str | None = None, bos_token: str | None = None, pad_token: str | None = None
    ):
        self.path = str(path)
        self._names = (eos_token, bos_token, pad_token)
        self._tok = None
        tok = self._load()
        self.vocab_size = int(tok.get_vocab_size(with_added_tokens=True))
        self.eos_id = self._find(tok, eos_token, _EOS_NAMES)
        self.bos_id = self._find(tok, bos_token, _BOS_NAMES)
        self.pad_id = self._find(tok, pad_token, _PAD_NAMES)

    def _load(self):
        if self._tok is None:
            import tokenizers  # the library, not this module (absolute import)

            self._tok = tokenizers.Tokenizer.from_file(self.path)
        return self._tok

    @staticmethod
    def _find(tok, name: str | None, candidates: Sequence[str]) -> int | None:
        if name is not None:
            idx = tok.token_to_id(name)
            if idx is None:
                raise ValueError(f"special token {name!r} is not in the vocabulary of the tokenizer")
            return int(idx)
        for cand in candidates:
            idx = tok.token_to_id(cand)
            if idx is not None:
                return int(idx)
        return None

    def encode(self, text: str) -> np.ndarray:
        """Text to ids, (n,) int32, without the tokenizer's post-processing special tokens."""
        return np.asarray(self._load().encode(text, add_special_tokens=False).ids, np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._load().decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tok": None}

    def __repr__(self) -> str:
        return f"HFTokenizer({self.path!r}, vocab_size={self.vocab_size})"


def load_tokenizer(spec: str) -> Tokenizer:
    """``"byte"`` gives a ``ByteTokenizer``; a path to a ``tokenizers`` JSON file an ``HFTokenizer``."""
    if spec == "byte":
        return ByteTokenizer()
    return HFTokenizer(spec)
