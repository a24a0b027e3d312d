"""Train and eval datasets for the trainer: grain pipelines yielding dict batches of numpy arrays.

Every batch (b = rows of this process, S = ``seq_len``) holds
  * ``inputs`` (b, S) int32, ``targets`` (b, S) int32 (``inputs`` shifted by one),
  * ``loss_mask`` (b, S) float32: 1 on targets to score,
  * ``segment_ids`` (b, S) int32: document index within the row from 1, 0 = padding; the model
    resets its recurrent state where ``segment_ids`` changes. Padding tokens are 0.

Train (infinite, checkpointable): source -> per-epoch shuffle from ``seed`` -> ``[process::count]``
shard -> repeat -> (corpora: greedy packing) -> batch -> ``mp_prefetch`` workers or a prefetch thread.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import grain
import numpy as np

from xlstm_jax.train.data.config import DataConfig
from xlstm_jax.train.data.packing import PackIterDataset, row_to_example, single_example_row
from xlstm_jax.train.data.sources import expand_paths, open_corpus, read_metadata
from xlstm_jax.train.data.synthetic import SyntheticSource, task_vocab_size
from xlstm_jax.train.data.tokenizers import load_tokenizer


def vocab_size(cfg: DataConfig) -> int:
    """Vocabulary size for the model: the task's, the tokenizer's or the token files' metadata.

    ``cfg.vocab_size``, when set, wins (e.g. to round up to a multiple of 64) but may not be smaller.
    """
    if cfg.is_synthetic:
        base = task_vocab_size(cfg)
    elif cfg.kind == "text":
        base = load_tokenizer(cfg.tokenizer).vocab_size
    else:
        metas = [read_metadata(p) or {} for p in expand_paths(cfg.path)]
        sizes = [m.get("vocab_size") for m in metas]
        base = max(sizes) if all(s is not None for s in sizes) else None
    if cfg.vocab_size is None:
        if base is None:
            raise ValueError(
                f"DataConfig.vocab_size=None is invalid for kind={cfg.kind!r} files without a metadata JSON "
                "holding vocab_size: accepted values are an int >= 1 (the tokenizer's vocabulary size)"
            )
        return int(base)
    if base is not None and cfg.vocab_size < base:
        _bad("vocab_size", cfg.vocab_size, f"an int >= {base} (the data's vocabulary size)")
    return cfg.vocab_size


def _bad(name: str, value: Any, accepted: str) -> None:
    raise ValueError(f"{name}={value!r} is invalid: accepted values are {accepted}")


def _check_shards(global_batch_size: int, process_index: int, process_count: int) -> int:
    if not isinstance(process_count, int) or process_count < 1:
        _bad("process_count", process_count, "an int >= 1")
    if not isinstance(process_index, int) or not 0 <= process_index < process_count:
        _bad("process_index", process_index, f"an int in [0, {process_count - 1}]")
    if not isinstance(global_batch_size, int) or global_batch_size < 1 or global_batch_size % process_count:
        _bad("global_batch_size", global_batch_size, f"a positive multiple of process_count={process_count}")
    return global_batch_size // process_count


def _check_fits(cfg: DataConfig, split: str, seq_len: int) -> None:
    if not isinstance(seq_len, int) or seq_len < 1:
        _bad("seq_len", seq_len, "an int >= 1")
    if cfg.is_synthetic and getattr(cfg, f"{split}_max_len") > seq_len + 1:
        longest = getattr(cfg, f"{split}_max_len")
        _bad(f"DataConfig.{split}_max_len", longest, f"an int <= seq_len + 1 = {seq_len + 1} (one example per row)")


def _read_options(cfg: DataConfig) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=16 * cfg.read_threads)


class ExampleToRow(grain.transforms.Map):
    """``(tokens (L,), answer (L,))`` of an embedded task -> the model fields of one row, each (S,)."""

    def __init__(self, seq_len: int):
        self.seq_len = seq_len

    def map(self, element: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
        return single_example_row(element[0], element[1], self.seq_len)


class PackedToExample(grain.transforms.Map):
    """A packed row ``{"tokens", "segment_ids"}`` (S+1,) -> the model fields, each (S,)."""

    def map(self, element: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return row_to_example(element["tokens"], element["segment_ids"])


def _mark_absl_flags_parsed() -> None:
    """grain workers read absl flags; outside ``absl.app.run`` they are unparsed and would raise."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _corpus_split(cfg: DataConfig, split: str) -> grain.MapDataset:
    """The documents of ``split``: ``eval_path`` for eval, else the held-out tail of ``path``."""
    vocab = vocab_size(cfg)
    if split == "eval" and cfg.eval_path is not None:
        return grain.MapDataset.source(open_corpus(cfg, cfg.eval_path, vocab))
    ds = grain.MapDataset.source(open_corpus(cfg, cfg.path, vocab))
    n = len(ds)
    held = math.ceil(cfg.heldout_fraction * n) if cfg.eval_path is None else 0
    if split == "eval" and held == 0:
        _bad("DataConfig.eval_path", None, "eval files, or set heldout_fraction > 0 to hold out the tail of `path`")
    if held >= n:
        _bad("DataConfig.heldout_fraction", cfg.heldout_fraction, f"a fraction leaving training documents of {n}")
    return ds[n - held :] if split == "eval" else ds[: n - held]


def make_train_dataset(
    cfg: DataConfig, *, seq_len: int, global_batch_size: int, process_index: int = 0, process_count: int = 1
) -> grain.IterDataset:
    """This process's infinite stream of training batches, each field (global_batch_size // process_count, seq_len).

    Shards are disjoint and together cover every example once per epoch; each epoch is shuffled
    anew from ``cfg.seed``. ``iter(ds)`` gives a grain iterator whose ``get_state()``/``set_state()``
    resume at exactly the next batch (also through ``grain.checkpoint.CheckpointSave/Restore``),
    for the same ``num_workers``.
    """
    batch = _check_shards(global_batch_size, process_index, process_count)
    _check_fits(cfg, "train", seq_len)
    if cfg.is_synthetic:
        ds = grain.MapDataset.source(SyntheticSource(cfg, "train"))
    else:
        ds = _corpus_split(cfg, "train")
    if len(ds) < process_count:
        _bad("process_count", process_count, f"at most the number of training documents/examples, {len(ds)}")
    ds = ds.seed(cfg.seed)
    if cfg.shuffle:
        ds = ds.shuffle()
    ds = ds[process_index::process_count].repeat(None)
    if cfg.is_synthetic:
        it = ds.map(ExampleToRow(seq_len)).batch(batch, drop_remainder=True).to_iter_dataset(_read_options(cfg))
    else:
        it = PackIterDataset(ds.to_iter_dataset(_read_options(cfg)), seq_len + 1)
        it = it.map(PackedToExample()).batch(batch, drop_remainder=True)
    if cfg.num_workers > 0:
        _mark_absl_flags_parsed()
        options = grain.MultiprocessingOptions(
            num_workers=cfg.num_workers, per_worker_buffer_size=max(1, cfg.prefetch_buffer_size)
        )
        return it.mp_prefetch(options)
    if cfg.prefetch_buffer_size > 0:
        return grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=cfg.prefetch_buffer_size)
    return it


def empty_row(seq_len: int) -> dict[str, np.ndarray]:
    """A padding row: zero tokens, ``loss_mask`` 0, ``segment_ids`` 0."""
    z = np.zeros(seq_len, np.int32)
    return {"inputs": z, "targets": z, "loss_mask": np.zeros(seq_len, np.float32), "segment_ids": z}


class EvalBatches:
    """A finite, re-iterable sequence of eval batches, each field (batch_size, seq_len).

    The last batch is completed with padding rows (``loss_mask`` 0, ``segment_ids`` 0: skip rows
    whose ``loss_mask`` is all 0 when counting sequence accuracy). With ``max_batches`` it yields
    exactly that many batches, adding empty ones if the data runs out, so that all processes agree.
    ``num_batches`` is the count when known in advance, else None.
    """

    def __init__(
        self, rows: Iterable[dict[str, np.ndarray]], *, seq_len: int, batch_size: int, max_batches: int | None = None
    ):
        self._rows, self._seq_len, self._batch = rows, seq_len, batch_size
        self._max = max_batches
        self.num_batches: int | None = max_batches

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        rows, count = iter(self._rows), 0
        while self._max is None or count < self._max:
            chunk = [r for _, r in zip(range(self._batch), rows)]
            if not chunk and self._max is None:
                return
            chunk += [empty_row(self._seq_len)] * (self._batch - len(chunk))
            yield {k: np.stack([r[k] for r in chunk]) for k in chunk[0]}
            count += 1


class _SyntheticEvalRows:
    """Rows of this process's eval examples, padded with empty rows to the same count in every process."""

    def __init__(self, cfg: DataConfig, seq_len: int, process_index: int, process_count: int):
        self._source, self._seq_len = SyntheticSource(cfg, "eval"), seq_len
        self._indices = range(process_index, cfg.num_eval_examples, process_count)
        self.num_rows = math.ceil(cfg.num_eval_examples / process_count)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(self.num_rows):
            if i < len(self._indices):
                yield single_example_row(*self._source[self._indices[i]], self._seq_len)
            else:
                yield empty_row(self._seq_len)


def make_eval_dataset(
    cfg: DataConfig, *, seq_len: int, batch_size: int, process_index: int = 0, process_count: int = 1
) -> EvalBatches:
    """This process's finite eval batches, each field (batch_size, seq_len); ``batch_size`` is per process.

    Embedded tasks: ``num_eval_examples`` examples with the eval lengths (longer than the train
    lengths for the formal languages), the same number of batches in every process. Corpora: the
    documents of ``eval_path`` (or the held-out tail of ``path``) packed like the training data,
    unshuffled; use ``max_eval_batches`` for an equal count across processes.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        _bad("batch_size", batch_size, "an int >= 1 (rows per process)")
    _check_shards(batch_size * process_count, process_index, process_count)
    _check_fits(cfg, "eval", seq_len)
    if cfg.is_synthetic:
        rows = _SyntheticEvalRows(cfg, seq_len, process_index, process_count)
        num = math.ceil(rows.num_rows / batch_size)
        num = min(num, cfg.max_eval_batches or num)
        return EvalBatches(rows, seq_len=seq_len, batch_size=batch_size, max_batches=num)
    docs = _corpus_split(cfg, "eval")
    if len(docs) < process_count:
        _bad("process_count", process_count, f"at most the number of eval documents, {len(docs)}")
    it = PackIterDataset(docs[process_index::process_count].to_iter_dataset(_read_options(cfg)), seq_len + 1)
    rows = it.map(PackedToExample())
    return EvalBatches(rows, seq_len=seq_len, batch_size=batch_size, max_batches=cfg.max_eval_batches)
