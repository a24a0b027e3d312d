"""Interleaved A/B of the training step in one process: the package at an older commit against the working tree.

Run from the repository root (a git checkout)::

    python benchmarks/ab_trainstep.py --base HEAD~1              # profile_step.py's program
    python benchmarks/ab_trainstep.py --base 3f2a1c0 --reps 11
    python benchmarks/ab_trainstep.py --base HEAD~1 --cpu-devices 2   # the data-parallel step
    python benchmarks/ab_trainstep.py --base HEAD --backend cpu_ffi   # two mLSTM backends, same code

The program is ``profile_step.py``'s training step (the trainer's step of the NeurIPS xLSTM, D=256,
blocks [m, s, m, m], 4 heads, qkv blocksize 4, vocab 1024, B=8, S=256, AdamW + clip), with the mLSTM
backend ``--base-backend`` for the base and ``--backend`` for the working tree (both ``chunkwise``, the XLA
form, unless given).
The base commit's package (``xlstm_jax`` with ``train/``, ``configs/`` and ``pallas_kernels/`` placed
where the install puts them) is extracted with ``git archive`` into a temporary folder, imported,
its step built and compiled; then every ``xlstm_jax`` module is dropped from ``sys.modules`` and the
working tree's package is imported and compiled the same way. The compiled programs no longer need
their Python modules, so both run side by side: called alternately ``--reps`` times each (the order
flips every round), with a jitted 2048² float32 matmul after every round (the same-run peak).

Output: one JSON line with wall and process CPU time medians (ms), new/base ratios, the step's model
FLOPs (the working tree's ``train.step.model_flops``, the same work for both) and each program's fraction
of the same-run matmul peak by them, each program's XLA cost-analysis FLOPs, both programs' metrics after the
first step (loss, gradient norm) and ``/proc/loadavg``; with ``--trace-reps N``, also each program's
op self time per kind (``profile_step.py``'s classification, N traced calls each).
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import profile_step as P

from _timing import interleave

# repository folder -> where the install puts it (pyproject's package-dir)
PACKAGES = {
    "xlstm_jax": "xlstm_jax",
    "train": "xlstm_jax/train",
    "configs": "xlstm_jax/configs",
    "pallas_kernels": "xlstm_jax/pallas_kernels",
}


def extract_package(rev: str, dest: Path) -> None:
    """The installed layout of the package at ``rev`` under ``dest``."""
    for src, target in PACKAGES.items():
        (dest / target).mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", rev, src], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest / target), "--strip-components=1"], input=archive, check=True)


def drop_package() -> None:
    for name in [m for m in sys.modules if m == "xlstm_jax" or m.startswith("xlstm_jax.")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def build_both(base: str, tmp: Path, batch: int, seq_len: int, cpu_devices: int = 1, backends=None):
    """{tag: (call, compiled, first step's metrics, model FLOPs, XLA's FLOPs)} for "base" (extracted under
    tmp) and "new"; ``backends`` {tag: mLSTM backend} (default: chunkwise for both)."""
    backends = backends or {}
    import jax

    extract_package(base, tmp)
    out = {}
    for tag, path in (("base", str(tmp)), ("new", None)):
        drop_package()
        if path:
            sys.path.insert(0, path)
        t0 = time.perf_counter()
        origin = importlib.import_module("xlstm_jax").__file__
        compiled, call, work, xla_flops = P.train_program(batch, seq_len, cpu_devices, backends.get(tag, "chunkwise"))
        print(f"{tag} ({origin}): compiled in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        if path:
            sys.path.remove(path)
        out[tag] = (call, compiled, jax.device_get(jax.block_until_ready(call())[1]), work, xla_flops)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="git revision whose package is the baseline")
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument(
        "--trace-reps", type=int, default=0, help="also profile each program by op kind (profile_step.py's recipe)"
    )
    p.add_argument(
        "--cpu-devices",
        default="1",
        help="run the trainer's data-parallel step over N CPU devices (profile_step.py's --cpu-devices)",
    )
    p.add_argument("--backend", default="chunkwise", help="the working tree's mLSTM backend (cpu_ffi: the C++ kernels)")
    p.add_argument("--base-backend", default="chunkwise", help="the base's mLSTM backend")
    a = p.parse_args(argv)
    from xlstm_jax.train.cli import cpu_device_count  # dropped again before each package is imported

    a.cpu_devices = cpu_device_count(a.cpu_devices)
    if a.cpu_devices > 1:
        import jax

        jax.config.update("jax_num_cpu_devices", a.cpu_devices)

    load_before = P.loadavg()
    # the base's files stay on disk to the end: the profile reads the function around each op's line
    with tempfile.TemporaryDirectory(prefix="ab_trainstep_") as tmp:
        backends = {"base": a.base_backend, "new": a.backend}
        progs = build_both(a.base, Path(tmp), a.batch, a.seq_len, a.cpu_devices, backends)
        wall, cpu, peak = interleave({t: v[0] for t, v in progs.items()}, a.reps)
        med = lambda xs: float(np.median(xs)) * 1e3
        work = progs["new"][3]  # the working tree's count (same model, same work) divides both times
        xla_flops = {t: v[4] for t, v in progs.items()}
        first = {t: v[2] for t, v in progs.items()}
        shared = sorted(k for k in first["base"] if k in first["new"] and np.ndim(first["base"][k]) == 0)
        row = {
            "bench": "ab_trainstep",
            "base": a.base,
            "backends": backends,
            "B": a.batch,
            "S": a.seq_len,
            "cpu_devices": a.cpu_devices,
            "wall_ms": {t: med(x) for t, x in wall.items()},
            "cpu_ms": {t: med(x) for t, x in cpu.items()},
            "new_over_base": {m: med(src["new"]) / med(src["base"]) for m, src in (("wall", wall), ("cpu", cpu))},
            "flops": work,
            "xla_flops": xla_flops,
            "frac_of_matmul_peak": {t: work / (med(wall[t]) * 1e-3) / 1e9 / peak for t in wall},
            "first_step_metrics": {t: {k: float(first[t][k]) for k in shared} for t in progs},
            "matmul_peak_gflop_per_s": peak,
            "loadavg": {"before": load_before, "after": P.loadavg()},
        }
        if a.trace_reps:
            # op self time per kind, the two programs traced one after the other under the same load
            row["kinds_ms"] = {}
            for t, (call, compiled, *_) in progs.items():
                kinds, _, op_time = P.breakdown(compiled, call, a.trace_reps)
                row["kinds_ms"][t] = {k: round(v["ms"], 2) for k, v in kinds.items() if v["ops"]}
                row["kinds_ms"][t]["op time"] = round(op_time * 1e3, 2)
            row["loadavg"]["after_traces"] = P.loadavg()
    print(json.dumps(row))


if __name__ == "__main__":
    main()
