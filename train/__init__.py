"""The xlstm-jax trainer: ``fit`` (Python), ``xlstm-train`` (command line), ``load_run`` (reload a run).

The names load on first use, so that ``python -m xlstm_jax.train`` can set up devices and
``jax.distributed`` before the training code imports.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["History", "LoadedRun", "TrainResult", "fit", "load_run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("xlstm_jax.train.api"), name)
    raise AttributeError(f"module 'xlstm_jax.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
