"""``GenerationConfig``: special token ids and decoding defaults, read from and written to
Hugging Face's ``generation_config.json`` (and the ids in ``config.json``).

``from_pretrained`` attaches one to the loaded model as ``model.generation_config``;
``generate`` takes its defaults from it, and ``save_pretrained`` writes it back, so the
bos/eos/pad ids of a checkpoint survive a load/save round trip.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from xlstm_jax._validation import CheckpointError, check_bool, check_int, check_number

GENERATION_CONFIG_NAME = "generation_config.json"
SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
# Keys of generation_config.json that describe the file, not the decoding: kept, never warned about.
_META_KEYS = ("transformers_version", "_from_model_config")
# Hugging Face's defaults: config.json of NX-AI/xLSTM-7b and transformers' xLSTMConfig.
HF_SPECIAL_IDS = {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationConfig:
    """Special token ids and decoding defaults (Hugging Face ``GenerationConfig`` names and defaults).

    Attributes:
      bos_token_id, pad_token_id: token ids or None.
      eos_token_id: a token id, a tuple of ids (any of them ends a row; a list is accepted), or None.
      max_new_tokens: default for ``generate`` (None: ``generate`` needs it).
      do_sample: sample with ``temperature``/``top_k``/``top_p``; False: greedy.
      temperature, top_k, top_p: sampling settings, used when ``do_sample`` (top_k None or 0 and
        top_p 1.0 switch the filter off).
      extra: other keys of ``generation_config.json`` as ``(key, JSON text)`` pairs, written back
        unchanged; ``generate`` does not apply them (loading warns about each one).
    """

    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    max_new_tokens: int | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float = 1.0
    extra: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        for name in ("bos_token_id", "pad_token_id"):
            check_int(f"generation_config.{name}", getattr(self, name), 0, optional=True)
        eos = self.eos_token_id
        if isinstance(eos, (list, tuple)):
            for e in eos:
                check_int("generation_config.eos_token_id", e, 0)
            object.__setattr__(self, "eos_token_id", tuple(eos))
        else:
            check_int("generation_config.eos_token_id", eos, 0, optional=True)
        check_int("generation_config.max_new_tokens", self.max_new_tokens, 0, optional=True)
        check_bool("generation_config.do_sample", self.do_sample)
        check_number("generation_config.temperature", self.temperature, 0)
        check_int("generation_config.top_k", self.top_k, 0, optional=True)
        check_number("generation_config.top_p", self.top_p, 0, 1, low_open=True)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """``eos_token_id`` as a tuple (empty when None)."""
        eos = self.eos_token_id
        return () if eos is None else eos if isinstance(eos, tuple) else (eos,)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "generation config") -> GenerationConfig:
        """From a ``generation_config.json`` dict; unknown keys go to ``extra`` (with a warning)."""
        own = {f.name for f in fields(cls)} - {"extra"}
        extra = {k: v for k, v in d.items() if k not in own}
        unused = sorted(k for k in extra if k not in _META_KEYS)
        if unused:
            log.warning("%s: %s are kept but not applied by xlstm_jax.generate", source, ", ".join(unused))
        try:
            return cls(
                **{k: v for k, v in d.items() if k in own},
                extra=tuple(sorted((k, json.dumps(v)) for k, v in extra.items())),
            )
        except ValueError as e:
            raise CheckpointError(f"{source}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        """The ``generation_config.json`` dict: the fields that differ from the defaults, and ``extra``."""
        default = GenerationConfig()
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "extra" and value != getattr(default, f.name):
                out[f.name] = list(value) if isinstance(value, tuple) else value
        out.update({k: json.loads(v) for k, v in self.extra})
        return out

    def special_ids(self) -> dict[str, Any]:
        """bos/eos/pad ids for ``config.json`` (Hugging Face's 0/2/1 where this config has None)."""
        out = {}
        for name in SPECIAL_IDS:
            value = getattr(self, name)
            value = HF_SPECIAL_IDS[name] if value is None else value
            out[name] = list(value) if isinstance(value, tuple) else value
        return out


def read_generation_config(folder: str | os.PathLike, model_config: Mapping[str, Any]) -> GenerationConfig:
    """The special ids of ``config.json`` (``model_config``), overridden by ``generation_config.json``
    in ``folder`` when there is one (as transformers does)."""
    from xlstm_jax._validation import read_json

    d = {k: model_config[k] for k in SPECIAL_IDS if model_config.get(k) is not None}
    path = Path(folder) / GENERATION_CONFIG_NAME
    if path.exists():
        d.update(read_json(path, "a Hugging Face generation config"))
        return GenerationConfig.from_dict(d, source=str(path))
    return GenerationConfig.from_dict(d, source=str(Path(folder) / "config.json"))


def write_generation_config(config: GenerationConfig, folder: str | os.PathLike) -> None:
    (Path(folder) / GENERATION_CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2))


def generation_config_of(model) -> GenerationConfig | None:
    """``model.generation_config`` if the model has one (``from_pretrained`` attaches it)."""
    config = getattr(model, "generation_config", None)
    return config if isinstance(config, GenerationConfig) else None
