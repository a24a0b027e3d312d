"""Orbax checkpoints of a training run: train state, data-iterator state, config.

* Saves are asynchronous (``save`` returns once the arrays are copied to host). When a save has
  finished, a SHA-256 digest of every file it wrote is recorded in ``<step>/digests.json``.
* A failed save (disk full, permissions, ...) raises ``CheckpointSaveError`` at once, from
  ``save`` or, for the asynchronous part, from the next ``check``, naming the path, the error and
  the last good checkpoint.
* ``restore_latest`` walks back from the newest step: a checkpoint whose files do not match their
  digests, or that fails to restore (a partial write, a corrupted file), is reported, moved
  aside to ``<run>/quarantine/`` (kept for inspection, no longer counted by ``keep``), and the
  previous one is used; the re-run saves that step again.
* Restoring takes abstract targets with concrete shardings, so a checkpoint saved on one mesh
  restores onto another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from .errors import CheckpointSaveError

log = logging.getLogger(__name__)

DIGESTS = "digests.json"


class CorruptCheckpoint(RuntimeError):
    """A checkpoint whose files do not match the digests recorded when it was saved."""


def file_digests(step_dir: Path) -> dict[str, str]:
    """SHA-256 of every file under ``step_dir`` (the digest file excepted), by relative path."""
    out = {}
    for path in sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != DIGESTS):
        with open(path, "rb") as f:
            out[path.relative_to(step_dir).as_posix()] = hashlib.file_digest(f, "sha256").hexdigest()
    return out


def verify_digests(step_dir: Path) -> bool:
    """Raises ``CorruptCheckpoint`` naming the files that differ from the recorded digests; False
    when no digests were recorded (a run killed between the save and the digest), True when all match."""
    record = step_dir / DIGESTS
    if not record.is_file():
        return False
    expected = json.loads(record.read_text())["sha256"]
    found = file_digests(step_dir)
    bad = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
    if bad:
        raise CorruptCheckpoint(f"{len(bad)} file(s) differ from their digests: {', '.join(bad[:5])}")
    return True


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class Checkpointer:
    """Keeps the newest ``keep`` checkpoints of a run under ``directory``."""

    def __init__(self, directory: str | Path, *, keep: int, async_save: bool = True, read_only: bool = False):
        self.directory = Path(directory).resolve()
        self.quarantine = self.directory.parent / "quarantine"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=not read_only,
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data", "meta"))
        self._pending: list[int] = []  # saved, digests not yet recorded
        self.last_saved: int | None = None  # the step of the newest save started by this process
        self.last_good: int | None = max(self.steps(), default=None)
        self.failed = False

    # ------------------------------------------------------------------ saving

    def save(self, step: int, state, data_iterator, meta: dict[str, Any]) -> None:
        """Starts saving ``step`` (asynchronously); ``CheckpointSaveError`` if it cannot. The caller
        decides the cadence: every call saves (orbax's own interval policy never skips one)."""
        self._finish_pending()
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        try:
            saved = self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        except Exception as err:  # noqa: BLE001 - any failure to write is fatal for the run
            self._fail(step, err)
        if not saved:
            self._fail(step, RuntimeError("orbax declined to save the step"))
        self._pending.append(step)
        self.last_saved = step

    def check(self) -> None:
        """Raises ``CheckpointSaveError`` if an asynchronous save has failed; cheap, call every step."""
        if not self._pending or self.failed:
            return
        try:
            self.manager.check_for_errors()
        except Exception as err:  # noqa: BLE001
            self._fail(self._pending[-1], err)

    def _fail(self, step: int, err: BaseException):
        self.failed = True
        last = f"step {self.last_good} in {self.directory}" if self.last_good is not None else "none"
        raise CheckpointSaveError(
            f"saving the checkpoint of step {step} to {self.directory / str(step)} failed: "
            f"{type(err).__name__}: {err}; last good checkpoint: {last}"
        ) from err

    def _finish_pending(self) -> None:
        """Waits for the running save, then records the digests of every finished one."""
        try:
            self.manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001
            self._fail(self._pending[-1] if self._pending else -1, err)
        for step in self._pending:
            step_dir = self.directory / str(step)
            if jax.process_index() == 0 and step_dir.is_dir():
                (step_dir / DIGESTS).write_text(json.dumps({"sha256": file_digests(step_dir)}, indent=1))
            self.last_good = step
        self._pending = []

    # ---------------------------------------------------------------- restoring

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def read_meta(self, step: int) -> dict:
        """The JSON metadata saved with checkpoint ``step`` (config, resolved model, fingerprint)."""
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def restore(self, step: int, abstract_state, data_iterator):
        verify_digests(self.directory / str(step))
        items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        return out.state, out.meta

    def restore_params(self, abstract_params, step: int | None = None):
        """``(step, params)``: only the parameters of checkpoint ``step`` (default: the newest that
        restores), onto the shardings of ``abstract_params`` (ShapeDtypeStructs with shardings).
        Reading only: an unusable checkpoint is reported, not moved."""
        for candidate in reversed(self.steps()) if step is None else [step]:
            restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), abstract_params)
            args = ocp.args.PyTreeRestore(
                item={"params": abstract_params}, restore_args={"params": restore_args}, partial_restore=True
            )
            try:
                verify_digests(self.directory / str(candidate))
                out = self.manager.restore(candidate, args=ocp.args.Composite(state=args))
            except Exception as err:  # noqa: BLE001 - any failure means this checkpoint is unusable
                if step is not None:
                    raise
                self._report_unusable(candidate, err)
                continue
            return candidate, out.state["params"]
        raise FileNotFoundError(f"no usable checkpoint in {self.directory}")

    def _report_unusable(self, step: int, err: BaseException, moved_to: Path | None = None) -> None:
        where = f"; moved to {moved_to}" if moved_to else ""
        log.warning("checkpoint at step %d in %s cannot be restored (%s: %s)%s; trying the previous one",
                    step, self.directory, type(err).__name__, err, where)  # fmt: skip
        if jax.process_index() == 0:
            print(f"WARNING: checkpoint step {step} is unusable ({type(err).__name__}: {err}){where}; falling back")

    def _set_aside(self, step: int) -> Path:
        """Moves checkpoint ``step`` to the quarantine folder (process 0) and forgets it."""
        target = self.quarantine / f"{step}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        _sync(f"quarantine-{step}-start")
        if jax.process_index() == 0:
            self.quarantine.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.directory / str(step)), str(target))
        _sync(f"quarantine-{step}-done")
        self.manager.reload()
        return target

    def restore_latest(self, abstract_state, data_iterator):
        """``(step, state, meta)`` of the newest checkpoint that restores, or None if none does;
        every newer one that does not is moved to the quarantine folder."""
        for step in reversed(self.steps()):
            try:
                state, meta = self.restore(step, abstract_state, data_iterator)
            except Exception as err:  # noqa: BLE001 - any failure means this checkpoint is unusable
                self._report_unusable(step, err, self._set_aside(step))
                continue
            self.last_good = step
            return step, state, meta
        self.last_good = None
        return None

    def wait(self) -> None:
        self._finish_pending()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # already failing: keep what finished, report nothing new
            self.close()
        except Exception as err:  # noqa: BLE001
            log.debug("closing the checkpointer after an error: %s", err)

    def close(self) -> None:
        if not self.failed:
            self._finish_pending()
        self.manager.close()
