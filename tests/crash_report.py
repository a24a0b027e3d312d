"""What a pytest-xdist worker was doing when it died, printed at the end of the run; one more try
for a test whose worker died of a fatal signal inside JAX's native code.

A worker killed by a fatal signal in native code (XLA, torch) prints its faulthandler dump to stderr
at that moment, in the middle of the output, where a log that keeps only its end loses it; xdist
itself reports only "worker 'gwN' crashed while running <test>". So each worker writes its
faulthandler dump to a file, and before each test notes which test starts and how much memory the
worker and the machine have. For every worker that goes down with an error, the controlling process
prints the error, those notes and the dump last (just before the short test summary).

A test whose worker died of a fatal signal (SIGSEGV, SIGABRT, ...) in JAX's own code runs once more,
in the fresh worker xdist starts in its place. JAX's own code: the crashing thread's innermost Python
frame is under ``jax/_src/`` (compiling or running a program in jaxlib's native code), or the signal
struck one of XLA's native threads, which Python does not know, while a Python thread waited in such
a frame. It counts as "rerun" in the summary line (letter ``R``), and its dump is printed as above; a
second crash fails it.

Why: the default run lost a worker in both of its CI runs of 2026-12-05 and in 3 of 6 runs on 2-core
development VMs that day, each time in a different test that passes alone, and in 4 of the 5 full
runs on such a VM on 2026-12-06. The dumps seen whole (the VMs') are a segmentation fault in XLA's
compiler (``backend_compile_and_load``) in a worker that had reached about 5.3-5.8 GB, and once (a
fresh clone run as CI runs it, 2026-12-06) an abort on one of XLA's threads while the test waited in
that compile: the first rule (crashing thread in ``jax/_src/``) did not retry it, and that run
failed. The programs of the first crashes then compiled 324 times in two fresh processes without
one. That points to the state a long-lived worker accumulates in jaxlib, not to the test. A crash
anywhere else, and any ordinary failure, is not retried.

``conftest.py`` imports these hooks (``__all__``); without ``-n`` (no workers) they do nothing.
"""

from __future__ import annotations

import faulthandler
import os
import resource
import shutil
import tempfile
from pathlib import Path

import pytest

__all__ = [  # the hooks, for ``from crash_report import *`` in a conftest
    "pytest_configure",
    "pytest_handlecrashitem",
    "pytest_report_teststatus",
    "pytest_runtest_logstart",
    "pytest_terminal_summary",
    "pytest_testnodedown",
    "pytest_unconfigure",
]

_FOLDER_ENV = "XLSTM_JAX_TEST_CRASH_DIR"  # set by the controlling process, inherited by its workers
_MOST_LINES = 80  # of each dump: the crashing thread comes first, then the others
_dump_key = pytest.StashKey()  # a worker's open dump file
_made_key = pytest.StashKey()  # the folder the controlling process made
_downs: list[tuple[str, object]] = []  # (worker id, error) of workers that went down with an error
_retried: set[str] = set()  # node ids run again after a crash in JAX's native code


def _folder() -> Path | None:
    folder = os.environ.get(_FOLDER_ENV)
    return Path(folder) if folder else None


_NOISE = ("/pluggy/", "/_pytest/", "/xdist/", "/execnet/", 'File "<string>"')


def _is_noise(line: str) -> bool:
    """The dump's list of extension modules, and the frames of pytest's own machinery."""
    return line.startswith("Extension modules:") or any(part in line for part in _NOISE)


def _available_mb() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return f"{int(line.split()[1]) // 1024} MB"
    except OSError:
        pass
    return "unknown"


@pytest.hookimpl(trylast=True)  # after pytest's faulthandler plugin pointed the dump at stderr
def pytest_configure(config):
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        if config.pluginmanager.hasplugin("dsession") and _folder() is None:
            os.environ[_FOLDER_ENV] = config.stash[_made_key] = tempfile.mkdtemp(prefix="xlstm-jax-test-workers-")
        return
    folder = _folder()
    if folder is None:
        return
    dump = (folder / f"{worker}.faulthandler").open("w")
    config.stash[_dump_key] = dump  # kept open until the process ends
    faulthandler.enable(file=dump, all_threads=True)


def pytest_unconfigure(config):
    """The controlling process removes its folder unless a worker went down (the summary names it)."""
    made = config.stash.get(_made_key, None)
    if made is not None and not _downs:
        shutil.rmtree(made, ignore_errors=True)


def pytest_runtest_logstart(nodeid, location):
    worker, folder = os.environ.get("PYTEST_XDIST_WORKER"), _folder()
    if worker is None or folder is None:
        return
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    note = f"running {nodeid}; this worker's peak memory so far {peak} MB; machine's available memory {_available_mb()}"
    (folder / f"{worker}.current").write_text(note + "\n")


def _crashed_in_jax(dump: str) -> bool:
    """Whether a faulthandler dump is a fatal signal that struck in JAX's native code.

    That is: the crashing thread ("Current thread") was last in a frame under ``jax/_src/``; or the
    signal struck a thread Python does not know (no thread is marked current: XLA's own threads, as
    in a CI run of 2026-12-06 that aborted while compiling) while some Python thread was waiting in
    such a frame.
    """
    if "Fatal Python error" not in dump:
        return False
    if "Current thread" in dump:
        threads = [dump.split("Current thread", 1)[1]]
    else:
        threads = dump.split("Thread 0x")[1:]
    for thread in threads:
        frames = [line for line in thread.splitlines() if line.strip().startswith("File ")]
        if frames and "/jax/_src/" in frames[0].replace("\\", "/"):
            return True
    return False


@pytest.hookimpl(optionalhook=True)  # an xdist hook: the controlling process, when a worker dies in a test
def pytest_handlecrashitem(crashitem, report, sched):
    folder = _folder()
    worker = getattr(getattr(report, "node", None), "gateway", None)
    if folder is None or worker is None or crashitem in _retried:
        return
    dump = folder / f"{worker.id}.faulthandler"
    if dump.exists() and _crashed_in_jax(dump.read_text(errors="replace")):
        _retried.add(crashitem)
        sched.mark_test_pending(crashitem)
        report.outcome = "rerun"


def pytest_report_teststatus(report):
    if report.outcome == "rerun":
        return "rerun", "R", ("RERUN", {"yellow": True})
    return None


@pytest.hookimpl(optionalhook=True)  # an xdist hook
def pytest_testnodedown(node, error):
    if error:
        _downs.append((node.gateway.id, error))


@pytest.hookimpl(trylast=True)  # last of the summaries, just before the short test summary
def pytest_terminal_summary(terminalreporter):
    folder = _folder()
    if not _downs or folder is None:
        return
    terminalreporter.section("workers that went down")
    for nodeid in sorted(_retried):
        terminalreporter.write_line(f"run again after its worker crashed in JAX's native code: {nodeid}")
    for worker, error in _downs:
        terminalreporter.write_line(f"[{worker}] went down: {error}")
        for suffix in ("current", "faulthandler"):
            path = folder / f"{worker}.{suffix}"
            text = path.read_text(errors="replace") if path.exists() else ""
            lines = [line for line in text.splitlines() if not _is_noise(line)]
            if not lines:
                terminalreporter.write_line(f"[{worker}] {suffix}: nothing written")
            for line in lines[:_MOST_LINES]:
                terminalreporter.write_line(f"[{worker}] {line}")
            if len(lines) > _MOST_LINES:
                terminalreporter.write_line(f"[{worker}] ... {len(lines) - _MOST_LINES} more lines in {path}")
