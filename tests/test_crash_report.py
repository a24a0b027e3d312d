"""``crash_report.py``, the xdist hooks of the default test run: a worker that dies of a fatal signal
is reported with its faulthandler dump, and a test whose worker died inside JAX's code runs once more.

It runs pytest with two workers in a subprocess, on a small test file whose tests crash on purpose:
a segfault (``faulthandler._sigsegv()``) from a frame under a ``jax/_src/`` folder or from the test
itself, and an abort on a thread Python does not know while the test waits in a ``jax/_src/`` frame
(how a CI run's worker died on 2026-12-06, in one of XLA's compiler threads).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent

_NATIVE = """
import ctypes
import faulthandler
import time


def crash():
    faulthandler._sigsegv()  # SIGSEGV from C code: no Python frame below this one


def abort_on_a_native_thread():
    # As XLA's compiler threads do: the signal arrives on a thread that Python does not know, so the
    # dump marks no thread as current, while this (the main) thread waits in a jax/_src frame.
    libc = ctypes.CDLL(None)
    libc.pthread_create.argtypes = [ctypes.POINTER(ctypes.c_ulong)] + [ctypes.c_void_p] * 3
    libc.pthread_create(ctypes.byref(ctypes.c_ulong()), None, ctypes.cast(libc.abort, ctypes.c_void_p), None)
    time.sleep(60)
"""

_TESTS = """
import faulthandler
import importlib.util
from pathlib import Path

# fake/jax/_src/native.py, not JAX: a function whose file lies under a jax/_src/ folder
_spec = importlib.util.spec_from_file_location("native", Path(__file__).parent / "fake/jax/_src/native.py")
native = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(native)
MARK = Path(__file__).with_name("crashed_once")


def test_passes():
    pass


def test_crashes_in_jax_once():
    if not MARK.exists():
        MARK.write_text("")
        native.crash()


def test_crashes_in_jax_always():
    native.crash()


def test_aborts_on_a_native_thread_while_in_jax_once():
    mark = MARK.with_name("aborted_once")
    if not mark.exists():
        mark.write_text("")
        native.abort_on_a_native_thread()


def test_crashes_in_the_test():
    faulthandler._sigsegv()
"""

_CONFTEST = """
from crash_report import *  # noqa: F403
"""


def test_a_crash_in_jax_runs_again_once_and_every_crash_is_reported(tmp_path):
    shutil.copy(HERE / "crash_report.py", tmp_path)
    (tmp_path / "conftest.py").write_text(_CONFTEST)
    (tmp_path / "fake" / "jax" / "_src").mkdir(parents=True)
    (tmp_path / "fake" / "jax" / "_src" / "native.py").write_text(_NATIVE)
    (tmp_path / "test_crashes.py").write_text(_TESTS)
    cmd = [sys.executable, "-m", "pytest", "-n", "2", "--max-worker-restart", "10", "-p", "no:cacheprovider", "-rA"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300).stdout
    assert "2 failed, 3 passed, 3 rerun" in out.splitlines()[-1], out
    passed = {line.split()[1] for line in out.splitlines() if line.startswith("PASSED ")}
    failed = {line.split()[1] for line in out.splitlines() if line.startswith("FAILED ")}
    once = {"test_crashes_in_jax_once", "test_aborts_on_a_native_thread_while_in_jax_once"}
    assert passed == {f"test_crashes.py::{name}" for name in {"test_passes", *once}}, out
    assert failed == {"test_crashes.py::test_crashes_in_jax_always", "test_crashes.py::test_crashes_in_the_test"}, out
    summary = out.split("workers that went down", 1)[1]
    for name in (*once, "test_crashes_in_jax_always"):
        assert f"run again after its worker crashed in JAX's native code: test_crashes.py::{name}" in summary
    assert summary.count("went down: Not properly terminated") == 5, summary
    assert summary.count("Fatal Python error: Segmentation fault") == 4, summary
    assert summary.count("Fatal Python error: Aborted") == 1, summary
    assert "in test_crashes_in_the_test" in summary and "native.py" in summary, summary
