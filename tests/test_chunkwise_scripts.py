"""benchmarks/chunkwise_processes.py and chunkwise_ablation.py run end to end.

Their numbers are timings (not checked here). What is checked: both scripts run on this machine;
every process's share of the heads agrees with the float64 recurrent form; the processes' summary
counts the FLOPs of all heads, as ``bench_ops.py`` does; the ablation builds all its variants.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench_ops import flops_chunkwise_fwd

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "chunkwise_processes.py"


def test_heads_over_processes_end_to_end():
    processes = min(2, len(os.sched_getaffinity(0)))
    cmd = [sys.executable, str(SCRIPT), "--seq-len", "256", "--rounds", "1", "--burst", "2"]
    out = subprocess.run([*cmd, "--processes", str(processes)], check=True, capture_output=True, text=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    children = [r for r in rows if r["bench"] == "chunkwise_processes_child"]
    (summary,) = [r for r in rows if r["bench"] == "summary"]

    shares = [(j * 4 // processes, (j + 1) * 4 // processes) for j in range(processes)]
    assert sorted(tuple(c["heads"]) for c in children) == shares
    assert len({c["core"] for c in children}) == processes
    for c in children:
        assert c["max_abs_diff_vs_float64_recurrent"] < 1e-4
    assert summary["metric"] == "chunkwise_fwd_frac_of_matmul_peak_heads_over_processes"
    assert summary["gflop"] * 1e9 == flops_chunkwise_fwd(1, 4, 256, 64, 64, 64)
    assert summary["value"] > 0 and summary["met"] == (summary["value"] >= 0.4)


def test_processes_must_divide_the_heads():
    out = subprocess.run([sys.executable, str(SCRIPT), "--processes", "3"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "--processes must divide the 4 heads" in out.stderr


def test_chunkwise_ablation_runs_every_variant():
    """benchmarks/chunkwise_ablation.py replaces internals of ``ops._chunkwise_fwd`` by name: this
    fails when one of them is renamed or changes its signature."""
    script = SCRIPT.with_name("chunkwise_ablation.py")
    cmd = [sys.executable, str(script), "--seq-len", "256", "--rounds", "1", "--burst", "1"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    variants = ["real", "no_decay_exp", "trivial_stabilizers", "no_scan", "no_chunk_states", "bare"]
    assert [r["variant"] for r in rows] == variants
    assert rows[0]["wall_ms_less_than_real"] == 0.0
    assert all(r["wall_ms"] > 0 and r["shape"]["S"] == 256 for r in rows)
