"""Interleaved A/B of ``mlstm_chunkwise`` in one process: the ops of an older commit against the working tree.

Run from the repository root (a git checkout)::

    python benchmarks/ab_chunkwise.py --base 2f19785            # S=4096, B=1, NH=4, D=64, chunk 64
    python benchmarks/ab_chunkwise.py --base HEAD~1 --reps 15
    python benchmarks/ab_chunkwise.py --base HEAD~1 --batch 8 --seq-len 256 --head-dim 128   # profile_step.py's cell
    python benchmarks/ab_chunkwise.py --base HEAD~1 --cpu-devices 2   # heads over 2 devices, as bench_ops.py's target

The base commit's ``xlstm_jax/ops`` is extracted with ``git archive`` into a temporary folder and
imported as the package ``ops_base`` (the ops import only jax, numpy and ``xlstm_jax._validation``
outside themselves). Both versions' forward (h) and forward+backward (``jax.value_and_grad`` of
``sum(h * ct)`` wrt q, k, v, i, f) are compiled once and called alternately, ``--reps`` times each,
with a jitted 2048² float32 matmul after every round (the same-run peak). Wall time and process CPU
time (``time.process_time``, less sensitive to other processes' load) are reported as medians.

``--burst K`` times K back-to-back calls per sample (reported per call): a single call after the
other programs and the matmul pays for a cold start (its buffers mapped afresh, threads woken), which
made the S=4096 forward 12 ms against 8 ms back to back; ``bench_ops.py`` times back-to-back calls.
``--cpu-devices N`` splits the CPU into N JAX devices and the heads over them (``bench_ops.heads_over_devices``,
the form of ``bench_ops.py``'s ``chunkwise_fwd_frac_of_matmul_peak_heads_over_devices`` target).

Output: one JSON line with the medians in ms, new/base ratios, the largest difference between the two
versions' outputs and gradients, the peak in GFLOP/s and ``/proc/loadavg`` before and after.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from _timing import interleave, loadavg


def extract_ops(rev: str, dest: Path) -> None:
    """``xlstm_jax/ops`` at ``rev`` as the package ``dest/ops_base``."""
    (dest / "ops_base").mkdir()
    archive = subprocess.run(["git", "archive", rev, "xlstm_jax/ops"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest / "ops_base"), "--strip-components=2"], input=archive, check=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="git revision whose xlstm_jax/ops is the baseline")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64, help="DHQK = DHV")
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--cpu-devices", type=int, default=1, help="split the heads over N CPU devices")
    p.add_argument("--only", choices=["fwd", "fwdbwd"], default=None, help="compile and time one of the two")
    p.add_argument("--burst", type=int, default=1, help="back-to-back calls per timed sample (time per call)")
    a = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ab_chunkwise_") as tmp:
        extract_ops(a.base, Path(tmp))
        sys.path.insert(0, tmp)
        import jax
        import jax.numpy as jnp

        if a.cpu_devices > 1:
            jax.config.update("jax_num_cpu_devices", a.cpu_devices)
        import bench_ops
        import ops_base

        from xlstm_jax import ops as ops_new

        load_before = loadavg()
        b, nh, s, d = a.batch, a.heads, a.seq_len, a.head_dim
        rng = np.random.default_rng(0)
        q, k, v, ct = (jnp.asarray(rng.standard_normal((b, nh, s, d)), jnp.float32) for _ in range(4))
        i = jnp.asarray(rng.standard_normal((b, nh, s)), jnp.float32)
        f = jnp.asarray(rng.standard_normal((b, nh, s)) + 3.0, jnp.float32)
        if a.cpu_devices > 1:
            q, k, v, ct, i, f = (jax.device_put(x, bench_ops.heads_sharding()) for x in (q, k, v, ct, i, f))
        args = (q, k, v, i, f)
        progs = {}
        for tag, mod in (("base", ops_base), ("new", ops_new)):
            h = lambda *x, mod=mod: mod.mlstm_chunkwise(*x, chunk_size=a.chunk_size)[0]
            if a.cpu_devices > 1:
                h = bench_ops.heads_over_devices(h)
            loss = lambda *x, h=h: jnp.sum(h(*x) * ct)
            if a.only != "fwdbwd":
                progs[f"{tag}_fwd"] = jax.jit(h).lower(*args).compile()
            if a.only != "fwd":
                grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4))
                progs[f"{tag}_fwdbwd"] = jax.jit(grad).lower(*args).compile()
        outs = {t: jax.block_until_ready(c(*args)) for t, c in progs.items()}
        diff = lambda x, y: max(float(jnp.max(jnp.abs(u - w))) for u, w in zip(jax.tree.leaves(x), jax.tree.leaves(y)))
        burst = lambda c: [c(*args) for _ in range(a.burst)]
        wall, cpu, peak = interleave({t: (lambda c=c: burst(c)) for t, c in progs.items()}, a.reps)
        med = lambda xs: float(np.median(xs)) * 1e3 / a.burst
        kinds = [m for m in ("fwd", "fwdbwd") if f"new_{m}" in progs]
        row = {
            "bench": "ab_chunkwise",
            "base": a.base,
            "shape": dict(B=b, NH=nh, S=s, DHQK=d, DHV=d, chunk_size=a.chunk_size),
            "cpu_devices": a.cpu_devices,
            "burst": a.burst,
            "wall_ms": {t: med(x) for t, x in wall.items()},
            "cpu_ms": {t: med(x) for t, x in cpu.items()},
            "new_over_base": {
                f"{m}_{kind}": med(src[f"new_{m}"]) / med(src[f"base_{m}"])
                for m in kinds
                for kind, src in (("wall", wall), ("cpu", cpu))
            },
            "max_abs_diff": {m: diff(outs[f"base_{m}"], outs[f"new_{m}"]) for m in kinds},
            "matmul_peak_gflop_per_s": peak,
            "loadavg": {"before": load_before, "after": loadavg()},
        }
        print(json.dumps(row))


if __name__ == "__main__":
    main()
