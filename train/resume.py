"""Resume rules: a checkpoint is continued only by a run of the same model, data and optimizer.

``fingerprint`` flattens what a train state depends on into dotted keys, saved with every
checkpoint; ``check_resume`` compares it with the run about to start and refuses, listing the
keys that differ (steps, logging, evaluation and checkpoint cadence may change).
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

from flax import nnx

from .checkpoint import Checkpointer
from .config import ConfigError

if TYPE_CHECKING:
    from .trainer import RunSpec

RESUME_MODES = ("auto", "never", "must")
# Keys that may change between a checkpoint and the run resuming it: cadence, length, output,
# evaluation and loading knobs. Everything else in the fingerprint must match.
_RESUMABLE_CHANGES = {
    "data.eval_path", "data.max_eval_batches", "data.num_eval_examples", "data.eval_min_len",
    "data.eval_max_len", "data.prefetch_buffer_size", "data.read_threads",
    "model.remat", "model.remat_policy",
}  # fmt: skip


def _flatten(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    else:
        out[prefix] = value
    return out


def fingerprint(spec: RunSpec, model_meta: dict, params, optimizer) -> dict:
    """What a checkpoint's train state depends on, as flat dotted keys: the resolved model (or a
    user model's class and parameter shapes), the data, the optimizer and the train fields that
    shape the batches and the initialization."""
    flat: dict = {}
    if model_meta.get("arch") == "custom":
        shapes = {"/".join(map(str, k)): list(v.shape) for k, v in nnx.to_flat_state(params)}
        _flatten("model", {**model_meta, "param_shapes": shapes}, flat)
    else:
        _flatten("model", model_meta, flat)
    _flatten("data", spec.data.to_dict(), flat)
    # A user's optimizer cannot be compared; keeping it the same across resumes is the user's part.
    _flatten("optim", dataclasses.asdict(spec.optim) if optimizer is None else {"custom": True}, flat)
    for name in ("global_batch_size", "seq_len", "seed", "compute_dtype", "param_dtype"):
        flat[f"train.{name}"] = getattr(spec.train, name)
    flat = {k: v for k, v in flat.items() if k not in _RESUMABLE_CHANGES}
    return json.loads(json.dumps(flat, default=str))


def check_resume(ckpt: Checkpointer, resume: str, fp: dict) -> None:
    """Refuses a run folder whose checkpoints this run must not continue (see ``fit``)."""
    steps = ckpt.steps()
    if not steps:
        return
    if resume == "never":
        raise ConfigError(
            f"resume='never' but {ckpt.directory} holds checkpoints (steps {steps}); "
            "choose a new train.out_dir, or resume='auto' to continue that run"
        )
    try:
        saved = ckpt.read_meta(steps[-1]).get("fingerprint")
    except Exception:  # noqa: BLE001 - an unreadable newest checkpoint is handled by the restore
        return
    if saved is None:
        return
    differ = sorted(k for k in set(saved) | set(fp) if saved.get(k, "<absent>") != fp.get(k, "<absent>"))
    if differ:
        lines = [f"  {k}: checkpoint {saved.get(k, '<absent>')!r}, this run {fp.get(k, '<absent>')!r}" for k in differ]
        raise ConfigError(
            f"the checkpoints in {ckpt.directory} belong to a run with a different config; differing keys:\n"
            + "\n".join(lines)
            + "\nuse a new train.out_dir for a new run (steps, logging, evaluation and checkpoint cadence may change)"
        )


def check_row_blocks(data_kind: str, saved: int | None, current: int) -> None:
    """Refuse to continue a corpus whose data position was saved with another number of row blocks.

    Each block of batch rows (``mesh.process_rows``: one per group of processes holding the same rows)
    reads its own shard of a corpus's documents and packs them; the saved position counts records of
    that shard, so on another number of blocks it would point into differently sharded streams and
    documents would be skipped or read twice. Synthetic tasks draw each row from its global index, so
    their position carries over (``tests/test_context_trainer.py`` resumes them on other meshes).
    Checkpoints written before the block count was saved (``saved`` None) are not checked.
    """
    from .data.config import CORPUS_KINDS

    if saved is None or saved == current or data_kind not in CORPUS_KINDS:
        return
    raise ConfigError(
        f"mesh: the checkpoint's data position was saved with the batch rows loaded in {saved} process "
        f"block(s), this mesh and process count load them in {current}; a corpus (data.kind={data_kind!r}) is "
        f"sharded per block, so the saved position does not carry over (documents would be skipped or "
        f"repeated). Resume on a mesh and process count giving {saved} row block(s), or start a new run "
        f"(resume='never' or another train.out_dir)"
    )
