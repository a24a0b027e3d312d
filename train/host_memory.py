"""Keep freed host memory for reuse: a CPU training step without a page fault per page it touches.

XLA's CPU runtime allocates every executable's temporary buffer on each call (565 MB for the
benchmark step of ``benchmarks/profile_step.py``) and frees it afterwards. glibc's ``malloc`` serves
an allocation that large with a fresh ``mmap`` and returns it with ``munmap``, so every call
first-touches every page again: 138,000 minor page faults and 0.24-0.37 s of kernel time per step on
the project's 2-core CPU. :func:`keep_freed_host_memory` tells glibc (``mallopt``) to serve large
blocks from its heap and to keep freed memory instead of returning it, so the next call reuses the
same pages: no faults in most processes (some keep about 27,000 per step, cause not found), and the
step 0.85x the time (``benchmarks/RESULTS.md``, "Host memory").

The costs: memory, since the process keeps its peak heap (compilation included) mapped for its
lifetime (resident memory about 0.5-1 GB higher for that step); and one malloc lock for all threads
(``M_ARENA_MAX`` 1: per-thread arenas map anything over 64 MiB afresh), which slows programs whose
devices run many small ops at once (the chunkwise forward with its heads over two CPU devices:
13.2 instead of 9.0 ms), though not the training step, measured on one device and on two on an AMD
EPYC. On a 2-core Intel Xeon (Sapphire Rapids) VM that lock made the two-device training step about
12% slower, while the faults it avoids cost little there (``benchmarks/RESULTS.md``, "Session 27"):
``--host-memory release`` is the faster choice on such a machine.

It is process-wide and must run before JAX starts its threads (before the first computation):
``xlstm-train`` calls it at start-up when the run is on the CPU (``--host-memory``). Where the C
library is not glibc (macOS, Windows, musl) it changes nothing and says so.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import logging
import os
import sys

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_SETTINGS = (
    ("M_ARENA_MAX", _M_ARENA_MAX, 1),  # one heap: per-thread arenas are capped at 64 MiB and mmap beyond it
    ("M_MMAP_MAX", _M_MMAP_MAX, 0),  # no mmap for large blocks: they come from the heap
    ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, 2**31 - 1),  # never hand the top of the heap back to the OS
)
CHOICES = ("auto", "keep", "release")
# distributions that bring an accelerator backend to jax; their presence makes ``auto`` leave malloc alone
_ACCELERATOR_PREFIXES = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu")


def _glibc():
    """glibc's ``mallopt`` through ctypes, or None where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        return libc
    except (OSError, AttributeError):
        return None


def _jax_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return True  # cannot tell: assume the threads exist


def keep_freed_host_memory() -> bool:
    """Set glibc's ``malloc`` to reuse freed memory (module docstring); True if it was set.

    Call it once, first thing in the process, before JAX runs anything. Returns False, and logs
    why, where the C library is not glibc; sets it but warns if JAX has already started (threads
    that exist keep their own heaps, so the step's buffers may still be mapped afresh)."""
    libc = _glibc()
    if libc is None:
        log.info("keep_freed_host_memory: not glibc (%s); malloc left as it is", sys.platform)
        return False
    if _jax_started():
        log.warning(
            "keep_freed_host_memory: JAX is already running; the setting applies to new threads only. "
            "Call it before the first JAX computation (xlstm-train does)."
        )
    for name, param, value in _SETTINGS:
        if libc.mallopt(param, value) != 1:
            log.warning("keep_freed_host_memory: mallopt(%s, %d) was refused", name, value)
            return False
    log.info("keep_freed_host_memory: malloc keeps freed memory for reuse (%s)", ", ".join(n for n, _, _ in _SETTINGS))
    return True


def resolve(choice: str, cpu_devices: int | None = None) -> bool:
    """Whether ``--host-memory choice`` keeps freed memory: ``keep`` yes, ``release`` no, ``auto``
    when it helps: JAX has not started in this process (``xlstm-train``'s own process; not a
    ``cli.main`` call inside a program that already ran JAX, where the setting came too late to
    matter: measured) and the run will be on the CPU: ``--cpu-devices`` given, ``JAX_PLATFORMS``
    naming only ``cpu``, or no accelerator backend for jax installed (no ``jax-cuda*``,
    ``jax-rocm*`` or ``libtpu`` distribution)."""
    if choice not in CHOICES:
        raise ValueError(f"--host-memory must be one of {', '.join(CHOICES)}, got {choice!r}")
    if choice != "auto":
        return choice == "keep"
    if _jax_started():
        return False
    if cpu_devices is not None:
        return True
    platforms = [p.strip() for p in os.environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        return platforms == ["cpu"]
    names = {(d.metadata["Name"] or "").lower() for d in importlib.metadata.distributions()}
    return not any(n.startswith(_ACCELERATOR_PREFIXES) for n in names)
