"""Does XLA:CPU run the chunkwise mLSTM on more than one core? Whole call vs the heads split in two.

Run from the repository root, once per XLA_FLAGS setting to compare::

    python benchmarks/chunkwise_two_cores.py
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= python benchmarks/chunkwise_two_cores.py
    XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=true python benchmarks/chunkwise_two_cores.py

Forward of ``mlstm_chunkwise`` (B=1, NH=4, S=4096, DHQK=DHV=64, chunk 64, float32), compiled twice:
``whole`` (one call) and ``split`` (two independent calls on heads 0-1 and 2-3 in one jit, h
concatenated: two chains of ops XLA's CPU runtime may run side by side). Both are called in turn
``--reps`` times (order reversed every other round). One JSON line: medians of wall and process CPU
time (``time.process_time``; CPU time above wall time means more than one core was busy), their ratio,
the largest difference between the two outputs, XLA_FLAGS and ``/proc/loadavg``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from _timing import interleave


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=11)
    p.add_argument("--seq-len", type=int, default=4096)
    a = p.parse_args(argv)
    import jax
    import jax.numpy as jnp

    from xlstm_jax import ops

    b, nh, s, d = 1, 4, a.seq_len, 64
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((b, nh, s, d)), jnp.float32) for _ in range(3))
    i = jnp.asarray(rng.standard_normal((b, nh, s)), jnp.float32)
    f = jnp.asarray(rng.standard_normal((b, nh, s)) + 3.0, jnp.float32)
    args = (q, k, v, i, f)

    def whole(*x):
        return ops.mlstm_chunkwise(*x, chunk_size=64)[0]

    def split(*x):
        halves = (slice(0, nh // 2), slice(nh // 2, nh))
        return jnp.concatenate([whole(*(t[:, sl] for t in x)) for sl in halves], axis=1)

    load_before = Path("/proc/loadavg").read_text().split()[:3]
    progs = {name: jax.jit(fn).lower(*args).compile() for name, fn in (("whole", whole), ("split", split))}
    outs = {name: jax.block_until_ready(prog(*args)) for name, prog in progs.items()}
    wall, cpu, _ = interleave({n: (lambda p=p: p(*args)) for n, p in progs.items()}, a.reps, peak=False)
    med = lambda xs: float(np.median(xs)) * 1e3
    timing = lambda w, c: {"wall_ms": med(w), "cpu_ms": med(c), "cpu_over_wall": med(c) / med(w)}
    row = {
        "bench": "chunkwise_two_cores",
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "max_abs_diff": float(jnp.max(jnp.abs(outs["whole"] - outs["split"]))),
        **{name: timing(wall[name], cpu[name]) for name in progs},
        "loadavg": {"before": load_before, "after": Path("/proc/loadavg").read_text().split()[:3]},
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
