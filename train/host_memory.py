"""Host memory for a CPU training step: without a page fault per 4 KiB page of its buffers.

XLA's CPU runtime allocates every executable's temporary buffer on each call (565 MB for the
benchmark step of ``benchmarks/profile_step.py``) and frees it afterwards. glibc's ``malloc`` serves
an allocation that large with a fresh ``mmap`` and returns it with ``munmap``, so every call
first-touches every page again: 138,000-146,000 minor page faults and 0.2-0.37 s of kernel time per
step on the project's 2-core CPUs. Two remedies, chosen by ``--host-memory`` of ``xlstm-train``:

* ``huge-pages``: glibc asks the kernel for transparent huge pages for the blocks it maps
  (the tunable ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, glibc 2.35 or newer, with the kernel's
  transparent huge pages in mode ``always`` or ``madvise``). A step's buffer is still mapped afresh,
  but in 2 MiB pages: about 300-900 faults a step instead of 145,000. On a 2-core Intel Xeon
  (Sapphire Rapids) VM the benchmark step took 0.80x the time on two CPU devices and 0.82x on one
  (``benchmarks/RESULTS.md``, "Session 30"). glibc reads its tunables once, when the process starts:
  ``xlstm-train`` sets the variable and starts itself again (``restart_with_huge_pages``); a script
  sets it in the environment before Python starts.
* ``keep`` (:func:`keep_freed_host_memory`): ``mallopt`` settings under which glibc serves large
  blocks from its heap and keeps freed memory, so the next call reuses the same pages: no faults in
  most processes, the step 0.85x the time on an AMD EPYC (``benchmarks/RESULTS.md``, "Host memory").
  The costs: the process keeps its peak heap (compilation included) mapped for its lifetime (resident
  memory about 0.5-1 GB higher for that step), and one malloc lock for all threads (``M_ARENA_MAX`` 1:
  per-thread arenas map anything over 64 MiB afresh), which made the two-device step about 12% slower
  on the Intel VM (``benchmarks/RESULTS.md``, "Session 27"). It can be set in a running process, but
  only before JAX starts its threads.

``auto`` (the default of ``xlstm-train``) picks huge pages where the system supports them and ``keep``
elsewhere, only when the run is on the CPU and JAX has not started in the process. Where the C library
is not glibc (macOS, Windows, musl) neither applies, and the module says so.
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
CHOICES = ("auto", "huge-pages", "keep", "release")
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"  # madvise(MADV_HUGEPAGE) on every block glibc maps
_THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
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


def _glibc_version(libc) -> tuple[int, ...]:
    text = libc.gnu_get_libc_version().decode()
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def transparent_huge_pages_mode(path: str = _THP_MODE_FILE) -> str | None:
    """The kernel's transparent huge page mode, the bracketed word of ``path`` (``always``,
    ``madvise`` or ``never``); None where the file is missing (not Linux, or a kernel without them)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def huge_pages_unsupported_reason() -> str | None:
    """Why ``huge-pages`` cannot work here, or None when it can: glibc 2.35 or newer, and transparent
    huge pages in mode ``always`` or ``madvise``."""
    libc = _glibc()
    if libc is None:
        return f"the C library is not glibc ({sys.platform})"
    if _glibc_version(libc) < (2, 35):
        return f"glibc {libc.gnu_get_libc_version().decode()} has no glibc.malloc.hugetlb tunable (2.35 or newer)"
    mode = transparent_huge_pages_mode()
    if mode not in ("always", "madvise"):
        return f"the kernel's transparent huge pages are {mode or 'not available'} ({_THP_MODE_FILE})"
    return None


def huge_pages_active(environ=None) -> bool:
    """Whether this process started with ``GLIBC_TUNABLES`` naming ``glibc.malloc.hugetlb=1``."""
    environ = os.environ if environ is None else environ
    return HUGE_PAGES_TUNABLE in environ.get("GLIBC_TUNABLES", "").split(":")


def environ_with_huge_pages(environ=None) -> dict[str, str]:
    """A copy of ``environ`` (default ``os.environ``) whose ``GLIBC_TUNABLES`` adds
    ``glibc.malloc.hugetlb=1`` to the tunables already there (replacing another hugetlb value)."""
    env = dict(os.environ if environ is None else environ)
    kept = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t and not t.startswith("glibc.malloc.hugetlb=")]
    env["GLIBC_TUNABLES"] = ":".join([*kept, HUGE_PAGES_TUNABLE])
    return env


def restart_with_huge_pages() -> None:
    """Start this process again, the same command line, with huge pages for malloc's mapped blocks.

    ``os.execve`` replaces the process (same PID, open files and arguments: ``sys.orig_argv``) with
    one whose ``GLIBC_TUNABLES`` asks for them; glibc reads tunables only at start-up. Call it before
    anything that must not happen twice. Does not return."""
    env = environ_with_huge_pages()
    log.info("host memory: starting again with GLIBC_TUNABLES=%s", env["GLIBC_TUNABLES"])
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def resolve(choice: str, cpu_devices: int | None = None) -> str:
    """What ``--host-memory choice`` does here: ``"huge-pages"``, ``"keep"`` or ``"release"``.

    ``huge-pages`` is refused (``ValueError`` saying why) where it cannot work, unless the process
    already runs with the tunable. ``auto`` acts only when it helps: JAX has not started in this
    process (``xlstm-train``'s own process; not a ``cli.main`` call inside a program that already ran
    JAX, where the setting came too late to matter: measured) and the run will be on the CPU:
    ``--cpu-devices`` given, ``JAX_PLATFORMS`` naming only ``cpu``, or no accelerator backend for jax
    installed (no ``jax-cuda*``, ``jax-rocm*`` or ``libtpu`` distribution). It then picks huge pages
    where they work and ``keep`` elsewhere; otherwise ``release``."""
    if choice not in CHOICES:
        raise ValueError(f"--host-memory must be one of {', '.join(CHOICES)}, got {choice!r}")
    if choice == "huge-pages":
        reason = _huge_pages_blocked()
        if reason:
            raise ValueError(f"--host-memory huge-pages cannot work here: {reason}; use keep or release")
        return choice
    if choice != "auto":
        return choice
    if _jax_started() or not _runs_on_cpu(cpu_devices):
        return "release"
    return "keep" if _huge_pages_blocked() else "huge-pages"


def _huge_pages_blocked() -> str | None:
    """``huge_pages_unsupported_reason()``, or None when the process already runs with the tunable."""
    return None if huge_pages_active() else huge_pages_unsupported_reason()


def _runs_on_cpu(cpu_devices: int | None) -> bool:
    if cpu_devices is not None:
        return True
    platforms = [p.strip() for p in os.environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        return platforms == ["cpu"]
    names = {(d.metadata["Name"] or "").lower() for d in importlib.metadata.distributions()}
    return not any(n.startswith(_ACCELERATOR_PREFIXES) for n in names)


def apply(mode: str, *, may_restart: bool) -> bool:
    """Put ``resolve``'s ``mode`` into effect in this process, before JAX starts its threads; True if
    it is in effect (``release``: False).

    ``huge-pages`` without the tunable starts the process again (``restart_with_huge_pages``) when
    ``may_restart`` (the process is ``xlstm-train`` itself), and otherwise warns how to set it."""
    if mode == "keep":
        return keep_freed_host_memory()
    if mode != "huge-pages":
        return False
    if not huge_pages_active():
        if may_restart and not _jax_started():
            restart_with_huge_pages()
        log.warning(
            "host memory: huge pages need GLIBC_TUNABLES=%s in the environment before Python starts "
            "(glibc reads it only then); malloc left as it is",
            HUGE_PAGES_TUNABLE,
        )
    return huge_pages_active()
