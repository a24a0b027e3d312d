"""Interleaved A/B of ``mlstm_chunkwise`` in one process: the ops of an older commit against the working tree.

Run from the repository root (a git checkout)::

    python benchmarks/ab_chunkwise.py --base 2f19785            # S=4096, B=1, NH=4, D=64, chunk 64
    python benchmarks/ab_chunkwise.py --base HEAD~1 --reps 15
    python benchmarks/ab_chunkwise.py --base HEAD~1 --batch 8 --seq-len 256 --head-dim 128   # profile_step.py's cell

The base commit's ``xlstm_jax/ops`` is extracted with ``git archive`` into a temporary folder and
imported as the package ``ops_base`` (the ops import only jax, numpy and ``xlstm_jax._validation``
outside themselves). Both versions' forward (h) and forward+backward (``jax.value_and_grad`` of
``sum(h * ct)`` wrt q, k, v, i, f) are compiled once and called alternately, ``--reps`` times each,
with a jitted 2048² float32 matmul after every round (the same-run peak). Wall time and process CPU
time (``time.process_time``, less sensitive to other processes' load) are reported as medians.

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
    a = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ab_chunkwise_") as tmp:
        extract_ops(a.base, Path(tmp))
        sys.path.insert(0, tmp)
        import jax
        import jax.numpy as jnp
        import ops_base

        from xlstm_jax import ops as ops_new

        load_before = loadavg()
        b, nh, s, d = a.batch, a.heads, a.seq_len, a.head_dim
        rng = np.random.default_rng(0)
        q, k, v, ct = (jnp.asarray(rng.standard_normal((b, nh, s, d)), jnp.float32) for _ in range(4))
        i = jnp.asarray(rng.standard_normal((b, nh, s)), jnp.float32)
        f = jnp.asarray(rng.standard_normal((b, nh, s)) + 3.0, jnp.float32)
        args = (q, k, v, i, f)
        progs = {}
        for tag, mod in (("base", ops_base), ("new", ops_new)):
            h = lambda *x, mod=mod: mod.mlstm_chunkwise(*x, chunk_size=a.chunk_size)[0]
            loss = lambda *x, h=h: jnp.sum(h(*x) * ct)
            progs[f"{tag}_fwd"] = jax.jit(h).lower(*args).compile()
            progs[f"{tag}_fwdbwd"] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4))).lower(*args).compile()
        outs = {t: jax.block_until_ready(c(*args)) for t, c in progs.items()}
        diff = lambda x, y: max(float(jnp.max(jnp.abs(u - w))) for u, w in zip(jax.tree.leaves(x), jax.tree.leaves(y)))
        wall, cpu, peak = interleave({t: (lambda c=c: c(*args)) for t, c in progs.items()}, a.reps)
        med = lambda xs: float(np.median(xs)) * 1e3
        row = {
            "bench": "ab_chunkwise",
            "base": a.base,
            "shape": dict(B=b, NH=nh, S=s, DHQK=d, DHV=d, chunk_size=a.chunk_size),
            "wall_ms": {t: med(x) for t, x in wall.items()},
            "cpu_ms": {t: med(x) for t, x in cpu.items()},
            "new_over_base": {
                f"{m}_{kind}": med(src[f"new_{m}"]) / med(src[f"base_{m}"])
                for m in ("fwd", "fwdbwd")
                for kind, src in (("wall", wall), ("cpu", cpu))
            },
            "max_abs_diff": {
                "fwd": diff(outs["base_fwd"], outs["new_fwd"]),
                "fwdbwd": diff(outs["base_fwdbwd"], outs["new_fwdbwd"]),
            },
            "matmul_peak_gflop_per_s": peak,
            "loadavg": {"before": load_before, "after": loadavg()},
        }
        print(json.dumps(row))


if __name__ == "__main__":
    main()
