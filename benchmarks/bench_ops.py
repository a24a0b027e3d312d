"""Benchmark the xlstm_jax mLSTM / sLSTM ops against the official torch kernels.

Run from the repository root::

    python benchmarks/bench_ops.py             # full run (a few minutes)
    python benchmarks/bench_ops.py --quick     # smoke test: smallest sizes, 1 rep
    python benchmarks/bench_ops.py --only mlstm --chunk-size 32,64,128 --reps 9

Everything runs in ONE process, side by side, on the same CPU: JAX (XLA CPU,
one device, float32) and torch (eager, float32, ``torch.set_num_threads`` =
the number of schedulable cores, which is also the size of XLA's CPU thread
pool). Output is JSON lines on stdout (one per case, then ``summary`` lines);
progress and tracebacks go to stderr.

Cases
-----
The mLSTM implementations are one table (``MLSTM_FORMS``), measured by one routine per framework
(``jax_form``, ``torch_form``: forward, or forward + backward of ``sum(h * ct)``); a new form is
one table row.

* ``matmul``: ``jax.jit(a @ b)`` with 2048x2048 float32 (the CPU roofline used
  for ``frac_of_matmul_peak``), plus ``torch.matmul`` of the same size for
  reference. The JAX matmul is measured again at the end of a full run; the
  rows' ``frac_of_matmul_peak`` use the first measurement, the summary uses
  the higher of the two (clean measurements preferred).
* ``mlstm``: B=1, NH=4, DHQK=DHV=64, S in {1024, 4096, 16384}:
  ``jax_chunkwise`` (``xlstm_jax.ops.mlstm_chunkwise``, per ``--chunk-size``),
  ``jax_parallel`` (``mlstm_parallel``, skipped when XLA's buffer assignment
  does not fit in ``--mem-frac`` of MemAvailable), ``jax_recurrent``
  (``mlstm_recurrent``), and the official ``mlstm_kernels.torch`` kernels
  ``chunkwise--native_autograd`` and ``chunkwise--native_custbw`` (same chunk
  size). Note: custbw's backward treats the normaliser as a constant (not the
  exact gradient), so it does less work than an exact backward. With
  ``--cpu-devices N`` the CPU is split into N JAX devices and the row
  ``jax_chunkwise_heads_over_devices`` adds the same chunkwise call with its
  heads split over them (``jax.shard_map``, inputs placed there beforehand; a
  check row compares it with the official kernel too); every other JAX row
  stays on device 0. ``benchmarks/chunkwise_processes.py`` times the same
  forward with the heads over one pinned process per core instead.
* ``slstm``: B=4, S=512, hidden 256 in 4 heads (DH=64): ``jax_slstm_scan``
  (``xlstm_jax.ops.slstm_scan``) vs the official ``xlstm`` ``sLSTMCell`` with
  ``backend='vanilla'`` (torch autograd), float32.

Modes: ``fwd`` = forward only (torch under ``no_grad``; JAX jitted function
returning ``h``). ``fwdbwd`` = forward + backward: the gradient of
``sum(h * ct)`` (``ct`` a fixed random cotangent) w.r.t. all inputs -- q, k, v,
i, f for the mLSTM; gates_x, recurrent_kernel, bias for the sLSTM. JAX:
``jax.jit(jax.grad(loss, argnums=...))`` with ``ct`` passed as an argument;
torch: ``loss.backward()`` with ``.grad`` reset before each call.

Timing hygiene (see ``_timing.py``): before every case wait until the machine
is idle (``cpu_busy_before``), measure the other processes' CPU use during the
timed calls (``cpu_other_during``), re-run a contaminated case up to
``--retries`` times and keep the cleanest attempt (``contaminated`` flags the
rows where even that was above ``--contam-threshold``; cases whose calls take
over ``--no-retry-above-s`` are not re-run). JAX: the executable is
compiled ahead of time (``jit(...).lower(...).compile()``); ``compile_s`` is
the trace + lower + compile time and ``first_run_s`` the first execution
(excluded from the statistics, it is the warm-up). torch has no compile step:
``compile_s`` is its first (eager) call, which is also the warm-up. Then
``reps`` timed calls, each blocked on (``jax.block_until_ready``); ``median_s``
and ``min_s``. ``--reps`` is a minimum: fast cases get more calls (up to 200)
until the timed calls add up to ``--min-case-s`` (which also gives the load
monitor a long enough window; ``cpu_other_during`` is null when the window was
under 0.1 s). A case whose timed calls exceed ``--max-case-s`` stops early.
``reps`` in each row says how many timed calls were made.

Columns
-------
``tokens_per_s`` = B*S / median_s. ``gflops`` = analytic GFLOP count of ONE
call (below); ``gflop_per_s`` = gflops / median_s; ``frac_of_matmul_peak`` =
gflop_per_s / (the JAX 2048^2 matmul's GFLOP/s at its median time, measured in
the same run). ``peak_mem_bytes``: for JAX, XLA's buffer assignment of the
compiled executable (temp + arguments + outputs - aliased); for torch, the
call's input bytes + the growth of the process peak RSS (VmHWM, reset through
/proc/self/clear_refs after malloc_trim) during one warm call.
``rss_peak_bytes`` is that RSS measurement for both frameworks (cross-check).
``peak_mem_method`` names the method used for ``peak_mem_bytes``.

Analytic FLOPs (forward; multiply-add = 2 FLOPs; element-wise exp/log/gating
is ignored)
-------------------------------------------------------------------------------
mLSTM chunkwise, chunk size L, NC = ceil(S / L) chunks, per head per chunk::

    2*L*L*DHQK        Q K^T (intra-chunk scores)
  + 2*L*L*DHV         decay-weighted scores @ V (intra-chunk output)
  + 2*L*DHQK*DHV      Q @ C_{k-1} (inter-chunk output)
  + 2*L*DHQK*DHV      K^T V (chunk state update C_k)
  + 2*L*DHQK          Q . n_{k-1} (inter-chunk normaliser)
  + 2*L*L             row sums of the decay-weighted scores (intra normaliser)

  total = B * NH * NC * (sum above)

  (for S=4096, L=64, DH=64, B=1, NH=4: 0.541 GFLOP)

mLSTM parallel (materialises the full S x S matrix; causal masking does not
save work), per head: 2*S*S*DHQK + 2*S*S*DHV + 2*S*S; total B*NH*(...).

mLSTM recurrent, per head per step: 2*DHQK*DHV (rank-1 update k v^T into C)
+ 2*DHQK*DHV (C^T q) + 2*DHQK (n . q); total B*NH*S*(...).

sLSTM, per step: the block-diagonal recurrent matmul, B * NH * 2*DH*(4*DH);
total S*(...).

Forward+backward ("fwdbwd") GFLOPs use the usual convention 3 x forward (the
backward of a matmul costs two matmuls). It is a yardstick, not a count of the
backward the implementation really runs (a chunkwise backward that recomputes
states does more).

Targets (summary lines, ``met`` true/false)
-------------------------------------------
* ``chunkwise_fwdbwd_speedup_vs_official`` at S=4096: official median /
  jax_chunkwise median, for both official kernels; target >= 3 against the
  faster of the two (``met``), ``met_vs_<kernel>`` for each.
* ``chunkwise_time_per_token_spread``: time per token (median_s / (B*S)) of
  jax_chunkwise at every S, ``max_rel_dev_vs_first`` = max over S of
  |t_S / t_Smin - 1| (S=1024 is the reference); target <= 0.15. ``max_over_min``
  is reported too.
* ``chunkwise_fwd_frac_of_matmul_peak`` at S=4096 (target >= 0.5), plus the
  value at every S.
* ``slstm_fwdbwd_speedup_vs_official``: official vanilla median / jax median;
  target >= 10. (``fwd`` ratio reported as well.)
A ``check`` row per bench compares the JAX outputs and gradients with the
official torch ones at the smallest S (so a fast but wrong kernel is visible).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

import _timing as T

THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- #
# FLOPs
# --------------------------------------------------------------------------- #
def flops_chunkwise_fwd(B, NH, S, dqk, dv, L):
    nc = math.ceil(S / L)
    per = 2 * L * L * dqk + 2 * L * L * dv + 2 * L * dqk * dv + 2 * L * dqk * dv + 2 * L * dqk + 2 * L * L
    return B * NH * nc * per


def flops_parallel_fwd(B, NH, S, dqk, dv, L=None):
    return B * NH * (2 * S * S * dqk + 2 * S * S * dv + 2 * S * S)


def flops_recurrent_fwd(B, NH, S, dqk, dv, L=None):
    return B * NH * S * (2 * dqk * dv + 2 * dqk * dv + 2 * dqk)


def flops_slstm_fwd(B, S, NH, DH):
    return S * B * NH * 2 * DH * 4 * DH


FWDBWD_FACTOR = 3.0
MODES = ("fwd", "fwdbwd")


@dataclass(frozen=True)
class Form:
    """One mLSTM implementation of the ``mlstm`` bench: a row per (S, mode[, chunk size])."""

    impl: str  # the rows' ``impl``
    flops: Callable  # (B, NH, S, dqk, dv, L) -> analytic forward FLOPs of one call
    chunked: bool = False  # runs at every --chunk-size (else once, chunk_size None)
    jax: Callable | None = None  # (ops, L) -> h(q, k, v, i, f) (B, NH, S, DHV)
    torch_kernel: str | None = None  # else an official ``mlstm_kernels.torch`` kernel of that name
    power: int | None = None  # O(S^power): skipped when the extrapolated call exceeds --max-call-s
    option: str | None = None  # runs only when named in --forms


MLSTM_FORMS = (
    Form("jax_chunkwise", flops_chunkwise_fwd, chunked=True,
         jax=lambda ops, L: lambda *qkvif: ops.mlstm_chunkwise(*qkvif, chunk_size=L)[0]),
    Form("official_torch_chunkwise_native_autograd", flops_chunkwise_fwd, chunked=True,
         torch_kernel="chunkwise--native_autograd"),
    Form("official_torch_chunkwise_native_custbw", flops_chunkwise_fwd, chunked=True,
         torch_kernel="chunkwise--native_custbw"),
    Form("jax_chunkwise_heads_over_devices", flops_chunkwise_fwd, chunked=True, jax=lambda ops, L: heads_over_devices(
        lambda *qkvif: ops.mlstm_chunkwise(*qkvif, chunk_size=L)[0]), option="devices"),
    Form("jax_chunkwise_cpu_kernel", flops_chunkwise_fwd, chunked=True, jax=lambda ops, L: cpu_kernel(L),
         option="cpu_kernel"),
    Form("jax_parallel", flops_parallel_fwd, jax=lambda ops, L: ops.mlstm_parallel, power=2, option="parallel"),
    Form("jax_recurrent", flops_recurrent_fwd, jax=lambda ops, L: lambda *qkvif: ops.mlstm_recurrent(*qkvif)[0],
         power=1, option="recurrent"),
)  # fmt: skip


def cpu_kernel(chunk_size: int) -> Callable:
    """h(q, k, v, i, f) of the C++ CPU kernel (``pallas_kernels.mlstm.cpu``, backend ``cpu_ffi``)."""
    from xlstm_jax.pallas_kernels.mlstm import cpu

    return lambda *qkvif: cpu.mlstm_chunkwise_cpu(*qkvif, chunk_size=chunk_size)[0]


def heads_over_devices(h: Callable) -> Callable:
    """``h(q, k, v, i, f)`` with the heads split over every JAX device (``jax.shard_map``; each device
    runs ``h`` on its heads, nothing is communicated): the same call on a CPU host split into one
    device per core (``--cpu-devices``). Inputs placed with ``heads_sharding()`` run without a copy."""
    import jax

    spec = heads_sharding().spec
    return jax.shard_map(h, mesh=heads_sharding().mesh, in_specs=spec, out_specs=spec)


def heads_sharding():
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = jax.make_mesh((len(jax.devices()),), ("heads",), axis_types=(jax.sharding.AxisType.Explicit,))
    return NamedSharding(mesh, PartitionSpec(None, "heads"))


# --------------------------------------------------------------------------- #
# runner
# --------------------------------------------------------------------------- #
class Runner:
    def __init__(self, args):
        self.args = args
        self.rows: list[dict] = []
        self.matmul_peak = None  # GFLOP/s of the first (start) matmul measurement, used in the rows
        self.matmul_rows: list[dict] = []

    # ------------------------------------------------------------------ utils
    def wait_idle(self):
        a = self.args
        return T.wait_for_idle_cpu(threshold=a.busy_threshold, max_wait_s=a.max_idle_wait)

    def base(self, bench, impl, S, B, NH, dhqk, dhv, chunk_size, mode):
        return {
            "bench": bench,
            "impl": impl,
            "S": S,
            "B": B,
            "NH": NH,
            "dhqk": dhqk,
            "dhv": dhv,
            "chunk_size": chunk_size,
            "mode": mode,
        }

    def emit(self, row):
        self.rows.append(row)
        T.emit(row)

    def _no_result(self, base, **fields):
        """Emit ``base`` with every result column None (a skipped or failed case)."""
        row = dict(base)
        for key in ("median_s", "min_s", "tokens_per_s", "peak_mem_bytes", "gflops", "frac_of_matmul_peak"):
            row[key] = None
        row.update(reps=0, cpu_busy_before=None, compile_s=None, **fields)
        self.emit(row)

    def skip(self, base, reason):
        self._no_result(base, skipped=True, reason=reason)
        log(f"  SKIP {base['bench']} {base['impl']} S={base['S']} {base['mode']}: {reason}")

    def error(self, base, exc_text):
        self._no_result(base, error=exc_text[-2000:])
        log(f"  ERROR {base['bench']} {base['impl']} S={base['S']} {base['mode']}:\n{exc_text}")

    def _timed(self, call, block):
        """Idle-wait + timed reps with contamination retries. Returns (timing, idle, other, attempts)."""
        a = self.args

        def measure():
            return T.median_time(
                call, warmup=0, reps=a.reps, block=block, time_budget_s=a.max_case_s, min_time_s=a.min_case_s
            )

        return T.measure_clean(measure, a, lambda tm: tm["median_s"] > a.no_retry_above_s, log=log)

    def _measure(self, base, call, block, args_bytes, rss=True):
        """Idle wait, one warm-up call, the timed reps (``_timed``) and, if ``rss``, the RSS peak.

        Returns (first call s, (timing, idle, other, attempts), args_bytes + RSS growth or None), or
        None after emitting an error row."""
        try:
            self.wait_idle()
            t0 = time.perf_counter()
            block(call())
            first_s = time.perf_counter() - t0
            timing = self._timed(call, block)
            delta = T.rss_peak_delta(call, block) if rss else None
        except Exception:
            self.error(base, traceback.format_exc())
            return None
        return first_s, timing, (args_bytes + delta) if delta is not None else None

    def finish_row(
        self, base, timing, tokens, gflop, *, compile_s, first_run_s, peak_mem, peak_method, rss_peak, extra=None
    ):
        tm, idle, other, attempts = timing
        row = dict(base)
        med = tm["median_s"]
        gps = gflop / med if (gflop is not None and med > 0) else None
        row.update(
            {
                "median_s": med,
                "min_s": tm["min_s"],
                "reps": tm["reps"],
                "tokens_per_s": (tokens / med) if (tokens and med > 0) else None,
                "peak_mem_bytes": peak_mem,
                "gflops": gflop,
                "gflop_per_s": gps,
                "frac_of_matmul_peak": (gps / self.matmul_peak) if (gps is not None and self.matmul_peak) else None,
                **T.hygiene_fields(idle, other, self.args.contam_threshold),
                "attempts": attempts,
                "compile_s": compile_s,
                "first_run_s": first_run_s,
                "peak_mem_method": peak_method,
                "rss_peak_bytes": rss_peak,
                "threads": THREADS,
            }
        )
        if extra:
            row.update(extra)
        self.emit(row)
        log(
            f"  {base['bench']:6s} {base['impl']:42s} S={str(base['S']):<6} L={str(base['chunk_size']):4s} "
            f"{base['mode']:6s} median {med * 1e3:9.2f} ms  min {tm['min_s'] * 1e3:9.2f} ms  "
            f"reps {tm['reps']}  busy_before {idle['cpu_busy_before']:.2f} "
            f"other {other if other is None else round(other, 2)}"
        )
        return row

    # ---------------------------------------------------------------- JAX case
    def jax_case(self, base, fn, args, tokens, gflop, mem_check=True):
        """fn: a python function of *args (to be jitted). Returns (row, compiled) or (None, None)."""
        import jax

        try:
            t0 = time.perf_counter()
            compiled = jax.jit(fn).lower(*args).compile()
            compile_s = time.perf_counter() - t0
        except Exception:
            self.error(base, traceback.format_exc())
            return None, None
        mem = T.jax_compiled_memory(compiled)
        peak = mem["total"] if mem else None
        budget = self.args.mem_frac * T.mem_available_bytes()
        if mem_check and peak is not None and peak > budget:
            self.skip(
                base,
                f"XLA buffer assignment needs {peak / 2**30:.2f} GiB (temp {mem['temp'] / 2**30:.2f} GiB) "
                f"> {self.args.mem_frac} x MemAvailable = {budget / 2**30:.2f} GiB",
            )
            return None, None

        def call():
            return compiled(*args)

        args_bytes = sum(int(x.nbytes) for x in jax.tree_util.tree_leaves(args))
        measured = self._measure(base, call, jax.block_until_ready, args_bytes, rss=self.args.measure_rss)
        if measured is None:
            return None, None
        first_run_s, timing, rss_peak = measured
        row = self.finish_row(
            base, timing, tokens, gflop, compile_s=compile_s, first_run_s=first_run_s, peak_mem=peak,
            peak_method="jax_compiled_memory_bytes(temp+arg+out-alias)", rss_peak=rss_peak, extra={"xla_mem": mem},
        )  # fmt: skip
        return row, compiled

    # -------------------------------------------------------------- torch case
    def torch_case(self, base, call, args_bytes, tokens, gflop):
        """Eager torch has no compile step: ``compile_s`` is the first (warm-up) call."""
        measured = self._measure(base, call, lambda x: x, args_bytes)
        if measured is None:
            return None
        first_s, timing, peak = measured
        return self.finish_row(
            base, timing, tokens, gflop, compile_s=first_s, first_run_s=None, peak_mem=peak,
            peak_method="torch_inputs+rss_hwm_delta", rss_peak=peak,
        )  # fmt: skip

    # --------------------------------------------------- one routine per framework
    def jax_form(self, base, h, inputs, ct, tokens, gflop, keep_output=False):
        """Time jitted ``h(*inputs)`` ('fwd') or the gradient of ``sum(h * ct)`` w.r.t. every input
        ('fwdbwd'). Returns (row or None, the call's output as numpy if ``keep_output``)."""
        import jax
        import jax.numpy as jnp

        if base["mode"] == "fwd":
            fn, args = h, inputs
        else:

            def fn(*xs_ct):
                *xs, cot = xs_ct
                return jax.grad(lambda *x_: jnp.sum(h(*x_) * cot), argnums=tuple(range(len(xs))))(*xs)

            args = (*inputs, ct)
        row, compiled = self.jax_case(base, fn, args, tokens, gflop)
        output = None
        if keep_output and compiled is not None:
            try:
                output = jax.tree_util.tree_map(np.asarray, compiled(*args))
            except Exception:
                pass
        return row, output

    def torch_form(self, base, h, inputs, ct, in_bytes, tokens, gflop, params=()):
        """Time eager ``h(*inputs)`` under ``no_grad`` ('fwd') or ``sum(h * ct).backward()`` w.r.t. every
        input and ``params`` ('fwdbwd', gradients reset before each call)."""
        import torch

        if base["mode"] == "fwd":

            def call():
                with torch.no_grad():
                    return h(*inputs)
        else:
            leaves = tuple(x.clone().requires_grad_(True) for x in inputs)

            def call():
                for t in (*leaves, *params):
                    t.grad = None
                (h(*leaves) * ct).sum().backward()

        return self.torch_case(base, call, in_bytes, tokens, gflop)

    # ----------------------------------------------------------------- matmul
    def bench_matmul(self, tag="start"):
        import jax.numpy as jnp
        import torch

        n = 2048
        rng = np.random.default_rng(0)
        a_np = rng.standard_normal((n, n), dtype=np.float32)
        b_np = rng.standard_normal((n, n), dtype=np.float32)
        a, b = jnp.asarray(a_np), jnp.asarray(b_np)
        gflop = 2 * n**3 / 1e9
        reps_saved = self.args.reps
        self.args.reps = max(self.args.reps, 5)
        try:
            base = self.base("matmul", "jax_jit_matmul", None, None, None, None, None, None, "fwd")
            base.update({"n": n, "when": tag})
            row, _ = self.jax_case(base, lambda x, y: x @ y, (a, b), 0, gflop, mem_check=False)
            if row is not None:
                self.matmul_rows.append(row)
                if self.matmul_peak is None:
                    self.matmul_peak = row["gflop_per_s"]
                row_peak_min = gflop / row["min_s"]
                log(f"  matmul ({tag}): {row['gflop_per_s']:.1f} GFLOP/s at median ({row_peak_min:.1f} at min)")
            if tag == "start":
                ta, tb = torch.from_numpy(a_np), torch.from_numpy(b_np)
                base = self.base("matmul", "torch_matmul", None, None, None, None, None, None, "fwd")
                base.update({"n": n, "when": tag})
                self.torch_case(base, lambda: torch.matmul(ta, tb), 2 * a_np.nbytes, 0, gflop)
        finally:
            self.args.reps = reps_saved
        if self.rows and self.matmul_peak:
            for r in self.rows:
                if r.get("bench") == "matmul" and r.get("gflop_per_s"):
                    r["frac_of_matmul_peak"] = r["gflop_per_s"] / self.matmul_peak

    # ------------------------------------------------------------------ mLSTM
    def bench_mlstm(self, ops):
        import jax
        import jax.numpy as jnp
        import torch
        from mlstm_kernels.torch import get_mlstm_kernel

        a = self.args
        NH, DQK, DV = 4, 64, 64
        official = {f.impl: get_mlstm_kernel(f.torch_kernel) for f in MLSTM_FORMS if f.torch_kernel}
        # per (impl, mode, chunk): (S, seconds per call) of the last S, to extrapolate and skip absurd cases
        last_time: dict = {}

        def too_slow(key, S, power):
            if key not in last_time:
                return None
            S0, t0 = last_time[key]
            pred = t0 * (S / S0) ** power
            if pred > a.max_call_s:
                return (
                    f"predicted {pred:.0f} s per call (from {t0:.2f} s at S={S0}, O(S^{power})) "
                    f"> --max-call-s {a.max_call_s}"
                )
            return None

        for si, S in enumerate(a.mlstm_S):
            # --const-tokens: the same B*S tokens (and working set) per call at every S, which
            # separates the algorithm's scaling in S from cache effects of a growing problem.
            B = max(1, a.const_tokens // S) if a.const_tokens else 1
            log(f"[mlstm] S={S} B={B}")
            rng = np.random.default_rng(1000 + S)
            q_np = rng.standard_normal((B, NH, S, DQK), dtype=np.float32)
            k_np = rng.standard_normal((B, NH, S, DQK), dtype=np.float32)
            v_np = rng.standard_normal((B, NH, S, DV), dtype=np.float32)
            i_np = rng.standard_normal((B, NH, S), dtype=np.float32)
            f_np = (3.0 + rng.standard_normal((B, NH, S))).astype(np.float32)
            ct_np = rng.standard_normal((B, NH, S, DV), dtype=np.float32)
            in_np = (q_np, k_np, v_np, i_np, f_np)
            in_bytes = sum(x.nbytes for x in in_np)
            jin = tuple(jnp.asarray(x) for x in in_np)
            jct = jnp.asarray(ct_np)
            split_inputs = None
            if "devices" in a.forms:
                split_inputs = jax.device_put((jin, jct), heads_sharding())
            tin = tuple(torch.from_numpy(x.copy()) for x in in_np)
            tct = torch.from_numpy(ct_np.copy())
            tokens = B * S
            check_here = si == 0 and ops is not None and not a.no_check
            jax_cw_out = {}

            for mode in MODES:
                for L in (*a.chunk_sizes, None):  # the chunked forms at every chunk size, then the others
                    for form in MLSTM_FORMS:
                        if form.chunked != (L is not None) or (form.option and form.option not in a.forms):
                            continue
                        base = self.base("mlstm", form.impl, S, B, NH, DQK, DV, L, mode)
                        if L is not None and S % L != 0:
                            self.skip(base, "S % chunk_size != 0")
                            continue
                        if form.jax is not None and ops is None:
                            self.skip(base, "xlstm_jax.ops not importable")
                            continue
                        if form.power and (why := too_slow((form.impl, mode), S, form.power)):
                            self.skip(base, why)
                            continue
                        gf = (1.0 if mode == "fwd" else FWDBWD_FACTOR) * form.flops(B, NH, S, DQK, DV, L) / 1e9
                        if form.jax is None:
                            h = partial(official[form.impl], chunk_size=L, return_last_states=False)
                            self.torch_form(base, h, tin, tct, in_bytes, tokens, gf)
                            continue
                        keep = check_here and form.impl in self.chunkwise_impls() and L == a.chunk_sizes[0]
                        xs, ct = (jin, jct) if form.option != "devices" else split_inputs
                        row, out = self.jax_form(base, form.jax(ops, L), xs, ct, tokens, gf, keep_output=keep)
                        if out is not None:
                            jax_cw_out.setdefault(form.impl, {})[mode] = out
                        if row is not None and form.power:
                            last_time[(form.impl, mode)] = (S, row["median_s"])

            if check_here:
                L = a.chunk_sizes[0]
                kern = official["official_torch_chunkwise_native_autograd"]

                def reference(L=L, kern=kern, tin=tin, tct=tct):
                    tg = tuple(x.clone().requires_grad_(True) for x in tin)
                    h = kern(*tg, chunk_size=L, return_last_states=False)
                    (h * tct).sum().backward()
                    return h.detach().numpy(), {n: x.grad.numpy() for n, x in zip("qkvif", tg)}

                for impl, outs in jax_cw_out.items():
                    check = f"check_{impl}_vs_official_native_autograd"
                    self.emit_check(self.base("mlstm", check, S, B, NH, DQK, DV, L, "check"), outs, reference, "qkvif")

    def emit_check(self, row, jout, reference, grad_names):
        """A ``check`` row: the JAX output (``jout['fwd']``) and gradients (``jout['fwdbwd']``, in
        ``grad_names`` order) against ``reference() -> (h, {name: gradient})`` of the official code."""
        try:
            h_ref, grads_ref = reference()
            if "fwd" in jout:
                row["h_max_abs_diff"] = float(np.max(np.abs(jout["fwd"] - h_ref)))
                row["h_max_abs_ref"] = float(np.max(np.abs(h_ref)))
            for name, gj in zip(grad_names, jout.get("fwdbwd", ())):
                gr = grads_ref[name]
                row[f"grad_{name}_max_rel_diff"] = float(np.max(np.abs(gj - gr)) / (np.max(np.abs(gr)) + 1e-30))
        except Exception:
            row["error"] = traceback.format_exc()[-2000:]
        self.emit(row)

    # ------------------------------------------------------------------ sLSTM
    def bench_slstm(self, ops):
        import jax.numpy as jnp
        import torch
        from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig

        a = self.args
        B, S, H, NH = 4, a.slstm_S, 256, 4
        DH = H // NH
        log(f"[slstm] B={B} S={S} H={H} NH={NH}")
        rng = np.random.default_rng(7)
        gx_np = rng.standard_normal((B, S, 4, NH, DH), dtype=np.float32)
        R_np = (rng.standard_normal((NH, DH, 4, DH)) / math.sqrt(DH)).astype(np.float32)
        b_np = (0.1 * rng.standard_normal((NH, 4, DH))).astype(np.float32)
        ct_np = rng.standard_normal((B, S, NH, DH), dtype=np.float32)  # our h layout (B,S,NH,DH)
        in_bytes = gx_np.nbytes + R_np.nbytes + b_np.nbytes
        tokens = B * S

        cfg = sLSTMCellConfig(
            hidden_size=H,
            num_heads=NH,
            backend="vanilla",
            dtype="float32",
            dtype_b="float32",
            enable_automatic_mixed_precision=False,
        )
        cell = sLSTMCell(cfg)
        with torch.no_grad():
            cell._recurrent_kernel_.copy_(cell._recurrent_kernel_ext2int(torch.from_numpy(R_np)))
            cell._bias_.copy_(cell._bias_ext2int(torch.from_numpy(b_np)))
        t_x = torch.from_numpy(gx_np.reshape(B, S, 4 * H).copy())
        t_ct = torch.from_numpy(ct_np.transpose(0, 2, 1, 3).copy())  # torch h is (B,NH,S,DH)

        jin = tuple(jnp.asarray(x) for x in (gx_np, R_np, b_np))
        jct = jnp.asarray(ct_np)
        jout = {}
        for mode in MODES:
            gf = (1.0 if mode == "fwd" else FWDBWD_FACTOR) * flops_slstm_fwd(B, S, NH, DH) / 1e9
            base = dict(self.base("slstm", "jax_slstm_scan", S, B, NH, DH, DH, None, mode), hidden=H)
            if ops is None:
                self.skip(base, "xlstm_jax.ops not importable")
            else:
                _, out = self.jax_form(
                    base, lambda gx, R, bb: ops.slstm_scan(gx, R, bb)[0], jin, jct, tokens, gf,
                    keep_output=not a.no_check,
                )  # fmt: skip
                if out is not None:
                    jout[mode] = out
            base = dict(self.base("slstm", "official_torch_slstm_vanilla", S, B, NH, DH, DH, None, mode), hidden=H)
            self.torch_form(
                base, lambda x: cell(x)[0], (t_x,), t_ct, in_bytes, tokens, gf, params=tuple(cell.parameters())
            )

        if not a.no_check and ops is not None:

            def reference():
                tx = t_x.clone().requires_grad_(True)
                cell.zero_grad(set_to_none=True)
                h, _ = cell(tx)
                (h * t_ct).sum().backward()
                return h.detach().numpy().transpose(0, 2, 1, 3), {  # -> (B,S,NH,DH)
                    "gates_x": tx.grad.numpy().reshape(B, S, 4, NH, DH),
                    "recurrent_kernel": cell._recurrent_kernel_int2ext(cell._recurrent_kernel_.grad).numpy(),
                    "bias": cell._bias_int2ext(cell._bias_.grad).numpy(),
                }

            row = self.base("slstm", "check_jax_slstm_scan_vs_official_vanilla", S, B, NH, DH, DH, None, "check")
            self.emit_check(row, jout, reference, ("gates_x", "recurrent_kernel", "bias"))

    # ---------------------------------------------------------------- summary
    def chunkwise_impls(self) -> list[str]:
        """Our chunkwise rows the summary compares: one device, the heads over devices and the CPU kernel if run."""
        forms = self.args.forms
        return (["jax_chunkwise"] + (["jax_chunkwise_heads_over_devices"] if "devices" in forms else [])
                + (["jax_chunkwise_cpu_kernel"] if "cpu_kernel" in forms else []))  # fmt: skip

    def summary(self):
        a = self.args
        rows = [r for r in self.rows if r.get("median_s") is not None]

        def find(bench, impl, mode, S=None, L=None):
            for r in rows:
                if (
                    r["bench"] == bench
                    and r["impl"] == impl
                    and r["mode"] == mode
                    and (S is None or r["S"] == S)
                    and (L is None or r["chunk_size"] == L)
                ):
                    return r
            return None

        out = []
        # matmul peak for the summary: the best of the start/end measurements, preferring clean ones
        clean = [r for r in self.matmul_rows if not r.get("contaminated")]
        pool = clean or self.matmul_rows
        peak = max((r["gflop_per_s"] for r in pool), default=None)
        out.append(
            {
                "bench": "summary",
                "metric": "matmul_peak_gflop_per_s",
                "value": peak,
                "measurements": {r.get("when"): r["gflop_per_s"] for r in self.matmul_rows},
                "used_clean_only": bool(clean),
                "note": "rows' frac_of_matmul_peak use the start measurement; summary fractions use this value",
            }
        )
        S_list = [s for s in a.mlstm_S]
        if S_list:
            S_ref = 4096 if 4096 in S_list else min(S_list, key=lambda s: abs(s - 4096))
            for L in a.chunk_sizes:
                for ours_impl, mode in [(o, m) for o in self.chunkwise_impls() for m in ("fwdbwd", "fwd")]:
                    ours = find("mlstm", ours_impl, mode, S_ref, L)
                    rec = {
                        "bench": "summary",
                        "metric": f"chunkwise_{mode}_speedup_vs_official" + ours_impl.removeprefix("jax_chunkwise"),
                        "S": S_ref,
                        "chunk_size": L,
                        "target": 3.0 if mode == "fwdbwd" else None,
                    }
                    ratios = {}
                    for impl in ("official_torch_chunkwise_native_autograd", "official_torch_chunkwise_native_custbw"):
                        off = find("mlstm", impl, mode, S_ref, L)
                        if ours and off:
                            ratios[impl] = off["median_s"] / ours["median_s"]
                    for k, v in ratios.items():
                        rec[f"ratio_vs_{k}"] = v
                        if mode == "fwdbwd":
                            rec[f"met_vs_{k}"] = v >= 3.0
                    rec["value"] = min(ratios.values()) if ratios else None
                    rec["met"] = (rec["value"] >= 3.0) if (ratios and mode == "fwdbwd") else None
                    if ours:
                        rec["contaminated_inputs"] = bool(ours.get("contaminated")) or any(
                            (find("mlstm", k, mode, S_ref, L) or {}).get("contaminated") for k in ratios
                        )
                    out.append(rec)

                for mode in ("fwd", "fwdbwd"):
                    per_tok = {}
                    for S in sorted(S_list):
                        r = find("mlstm", "jax_chunkwise", mode, S, L)
                        if r:
                            per_tok[S] = r["median_s"] / (r["B"] * S)
                    rec = {
                        "bench": "summary",
                        "metric": f"chunkwise_{mode}_time_per_token_spread",
                        "chunk_size": L,
                        "per_token_s": {str(k): v for k, v in per_tok.items()},
                        "target": 0.15,
                    }
                    if len(per_tok) >= 2:
                        ref = per_tok[min(per_tok)]
                        dev = max(abs(v / ref - 1) for v in per_tok.values())
                        rec.update(
                            {
                                "value": dev,
                                "max_rel_dev_vs_first": dev,
                                "max_over_min": max(per_tok.values()) / min(per_tok.values()),
                                "met": dev <= 0.15,
                            }
                        )
                    else:
                        rec.update({"value": None, "met": None, "note": "needs >= 2 sequence lengths"})
                    out.append(rec)

                for ours_impl in self.chunkwise_impls():
                    fr = {}
                    for S in sorted(S_list):
                        r = find("mlstm", ours_impl, "fwd", S, L)
                        if r and r.get("gflop_per_s") is not None and peak:
                            fr[str(S)] = r["gflop_per_s"] / peak
                    v = fr.get(str(S_ref))
                    out.append(
                        {
                            "bench": "summary",
                            "metric": "chunkwise_fwd_frac_of_matmul_peak" + ours_impl.removeprefix("jax_chunkwise"),
                            "S": S_ref,
                            "chunk_size": L,
                            "value": v,
                            "per_S": fr,
                            "matmul_peak_gflop_per_s": peak,
                            "target": 0.5,
                            "met": (v >= 0.5) if v is not None else None,
                        }
                    )

        if "slstm" in a.only:
            for mode in ("fwdbwd", "fwd"):
                ours = find("slstm", "jax_slstm_scan", mode)
                off = find("slstm", "official_torch_slstm_vanilla", mode)
                v = off["median_s"] / ours["median_s"] if (ours and off) else None
                out.append(
                    {
                        "bench": "summary",
                        "metric": f"slstm_{mode}_speedup_vs_official",
                        "S": a.slstm_S,
                        "value": v,
                        "target": 10.0 if mode == "fwdbwd" else None,
                        "met": (v >= 10.0) if (v is not None and mode == "fwdbwd") else None,
                        "contaminated_inputs": bool(
                            (ours or {}).get("contaminated") or (off or {}).get("contaminated")
                        ),
                    }
                )

        cont = [
            f"{r['bench']}/{r['impl']}/S={r['S']}/L={r['chunk_size']}/{r['mode']}"
            for r in rows
            if r.get("contaminated")
        ]
        errs = [f"{r['bench']}/{r['impl']}/S={r['S']}/{r['mode']}" for r in self.rows if r.get("error")]
        out.append(T.hygiene_summary(cont, errs, a))
        for r in out:
            T.emit(r)


# --------------------------------------------------------------------------- #
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke test: smallest sizes, 1 rep, short idle waits")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per case (default 7; --quick: 1)")
    p.add_argument(
        "--only",
        default="mlstm,slstm,matmul",
        help="comma list of benches to run: mlstm, slstm, matmul (mlstm also runs matmul, for the peak)",
    )
    p.add_argument("--chunk-size", default="64", help="chunk size, or a comma list to sweep (default 64)")
    p.add_argument("--seq-lens", default=None, help="mLSTM sequence lengths, comma list (default 1024,4096,16384)")
    p.add_argument(
        "--const-tokens",
        type=int,
        default=0,
        help="mLSTM: use batch = const_tokens // S at each S (default 0: batch 1)",
    )
    p.add_argument(
        "--forms",
        default="parallel,recurrent",
        help="our slower mLSTM forms to run besides chunkwise and the official kernels (comma list; '' for none)",
    )
    T.add_hygiene_args(p, idle_wait=120.0, quick_idle_wait=15.0, no_retry_above_s=5.0)
    p.add_argument("--max-case-s", type=float, default=60.0, help="stop timing a case after this many seconds of reps")
    p.add_argument(
        "--min-case-s",
        type=float,
        default=None,
        help="fast cases get extra reps (up to 200) until the timed calls add up to this (default 1.0; quick 0)",
    )
    p.add_argument(
        "--max-call-s",
        type=float,
        default=120.0,
        help="skip O(S)/O(S^2) forms whose extrapolated single call exceeds this",
    )
    p.add_argument(
        "--mem-frac",
        type=float,
        default=0.6,
        help="skip JAX cases whose XLA buffer assignment exceeds this fraction of MemAvailable",
    )
    p.add_argument("--cpu-devices", type=int, default=1,
                   help="split the CPU into N JAX devices and add the row jax_chunkwise_heads_over_devices (the same "
                   "call with the heads split over the devices); the other JAX rows stay on device 0")  # fmt: skip
    p.add_argument("--no-check", action="store_true", help="skip the correctness check rows")
    p.add_argument("--no-rss", dest="measure_rss", action="store_false", help="skip the RSS cross-check for JAX")
    a = p.parse_args(argv)
    a.only = [s.strip() for s in a.only.split(",") if s.strip()]
    for s in a.only:
        if s not in ("mlstm", "slstm", "matmul"):
            p.error(f"--only: unknown bench {s!r}")
    a.chunk_sizes = [int(x) for x in str(a.chunk_size).split(",") if x.strip()]
    if a.reps is None:
        a.reps = 1 if a.quick else 7
    T.fill_hygiene_defaults(a)
    if a.min_case_s is None:
        a.min_case_s = 0.0 if a.quick else 1.0
    if a.seq_lens:
        a.mlstm_S = [int(x) for x in a.seq_lens.split(",")]
    else:
        a.mlstm_S = [1024] if a.quick else [1024, 4096, 16384]
    a.forms = [x for x in a.forms.split(",") if x]
    if a.cpu_devices > 1:
        a.forms.append("devices")
    a.slstm_S = 128 if a.quick else 512
    if "mlstm" not in a.only:
        a.mlstm_S = []
    return a


def main(argv=None):
    a = parse_args(argv)
    import jax
    import torch

    if a.cpu_devices > 1:
        jax.config.update("jax_num_cpu_devices", a.cpu_devices)
    torch.set_num_threads(THREADS)
    ops, ops_err = None, None
    try:
        import xlstm_jax.ops as ops  # noqa: F811
    except Exception:
        ops_err = traceback.format_exc()
        log(ops_err)
    import mlstm_kernels
    import xlstm

    cpu = T.cpu_model()
    T.emit(
        {
            "bench": "env",
            "argv": sys.argv[1:],
            "jax": jax.__version__,
            "jax_backend": jax.default_backend(),
            "jax_devices": [str(d) for d in jax.devices()],
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cores": THREADS,
            "cpu": cpu,
            "mlstm_kernels": getattr(mlstm_kernels, "__version__", None),
            "xlstm": getattr(xlstm, "__version__", None),
            "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
            "ops_import_error": ops_err[-2000:] if ops_err else None,
            "ops_module": getattr(ops, "__file__", None),
            "reps": a.reps,
            "chunk_sizes": a.chunk_sizes,
            "mlstm_S": a.mlstm_S,
            "mem_available_bytes": T.mem_available_bytes(),
        }
    )

    r = Runner(a)
    t0 = time.perf_counter()
    if "matmul" in a.only or "mlstm" in a.only:
        r.bench_matmul()
    if "mlstm" in a.only:
        r.bench_mlstm(ops)
    if "slstm" in a.only:
        r.bench_slstm(ops)
    if "mlstm" in a.only and not a.quick:
        r.bench_matmul(tag="end")  # second roofline measurement (machine drift / contamination check)
    r.summary()
    log(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
