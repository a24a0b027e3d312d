"""Run every xLSTM cell form, check them against each other, print timings.

    python -m xlstm_jax.demo [--seq-len 1024] [--batch 2] [--heads 4] [--head-dim 64]

Needs nothing but JAX: inputs are random, references are the slow forms of the
same cells (the recurrent scan for mLSTM, a step-by-step loop for sLSTM).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from xlstm_jax.ops import mlstm_chunkwise, mlstm_parallel, mlstm_recurrent, slstm_scan, slstm_step


def _time(fn, *args, reps: int = 5) -> tuple[float, float]:
    """(compile + first run, median of ``reps`` runs) in seconds."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return first, float(np.median(times))


def _rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


_HEADER = f"{'form':<18}{'h err':>10}{'grad err':>10}{'compile s':>11}{'fwd ms':>9}{'fwd+bwd ms':>12}{'tok/s fwd':>12}"


def _row(name: str, h_err: float, g_err: str, first: float, fwd: float, fwdbwd: float, tokens: int) -> str:
    ms = f"{fwd * 1e3:>9.2f}{fwdbwd * 1e3:>12.2f}"
    return f"{name:<18}{h_err:>10.1e}{g_err:>10}{first:>11.2f}{ms}{tokens / fwd:>12.0f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=64)
    args = parser.parse_args(argv)
    b, nh, s, dh = args.batch, args.heads, args.seq_len, args.head_dim
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; B={b} NH={nh} S={s} DH={dh}")

    keys = jax.random.split(jax.random.key(0), 6)
    q, k, v = (jax.random.normal(kk, (b, nh, s, dh)) for kk in keys[:3])
    i = jax.random.normal(keys[3], (b, nh, s))
    f = jax.random.normal(keys[4], (b, nh, s)) + 3.0
    mlstm = {
        "mlstm_parallel": jax.jit(lambda *a: mlstm_parallel(*a)),
        "mlstm_chunkwise": jax.jit(lambda *a: mlstm_chunkwise(*a, chunk_size=args.chunk_size)[0]),
        "mlstm_recurrent": jax.jit(lambda *a: mlstm_recurrent(*a)[0]),
    }
    grads = {
        name: jax.jit(jax.grad(lambda *a, fn=fn: jnp.sum(fn(*a) ** 2), argnums=(0, 1, 2, 3, 4)))
        for name, fn in mlstm.items()
    }
    timings = {name: (*_time(fn, q, k, v, i, f), _time(grads[name], q, k, v, i, f)[1]) for name, fn in mlstm.items()}
    reference = mlstm["mlstm_recurrent"](q, k, v, i, f)
    reference_grads = grads["mlstm_recurrent"](q, k, v, i, f)
    print(_HEADER)
    for name, fn in mlstm.items():
        h_err = _rel_err(fn(q, k, v, i, f), reference)
        g_err = max(_rel_err(g, r) for g, r in zip(grads[name](q, k, v, i, f), reference_grads))
        print(_row(name, h_err, f"{g_err:.1e}", *timings[name], b * s))

    gates_x = jax.random.normal(keys[5], (b, s, 4, nh, dh))
    kernel = 0.1 * jax.random.normal(keys[0], (nh, dh, 4, dh))
    bias = jnp.zeros((nh, 4, dh))
    scan = jax.jit(lambda g: slstm_scan(g, kernel, bias)[0])
    step = jax.jit(lambda g, st: slstm_step(g, kernel, bias, st))
    first, fwd = _time(scan, gates_x)
    _, fwdbwd = _time(jax.jit(jax.grad(lambda g: jnp.sum(scan(g) ** 2))), gates_x)
    state, steps = None, []
    for t in range(s):
        h_t, state = step(gates_x[:, t], state)
        steps.append(h_t)
    h_err = _rel_err(scan(gates_x), jnp.stack(steps, axis=1))
    print(_row("slstm_scan", h_err, "", first, fwd, fwdbwd, b * s))
    print("errors: max |form - reference| / max |reference|; reference = mlstm_recurrent / a slstm_step loop")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
