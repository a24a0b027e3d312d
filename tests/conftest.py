"""Fixtures shared by the test files (plain helpers live in ``helpers.py``)."""

from __future__ import annotations

import pytest

from helpers import require_official


@pytest.fixture
def official_torch():
    """``torch`` for live comparisons with the official code, on one thread (no OpenMP spinning
    against JAX's threads on small CPUs); skips the test when the official packages are missing."""
    torch = require_official()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)
