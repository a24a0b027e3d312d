"""Random-access document sources for grain: ``source[i]`` is document ``i`` as (n,) int32 token ids.

Formats (``preprocess.py`` writes the first two; ``X`` is an output prefix):
  * token files: ``X.bin``, a flat uint16/uint32 token stream read through ``np.memmap``, with the
    sidecar ``X.json`` (``dtype``, ``vocab_size``, ``eos_id``, ``offsets``: an ``.npy`` file of the
    ``num_documents + 1`` document start offsets). Without offsets, documents end at each ``eos_id``;
    without either, the stream is one document. Documents longer than ``max_doc_tokens`` are read
    in pieces.
  * ArrayRecord: ``X.array_record``, one record per document (its ids as raw ``dtype`` bytes,
    int32 by default), sidecar ``X.json``.
  * text: ``.jsonl`` (one JSON object per line, the document in ``text_field``) or plain text
    (documents split by blank lines, lines or whole files), tokenized when read; EOS is appended.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xlstm_jax.train.data.tokenizers import load_tokenizer


def expand_paths(spec: str | Sequence[str]) -> list[str]:
    """Files named by a path, a glob or a list of them, in order (each glob sorted)."""
    out: list[str] = []
    for pattern in [spec] if isinstance(spec, str) else spec:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise FileNotFoundError(f"no file matches {pattern!r}")
        out.extend(matches)
    return out


def metadata_path(data_path: str | Path) -> Path:
    """The sidecar metadata JSON of a data file: ``X.bin`` -> ``X.json``."""
    return Path(data_path).with_suffix(".json")


def read_metadata(data_path: str | Path) -> dict[str, Any] | None:
    """The sidecar metadata of ``data_path``, or ``None`` where there is none."""
    meta = metadata_path(data_path)
    return json.loads(meta.read_text()) if meta.is_file() else None


def _split_spans(starts: np.ndarray, ends: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut every span longer than ``max_len`` into consecutive pieces of at most ``max_len``."""
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    counts = -(-(ends - starts) // max_len)
    first = np.cumsum(counts) - counts
    piece = np.arange(int(counts.sum())) - np.repeat(first, counts)
    new_starts = np.repeat(starts, counts) + piece * max_len
    return new_starts, np.minimum(new_starts + max_len, np.repeat(ends, counts))


class TokenFileSource:
    """Documents of one flat token file; the memmap opens lazily and is dropped when pickled."""

    def __init__(self, path: str, *, dtype: str | None = None, eos_id: int | None = None, max_doc_tokens: int = 65536):
        self.path = str(path)
        meta = read_metadata(path) or {}
        self.metadata = meta
        self.dtype = np.dtype(dtype or meta.get("dtype") or _missing_dtype(path))
        self._mm: np.memmap | None = None
        num_tokens = os.path.getsize(path) // self.dtype.itemsize
        eos_id = eos_id if eos_id is not None else meta.get("eos_id")
        if meta.get("offsets"):
            offsets = np.load(metadata_path(path).parent / meta["offsets"]).astype(np.int64)
            starts, ends = offsets[:-1], offsets[1:]
        elif eos_id is not None:
            ends = self._eos_ends(int(eos_id), num_tokens)
            starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        else:
            starts, ends = np.zeros(1, np.int64), np.full(1, num_tokens, np.int64)
        self._starts, self._ends = _split_spans(starts, ends, max_doc_tokens)

    def _eos_ends(self, eos_id: int, num_tokens: int, chunk: int = 1 << 24) -> np.ndarray:
        """Document ends: one past each EOS, plus the end of the stream when it does not end on EOS."""
        mm = self._memmap()
        ends = [np.flatnonzero(mm[s : s + chunk] == eos_id) + s + 1 for s in range(0, num_tokens, chunk)]
        ends = np.concatenate([*ends, np.zeros(0, np.int64)]).astype(np.int64)
        if num_tokens and (ends.size == 0 or ends[-1] != num_tokens):
            ends = np.append(ends, num_tokens)
        return ends

    def _memmap(self) -> np.memmap:
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=self.dtype, mode="r")
        return self._mm

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, index: int) -> np.ndarray:
        start, end = self._starts[index], self._ends[index]
        return np.asarray(self._memmap()[start:end], np.int32)

    def id_range(self) -> tuple[int, int]:
        """The smallest and largest id in the file (``(0, -1)`` when empty), read once per file
        version (path, size, modification time) and cached for the process."""
        stat = os.stat(self.path)
        key = (os.path.realpath(self.path), stat.st_size, stat.st_mtime_ns, self.dtype.str)
        if key not in _ID_RANGES:
            mm, lo, hi, chunk = self._memmap(), None, None, 1 << 24
            for s in range(0, len(mm), chunk):
                part = mm[s : s + chunk]
                lo = int(part.min()) if lo is None else min(lo, int(part.min()))
                hi = int(part.max()) if hi is None else max(hi, int(part.max()))
            _ID_RANGES[key] = (0, -1) if lo is None else (lo, hi)
        return _ID_RANGES[key]

    def check_ids(self, vocab_size: int) -> None:
        """Refuses a file holding an id outside ``[0, vocab_size)``, naming the file and the id."""
        lo, hi = self.id_range()
        bad = lo if lo < 0 else hi if hi >= vocab_size else None
        if bad is not None:
            raise ValueError(
                f"token file {self.path} holds the id {bad}, outside the vocabulary [0, {vocab_size}) "
                "(data.vocab_size or the file's metadata); re-tokenize it or raise data.vocab_size"
            )

    @property
    def num_tokens(self) -> int:
        return int((self._ends - self._starts).sum())

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_mm": None}

    def __repr__(self) -> str:
        return f"TokenFileSource({self.path!r}, dtype={self.dtype.name}, documents={len(self)})"


_ID_RANGES: dict[tuple, tuple[int, int]] = {}  # (path, size, mtime, dtype) -> (min id, max id)


def _missing_dtype(path: str) -> str:
    raise ValueError(
        f"DataConfig.token_dtype must be one of 'uint16', 'uint32', 'int32' for {path!r}, which has no "
        f"metadata JSON ({metadata_path(path)}), got None"
    )


class ConcatSource:
    """Several sources read as one: documents of the first, then of the second, ..."""

    def __init__(self, sources: Sequence[Any]):
        self.sources = list(sources)
        self._ends = np.cumsum([len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, index: int) -> np.ndarray:
        which = int(np.searchsorted(self._ends, index, side="right"))
        start = int(self._ends[which - 1]) if which else 0
        return self.sources[which][index - start]

    def __repr__(self) -> str:
        return f"ConcatSource({self.sources!r})"


class ArrayRecordSource:
    """ArrayRecord files, one record per document holding its ids as raw ``dtype`` bytes."""

    def __init__(self, paths: Sequence[str], *, dtype: str | None = None):
        import grain

        self.paths = list(paths)
        meta = read_metadata(self.paths[0]) or {}
        self.dtype = np.dtype(dtype or meta.get("dtype") or "int32")
        self._source = grain.sources.ArrayRecordDataSource(self.paths)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> np.ndarray:
        return np.frombuffer(self._source[index], self.dtype).astype(np.int32)

    def __repr__(self) -> str:
        return f"ArrayRecordSource({len(self.paths)} files, dtype={self.dtype.name}, documents={len(self)})"


def is_jsonl(path: str) -> bool:
    return Path(path).suffix.lower() == ".jsonl"


def document_spans(path: str, text_split: str = "blank_line") -> np.ndarray:
    """Byte spans (n, 2) int64 of the documents of a text file.

    ``.jsonl``: every non-blank line. Plain text: runs of non-blank lines ("blank_line"), every
    non-blank line ("line") or the whole file ("file").
    """
    if not is_jsonl(path) and text_split == "file":
        size = os.path.getsize(path)
        return np.array([[0, size]] if size else np.zeros((0, 2)), np.int64)
    per_line = is_jsonl(path) or text_split == "line"
    spans, start, pos = [], None, 0
    with open(path, "rb") as f:
        for line in f:
            end, blank = pos + len(line), not line.strip()
            if per_line:
                if not blank:
                    spans.append((pos, end))
            elif blank and start is not None:
                spans.append((start, pos))
                start = None
            elif not blank and start is None:
                start = pos
            pos = end
    if start is not None:
        spans.append((start, pos))
    return np.array(spans, np.int64).reshape(-1, 2)


def decode_document(raw: bytes, *, jsonl: bool, text_field: str, where: str = "") -> str:
    """The text of one document's bytes: a JSON line's ``text_field``, or the text less its final newline."""
    text = raw.decode("utf-8")
    if not jsonl:
        return text.rstrip("\r\n")
    obj = json.loads(text)
    if not isinstance(obj, dict) or text_field not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"DataConfig.text_field={text_field!r} is not a key of a JSON line{where}: found {keys}")
    return str(obj[text_field])


def iter_text_documents(path: str, *, text_field: str = "text", text_split: str = "blank_line") -> Iterator[str]:
    """The documents of a text or JSONL file, in order."""
    jsonl = is_jsonl(path)
    with open(path, "rb") as f:
        for start, end in document_spans(path, text_split):
            f.seek(start)
            yield decode_document(f.read(end - start), jsonl=jsonl, text_field=text_field, where=f" in {path}")


class TextSource:
    """Text / JSONL documents tokenized when read (EOS appended where the tokenizer has one).

    The document index (byte spans) is built on construction; file handles open lazily and are
    dropped when pickled.
    """

    def __init__(
        self, paths: Sequence[str], *, tokenizer: str = "byte", text_field: str = "text", text_split: str = "blank_line"
    ):
        self.paths = list(paths)
        self.tokenizer = load_tokenizer(tokenizer)
        self.text_field = text_field
        spans = [document_spans(p, text_split) for p in self.paths]
        self._file = np.concatenate([np.full(len(s), i, np.int64) for i, s in enumerate(spans)])
        self._spans = np.concatenate(spans)
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self._spans)

    def text(self, index: int) -> str:
        """The raw text of document ``index``."""
        fid = int(self._file[index])
        if fid not in self._handles:
            self._handles[fid] = open(self.paths[fid], "rb")  # kept open; dropped when pickled
        f = self._handles[fid]
        start, end = self._spans[index]
        f.seek(start)
        raw = f.read(end - start)
        return decode_document(raw, jsonl=is_jsonl(self.paths[fid]), text_field=self.text_field, where=f" in {f.name}")

    def __getitem__(self, index: int) -> np.ndarray:
        ids = self.tokenizer.encode(self.text(index))
        eos = self.tokenizer.eos_id
        return ids if eos is None else np.append(ids, np.int32(eos)).astype(np.int32)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}}

    def __repr__(self) -> str:
        return f"TextSource({len(self.paths)} files, {self.tokenizer!r}, documents={len(self)})"


def open_corpus(cfg: Any, spec: str | Sequence[str], vocab_size: int | None = None) -> Any:
    """The document source of ``cfg.kind`` ("tokens", "arrayrecord" or "text") over the files ``spec``.

    With ``vocab_size``, token files holding an id outside ``[0, vocab_size)`` are refused
    (``ValueError`` naming the file and the id; each file's range is read once and cached).
    """
    paths = expand_paths(spec)
    if cfg.kind == "tokens":
        sources = [
            TokenFileSource(p, dtype=cfg.token_dtype, eos_id=cfg.eos_id, max_doc_tokens=cfg.max_doc_tokens)
            for p in paths
        ]
        if vocab_size is not None:
            for source in sources:
                source.check_ids(vocab_size)
        return sources[0] if len(sources) == 1 else ConcatSource(sources)
    if cfg.kind == "arrayrecord":
        return ArrayRecordSource(paths, dtype=cfg.token_dtype)
    if cfg.kind == "text":
        return TextSource(paths, tokenizer=cfg.tokenizer, text_field=cfg.text_field, text_split=cfg.text_split)
    raise ValueError(f"DataConfig.kind must be a corpus kind, one of 'tokens', 'arrayrecord', 'text', got {cfg.kind!r}")
