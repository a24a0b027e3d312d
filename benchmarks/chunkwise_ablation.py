"""Where the chunkwise forward's time goes on one core: the program with one part taken out at a time.

Run from the repository root::

    python benchmarks/chunkwise_ablation.py               # S=4096, 2 heads (one core's share of bench_ops' 4), D=64
    python benchmarks/chunkwise_ablation.py --profile     # also XLA's per-op profile of the real program

XLA's per-op profile of a program on two cores double-counts: ops that share a core each count the
shared time, and the summed op time came out at 2.4x the wall time for this forward (session 31 in
``benchmarks/RESULTS.md``). This script removes that ambiguity in two ways:

1. It runs on one core. Before JAX starts, the process pins itself to one core
   (``sched_setaffinity``) and sets ``--xla_cpu_multi_thread_eigen=false``. The profile (``--profile``)
   then comes closer to the wall time, but XLA's runtime still interleaves independent ops on its
   threads, so their op times still overlap (7.65 ms of op time in a 6.18 ms call in one run, 13.0 in
   7.9 for the program before session 31).
2. So it measures each part by taking it out of the real program and timing what is left, compiled
   the same way (the difference is the part's cost in place, with the fusions XLA chose around it):

   * ``no_decay_exp``: the (L, L) decay matrix ``exp(logD - m)`` replaced by the constant causal
     mask (no log decay matrix, no exp);
   * ``trivial_stabilizers``: ``chunkwise_math.stabilizers`` replaced by zeros (no cumulative sums,
     no running max, no scan over chunks for the scales);
   * ``no_scan``: the recurrence over chunks (``scan_chunks``) replaced by "each chunk's own sum";
   * ``no_chunk_states``: no inter-chunk memory at all (no k vᵀ dot, no scan, and the q C dot
     multiplies zeros, which XLA folds away);
   * ``bare``: all of the above at once: the intra-chunk dots and the output's normalisation.

The replaced functions are the module globals of ``xlstm_jax.ops._chunkwise_fwd`` that
``_forward_chunks`` calls; every variant is compiled after ``jax.clear_caches()``. The outputs of the
variants are wrong by construction and are not checked; the real program's are
(``tests/test_mlstm_forms.py``). Inputs: ``dot_bound.chunkwise_inputs``. Variants are timed in
alternating rounds (``_timing.interleave``) of ``--burst`` back-to-back calls.

Output: one JSON line per variant (``bench="chunkwise_ablation"``: median wall and process CPU ms per
call, the difference to ``real``), and with ``--profile`` one line with the real program's top ops.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--heads", type=int, default=2, help="one core's share of bench_ops.py's 4 heads")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--burst", type=int, default=8, help="back-to-back calls per round")
    p.add_argument("--core", type=int, default=None, help="core to pin to (default: the last usable one)")
    p.add_argument("--profile", action="store_true", help="print XLA's per-op profile of the real program")
    a = p.parse_args(argv)

    core = sorted(os.sched_getaffinity(0))[-1] if a.core is None else a.core
    os.sched_setaffinity(0, {core})
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

    import jax
    import jax.numpy as jnp
    import numpy as np
    from dot_bound import chunkwise_inputs

    import _timing as T
    from xlstm_jax import ops
    from xlstm_jax.ops import _chunkwise_fwd as fwd
    from xlstm_jax.ops.chunkwise_math import Stabilizers

    b, nh, s, d, chunk = 1, a.heads, a.seq_len, a.head_dim, a.chunk_size
    args = tuple(map(jnp.asarray, chunkwise_inputs(b, nh, s, d)))
    real = {n: getattr(fwd, n) for n in ("stabilizers", "chunk_states", "intra_chunk", "scan_chunks")}

    def no_decay_exp(q, k, logf, i, st, resets=True):
        r = real["intra_chunk"](q, k, logf, i, st, resets)
        mask = jnp.broadcast_to(jnp.tril(jnp.ones((chunk, chunk), q.dtype)), r.decay.shape)
        return fwd.IntraChunk(r.q_scaled, mask, jnp.einsum("bhctd,bhcsd->bhcts", r.q_scaled, k) * mask, r.alpha)

    def trivial_stabilizers(logf, i, m0, resets=True):
        zeros = jnp.zeros(logf.shape, logf.dtype)
        return Stabilizers(zeros + i, zeros[..., 0], zeros[..., 0], zeros[..., 0], zeros)

    def no_scan(decay, xs, init, *, reverse=False, inline_chunks=fwd.INLINE_CHUNKS):
        return tuple(init), tuple(xs)

    def no_chunk_states(k, v, logf, st, c0, n0):
        c = jnp.zeros(k.shape[:3] + (k.shape[-1], v.shape[-1]), k.dtype)
        return c, c[..., 0], c0, n0

    variants = {
        "real": {},
        "no_decay_exp": {"intra_chunk": no_decay_exp},
        "trivial_stabilizers": {"stabilizers": trivial_stabilizers},
        "no_scan": {"scan_chunks": no_scan},
        "no_chunk_states": {"chunk_states": no_chunk_states},
        "bare": {"intra_chunk": no_decay_exp, "stabilizers": trivial_stabilizers, "chunk_states": no_chunk_states},
    }
    compiled = {}
    try:
        for name, patch in variants.items():
            for n, fn in real.items():
                setattr(fwd, n, patch.get(n, fn))
            jax.clear_caches()
            h = lambda *x: ops.mlstm_chunkwise(*x, chunk_size=chunk)[0]
            compiled[name] = jax.jit(h).lower(*args).compile()
    finally:
        for n, fn in real.items():
            setattr(fwd, n, fn)

    burst = lambda c: [c(*args) for _ in range(a.burst)]
    wall, cpu, _ = T.interleave({n: (lambda c=c: burst(c)) for n, c in compiled.items()}, a.rounds, peak=False)
    ms = lambda xs: float(np.median(xs)) * 1e3 / a.burst
    shape = dict(B=b, NH=nh, S=s, DHQK=d, DHV=d, chunk_size=chunk)
    for n in compiled:
        row = {"bench": "chunkwise_ablation", "variant": n, "shape": shape, "core": core}
        row |= {"wall_ms": ms(wall[n]), "cpu_ms": ms(cpu[n]), "wall_ms_less_than_real": ms(wall["real"]) - ms(wall[n])}
        print(json.dumps(row))
    if a.profile:
        from profile_step import op_self_times

        times = op_self_times(lambda: compiled["real"](*args), 5, "")
        top = sorted(times.items(), key=lambda kv: -kv[1])[:20]
        print(
            json.dumps(
                {
                    "bench": "chunkwise_ablation_profile",
                    "shape": shape,
                    "wall_ms": ms(wall["real"]),
                    "op_time_ms": sum(times.values()) * 1e3,
                    "top_ops_ms": {k: t * 1e3 for k, t in top},
                }
            )
        )


if __name__ == "__main__":
    main()
