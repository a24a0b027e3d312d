"""Chunkwise mLSTM kernels on an accelerator: forward and forward+backward time, side by side in one run.

The kernel benchmark, for a GPU (or TPU) machine::

    python benchmarks/bench_kernels.py                  # S in 2048, 8192, 32768 at 65,536 tokens per call
    python benchmarks/bench_kernels.py --seq 8192 --reps 20
    python benchmarks/bench_kernels.py --smoke          # tiny shapes; runs anywhere (CPU: kernels interpreted)

Shapes: B = tokens / S, NH=16, DHQK=128, DHV=256, bfloat16 inputs, chunk 64 (GPU) / 128 (TPU).
Cases (each skipped with a reason when it cannot run here):

* ``xla``: ``xlstm_jax.ops.mlstm_chunkwise`` (the slow twin);
* ``pallas``: ``pallas_kernels.mlstm.gpu`` on a GPU, ``.tpu`` on a TPU (``--smoke`` on CPU: interpreted);
* ``cudnn_attention``: ``jax.nn.dot_product_attention(implementation="cudnn")``, causal, NH=16, head
  dim 128 for q, k and v (cuDNN needs equal head dims), as the softmax-attention baseline;
* ``tfla_torch``: the official TFLA Triton kernels (``mlstm_kernels.torch ... triton_xl_chunk``, chunk
  128) in torch, on the same inputs (shared through DLPack), when torch with CUDA and ``mlstm_kernels``
  are installed.

Before timing, each fast path's h is compared with the XLA form's on the same inputs (max error
relative to max |h|). Prints one JSON line per case and a summary line with the ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from xlstm_jax import ops

CASES = ("xla", "pallas", "cudnn_attention", "tfla_torch")


def _accelerator() -> str:
    p = jax.default_backend()
    return "gpu" if p in ("gpu", "cuda", "rocm") else p


def _inputs(b, nh, s, dhqk, dhv, dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(keys[0], (b, nh, s, dhqk), dtype)
    k = jax.random.normal(keys[1], (b, nh, s, dhqk), dtype)
    v = jax.random.normal(keys[2], (b, nh, s, dhv), dtype)
    i = jax.random.normal(keys[3], (b, nh, s), jnp.float32)
    f = 3.0 + jax.random.normal(keys[4], (b, nh, s), jnp.float32)
    return q, k, v, i, f


def time_calls(fn, args, reps: int, warmup: int = 2) -> dict:
    """Median and fastest wall time (ms) of ``fn(*args)`` after ``warmup`` calls, each blocked on
    (a device synchronisation)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "reps": reps}


def _fwd_and_fwdbwd(h_fn, args):
    """Jitted forward (h) and forward+backward (gradients of sum(h) w.r.t. q, k, v, i, f)."""
    fwd = jax.jit(h_fn)
    loss = lambda *a: jnp.sum(h_fn(*a).astype(jnp.float32))
    fwdbwd = jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))
    return fwd, fwdbwd


def _jax_cases(accel: str, chunk: int, smoke: bool):
    cases = {"xla": lambda q, k, v, i, f: ops.mlstm_chunkwise(q, k, v, i, f, chunk_size=chunk)[0]}
    kernel_platform = accel if accel in ("gpu", "tpu") else ("gpu" if smoke else None)
    if kernel_platform is not None:
        interpret = accel == "cpu"
        if kernel_platform == "gpu":
            from xlstm_jax.pallas_kernels.mlstm.gpu import mlstm_chunkwise_gpu as kernel
        else:
            from xlstm_jax.pallas_kernels.mlstm.tpu import mlstm_chunkwise_tpu as kernel

        def pallas(q, k, v, i, f):
            return kernel(q, k, v, i, f, chunk_size=chunk, interpret=interpret)[0]

        cases["pallas"] = pallas
    return cases


def _attention(q, k, v):
    """Causal cuDNN attention on (B, NH, S, D) inputs."""
    t = lambda x: jnp.swapaxes(x, 1, 2)  # (B, S, NH, D)
    return jax.nn.dot_product_attention(t(q), t(k), t(v), is_causal=True, implementation="cudnn")


def _tfla_torch(xs, chunk, reps, ref):
    """The official TFLA kernels in torch on the same inputs ``xs`` (shared through DLPack):
    {fwd ms, fwdbwd ms, max error of h against ``ref`` relative to max |ref|}, or a reason string."""
    try:
        import torch
        from mlstm_kernels.torch.chunkwise.triton_xl_chunk import mlstm_chunkwise__xl_chunk
    except ImportError as err:
        return f"torch / mlstm_kernels not importable: {err}"
    if not torch.cuda.is_available():
        return "torch has no CUDA device"
    q, k, v, i, f = (torch.from_dlpack(x).clone() for x in xs)
    for x in (q, k, v, i, f):
        x.requires_grad_(True)
    with torch.no_grad():
        h = mlstm_chunkwise__xl_chunk(q, k, v, i, f, chunk_size=chunk).float()
        scale = float(jnp.max(jnp.abs(ref)))
        err = float((h - torch.from_dlpack(ref)).abs().max()) / scale

    def fwd():
        with torch.no_grad():
            return mlstm_chunkwise__xl_chunk(q, k, v, i, f, chunk_size=chunk)

    def fwdbwd():
        h = mlstm_chunkwise__xl_chunk(q, k, v, i, f, chunk_size=chunk)
        h.float().sum().backward()

    out = {}
    for name, fn in (("fwd", fwd), ("fwdbwd", fwdbwd)):
        for _ in range(2):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        out[name] = statistics.median(times)
    out["max_err_vs_xla"] = err
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=int, nargs="*", default=None)
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=CASES,
                        help="the cases to run (default: all); XLA's h is the reference either way")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 1 rep: checks that the script runs")
    args = parser.parse_args(argv)

    accel = _accelerator()
    if args.smoke:
        seqs, tokens, nh, dhqk, dhv, dtype, chunk, reps = [64], 128, 2, 16, 32, jnp.bfloat16, 16, 1
    else:
        seqs, tokens, nh, dhqk, dhv, dtype, reps = args.seq or [2048, 8192, 32768], args.tokens, 16, 128, 256, \
            jnp.bfloat16, args.reps  # fmt: skip
        chunk = 128 if accel == "tpu" else 64
    env = {"bench": "env", "jax": jax.__version__, "backend": accel, "devices": [str(d) for d in jax.devices()],
           "python": platform.python_version(), "smoke": args.smoke}  # fmt: skip
    print(json.dumps(env), flush=True)

    summary = {}
    for s in seqs:
        b = max(1, tokens // s)
        xs = _inputs(b, nh, s, dhqk, dhv, dtype)
        cases = _jax_cases(accel, chunk, args.smoke)
        ref = jax.jit(cases["xla"])(*xs).astype(jnp.float32)
        scale = float(jnp.max(jnp.abs(ref)))
        row = {}
        for name, fn in cases.items():
            if name not in args.cases:
                continue
            rec = {"bench": "mlstm_kernel", "case": name, "B": b, "NH": nh, "S": s, "DHQK": dhqk, "DHV": dhv,
                   "dtype": "bfloat16", "chunk": chunk}  # fmt: skip
            try:
                fwd, fwdbwd = _fwd_and_fwdbwd(fn, xs)
                rec["max_err_vs_xla"] = float(jnp.max(jnp.abs(fwd(*xs).astype(jnp.float32) - ref))) / scale
                rec["fwd"] = time_calls(fwd, xs, reps)
                rec["fwdbwd"] = time_calls(fwdbwd, xs, reps)
                row[name] = (rec["fwd"]["median_ms"], rec["fwdbwd"]["median_ms"])
            except Exception as err:  # report and go on: one failing case must not hide the others
                rec["error"] = f"{type(err).__name__}: {err}"[:500]
            print(json.dumps(rec), flush=True)
        if accel == "gpu" and "cudnn_attention" in args.cases:
            qa, ka, va = (jax.random.normal(jax.random.key(j), (b, nh, s, dhqk), dtype) for j in range(3))
            rec = {"bench": "mlstm_kernel", "case": "cudnn_attention", "B": b, "NH": nh, "S": s, "D": dhqk}
            try:
                fwd, fwdbwd = _fwd_and_fwdbwd(_attention, (qa, ka, va))
                rec["fwd"], rec["fwdbwd"] = time_calls(fwd, (qa, ka, va), reps), time_calls(fwdbwd, (qa, ka, va), reps)
                row["cudnn_attention"] = (rec["fwd"]["median_ms"], rec["fwdbwd"]["median_ms"])
            except Exception as err:
                rec["error"] = f"{type(err).__name__}: {err}"[:500]
            print(json.dumps(rec), flush=True)
        if accel == "gpu" and "tfla_torch" in args.cases:
            try:
                tfla = _tfla_torch(xs, 128, reps, ref)
            except Exception as err:  # the baseline failing must not stop the run
                tfla = f"failed: {type(err).__name__}: {err}"[:500]
            rec = {"bench": "mlstm_kernel", "case": "tfla_torch", "B": b, "NH": nh, "S": s, "chunk": 128}
            if isinstance(tfla, str):
                rec["skipped"] = tfla
            else:
                rec["fwd"], rec["fwdbwd"] = {"median_ms": tfla["fwd"]}, {"median_ms": tfla["fwdbwd"]}
                rec["max_err_vs_xla"] = tfla["max_err_vs_xla"]
                row["tfla_torch"] = (tfla["fwd"], tfla["fwdbwd"])
            print(json.dumps(rec), flush=True)
        summary[s] = row
    ratios = {}
    for s, row in summary.items():
        if "pallas" in row:
            ratios[s] = {f"{other}_over_pallas_fwdbwd": row[other][1] / row["pallas"][1] for other in row}
    print(json.dumps({"bench": "summary", "fwd_fwdbwd_ms": summary, "ratios": ratios}), flush=True)


if __name__ == "__main__":
    main()
