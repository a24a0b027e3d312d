"""Fixtures shared by the test files (plain helpers live in ``helpers.py``)."""

from __future__ import annotations

import os

# The default run is dominated by XLA compiles of small programs. LLVM optimization level 0 for XLA's CPU
# backend halves compile time for ~2.5x slower steps: measured on tests/test_xlstm_large.py +
# tests/test_nn_stack.py, 110 -> 83 CPU seconds. It changes how the same HLO is lowered to machine code,
# not the HLO (the same IEEE operations in the same order). Set before JAX starts (helpers imports it);
# subprocess tests pass it on (helpers.FAST_COMPILE_XLA_FLAG). Run with XLSTM_JAX_TEST_XLA_OPT=1 to test
# the default code generation instead.
if os.environ.get("XLSTM_JAX_TEST_XLA_OPT") != "1":
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

import pytest  # noqa: E402
from crash_report import *  # noqa: E402, F403  (hooks: what a crashed xdist worker was doing)

from helpers import require_official  # noqa: E402


@pytest.fixture
def official_torch():
    """``torch`` for live comparisons with the official code, on one thread (no OpenMP spinning
    against JAX's threads on small CPUs); skips the test when the official packages are missing."""
    torch = require_official()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)
