"""Interleaved sweep of ``mlstm_chunkwise``'s chunk size in one process (the evidence for ``backends``'s
per-platform chunk size).

Run from the repository root::

    python benchmarks/chunk_size_sweep.py                                  # S=4096 B=1 and S=1024 B=4
    python benchmarks/chunk_size_sweep.py --shapes 4096x4,1024x16 --chunks 64,128,256 --reps 9

For every shape (``SxB``, NH=4, DHQK=DHV=64, float32) and chunk size, the forward (h) and the
forward+backward (``jax.value_and_grad`` of ``sum(h * ct)`` wrt q, k, v, i, f) are compiled once; all
programs of a shape are then called in turn ``--reps`` times (order reversed every other round), with
a jitted 2048² float32 matmul after every round (the same-run peak). Medians of wall and process CPU
time (``time.process_time``). One JSON line per shape: ms per chunk size, the ratio to the first
chunk size, the forward's share of the matmul peak (``bench_ops.flops_chunkwise_fwd``: its L² terms
grow with L, so a larger chunk raises this share without running faster), ``/proc/loadavg``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from bench_ops import flops_chunkwise_fwd

from _timing import interleave, loadavg


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="4096x1,1024x4", help="comma-separated SxB")
    p.add_argument("--chunks", default="64,128,256")
    p.add_argument("--reps", type=int, default=9)
    a = p.parse_args(argv)
    import jax
    import jax.numpy as jnp

    from xlstm_jax import ops

    chunks = [int(c) for c in a.chunks.split(",")]
    rng = np.random.default_rng(0)
    for shape in a.shapes.split(","):
        s, b = (int(x) for x in shape.split("x"))
        nh, d = 4, 64
        load_before = loadavg()
        q, k, v, ct = (jnp.asarray(rng.standard_normal((b, nh, s, d)), jnp.float32) for _ in range(4))
        i = jnp.asarray(rng.standard_normal((b, nh, s)), jnp.float32)
        f = jnp.asarray(rng.standard_normal((b, nh, s)) + 3.0, jnp.float32)
        args = (q, k, v, i, f)
        progs = {}
        for c in chunks:
            h = lambda *x, c=c: ops.mlstm_chunkwise(*x, chunk_size=c)[0]
            loss = lambda *x, h=h, ct=ct: jnp.sum(h(*x) * ct)
            progs[f"fwd_{c}"] = jax.jit(h).lower(*args).compile()
            progs[f"fwdbwd_{c}"] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4))).lower(*args).compile()
        outs = {t: jax.block_until_ready(prog(*args)) for t, prog in progs.items()}
        wall, cpu, peak = interleave({t: (lambda p=p, args=args: p(*args)) for t, p in progs.items()}, a.reps)
        med = lambda xs: float(np.median(xs)) * 1e3
        first = chunks[0]
        row = {
            "bench": "chunk_size_sweep",
            "shape": dict(B=b, NH=nh, S=s, DHQK=d, DHV=d),
            "wall_ms": {t: med(x) for t, x in wall.items()},
            "cpu_ms": {t: med(x) for t, x in cpu.items()},
            "over_first_chunk_cpu": {t: med(cpu[t]) / med(cpu[t.rsplit("_", 1)[0] + f"_{first}"]) for t in progs},
            "fwd_frac_of_matmul_peak_wall": {
                c: flops_chunkwise_fwd(b, nh, s, d, d, c) / (med(wall[f"fwd_{c}"]) * 1e-3) / 1e9 / peak for c in chunks
            },
            "max_abs_diff_h_vs_first": {
                c: float(jnp.max(jnp.abs(outs[f"fwd_{c}"] - outs[f"fwd_{first}"]))) for c in chunks
            },
            "matmul_peak_gflop_per_s": peak,
            "loadavg": {"before": load_before, "after": loadavg()},
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
