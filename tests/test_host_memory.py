"""xlstm_jax.train.host_memory: XLA's per-call buffers without a page fault per 4 KiB page, by huge
pages (a glibc tunable set at start-up) or by glibc keeping freed memory.

The effect is counted, not timed: minor page faults of the process (``getrusage``) per call of a
jitted function with a 64 MiB temporary buffer, in a fresh process with and without the setting.
"""

from __future__ import annotations

import json
import os
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


def _probe(mode: str, env: dict | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, timeout=300, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _without_tunables() -> dict:
    return {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}


@pytest.mark.skipif(host_memory._glibc() is None, reason="mallopt is glibc's: nothing to set on this C library")
def test_kept_memory_stops_the_page_faults_of_fresh_buffers():
    plain = _without_tunables()  # huge pages (a GLIBC_TUNABLES of the caller's) would hide the faults
    released, kept = _probe("release", plain), _probe("keep", plain)
    assert kept["applied"] is True
    # without it every call maps its 64 MiB temporary buffer afresh: one fault per 4 KiB page
    assert released["faults_per_call"] >= 64 * 2**20 / 4096
    # with it the buffer's pages are reused (measured: 16,500 -> 1,700-4,900 here; 138,000 -> 0 or
    # about 27,000, varying between processes, for the benchmark training step)
    assert kept["faults_per_call"] <= released["faults_per_call"] / 2


_NO_HUGE_PAGES = host_memory.huge_pages_unsupported_reason()  # e.g. transparent huge pages set to never


@pytest.mark.skipif(_NO_HUGE_PAGES is not None, reason=f"huge pages cannot work on this system: {_NO_HUGE_PAGES}")
def test_huge_pages_fault_once_per_2_mib():
    plain = _without_tunables()
    released = _probe("release", plain)
    huge = _probe("release", host_memory.environ_with_huge_pages(plain))
    assert released["faults_per_call"] >= 64 * 2**20 / 4096  # 16,384: one per 4 KiB page
    # 2 MiB pages: 32 for the 64 MiB buffer, plus the program's small blocks and 4 KiB pages where the
    # kernel found no free 2 MiB page (measured: 16,540 -> 210-820 per call, varying between processes)
    assert huge["faults_per_call"] <= released["faults_per_call"] / 4


def test_resolve_choices(monkeypatch):
    monkeypatch.setattr(host_memory, "_jax_started", lambda: False)  # as in a fresh xlstm-train process
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(host_memory, "huge_pages_unsupported_reason", lambda: None)
    assert host_memory.resolve("keep") == "keep"
    assert host_memory.resolve("huge-pages") == "huge-pages"
    assert host_memory.resolve("release", cpu_devices=2) == "release"
    assert host_memory.resolve("auto", cpu_devices=2) == "huge-pages"
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert host_memory.resolve("auto") == "huge-pages"
    for platforms in ("cuda", "tpu,cpu", "cuda,cpu"):
        monkeypatch.setenv("JAX_PLATFORMS", platforms)
        assert host_memory.resolve("auto") == "release", platforms
    monkeypatch.delenv("JAX_PLATFORMS")
    # this test environment installs no accelerator backend for jax
    assert host_memory.resolve("auto") == "huge-pages"
    # without huge pages auto keeps freed memory, and huge-pages is refused with the reason
    reason = "the kernel's transparent huge pages are never"
    monkeypatch.setattr(host_memory, "huge_pages_unsupported_reason", lambda: reason)
    assert host_memory.resolve("auto", cpu_devices=2) == "keep"
    with pytest.raises(ValueError, match=f"huge-pages cannot work here: {reason}; use keep or release"):
        host_memory.resolve("huge-pages")
    monkeypatch.setenv("GLIBC_TUNABLES", host_memory.HUGE_PAGES_TUNABLE)  # started with it: nothing to refuse
    assert host_memory.resolve("huge-pages") == "huge-pages"
    assert host_memory.resolve("auto", cpu_devices=2) == "huge-pages"
    with pytest.raises(ValueError, match=r"--host-memory must be one of auto, huge-pages, keep, release, got 'yes'"):
        host_memory.resolve("yes")
    monkeypatch.setattr(host_memory, "_jax_started", lambda: True)  # too late to matter: auto leaves it
    assert host_memory.resolve("auto", cpu_devices=2) == "release"
    assert host_memory.resolve("keep") == "keep"


def test_cli_names_a_bad_host_memory_choice(capsys):
    assert cli.main(["--config", "quickstart", "--host-memory", "sometimes"]) == 2
    assert "--host-memory must be one of auto, huge-pages, keep, release, got 'sometimes'" in capsys.readouterr().err


def test_transparent_huge_pages_mode_and_tunables(tmp_path):
    mode_file = tmp_path / "enabled"
    mode_file.write_text("always [madvise] never\n")
    assert host_memory.transparent_huge_pages_mode(str(mode_file)) == "madvise"
    mode_file.write_text("always madvise [never]\n")
    assert host_memory.transparent_huge_pages_mode(str(mode_file)) == "never"
    assert host_memory.transparent_huge_pages_mode(str(tmp_path / "missing")) is None
    env = host_memory.environ_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0:glibc.malloc.tcache_count=7"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.tcache_count=7:glibc.malloc.hugetlb=1"
    assert host_memory.huge_pages_active(env) and not host_memory.huge_pages_active({})
    assert host_memory.environ_with_huge_pages({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


_RESTART_PROBE = """
import os, sys
from xlstm_jax.train import host_memory
print("run", os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], flush=True)
print("applied", host_memory.apply("huge-pages", may_restart=True))
"""


@pytest.mark.skipif(host_memory._glibc() is None, reason="GLIBC_TUNABLES is glibc's: nothing to set on this C library")
def test_apply_starts_the_process_again_with_the_tunable():
    env = {**os.environ, "GLIBC_TUNABLES": "glibc.malloc.tcache_count=7"}
    out = subprocess.run([sys.executable, "-c", _RESTART_PROBE, "--x", "1"], capture_output=True, text=True,
                         check=True, timeout=120, env=env).stdout.splitlines()  # fmt: skip
    # the same command line twice: first without, then (the process replaced) with the tunable
    assert out == [
        "run glibc.malloc.tcache_count=7 ['--x', '1']",
        "run glibc.malloc.tcache_count=7:glibc.malloc.hugetlb=1 ['--x', '1']",
        "applied True",
    ]


def test_apply_inside_a_program_warns_instead_of_restarting(monkeypatch, caplog):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(host_memory, "restart_with_huge_pages", lambda: pytest.fail("restarted a test process"))
    with caplog.at_level("WARNING", logger=host_memory.__name__):
        assert host_memory.apply("huge-pages", may_restart=False) is False
    assert "need GLIBC_TUNABLES=glibc.malloc.hugetlb=1 in the environment before Python starts" in caplog.text
    assert host_memory.apply("release", may_restart=True) is False


class _Restarted(Exception):
    pass


def test_cli_command_line_restarts_for_huge_pages(monkeypatch):
    """``xlstm-train`` from its own command line (argv None) starts again; ``cli.main([...])`` would not."""
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(host_memory, "_jax_started", lambda: False)
    monkeypatch.setattr(host_memory, "huge_pages_unsupported_reason", lambda: None)

    def restart():
        raise _Restarted

    monkeypatch.setattr(host_memory, "restart_with_huge_pages", restart)
    monkeypatch.setattr(sys, "argv", ["xlstm-train", "--config", "quickstart", "--host-memory", "huge-pages"])
    with pytest.raises(_Restarted):
        cli.main()


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
