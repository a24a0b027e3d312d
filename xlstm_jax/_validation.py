"""The one home of value checks: every config field, argument and file the project reads.

Each check raises an error that names the field, says what is accepted and shows what was given,
in one format: ``"{field} must be {accepted}, got {value!r}"``. The error type is chosen by the
layer that calls the check, one type per layer (all ``ValueError`` subclasses, so a caller may
catch ``ValueError`` everywhere):

=====================  ===============================================  =========================
layer                  error                                            raised for
=====================  ===============================================  =========================
ops, nn, models        ``ValueError``                                   arguments, shapes, configs
checkpoints, hub       ``xlstm_jax.CheckpointError``                    files that cannot be read
trainer                ``xlstm_jax.train.config.ConfigError``           run configs (YAML, overrides)
=====================  ===============================================  =========================

The checks accept only Python values that mean what they say: ``True`` is not an integer,
``1.5`` is not a step count, ``inf`` and ``nan`` are not finite numbers unless a field allows them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


class CheckpointError(ValueError):
    """A checkpoint, config or tokenizer file that cannot be used; the message names the file."""


def _fail(error: type[Exception], field: str, accepted: str, value: Any):
    raise error(f"{field} must be {accepted}, got {value!r}")


def _bounds_text(low, high, low_open: bool = False, high_open: bool = False) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    return " and ".join(parts)


def check_int(
    field: str,
    value: Any,
    low: int | None = None,
    high: int | None = None,
    *,
    optional: bool = False,
    error: type[Exception] = ValueError,
) -> None:
    """An ``int`` (not a bool, not a float) in ``[low, high]``; ``None`` passes when ``optional``."""
    if value is None and optional:
        return
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        bounds = _bounds_text(low, high)
        accepted = "an integer" + (f" {bounds}" if bounds else "") + (" or None" if optional else "")
        _fail(error, field, accepted, value)


def check_number(
    field: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
    allow_inf: bool = False,
    error: type[Exception] = ValueError,
) -> None:
    """A finite real number (int or float, not a bool) in ``[low, high]`` (open at ``low`` when
    ``low_open``, at ``high`` when ``high_open``); ``None`` passes when ``optional``; ``+-inf`` only
    when ``allow_inf``; never NaN."""
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    ok = ok and (allow_inf or math.isfinite(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bounds = _bounds_text(low, high, low_open, high_open)
        kind = "a number" if allow_inf else "a finite number"
        _fail(error, field, kind + (f" {bounds}" if bounds else "") + (" or None" if optional else ""), value)


def check_bool(field: str, value: Any, *, error: type[Exception] = ValueError) -> None:
    """Exactly ``True`` or ``False`` (not 0/1, not a string)."""
    if not isinstance(value, bool):
        _fail(error, field, "True or False", value)


def check_choice(field: str, value: Any, choices: Iterable, *, error: type[Exception] = ValueError) -> None:
    """One of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        _fail(error, field, "one of " + ", ".join(repr(c) for c in choices), value)


def check_known_keys(
    section: str, mapping: Mapping[str, Any], known: Iterable[str], *, error: type[Exception] = ValueError
) -> None:
    """Every key of ``mapping`` is in ``known``; the error lists the unknown keys with their section."""
    known = sorted(known)
    unknown = sorted(set(mapping) - set(known))
    if unknown:
        prefix = f"{section}." if section else ""
        raise error(f"unknown key(s) {', '.join(prefix + str(k) for k in unknown)}; known: {', '.join(known)}")


def read_json(path: Path, expected: str) -> dict[str, Any]:
    """The JSON object in ``path``; a ``CheckpointError`` naming the file and ``expected`` otherwise."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise CheckpointError(f"{path} does not exist: expected {expected}") from e
    except (IsADirectoryError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} cannot be read as text ({e}): expected {expected}") from e
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not JSON ({e}): expected {expected}") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} holds a JSON {type(value).__name__}: expected {expected} (a JSON object)")
    return value


__all__ = [
    "read_json",
    "CheckpointError",
    "check_bool",
    "check_choice",
    "check_int",
    "check_known_keys",
    "check_number",
]
