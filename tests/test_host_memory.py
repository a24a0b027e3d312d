"""xlstm_jax.train.host_memory: glibc keeps freed memory, so XLA's per-call buffers stop page-faulting.

The effect is counted, not timed: minor page faults of the process (``getrusage``) per call of a
jitted function with a 64 MiB temporary buffer, in a fresh process with and without the setting.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from xlstm_jax.train import cli, host_memory

_PROBE = """
import json, resource, sys
from xlstm_jax.train import host_memory
applied = host_memory.keep_freed_host_memory() if sys.argv[1] == "keep" else None
import jax, jax.numpy as jnp
x, w = jnp.ones((2048, 256)), jnp.full((256, 8192), 1e-3)
f = jax.jit(lambda x, w: jnp.tanh(x @ w) @ w.T).lower(x, w).compile()
assert f.memory_analysis().temp_size_in_bytes == 64 * 2**20  # x @ w lives in XLA's temporary buffer
for _ in range(3):
    jax.block_until_ready(f(x, w))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    jax.block_until_ready(f(x, w))
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(json.dumps({"applied": applied, "faults_per_call": faults}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(host_memory._glibc() is None, reason="mallopt is glibc's: nothing to set on this C library")
def test_kept_memory_stops_the_page_faults_of_fresh_buffers():
    released, kept = _probe("release"), _probe("keep")
    assert kept["applied"] is True
    # without it every call maps its 64 MiB temporary buffer afresh: one fault per 4 KiB page
    assert released["faults_per_call"] >= 64 * 2**20 / 4096
    # with it the buffer's pages are reused (measured: 16,500 -> 1,700-4,900 here; 138,000 -> 0 or
    # about 27,000, varying between processes, for the benchmark training step)
    assert kept["faults_per_call"] <= released["faults_per_call"] / 2


def test_resolve_choices(monkeypatch):
    monkeypatch.setattr(host_memory, "_jax_started", lambda: False)  # as in a fresh xlstm-train process
    assert host_memory.resolve("keep") is True
    assert host_memory.resolve("release", cpu_devices=2) is False
    assert host_memory.resolve("auto", cpu_devices=2) is True
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert host_memory.resolve("auto") is True
    for platforms in ("cuda", "tpu,cpu", "cuda,cpu"):
        monkeypatch.setenv("JAX_PLATFORMS", platforms)
        assert host_memory.resolve("auto") is False, platforms
    monkeypatch.delenv("JAX_PLATFORMS")
    # this test environment installs no accelerator backend for jax
    assert host_memory.resolve("auto") is True
    with pytest.raises(ValueError, match=r"--host-memory must be one of auto, keep, release, got 'yes'"):
        host_memory.resolve("yes")
    monkeypatch.setattr(host_memory, "_jax_started", lambda: True)  # too late to matter: auto leaves it
    assert host_memory.resolve("auto", cpu_devices=2) is False
    assert host_memory.resolve("keep") is True


def test_cli_names_a_bad_host_memory_choice(capsys):
    assert cli.main(["--config", "quickstart", "--host-memory", "sometimes"]) == 2
    assert "--host-memory must be one of auto, keep, release, got 'sometimes'" in capsys.readouterr().err


class _FakeLibc:
    """Records ``mallopt`` calls instead of changing this test process's malloc."""

    def __init__(self, answer: int = 1):
        self.calls, self.answer = [], answer

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return self.answer


def test_late_call_warns_that_jax_is_running(monkeypatch, caplog):
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()  # this test process has started JAX
    fake = _FakeLibc()
    monkeypatch.setattr(host_memory, "_glibc", lambda: fake)
    with caplog.at_level("WARNING", logger=host_memory.__name__):
        assert host_memory.keep_freed_host_memory() is True
    assert "JAX is already running" in caplog.text
    assert fake.calls == [(-8, 1), (-4, 0), (-1, 2**31 - 1)]  # M_ARENA_MAX, M_MMAP_MAX, M_TRIM_THRESHOLD


def test_refusals_are_reported(monkeypatch, caplog):
    monkeypatch.setattr(host_memory, "_glibc", lambda: _FakeLibc(answer=0))
    with caplog.at_level("WARNING", logger=host_memory.__name__):
        assert host_memory.keep_freed_host_memory() is False
    assert "mallopt(M_ARENA_MAX, 1) was refused" in caplog.text
    monkeypatch.setattr(host_memory, "_glibc", lambda: None)
    assert host_memory.keep_freed_host_memory() is False
