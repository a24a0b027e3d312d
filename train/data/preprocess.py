"""Tokenize text / JSONL files into token files or ArrayRecord (the formats of ``sources.py``).

    python -m xlstm_jax.train.data.preprocess --input a.txt b.jsonl --output out/corpus --format tokens \\
        --tokenizer byte [--text-field text] [--text-split blank_line] [--dtype uint16]

``--format tokens`` writes ``out/corpus.bin`` (the ids of all documents, each followed by EOS),
``out/corpus.offsets.npy`` (int64 document starts, ``num_documents + 1`` entries) and the metadata
``out/corpus.json``; ``--format arrayrecord`` writes ``out/corpus.array_record`` (one record per
document) and ``out/corpus.json``. Prints a one-line summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xlstm_jax._validation import check_choice
from xlstm_jax.train.data.sources import iter_text_documents
from xlstm_jax.train.data.tokenizers import load_tokenizer

FORMATS = ("tokens", "arrayrecord")
DTYPES = ("uint16", "uint32", "int32")


def _documents(inputs: Sequence[str], tokenizer: Any, text_field: str, text_split: str) -> Iterator[np.ndarray]:
    for path in inputs:
        for text in iter_text_documents(path, text_field=text_field, text_split=text_split):
            ids = tokenizer.encode(text)
            yield ids if tokenizer.eos_id is None else np.append(ids, np.int32(tokenizer.eos_id))


def preprocess(
    inputs: Sequence[str],
    output: str,
    *,
    fmt: str = "tokens",
    tokenizer: str = "byte",
    text_field: str = "text",
    text_split: str = "blank_line",
    dtype: str | None = None,
) -> dict[str, Any]:
    """Tokenize ``inputs`` and write ``output`` + suffixes in ``fmt``; returns the metadata written."""
    check_choice("format", fmt, FORMATS)
    tok = load_tokenizer(tokenizer)
    dtype = dtype or ("int32" if fmt == "arrayrecord" else "uint16" if tok.vocab_size <= 2**16 else "uint32")
    check_choice("dtype", dtype, DTYPES)
    if tok.vocab_size > np.iinfo(dtype).max + 1:
        raise ValueError(f"dtype must hold vocab_size={tok.vocab_size} ids ('uint32'), got {dtype!r}")
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "format": fmt,
        "dtype": dtype,
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "bos_id": tok.bos_id,
        "pad_id": tok.pad_id,
        "tokenizer": tokenizer,
        "inputs": [str(p) for p in inputs],
    }
    docs = _documents(inputs, tok, text_field, text_split)
    if fmt == "tokens":
        files = _write_tokens(docs, out, dtype, meta)
    else:
        files = _write_arrayrecord(docs, out, dtype, meta)
    meta_path = Path(f"{out}.json")
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    meta["files"] = [*files, str(meta_path)]
    return meta


def _write_tokens(docs: Iterator[np.ndarray], out: Path, dtype: str, meta: dict[str, Any]) -> list[str]:
    bin_path, offsets_path = Path(f"{out}.bin"), Path(f"{out}.offsets.npy")
    offsets = [0]
    with open(bin_path, "wb") as f:
        for ids in docs:
            f.write(ids.astype(dtype).tobytes())
            offsets.append(offsets[-1] + len(ids))
    np.save(offsets_path, np.asarray(offsets, np.int64))
    meta.update(num_documents=len(offsets) - 1, num_tokens=offsets[-1], offsets=offsets_path.name)
    return [str(bin_path), str(offsets_path)]


def _write_arrayrecord(docs: Iterator[np.ndarray], out: Path, dtype: str, meta: dict[str, Any]) -> list[str]:
    from array_record.python.array_record_module import ArrayRecordWriter

    path = Path(f"{out}.array_record")
    writer = ArrayRecordWriter(str(path), "group_size:1")
    num_docs = num_tokens = 0
    try:
        for ids in docs:
            writer.write(ids.astype(dtype).tobytes())
            num_docs, num_tokens = num_docs + 1, num_tokens + len(ids)
    finally:
        writer.close()
    meta.update(num_documents=num_docs, num_tokens=num_tokens)
    return [str(path)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xlstm_jax.train.data.preprocess", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--input", nargs="+", required=True, help="text (.txt) or JSONL (.jsonl) files")
    parser.add_argument("--output", required=True, help="output prefix, e.g. data/corpus")
    parser.add_argument("--format", choices=FORMATS, default="tokens")
    parser.add_argument("--tokenizer", default="byte", help="'byte' or a Hugging Face tokenizers .json file")
    parser.add_argument("--text-field", default="text", help="JSONL field holding the document")
    parser.add_argument("--text-split", choices=("blank_line", "line", "file"), default="blank_line")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="default: uint16 if the vocabulary fits")
    args = parser.parse_args(argv)
    meta = preprocess(
        args.input,
        args.output,
        fmt=args.format,
        tokenizer=args.tokenizer,
        text_field=args.text_field,
        text_split=args.text_split,
        dtype=args.dtype,
    )
    print(
        f"wrote {meta['num_documents']} documents, {meta['num_tokens']} tokens "
        f"(vocab_size {meta['vocab_size']}, {meta['dtype']}, {meta['format']}): {', '.join(meta['files'])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
