"""Reading the small JSON files of a checkpoint folder with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xlstm_jax._validation import CheckpointError


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
