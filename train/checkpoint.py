"""Orbax checkpoints of a training run: train state, data-iterator state, config.

* Saves are asynchronous (``save`` returns once the arrays are copied to host).
* ``restore_latest`` walks back from the newest step: a checkpoint that fails to
  restore (a partial write, a corrupted file) is reported and skipped, and the
  previous one is used.
* Restoring takes abstract targets with concrete shardings, so a checkpoint saved
  on one mesh restores onto another.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """Keeps the newest ``keep`` checkpoints of a run under ``directory``."""

    def __init__(self, directory: str | Path, *, keep: int, async_save: bool = True):
        self.directory = Path(directory).resolve()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data", "meta"))

    def save(self, step: int, state, data_iterator, meta: dict[str, Any], *, force: bool = False) -> bool:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            meta=ocp.args.JsonSave(meta),
        )
        return self.manager.save(step, args=args, force=force)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, step: int, abstract_state, data_iterator):
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
            meta=ocp.args.JsonRestore(),
        )
        out = self.manager.restore(step, args=args)
        return out.state, out.meta

    def restore_latest(self, abstract_state, data_iterator):
        """``(step, state, meta)`` of the newest checkpoint that restores, or None if none does."""
        for step in reversed(self.steps()):
            try:
                state, meta = self.restore(step, abstract_state, data_iterator)
            except Exception as err:  # noqa: BLE001 - any failure means this checkpoint is unusable
                log.warning("checkpoint at step %d in %s cannot be restored (%s: %s); trying the previous one",
                            step, self.directory, type(err).__name__, err)  # fmt: skip
                if jax.process_index() == 0:
                    print(f"WARNING: checkpoint step {step} is unusable ({type(err).__name__}); falling back")
                continue
            return step, state, meta
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
