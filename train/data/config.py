"""``DataConfig``: what to load (an embedded task or a corpus) and how (shuffle, shards, workers)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from xlstm_jax._validation import check_bool, check_choice, check_int, check_known_keys, check_number

FORMAL_KINDS = ("parity", "modular_arithmetic", "even_pairs", "cycle_navigation")
SYNTHETIC_KINDS = (*FORMAL_KINDS, "mqar")
CORPUS_KINDS = ("tokens", "arrayrecord", "text")
KINDS = (*SYNTHETIC_KINDS, *CORPUS_KINDS)
TEXT_SPLITS = ("blank_line", "line", "file")
TOKEN_DTYPES = ("uint16", "uint32", "int32")

# Length defaults of the official formal-language experiments: train 3-40, evaluate 40-256.
_FORMAL_LENGTHS = {"train_min_len": 3, "train_max_len": 40, "eval_min_len": 40, "eval_max_len": 256}


def _field(name: str) -> str:
    return f"DataConfig.{name}"


def _fail(name: str, accepted: str, value: Any) -> None:
    """A condition the generic checks do not express, in their format."""
    raise ValueError(f"{_field(name)} must be {accepted}, got {value!r}")


def _int(name: str, value: Any, low: int, high: int | None = None, *, optional: bool = False) -> None:
    check_int(_field(name), value, low, high, optional=optional)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Data settings; every field is validated on construction (``ValueError`` names the field:
    ``DataConfig.num_workers must be an integer >= 0, got -1``).

    Length fields of the embedded tasks count tokens of one example, answer included; ``None``
    picks the task default (formal languages: train 3-40, eval 40-256; MQAR: ``16 * num_kv_pairs``).
    """

    kind: str = "parity"
    # Corpora.
    path: str | tuple[str, ...] | None = None  # file, glob or list of them
    eval_path: str | tuple[str, ...] | None = None  # None: held-out tail of `path` (heldout_fraction)
    tokenizer: str = "byte"  # "byte" or a Hugging Face `tokenizers` JSON file (kind="text")
    text_field: str = "text"  # JSONL field holding a document
    text_split: str = "blank_line"  # documents of a .txt file: paragraphs, lines or the whole file
    vocab_size: int | None = None  # overrides the metadata JSON of token / ArrayRecord files
    token_dtype: str | None = None  # dtype of token files that have no metadata JSON
    eos_id: int | None = None  # document separator of token files without metadata or offsets
    max_doc_tokens: int = 65536  # token-file documents longer than this are read in pieces
    heldout_fraction: float = 0.0  # tail fraction of `path` documents kept for eval when eval_path is None
    max_eval_batches: int | None = None  # cap (and pad to) this many eval batches per process
    # Loading.
    seed: int = 0
    shuffle: bool = True
    num_workers: int = 0  # grain mp_prefetch worker processes; 0 = in-process
    prefetch_buffer_size: int = 2  # batches buffered ahead (per worker, or by a thread when num_workers=0)
    read_threads: int = 0  # grain ReadOptions.num_threads (0 = read in the iterating thread)
    # Embedded tasks.
    train_min_len: int | None = None
    train_max_len: int | None = None
    eval_min_len: int | None = None
    eval_max_len: int | None = None
    num_train_examples: int = 5_120_000  # one epoch of the training stream (official: 5.12M samples)
    num_eval_examples: int = 1024
    modulus: int = 5  # modular_arithmetic: numbers and answers are in [0, modulus)
    cycle_length: int = 5  # cycle_navigation: number of positions on the cycle
    num_kv_pairs: int = 8  # mqar
    num_queries: int | None = None  # mqar; None = num_kv_pairs
    mqar_vocab: int = 8192  # mqar: total vocabulary (pad + keys + values)

    def __post_init__(self) -> None:
        check_choice(_field("kind"), self.kind, KINDS)
        for name in ("path", "eval_path"):
            value = getattr(self, name)
            if isinstance(value, list):
                value = tuple(value)
                object.__setattr__(self, name, value)
            ok = (
                value is None
                or isinstance(value, str)
                or (isinstance(value, tuple) and value and all(isinstance(v, str) for v in value))
            )
            if not ok:
                _fail(name, "None, a path/glob string or a non-empty list of them", value)
        if self.kind in CORPUS_KINDS and self.path is None:
            _fail("path", f"a file, glob or list of files (required for kind={self.kind!r})", None)
        if not isinstance(self.tokenizer, str) or not (self.tokenizer == "byte" or self.tokenizer.endswith(".json")):
            _fail("tokenizer", "'byte' or the path of a Hugging Face tokenizers .json file", self.tokenizer)
        if not isinstance(self.text_field, str) or not self.text_field:
            _fail("text_field", "a non-empty string", self.text_field)
        check_choice(_field("text_split"), self.text_split, TEXT_SPLITS)
        check_choice(_field("token_dtype"), self.token_dtype, (None, *TOKEN_DTYPES))
        _int("vocab_size", self.vocab_size, 1, optional=True)
        _int("eos_id", self.eos_id, 0, optional=True)
        _int("max_doc_tokens", self.max_doc_tokens, 1)
        check_number(_field("heldout_fraction"), self.heldout_fraction, 0.0, 1.0, high_open=True)
        _int("max_eval_batches", self.max_eval_batches, 1, optional=True)
        _int("seed", self.seed, 0, 2**32 - 1)
        check_bool(_field("shuffle"), self.shuffle)
        for name in ("num_workers", "prefetch_buffer_size", "read_threads"):
            _int(name, getattr(self, name), 0)
        for name in ("num_train_examples", "num_eval_examples", "num_kv_pairs"):
            _int(name, getattr(self, name), 1)
        _int("modulus", self.modulus, 2)
        _int("cycle_length", self.cycle_length, 2)
        _int("num_queries", self.num_queries, 1, self.num_kv_pairs, optional=True)
        _int("mqar_vocab", self.mqar_vocab, 2 * self.num_kv_pairs + 1)
        if self.kind in SYNTHETIC_KINDS:
            self._resolve_lengths()

    def _resolve_lengths(self) -> None:
        """Fill ``None`` lengths with the task defaults, then check each (min, max) pair."""
        if self.kind == "mqar":
            defaults = dict.fromkeys(_FORMAL_LENGTHS, 16 * self.num_kv_pairs)
            low = 2 * self.num_kv_pairs + 2 * (self.num_queries or self.num_kv_pairs)
            why = f"kv pairs and queries need 2*num_kv_pairs + 2*num_queries = {low} tokens"
        else:
            defaults = _FORMAL_LENGTHS
            low = 3 if self.kind == "modular_arithmetic" else 2
            why = "an example needs at least one input token and the answer"
        for name, default in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
            _int(name, getattr(self, name), 1)
            if getattr(self, name) < low:
                _fail(name, f"an integer >= {low} for kind={self.kind!r} ({why})", getattr(self, name))
        for split in ("train", "eval"):
            lo, hi = getattr(self, f"{split}_min_len"), getattr(self, f"{split}_max_len")
            if lo > hi:
                _fail(f"{split}_max_len", f"an integer >= {split}_min_len={lo}", hi)
            if self.kind == "modular_arithmetic" and lo == hi and lo % 2 == 0:
                _fail(f"{split}_max_len", "a range holding an odd length (expressions 'a op b ... = c' are odd)", hi)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataConfig:
        """Build from a plain mapping (e.g. parsed YAML); unknown keys raise ``ValueError`` by name."""
        if not isinstance(d, Mapping):
            raise ValueError(f"DataConfig.from_dict expects a mapping, got {type(d).__name__}")
        check_known_keys("DataConfig", d, (f.name for f in dataclasses.fields(cls)))
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dict (tuples become lists); ``from_dict(to_dict())`` round-trips."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @property
    def is_synthetic(self) -> bool:
        return self.kind in SYNTHETIC_KINDS
