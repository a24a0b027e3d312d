"""Packing documents into fixed-length rows, and rows into model examples.

Packing is greedy concatenation: documents are laid end to end in their stream order and the
stream is cut into rows of ``row_len = seq_len + 1`` tokens, so a document that does not fit in
what is left of a row continues at the start of the next one (long documents span several rows).
Rows carry no padding except the last row of a finite stream. ``segment_ids`` number the pieces
in a row from 1 (0 = padding); a document boundary is where ``segment_ids`` changes.

``row_to_example`` shifts a row into ``inputs``/``targets`` and masks the loss on padding and on
targets that cross a boundary, so no document is trained to predict the next one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grain
import numpy as np

from xlstm_jax._validation import check_int


def row_to_example(
    tokens: np.ndarray, segment_ids: np.ndarray, supervised: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """One row (S+1,) to the model fields, each (S,).

    Returns ``inputs`` int32 = ``tokens[:-1]`` (positions where ``supervised`` is set become 0),
    ``targets`` int32 = ``tokens[1:]``, ``segment_ids`` int32 = ``segment_ids[:-1]`` and
    ``loss_mask`` float32: 1 where input and target lie in the same segment (not padding) and,
    if ``supervised`` (S+1,) bool is given, the target is supervised.
    """
    tokens, segment_ids = np.asarray(tokens), np.asarray(segment_ids)
    inputs = tokens[:-1]
    seg_in, seg_out = segment_ids[:-1], segment_ids[1:]
    mask = (seg_in == seg_out) & (seg_in > 0)
    if supervised is not None:
        inputs = np.where(supervised[:-1], 0, inputs)
        mask &= supervised[1:]
    return {
        "inputs": inputs.astype(np.int32),
        "targets": tokens[1:].astype(np.int32),
        "loss_mask": mask.astype(np.float32),
        "segment_ids": seg_in.astype(np.int32),
    }


def single_example_row(tokens: np.ndarray, supervised: np.ndarray, seq_len: int) -> dict[str, np.ndarray]:
    """One unpacked example (L,) (``L <= seq_len + 1``) as segment 1 of a zero-padded row, then shifted."""
    n = len(tokens)
    if n > seq_len + 1:
        raise ValueError(f"an example of {n} tokens does not fit in seq_len + 1 = {seq_len + 1}")
    row, seg, sup = np.zeros(seq_len + 1, np.int32), np.zeros(seq_len + 1, np.int32), np.zeros(seq_len + 1, bool)
    row[:n], seg[:n], sup[:n] = tokens, 1, supervised
    return row_to_example(row, seg, sup)


class RowPacker:
    """Greedy-concatenation state: the partly used document and how many of its tokens are used."""

    def __init__(self, row_len: int):
        check_int("row_len", row_len, 2)
        self.row_len = row_len
        self.doc: np.ndarray | None = None
        self.offset = 0

    def fill(self, next_doc: Callable[[], np.ndarray | None]) -> tuple[np.ndarray, np.ndarray] | None:
        """The next row: ``tokens`` (row_len,) int32 and ``segment_ids`` (row_len,) int32.

        ``next_doc()`` returns the next document, or ``None`` at the end of the stream; a partly
        filled last row is zero-padded, and ``None`` is returned once nothing is left.
        """
        tokens = np.zeros(self.row_len, np.int32)
        segments = np.zeros(self.row_len, np.int32)
        filled = segment = 0
        while filled < self.row_len:
            if self.doc is None:
                doc = next_doc()
                if doc is None:
                    break
                doc = np.asarray(doc).reshape(-1)
                if doc.size == 0:
                    continue
                self.doc, self.offset = doc, 0
            take = min(self.row_len - filled, len(self.doc) - self.offset)
            segment += 1
            tokens[filled : filled + take] = self.doc[self.offset : self.offset + take]
            segments[filled : filled + take] = segment
            filled += take
            self.offset += take
            if self.offset == len(self.doc):
                self.doc, self.offset = None, 0
        return (tokens, segments) if filled else None


def pack_documents(docs: Iterable[np.ndarray], row_len: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """All rows ``(tokens, segment_ids)``, each (row_len,) int32, of a finite document stream."""
    it = iter(docs)
    packer = RowPacker(row_len)
    while (row := packer.fill(lambda: next(it, None))) is not None:
        yield row


class _PackIterator(grain.DatasetIterator):
    """State: the parent's state before the partly used document, and the tokens used of it."""

    def __init__(self, parent: grain.DatasetIterator, row_len: int):
        super().__init__(parent)
        self._packer = RowPacker(row_len)
        self._doc_state: Any = None  # parent state before self._packer.doc was read

    def _next_doc(self) -> np.ndarray | None:
        state = self._parent.get_state()
        try:
            doc = next(self._parent)
        except StopIteration:
            return None
        self._doc_state = state
        return doc

    def __next__(self) -> dict[str, np.ndarray]:
        row = self._packer.fill(self._next_doc)
        if row is None:
            raise StopIteration
        return {"tokens": row[0], "segment_ids": row[1]}

    def get_state(self) -> dict[str, Any]:
        if self._packer.doc is None:
            return {"parent": self._parent.get_state(), "offset": 0}
        return {"parent": self._doc_state, "offset": self._packer.offset}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._packer.doc, self._packer.offset = None, 0
        if state["offset"]:
            doc = self._next_doc()
            if doc is None:
                raise ValueError("packing state points past the end of the document stream")
            self._packer.doc, self._packer.offset = np.asarray(doc).reshape(-1), int(state["offset"])


class PackIterDataset(grain.IterDataset):
    """Documents (n,) int arrays -> rows ``{"tokens", "segment_ids"}`` (row_len,) int32 by greedy concatenation.

    Deterministic, and its iterator's ``get_state``/``set_state`` resume at exactly the next row.
    """

    def __init__(self, parent: grain.IterDataset, row_len: int):
        super().__init__(parent)
        RowPacker(row_len)  # validates row_len
        self._row_len = row_len

    def __iter__(self) -> _PackIterator:
        return _PackIterator(self._parent.__iter__(), self._row_len)

    def __str__(self) -> str:
        return f"PackIterDataset(row_len={self._row_len})"
