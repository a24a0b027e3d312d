"""The chunkwise mLSTM forward with its heads split over processes, one pinned to each core.

Run from the repository root::

    python benchmarks/chunkwise_processes.py                 # S=4096, B=1, NH=4, D=64, chunk 64, 2 processes
    python benchmarks/chunkwise_processes.py --rounds 9 --burst 16

``bench_ops.py`` times the issue-14 forward (``mlstm_chunkwise`` at S=4096, B=1, NH=4, DHQK=DHV=64) in
one process: on one JAX device, or with the heads split over one CPU device per core
(``--cpu-devices 2``, ``heads_over_devices``). In the second form XLA:CPU runs both devices' programs
on one shared thread pool (two device threads and two pool threads on two cores), and each device
pays for it: its half of the heads took 7 ms of CPU time a call there against 6 ms alone on a
pinned core (``benchmarks/RESULTS.md``, session 31). This script measures the same computation
without that runtime: N processes (``--processes``, default one per core), each pinned to its own
core with ``sched_setaffinity`` and holding one CPU device, run ``mlstm_chunkwise`` on their share of
the heads at the same time. Nothing is communicated (the heads are independent), as in
``heads_over_devices``. It is how a multi-process JAX job (``jax.distributed``, one process per core
or per host) runs the cell; it is not a single-process user's speed.

Method: the parent measures the 2048² float32 matmul peak (``profile_step.matmul_peak``: all cores, one
process, idle while the children run) before and after. Each child builds the full inputs
(``dot_bound.chunkwise_inputs``, as ``dot_bound.py``'s chunkwise program), keeps its heads, compiles,
warms up, reports ready and waits. The parent releases all children at once; each runs ``--rounds``
rounds of ``--burst`` back-to-back calls, recording the wall time of every round. The call time is
the span from the first child's start to the last child's end divided by the number of calls (all
children run the same number), so an unbalanced or slow process counts fully. Each child also
checks its h against the same heads computed in one process from ``mlstm_recurrent`` at float64
(the max abs difference is reported).

Output: one JSON line per child (``bench="chunkwise_processes_child"``) and a summary line
(``metric="chunkwise_fwd_frac_of_matmul_peak_heads_over_processes"``, the same FLOPs count as
``bench_ops.py``, target 0.4 for issue 14).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

SHAPE = dict(b=1, nh=4, s=4096, d=64, chunk=64)  # bench_ops.py's issue-14 case


def inputs(seq_len: int, nh_lo: int, nh_hi: int):
    """``dot_bound.chunkwise_inputs`` for heads [nh_lo, nh_hi) (NumPy, float32)."""
    from dot_bound import chunkwise_inputs

    full = chunkwise_inputs(SHAPE["b"], SHAPE["nh"], seq_len, SHAPE["d"])
    return tuple(x[:, nh_lo:nh_hi] for x in full)


def child(a) -> None:
    import jax
    import jax.numpy as jnp

    from xlstm_jax import ops

    args = tuple(jnp.asarray(x) for x in inputs(a.seq_len, a.heads_lo, a.heads_hi))
    fwd = jax.jit(lambda *x: ops.mlstm_chunkwise(*x, chunk_size=SHAPE["chunk"])[0]).lower(*args).compile()
    h = np.asarray(jax.block_until_ready(fwd(*args)))
    with jax.enable_x64(True):
        x64 = tuple(jnp.asarray(x, jnp.float64) for x in inputs(a.seq_len, a.heads_lo, a.heads_hi))
        ref = np.asarray(ops.mlstm_recurrent(*x64)[0])
    for _ in range(3):
        jax.block_until_ready(fwd(*args))
    print("ready", flush=True)
    sys.stdin.readline()
    rounds = []
    start = time.time()
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        for _ in range(a.burst):
            jax.block_until_ready(fwd(*args))
        rounds.append(time.perf_counter() - t0)
    end = time.time()
    row = {
        "bench": "chunkwise_processes_child",
        "core": a.core,
        "heads": [a.heads_lo, a.heads_hi],
        "per_call_ms_median": float(np.median(rounds)) / a.burst * 1e3,
        "start": start,
        "end": end,
        "max_abs_diff_vs_float64_recurrent": float(np.max(np.abs(h - ref))),
    }
    print(json.dumps(row), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--processes", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--seq-len", type=int, default=SHAPE["s"], help="S (the issue-14 target is at 4096)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--burst", type=int, default=16, help="back-to-back calls per timed round")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--core", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--heads-lo", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--heads-hi", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if a.child:
        return child(a)

    from bench_ops import flops_chunkwise_fwd
    from profile_step import matmul_peak

    cores = sorted(os.sched_getaffinity(0))
    n, nh = a.processes, SHAPE["nh"]
    if not 1 <= n <= len(cores) or nh % n:
        p.error(f"--processes must divide the {nh} heads and be at most the {len(cores)} usable cores, got {n}")
    peak_before = matmul_peak(15)
    procs = []
    for j in range(n):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--core", str(cores[j])]
        cmd += ["--heads-lo", str(j * nh // n), "--heads-hi", str((j + 1) * nh // n)]
        cmd += ["--rounds", str(a.rounds), "--burst", str(a.burst), "--seq-len", str(a.seq_len)]
        procs.append(
            subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                preexec_fn=lambda core=cores[j]: os.sched_setaffinity(0, {core}),
            )
        )
    for pr in procs:
        line = pr.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"a child process failed before timing (printed {line!r}); run it alone to see why")
    for pr in procs:
        pr.stdin.write("go\n")
        pr.stdin.flush()
    rows = []
    for pr in procs:
        out, _ = pr.communicate()
        if pr.returncode:
            raise RuntimeError(f"a child process exited with {pr.returncode}")
        rows.append(json.loads(out.strip().splitlines()[-1]))
    peak_after = matmul_peak(15)
    calls = a.rounds * a.burst
    call_s = (max(r["end"] for r in rows) - min(r["start"] for r in rows)) / calls
    flop = flops_chunkwise_fwd(SHAPE["b"], nh, a.seq_len, SHAPE["d"], SHAPE["d"], SHAPE["chunk"])
    peak = max(peak_before, peak_after)
    for r in rows:
        print(json.dumps(r))
    summary = {
        "bench": "summary",
        "metric": "chunkwise_fwd_frac_of_matmul_peak_heads_over_processes",
        "shape": {**SHAPE, "s": a.seq_len},
        "processes": n,
        "call_ms": call_s * 1e3,
        "per_process_call_ms": [r["per_call_ms_median"] for r in rows],
        "gflop": flop / 1e9,
        "matmul_peak_gflop_per_s": [peak_before, peak_after],
        "value": flop / call_s / (peak * 1e9),
        "target": 0.4,
        "max_abs_diff_vs_float64_recurrent": max(r["max_abs_diff_vs_float64_recurrent"] for r in rows),
    }
    summary["met"] = summary["value"] >= summary["target"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
