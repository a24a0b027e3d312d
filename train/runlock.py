"""One trainer per run folder: ``out_dir/.lock`` names its holder (pid, host, start time, run id).

A second trainer on the same folder refuses with ``RunFolderBusy`` naming the holder. A lock whose
process is gone (same host, and the pid no longer runs or now belongs to a later process) is
stale: it is taken over with a message. A lock from another host cannot be checked from here;
the message says which file to delete once that process is known to be gone. In a
multi-process job, process 0 holds the lock for the whole job and every process learns the
outcome, so all of them start or all refuse.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import jax
import numpy as np

from .errors import RunFolderBusy

LOCK_NAME = ".lock"


def _start_time(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (Linux ``/proc``), or None where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    """Whether the holder of a lock written on this host still runs."""
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # runs under another user
    started = holder.get("proc_start")
    return started is None or _start_time(pid) in (None, started)


def _describe(holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("time", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')!r} (run {holder.get('run_id')}, since {since})"


class RunLock:
    """Context manager holding ``out_dir/.lock`` (process 0 of the job; the others only agree)."""

    def __init__(self, out_dir: str | Path, run_id: str, *, message=print):
        self.path = Path(out_dir) / LOCK_NAME
        self.run_id, self.message = run_id, message
        self.held = False

    def _holder(self) -> dict | None:
        for _ in range(20):  # a lock being written right now is empty for a moment
            try:
                return json.loads(self.path.read_text())
            except FileNotFoundError:
                return None
            except (OSError, ValueError):
                time.sleep(0.05)
        return {}

    def _try_acquire(self) -> str | None:
        """None when acquired, else why not."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": _start_time(os.getpid()),
              "run_id": self.run_id, "time": time.time()}  # fmt: skip
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue  # released meanwhile
                if holder.get("host") != me["host"]:
                    return (
                        f"run folder {self.path.parent} is in use by {_describe(holder)}; if that process is gone, "
                        f"delete {self.path} and start again"
                    )
                if _alive(holder):
                    return f"run folder {self.path.parent} is in use by {_describe(holder)}"
                self.message(f"taking over the stale lock of {_describe(holder)}: that process is gone")
                stale = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
                try:
                    os.replace(self.path, stale)
                    os.remove(stale)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return None
        return f"could not take the lock {self.path}: other trainers keep taking it"

    def __enter__(self) -> RunLock:
        why = self._try_acquire() if jax.process_index() == 0 else None
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            ok = multihost_utils.broadcast_one_to_all(np.int32(why is None))
            if not ok and why is None:
                why = f"process 0 could not take the lock {self.path} (its message names the holder)"
        if why is not None:
            raise RunFolderBusy(why)
        self.held = jax.process_index() == 0
        return self

    def __exit__(self, *exc) -> None:
        if not self.held:
            return
        holder = self._holder() or {}
        if holder.get("pid") == os.getpid() and holder.get("run_id") == self.run_id:
            self.path.unlink(missing_ok=True)
        self.held = False
