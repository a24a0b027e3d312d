"""``load_tokenizer``: a Hugging Face ``tokenizers.Tokenizer`` from a ``tokenizer.json``.

Accepts the file itself, a folder holding it, or a Hub repo id (e.g. ``"NX-AI/xLSTM-7b"``,
fetched with ``huggingface_hub`` like ``from_pretrained``).
"""

from __future__ import annotations

import os
from pathlib import Path

from xlstm_jax import hub
from xlstm_jax._validation import CheckpointError

TOKENIZER_NAME = "tokenizer.json"


def load_tokenizer(
    path_or_id: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
):
    """The ``tokenizers.Tokenizer`` of a ``tokenizer.json`` file, a folder holding one, or a Hub repo id.

    Args:
      path_or_id: ``.../tokenizer.json``, its folder, or a Hub repo id.
      revision, cache_dir, local_files_only, token: for a Hub repo id, as in ``from_pretrained``.

    Raises:
      CheckpointError: the file is missing, is a directory, or is not a tokenizer (the message
        names the path).
    """
    from tokenizers import Tokenizer

    path = hub.resolve(
        path_or_id,
        allow_patterns=hub.TOKENIZER_FILES,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        token=token,
    )
    if path.is_dir():
        path = hub.require_file(path, TOKENIZER_NAME, "load_tokenizer")
    try:
        return Tokenizer.from_file(os.fspath(path))
    except Exception as e:  # tokenizers raises a bare Exception for files it cannot parse
        size = Path(path).stat().st_size
        raise CheckpointError(
            f"{path} ({size} bytes) is not a tokenizer: expected a Hugging Face tokenizers JSON file "
            f"(tokenizer.json) ({type(e).__name__}: {e})"
        ) from e


__all__ = ["load_tokenizer"]
