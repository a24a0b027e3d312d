"""Shared timing helpers for the CPU benchmarks in ``benchmarks/``.

The machine these benchmarks are written for has 2 cores and is shared. With 2
threads on 2 cores, any other busy process makes small kernels 10-35x slower
(OpenMP / Eigen barrier spinning), so every case here

1. waits until the *whole machine* is idle (``wait_for_idle_cpu``), reading the
   aggregate ``cpu`` line of ``/proc/stat``; the busy fraction measured in the
   last sampling window before the case starts is reported as
   ``cpu_busy_before`` (0 = idle, 1 = all cores busy);
2. measures, while the case runs, how much CPU *other* processes used
   (``CpuMonitor``: machine busy jiffies minus this process's own utime+stime,
   divided by the machine's total jiffies; also a 0..1 fraction of all cores),
   reported as ``cpu_other_during``; a case above the threshold is flagged as
   contaminated and the benchmark re-runs it. Caveat: kernel threads that
   work *for* this process (page zeroing/reclaim, DAMON's ``kdamond``) count
   as "other", so cases that touch many GiB can show some "other" load that
   they caused themselves;
3. times with ``median_time``: warm-up calls, then ``reps`` timed calls that
   each block on the result (``jax.block_until_ready`` for JAX; torch CPU ops
   are synchronous), and reports median and min.

Peak memory (two methods, both documented in the output as ``peak_mem_method``):

* JAX: ``jax_compiled_memory_bytes`` = XLA's static buffer assignment of the
  compiled executable, ``temp + argument + output - alias`` bytes from
  ``compiled.memory_analysis()``. This is what XLA allocates for one call,
  inputs and outputs included (it does not include the runtime's own
  overhead, e.g. the thread pool or the compiled code).
* torch (and, as a cross-check, JAX too): ``rss_peak_bytes`` = bytes of the
  call's inputs + growth of the process peak resident set during one call.
  Before the call we run ``gc.collect()`` and glibc ``malloc_trim(0)`` (so freed
  heap from earlier cases is returned to the OS and cannot hide new
  allocations), then reset the kernel's peak-RSS counter by writing ``5`` to
  ``/proc/self/clear_refs`` and read ``VmRSS``; after the call we read
  ``VmHWM``. ``VmHWM - VmRSS_before`` is the extra memory the call touched at
  its peak (intermediates, saved activations, outputs, gradients, allocator
  slack), at page granularity. Limits: it can under-count if the allocator
  reuses memory it kept from before the reset, and it over-counts lazy
  one-time initialisation, so it is run on a warm (not the first) call.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

_CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


# --------------------------------------------------------------------------- #
# /proc/stat based CPU load
# --------------------------------------------------------------------------- #
def _read_proc_stat() -> tuple[int, int]:
    """Return (busy_jiffies, total_jiffies) summed over all cores."""
    with open("/proc/stat") as fh:
        line = fh.readline()
    parts = line.split()
    assert parts[0] == "cpu", line
    vals = [int(x) for x in parts[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice
    # guest/guest_nice are already included in user/nice -> drop them.
    vals = vals[:8]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals)
    return total - idle, total


def _self_jiffies() -> int:
    """utime + stime of this process (all threads), in clock ticks."""
    with open("/proc/self/stat") as fh:
        data = fh.read()
    # the command name may contain spaces; fields after ')' are well defined
    rest = data[data.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); utime = field 14, stime = field 15
    return int(rest[11]) + int(rest[12])


def cpu_busy_fraction(interval: float = 0.5) -> float:
    """Machine-wide busy fraction (0..1 of all cores) over ``interval`` s."""
    b0, t0 = _read_proc_stat()
    time.sleep(interval)
    b1, t1 = _read_proc_stat()
    dt = t1 - t0
    return (b1 - b0) / dt if dt > 0 else 0.0


def wait_for_idle_cpu(
    threshold: float = 0.10,
    max_wait_s: float = 120.0,
    interval: float = 0.5,
    consecutive: int = 2,
) -> dict:
    """Block until the machine's busy fraction is below ``threshold``.

    The busy fraction is measured over ``interval`` seconds from /proc/stat
    (all cores, 0..1; this process only sleeps meanwhile, so what is measured
    is the load of everything else, plus any lingering spin of our own idle
    thread pools). It must be below the threshold for ``consecutive`` windows
    in a row. Gives up after ``max_wait_s`` and returns ``idle=False``.

    Returns {"cpu_busy_before": last window's fraction, "idle_wait_s": waited,
    "idle": bool}.
    """
    start = time.perf_counter()
    ok = 0
    busy = 1.0
    while True:
        busy = cpu_busy_fraction(interval)
        ok = ok + 1 if busy < threshold else 0
        waited = time.perf_counter() - start
        if ok >= consecutive:
            return {"cpu_busy_before": round(busy, 4), "idle_wait_s": round(waited, 2), "idle": True}
        if waited >= max_wait_s:
            return {"cpu_busy_before": round(busy, 4), "idle_wait_s": round(waited, 2), "idle": False}


class CpuMonitor:
    """Measure the CPU used by *other* processes during a block.

    ``other`` = (machine busy jiffies - this process's jiffies) / machine total
    jiffies, i.e. a 0..1 fraction of all cores, over the block's duration.
    Jiffy resolution is 1/CLK_TCK s per core, so very short blocks are noisy:
    when the block spans fewer than ``min_jiffies`` machine jiffies (default
    20, i.e. 0.1 s on 2 cores) ``other`` is None (unknown).
    """

    def __init__(self, min_jiffies: int = 20):
        self.min_jiffies = min_jiffies
        self.other = None
        self.self_frac = None

    def __enter__(self):
        self._b0, self._t0 = _read_proc_stat()
        self._s0 = _self_jiffies()
        return self

    def __exit__(self, *exc):
        b1, t1 = _read_proc_stat()
        s1 = _self_jiffies()
        dt = t1 - self._t0
        if dt < max(1, self.min_jiffies):
            self.other = None
            self.self_frac = None
        else:
            other = (b1 - self._b0) - (s1 - self._s0)
            self.other = max(0.0, other / dt)
            self.self_frac = (s1 - self._s0) / dt
        return False


# --------------------------------------------------------------------------- #
# timing
# --------------------------------------------------------------------------- #
def _block(x: Any) -> Any:
    """Block on JAX arrays (no-op for torch / python values)."""
    try:
        import jax  # noqa: WPS433

        return jax.block_until_ready(x)
    except Exception:  # pragma: no cover - jax missing or not a pytree of arrays
        return x


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (``/proc/loadavg``), or [] where there is none."""
    try:
        with open("/proc/loadavg") as fh:
            return [float(x) for x in fh.read().split()[:3]]
    except OSError:
        return []


def interleave(calls: dict[str, Callable[[], Any]], reps: int, *, peak: bool = True):
    """Same-process A/B: ``({tag: [wall s]}, {tag: [process CPU s]}, peak GFLOP/s or None)``.

    Every call runs once to warm up, then ``reps`` rounds call them all, in reverse order every other
    round; with ``peak`` a jitted float32 2048² matmul runs after each round, and its median rate
    is the same-run matmul peak. Process CPU time (``time.process_time``) is the less load-sensitive
    figure on a shared machine.
    """
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    n = 2048
    mat = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    mm = jax.jit(lambda x, y: x @ y).lower(mat, mat).compile() if peak else None
    for call in [*calls.values(), *([lambda: mm(mat, mat)] if peak else [])]:  # warm-up
        jax.block_until_ready(call())
    wall, cpu, mm_s = {t: [] for t in calls}, {t: [] for t in calls}, []
    for rep in range(reps):
        for t in list(calls) if rep % 2 == 0 else list(calls)[::-1]:
            c0, t0 = time.process_time(), time.perf_counter()
            jax.block_until_ready(calls[t]())
            wall[t].append(time.perf_counter() - t0)
            cpu[t].append(time.process_time() - c0)
        if peak:
            t0 = time.perf_counter()
            jax.block_until_ready(mm(mat, mat))
            mm_s.append(time.perf_counter() - t0)
    return wall, cpu, (2 * n**3 / float(np.median(mm_s)) / 1e9 if peak else None)


def median_time(
    fn: Callable[[], Any],
    warmup: int = 1,
    reps: int = 5,
    block: Callable[[Any], Any] | None = None,
    time_budget_s: float | None = None,
    min_time_s: float = 0.0,
    max_reps: int = 200,
) -> dict:
    """Time ``fn()``: ``warmup`` untimed calls, then ``reps`` timed calls.

    Every call is blocked on (``block`` defaults to ``jax.block_until_ready``,
    which passes through non-JAX values; torch CPU ops are synchronous).
    ``min_time_s``: fast functions get more timed calls (up to ``max_reps``)
    until the timed calls add up to at least this long (more samples, and a
    long enough window for the /proc/stat load measurement). If
    ``time_budget_s`` is given, stops early once the timed calls used it up
    (at least one timed call is always made). Returns median/min/max/times and
    the number of reps actually made.
    """
    block = block or _block
    for _ in range(warmup):
        out = block(fn())
        del out
    times = []
    t_start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        out = block(fn())
        t1 = time.perf_counter()
        del out
        times.append(t1 - t0)
        if time_budget_s is not None and (t1 - t_start) >= time_budget_s:
            break
        if len(times) >= max(1, reps) and (sum(times) >= min_time_s or len(times) >= max_reps):
            break
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "times_s": times,
        "reps": len(times),
    }


# --------------------------------------------------------------------------- #
# memory
# --------------------------------------------------------------------------- #
def jax_compiled_memory(compiled) -> dict | None:
    """temp + argument + output - alias bytes of a compiled JAX executable."""
    try:
        m = compiled.memory_analysis()
    except Exception:
        return None
    if m is None:
        return None
    temp = int(getattr(m, "temp_size_in_bytes", 0))
    arg = int(getattr(m, "argument_size_in_bytes", 0))
    out = int(getattr(m, "output_size_in_bytes", 0))
    alias = int(getattr(m, "alias_size_in_bytes", 0))
    return {"temp": temp, "argument": arg, "output": out, "alias": alias, "total": temp + arg + out - alias}


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


_libc = None


def _malloc_trim() -> None:
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL("libc.so.6")
        _libc.malloc_trim(0)
    except Exception:
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rss_peak_delta(fn: Callable[[], Any], block: Callable[[Any], Any] | None = None) -> int | None:
    """Peak RSS growth (bytes) during one blocked call of ``fn``.

    See the module docstring. Returns None when the peak counter cannot be
    reset (then the number would be meaningless).
    """
    block = block or _block
    gc.collect()
    _malloc_trim()
    if not _reset_hwm():
        return None
    rss0 = _status_kb("VmRSS")
    out = block(fn())
    hwm = _status_kb("VmHWM")
    del out
    gc.collect()
    return max(0, hwm - rss0) * 1024


def mem_available_bytes() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


# --------------------------------------------------------------------------- #
# output
# --------------------------------------------------------------------------- #
def _clean(x: Any) -> Any:
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            return None
        return float(f"{x:.6g}")
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def emit(record: dict, stream=None) -> None:
    """Print one JSON line (floats rounded to 6 significant digits) and flush."""
    stream = stream or sys.stdout
    stream.write(json.dumps(_clean(record)) + "\n")
    stream.flush()


# --------------------------------------------------------------------------- #
# measurement hygiene shared by the benchmark scripts
# --------------------------------------------------------------------------- #
def add_hygiene_args(p, *, idle_wait: float, quick_idle_wait: float, no_retry_above_s: float) -> None:
    """The idle-wait / contamination options of every benchmark script; ``fill_hygiene_defaults``
    resolves the ones that depend on ``--quick``."""
    p.add_argument(
        "--busy-threshold",
        type=float,
        default=0.10,
        help="wait before each case until the machine's busy fraction (0..1 of all cores) is below this",
    )
    p.add_argument(
        "--contam-threshold",
        type=float,
        default=0.15,
        help="other processes' CPU fraction during a case above which it is contaminated and re-run",
    )
    p.add_argument(
        "--max-idle-wait",
        type=float,
        default=None,
        help=f"max seconds to wait for idle (default {idle_wait:g}; quick {quick_idle_wait:g})",
    )
    p.add_argument("--retries", type=int, default=None, help="re-runs of a contaminated case (default 2; quick 0)")
    p.add_argument(
        "--no-retry-above-s",
        type=float,
        default=no_retry_above_s,
        help="do not re-run a contaminated case that takes longer than this (s)",
    )
    p.set_defaults(_idle_wait_defaults=(idle_wait, quick_idle_wait))


def fill_hygiene_defaults(a) -> None:
    """``--max-idle-wait`` and ``--retries`` defaults, shorter with ``--quick``."""
    idle_wait, quick_idle_wait = a._idle_wait_defaults
    if a.max_idle_wait is None:
        a.max_idle_wait = quick_idle_wait if a.quick else idle_wait
    if a.retries is None:
        a.retries = 0 if a.quick else 2


def measure_clean(measure: Callable[[], Any], a, too_long_to_retry: Callable[[Any], bool], log=print):
    """Idle-wait, then ``measure()`` under a ``CpuMonitor``; re-run (up to ``a.retries`` times) while
    other processes used more than ``a.contam_threshold`` of the machine, keeping the cleanest attempt.

    ``too_long_to_retry(result)``: no re-run after such an attempt (long, memory-heavy cases: their
    "other" load is often the kernel's own memory threads working for this very process, and a
    re-run costs minutes). Returns (result, idle, other, attempts).
    """
    best = None
    for attempt in range(a.retries + 1):
        idle = wait_for_idle_cpu(threshold=a.busy_threshold, max_wait_s=a.max_idle_wait)
        with CpuMonitor() as mon:
            res = measure()
        # unknown (window too short to measure) -> judge by the idle check alone
        other = mon.other if mon.other is not None else (0.0 if idle["idle"] else 1.0)
        cand = (other, res, idle, attempt + 1, mon.other)
        if best is None or cand[0] < best[0]:
            best = cand
        if other <= a.contam_threshold:
            break
        if too_long_to_retry(res):
            log(f"    other load {other:.2f}, but the case takes > {a.no_retry_above_s} s: not re-running")
            break
        if attempt < a.retries:
            log(f"    contaminated (other load {other:.2f}); retrying")
    _, res, idle, attempts, other = best
    return res, idle, other, attempts


def hygiene_fields(idle: dict, other: float | None, contam_threshold: float) -> dict:
    """The measurement-hygiene columns of a result row."""
    return {
        "cpu_busy_before": idle["cpu_busy_before"],
        "idle_wait_s": idle["idle_wait_s"],
        "was_idle": idle["idle"],
        "cpu_other_during": round(other, 4) if other is not None else None,
        "contaminated": bool((other is not None and other > contam_threshold) or not idle["idle"]),
    }


def hygiene_summary(contaminated_cases: list[str], error_cases: list[str], a) -> dict:
    """The closing summary row that lists contaminated and failed cases."""
    return {
        "bench": "summary",
        "metric": "hygiene",
        "contaminated_cases": contaminated_cases,
        "error_cases": error_cases,
        "busy_threshold": a.busy_threshold,
        "contam_threshold": a.contam_threshold,
    }


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo, or None."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        return None
