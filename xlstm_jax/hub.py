"""Local folders and Hugging Face Hub ids -> a local folder of checkpoint files.

``resolve("NX-AI/xLSTM-7b")`` downloads (or, offline, finds in the cache) the files that
``from_pretrained`` and ``load_tokenizer`` read, through ``huggingface_hub.snapshot_download``,
and returns the snapshot folder. A path that exists is used as it is. Every failure is a
``CheckpointError`` that says what was looked for and where (repo, revision, cache folder).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from xlstm_jax._validation import CheckpointError

# The files of a checkpoint: model weights (one file or index + shards), configs and the tokenizer.
MODEL_FILES = ("config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def looks_like_repo_id(name: str | os.PathLike) -> bool:
    """True for ``"org/name"`` or ``"name"`` strings that are not an existing path."""
    return isinstance(name, str) and bool(_REPO_ID.fullmatch(name)) and not Path(name).exists()


def resolve(
    path_or_id: str | os.PathLike,
    *,
    allow_patterns: Sequence[str],
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """The local folder for ``path_or_id``: the path itself, or the Hub snapshot of the repo id.

    Args:
      path_or_id: an existing folder (or file), or a Hub repo id like ``"NX-AI/xLSTM-7b"``.
      allow_patterns: the file patterns to fetch from the Hub (``MODEL_FILES``, ``TOKENIZER_FILES``).
      revision: branch, tag or commit (default ``main``).
      cache_dir: the Hub cache folder (default ``$HF_HUB_CACHE``, ``~/.cache/huggingface/hub``).
      local_files_only: never use the network, only the cache (also when ``HF_HUB_OFFLINE=1``).
      token: Hub token for private or gated repos (default: the logged-in token).

    Raises:
      CheckpointError: no such path, no such repo or revision, or (offline) not in the cache.
    """
    if isinstance(path_or_id, os.PathLike) or not looks_like_repo_id(path_or_id):
        path = Path(path_or_id)
        if not path.exists():
            raise CheckpointError(
                f"{path} does not exist: pass a local folder or a Hugging Face Hub repo id like 'NX-AI/xLSTM-7b'"
            )
        if revision is not None:
            raise CheckpointError(f"revision={revision!r} is only for Hub repo ids; {path} is a local path")
        return path
    import huggingface_hub
    import huggingface_hub.constants
    from huggingface_hub import errors

    repo_id = str(path_or_id)
    cache = cache_dir or huggingface_hub.constants.HF_HUB_CACHE
    where = f"Hub repo {repo_id!r} (revision {revision or 'main'!r}, cache {cache}; no local folder of that name)"
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
            allow_patterns=list(allow_patterns),
        )
    except errors.GatedRepoError as e:
        raise CheckpointError(f"{where} is gated: accept its terms on the Hub and pass token= ({e})") from e
    except errors.RepositoryNotFoundError as e:
        raise CheckpointError(f"{where} was not found (or is private: pass token=)") from e
    except errors.RevisionNotFoundError as e:
        raise CheckpointError(f"{where}: the revision does not exist") from e
    except errors.LocalEntryNotFoundError as e:
        raise CheckpointError(
            f"{where} is not in the cache and downloading is off (local_files_only=True or HF_HUB_OFFLINE=1), "
            f"or the Hub cannot be reached; looked for {list(allow_patterns)}"
        ) from e
    except (errors.HfHubHTTPError, OSError) as e:
        raise CheckpointError(f"{where} could not be downloaded: {e}") from e
    return Path(folder)


def require_file(folder: Path, name: str, what: str) -> Path:
    """``folder / name``, or a ``CheckpointError`` saying that ``what`` needs it there."""
    path = folder / name
    if not path.is_file():
        kind = "is a directory" if path.is_dir() else "does not exist"
        raise CheckpointError(f"{path} {kind}: {what} needs the file {name} in {folder}")
    return path


__all__ = ["MODEL_FILES", "TOKENIZER_FILES", "looks_like_repo_id", "require_file", "resolve"]
