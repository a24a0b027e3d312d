"""Deprecated names of a package, kept as aliases that warn once per use."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any


def deprecated_aliases(module: str, namespace: Mapping[str, Any], renamed: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving ``renamed`` (old name -> new name) with a DeprecationWarning."""

    def __getattr__(name: str) -> Any:
        if name in renamed:
            new = renamed[name]
            warnings.warn(f"{module}.{name} is deprecated; use {module}.{new}", DeprecationWarning, stacklevel=2)
            return namespace[new]
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
