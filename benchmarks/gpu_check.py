"""The Pallas kernels on a real GPU: correctness against float32 truth, then time, in one prepared run.

On the GPU machine, all sections, each in its own process under a time limit (``gpu_check.sh``)::

    bash benchmarks/gpu_check.sh RESULTS_DIR            # about 7-9 minutes on an H200
    bash benchmarks/gpu_check.sh RESULTS_DIR --smoke    # tiny shapes; on a CPU the kernels are interpreted

One section by hand::

    python benchmarks/gpu_check.py --section mlstm [--smoke]

Sections (one JSON line per case on stdout):

* ``env``: devices, versions, and the two ceilings measured now: a bfloat16 8192x8192x8192 matmul on
  random data (median of 10) and a device copy (bytes read + written over time, median of 10).
* ``mlstm``: ``pallas_gpu`` mLSTM (``pallas_kernels.mlstm.gpu``) against float32 truth, the XLA
  chunkwise form with float32 inputs at ``Precision.HIGHEST``, on h, the final state and every
  gradient (q, k, v, i, f and the initial state) of a VJP with random cotangents. B=1, NH=2,
  DHQK=128, DHV=256, an initial state; S=2048 (gates normal and extreme: pre-activations from
  +-30, input-gate spikes of +100, two f=-inf resets) and S=8192 (normal); q, k, v in bfloat16 and
  float32. The XLA form in the same dtype at default precision is measured against the same truth
  (``xla_rel``), so a kernel error can be read against the error the XLA form itself makes.
* ``slstm``: ``pallas_gpu`` sLSTM (``pallas_kernels.slstm.gpu``, float32 and bfloat16 recurrent
  matmuls) against float32 truth (``ops.slstm_scan`` at ``Precision.HIGHEST``), h, final state and
  gradients, B=16, S=1024, NH=4, DH in 64, 128, 256, an initial state; then forward and
  forward+backward time of the kernel and of the XLA scan at the same shapes.
* ``train``: one trainer step (``train.step.jit_train_step``: forward, loss, backward, clip, AdamW)
  of the 125M xLSTM[7:1] preset (``configs/pretrain_xlstm71_125m.yaml``: bfloat16 compute, remat)
  at B=16, S=2048, vocab 50304, with ``backend``/``slstm_backend`` = (chunkwise, scan) and
  (pallas_gpu, pallas_gpu): compile time, median step time, tokens/s, MFU against the vendor
  bf16 peak (989 TFLOP/s) with the XLA step's model FLOPs (``train.step.model_flops``) for both.
* ``tune``: ``pallas_gpu`` mLSTM time with other tiles, warps and stages (``TUNE_BLOCKS``) at S=8192,
  65,536 tokens, NH=16, DHQK=128, DHV=256, bfloat16.

Relative errors are ``max|x - truth| / max|truth|`` per array (``rel``; ``worst`` is the largest
over the arrays of a case). ``ok``: every array finite and within the dtype's tolerance
(``TOLERANCES``) or within twice the XLA form's own error in the same dtype.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from bench_kernels import time_calls
from xlstm_jax import ops

# (forward, gradient) tolerances on rel, per dtype of the matmul operands.
TOLERANCES = {"float32": (1e-4, 1e-3), "bfloat16": (2e-2, 5e-2)}
H200_BF16_PEAK = 989e12  # vendor dense bf16 figure (train/metrics.py uses the same)


def emit(rec: dict) -> None:
    print(json.dumps(rec), flush=True)


def _on_gpu() -> bool:
    return jax.default_backend() in ("gpu", "cuda", "rocm")


def median_ms(fn, args, reps: int, warmup: int = 2) -> float:
    return time_calls(fn, args, reps, warmup)["median_ms"]


def rel_errors(actual, truth, names) -> dict[str, float]:
    """{name: max|a - t| / max|t|} over matching pytrees flattened in ``names`` order (inf if non-finite)."""
    out = {}
    for name, a, t in zip(names, jax.tree.leaves(actual), jax.tree.leaves(truth), strict=True):
        a, t = np.asarray(a, np.float64), np.asarray(t, np.float64)
        if not np.all(np.isfinite(a)):
            out[name] = float("inf")
            continue
        scale = float(np.max(np.abs(t))) if t.size else 0.0
        out[name] = float(np.max(np.abs(a - t)) / scale) if scale > 0 else float(np.max(np.abs(a)))
    return out


def judge(kernel: dict, xla: dict, dtype: str, n_fwd: int) -> bool:
    """Every array finite and within tolerance, or within twice the XLA form's error in the same dtype."""
    fwd_tol, grad_tol = TOLERANCES[dtype]
    for j, (name, err) in enumerate(kernel.items()):
        tol = fwd_tol if j < n_fwd else grad_tol
        if not np.isfinite(err) or (err > tol and err > 2 * xla[name]):
            return False
    return True


def vjp_fn(fn):
    """jit of (args, state, cot) -> ((h, final state), (d args, d initial state))."""

    def run(args, state, cot):
        out, pullback = jax.vjp(lambda a, s: fn(*a, initial_state=s), args, state)
        return out, pullback(cot)

    return jax.jit(run)


def forward_fn(fn):
    """jit of (args, state) -> h."""
    return jax.jit(lambda args, state: fn(*args, initial_state=state)[0])


# ------------------------------------------------------------------------------------------ env


def section_env(smoke: bool) -> None:
    dev = jax.devices()[0]
    rec = {"section": "env", "jax": jax.__version__, "python": platform.python_version(), "backend": dev.platform,
           "device_kind": dev.device_kind, "devices": len(jax.devices())}  # fmt: skip
    try:
        import jaxlib

        rec["jaxlib"] = jaxlib.__version__
    except Exception:  # noqa: BLE001 - informative only
        pass
    try:
        smi = "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader"
        rec["nvidia_smi"] = subprocess.run(smi.split(), capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        rec["nvidia_smi"] = f"unavailable: {err}"
    n = 256 if smoke else 8192
    a, b = (jax.random.normal(jax.random.key(j), (n, n), jnp.bfloat16) for j in (1, 2))
    mm = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32).astype(jnp.bfloat16))
    ms = median_ms(mm, (a, b), reps=10, warmup=3)
    rec["matmul_bf16_tflop_per_s"] = 2 * n**3 / (ms * 1e-3) / 1e12
    size = 1 << (16 if smoke else 30)  # float32 elements: 4 GiB read + 4 GiB written on a GPU
    x = jax.random.normal(jax.random.key(3), (size,), jnp.float32)
    add = jax.jit(lambda x: x + 1.0)
    ms = median_ms(add, (x,), reps=10, warmup=3)
    rec["copy_gb_per_s"] = 2 * 4 * size / (ms * 1e-3) / 1e9
    emit(rec)


# ------------------------------------------------------------------------------------------ mLSTM

MLSTM_NAMES = ("h", "c", "n", "m", "dq", "dk", "dv", "di", "df", "dc0", "dn0", "dm0")


def mlstm_case(seed: int, b: int, nh: int, s: int, dhqk: int, dhv: int, gates: str):
    """(args, initial state, cotangents) as float32 numpy: q, k, v, i, f; c, n, m; dh, (dc, dn, dm)."""
    rng = np.random.default_rng(seed)
    q, k = (rng.normal(size=(b, nh, s, dhqk)) for _ in range(2))
    v = rng.normal(size=(b, nh, s, dhv))
    if gates == "normal":
        i, f = rng.normal(size=(b, nh, s)), rng.normal(size=(b, nh, s)) + 3.0
    else:  # extreme: as tests/helpers.py mlstm_inputs(gates="extreme"), plus two exact resets
        i, f = rng.uniform(-30, 30, size=(b, nh, s)), rng.uniform(-30, 30, size=(b, nh, s))
        f[..., s // 4 : s // 4 + 6] = -30.0
        i[..., s // 2 : s // 2 + 5] = 30.0
        i[..., 3 :: max(s // 3, 1)] = 100.0
        f[..., [s // 5, s - 2]] = -np.inf
    state = (rng.normal(size=(b, nh, dhqk, dhv)), rng.normal(size=(b, nh, dhqk)), rng.uniform(-1, 1, size=(b, nh)))
    cot = (rng.normal(size=(b, nh, s, dhv)), tuple(rng.normal(size=x.shape) for x in state))
    f32 = partial(np.asarray, dtype=np.float32)
    return tuple(map(f32, (q, k, v, i, f))), tuple(map(f32, state)), (f32(cot[0]), tuple(map(f32, cot[1])))


def section_mlstm(smoke: bool) -> None:
    from xlstm_jax.pallas_kernels.mlstm.gpu import mlstm_chunkwise_gpu

    interpret = not _on_gpu()
    if smoke:
        b, nh, dhqk, dhv, chunk, cases = 1, 1, 16, 32, 16, [(64, "normal"), (64, "extreme")]
    else:
        b, nh, dhqk, dhv, chunk, cases = 1, 2, 128, 256, 64, [(2048, "normal"), (2048, "extreme"), (8192, "normal")]
    truth_fn = vjp_fn(partial(ops.mlstm_chunkwise, chunk_size=chunk))
    xla_fn = vjp_fn(partial(ops.mlstm_chunkwise, chunk_size=chunk))
    kernel_fn = vjp_fn(partial(mlstm_chunkwise_gpu, chunk_size=chunk, interpret=interpret))
    for s, gates in cases:
        args, state, cot = mlstm_case(s, b, nh, s, dhqk, dhv, gates)
        for dtype in ("bfloat16", "float32"):
            rec = {"section": "mlstm", "B": b, "NH": nh, "S": s, "DHQK": dhqk, "DHV": dhv, "chunk": chunk,
                   "gates": gates, "dtype": dtype, "initial_state": True}  # fmt: skip
            try:
                dt = jnp.dtype(dtype)
                low = (*(jnp.asarray(x, dt) for x in args[:3]), *map(jnp.asarray, args[3:]))
                high = tuple(jnp.asarray(x, jnp.float32) for x in low)  # the same (rounded) inputs in float32
                st = ops.MLSTMState(*map(jnp.asarray, state))
                cot_low = (jnp.asarray(cot[0], dt), ops.MLSTMState(*map(jnp.asarray, cot[1])))
                cot_high = (jnp.asarray(cot_low[0], jnp.float32), cot_low[1])
                with jax.default_matmul_precision("highest"):
                    truth = truth_fn(high, st, cot_high)
                t0 = time.perf_counter()
                kernel = jax.block_until_ready(kernel_fn(low, st, cot_low))
                rec["kernel_first_call_s"] = round(time.perf_counter() - t0, 2)
                xla = xla_fn(low, st, cot_low)
                rec["kernel_rel"] = rel_errors(kernel, truth, MLSTM_NAMES)
                rec["xla_rel"] = rel_errors(xla, truth, MLSTM_NAMES)
                rec["worst"] = max(rec["kernel_rel"].values())
                rec["ok"] = judge(rec["kernel_rel"], rec["xla_rel"], dtype, n_fwd=4)
            except Exception as err:  # report and go on: one failing case must not hide the others
                rec["error"] = f"{type(err).__name__}: {err}"[:800]
                rec["ok"] = False
            emit(rec)


# ------------------------------------------------------------------------------------------ sLSTM

SLSTM_NAMES = ("h", "h_T", "c_T", "n_T", "m_T", "dgates", "dR", "dbias", "dh0", "dc0", "dn0", "dm0")


def slstm_case(seed: int, b: int, s: int, nh: int, dh: int):
    rng = np.random.default_rng(seed)
    f32 = partial(jnp.asarray, dtype=jnp.float32)
    args = (f32(rng.normal(size=(b, s, 4, nh, dh))), f32(rng.normal(size=(nh, dh, 4, dh)) / np.sqrt(dh)),
            f32(rng.normal(size=(nh, 4, dh))))  # fmt: skip
    shape = (b, nh, dh)
    state = ops.SLSTMState(f32(rng.normal(size=shape)), f32(rng.normal(size=shape)),
                           f32(rng.uniform(0.5, 2.0, size=shape)), f32(rng.uniform(-1, 1, size=shape)))  # fmt: skip
    cot = (f32(rng.normal(size=(b, s, nh, dh))), ops.SLSTMState(*(f32(rng.normal(size=shape)) for _ in range(4))))
    return args, state, cot


def section_slstm(smoke: bool) -> None:
    from xlstm_jax.pallas_kernels.slstm.config import default_blocks
    from xlstm_jax.pallas_kernels.slstm.gpu import slstm_scan_gpu

    interpret = not _on_gpu()
    b, s, nh, dhs, reps = (16, 8, 1, (16, 32), 1) if smoke else (16, 1024, 4, (64, 128, 256), 10)
    scan_vjp = vjp_fn(ops.slstm_scan)
    for dh in dhs:
        args, state, cot = slstm_case(dh, b, s, nh, dh)
        with jax.default_matmul_precision("highest"):
            truth = scan_vjp(args, state, cot)
        xla_rel = rel_errors(scan_vjp(args, state, cot), truth, SLSTM_NAMES)
        variants = {"scan": ops.slstm_scan}
        for rdt in ("float32", "bfloat16"):
            blocks = dataclasses.replace(default_blocks("gpu", b, dh), recurrent_dtype=rdt)
            variants[f"pallas_gpu_{rdt}"] = partial(slstm_scan_gpu, blocks=blocks, interpret=interpret)
        for name, fn in variants.items():
            rec = {"section": "slstm", "variant": name, "B": b, "S": s, "NH": nh, "DH": dh, "initial_state": True}
            try:
                grads = vjp_fn(fn)
                t0 = time.perf_counter()
                out = jax.block_until_ready(grads(args, state, cot))
                rec["first_call_s"] = round(time.perf_counter() - t0, 2)
                rec["rel"] = rel_errors(out, truth, SLSTM_NAMES)
                rec["worst"] = max(rec["rel"].values())
                dtype = "bfloat16" if name.endswith("bfloat16") else "float32"
                rec["ok"] = judge(rec["rel"], xla_rel, dtype, n_fwd=5)
                fwd = forward_fn(fn)
                rec["fwd_ms"] = median_ms(fwd, (args, state), reps)
                rec["fwdbwd_ms"] = median_ms(grads, (args, state, cot), reps)
            except Exception as err:
                rec["error"] = f"{type(err).__name__}: {err}"[:800]
                rec["ok"] = False
            emit(rec)


# ------------------------------------------------------------------------------------------ train


def train_step_program(backend: str, slstm_backend: str, batch: int, seq_len: int, smoke: bool):
    """(model FLOPs, call) of the trainer's jitted step for the 125M xLSTM[7:1] preset, compiled."""
    from flax import nnx

    from xlstm_jax.train.config import MeshConfig, OptimConfig, build_dataclass, load_config
    from xlstm_jax.train.mesh import batch_sharding, make_mesh, replicated
    from xlstm_jax.train.models import build_model, model_config
    from xlstm_jax.train.optim import make_optimizer
    from xlstm_jax.train.step import TrainState, jit_train_step, model_flops

    overrides = [f"model.backend={backend}", f"model.slstm_backend={slstm_backend}"]
    if smoke:
        overrides += ["model.embedding_dim=64", "model.num_blocks=2", "model.slstm_at=[1]", "model.vocab_size=256"]
    cfg = load_config("pretrain_xlstm71_125m", overrides)
    run = cfg["train"]
    vocab = cfg["model"]["vocab_size"]
    model_cfg = model_config(cfg["model"], vocab_size=vocab, dtype=run["compute_dtype"], param_dtype="float32",
                             remat=run["remat"], remat_policy=run.get("remat_policy", "full"))  # fmt: skip
    graphdef, params, rest = nnx.split(build_model(model_cfg, 0), nnx.Param, ...)
    tx = make_optimizer(build_dataclass(OptimConfig, cfg["optim"], "optim."), 1000, params)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, (batch, seq_len + 1))
    ones = partial(jnp.ones, (batch, seq_len))
    data = {"inputs": jnp.asarray(tokens[:, :-1], jnp.int32), "targets": jnp.asarray(tokens[:, 1:], jnp.int32),
            "loss_mask": ones(jnp.float32), "segment_ids": ones(jnp.int32)}  # fmt: skip
    mesh_cfg = MeshConfig(data=1)
    mesh = make_mesh(mesh_cfg, jax.devices()[:1])
    state_sharding = jax.tree.map(lambda _: replicated(mesh), state)
    state = jax.device_put(state, state_sharding)
    data = jax.device_put(data, batch_sharding(mesh, mesh_cfg.rules))
    step = jit_train_step(graphdef, rest, tx, 1, state_sharding, batch_sharding(mesh, mesh_cfg.rules))
    flops = model_flops(graphdef, rest, state.params, data)
    compiled = step.lower(state, data).compile()
    box = [state]

    def call():
        box[0], metrics = compiled(box[0], data)
        return metrics

    return flops, call


def section_train(smoke: bool) -> None:
    batch, seq_len, reps = (2, 64, 1) if smoke else (16, 2048, 5)
    xla_flops = None  # the XLA step's count for both: a kernel's dynamic loops count once
    for backend, slstm_backend in (("chunkwise", "scan"), ("pallas_gpu", "pallas_gpu")):
        rec = {"section": "train", "preset": "pretrain_xlstm71_125m", "backend": backend,
               "slstm_backend": slstm_backend, "B": batch, "S": seq_len}  # fmt: skip
        try:
            t0 = time.perf_counter()
            flops, call = train_step_program(backend, slstm_backend, batch, seq_len, smoke)
            rec["compile_s"] = round(time.perf_counter() - t0, 1)
            rec["model_flops"] = flops
            if backend == "chunkwise":
                xla_flops = flops
            metrics = jax.device_get(call())
            rec["first_loss"] = float(metrics["loss"])
            ms = median_ms(call, (), reps)
            rec["step_ms"] = ms
            rec["tokens_per_s"] = batch * seq_len / (ms * 1e-3)
            if xla_flops:
                rec["mfu_vs_989_tflops"] = xla_flops / (ms * 1e-3) / H200_BF16_PEAK
            rec["last_loss"] = float(jax.device_get(call())["loss"])
        except Exception as err:
            rec["error"] = f"{type(err).__name__}: {err}"[:800]
        emit(rec)


# ------------------------------------------------------------------------------------------ tune

# (chunk_size, block_q, block_kv, block_dqk, block_dv, num_warps, num_stages); the first is the default.
TUNE_BLOCKS = (
    (64, 64, 64, 64, 128, 4, 2),
    (64, 64, 64, 64, 128, 8, 2),
    (64, 64, 64, 64, 64, 4, 2),
    (64, 64, 64, 64, 128, 4, 3),
    (128, 64, 64, 64, 128, 4, 2),
    (128, 64, 64, 64, 128, 8, 2),
)


def tiled_h(q, k, v, i, f, *, blocks, interpret):
    from xlstm_jax.pallas_kernels.mlstm.gpu import mlstm_chunkwise_gpu

    return mlstm_chunkwise_gpu(q, k, v, i, f, blocks=blocks, interpret=interpret)[0]


def summed(h_fn, *args):
    return jnp.sum(h_fn(*args).astype(jnp.float32))


def section_tune(smoke: bool) -> None:
    """``pallas_gpu`` mLSTM forward and forward+backward time for each of ``TUNE_BLOCKS`` at S=8192,
    65,536 tokens, NH=16, DHQK=128, DHV=256, bfloat16; h compared with the default tiles' h."""
    from xlstm_jax.pallas_kernels.mlstm.config import MLSTMBlocks
    from xlstm_jax.pallas_kernels.mlstm.gpu import choose_blocks

    interpret = not _on_gpu()
    b, nh, s, dhqk, dhv, reps = (1, 1, 64, 16, 32, 1) if smoke else (8, 16, 8192, 128, 256, 10)
    args, _, _ = mlstm_case(0, b, nh, s, dhqk, dhv, "normal")
    xs = (*(jnp.asarray(x, jnp.bfloat16) for x in args[:3]), *map(jnp.asarray, args[3:]))
    ref = None
    for tiles in TUNE_BLOCKS:
        if smoke:
            tiles = (16, 16, 16, 16, 16, *tiles[5:])
        rec = {"section": "tune", "blocks": tiles, "B": b, "NH": nh, "S": s}
        try:
            blocks = choose_blocks(dhqk, dhv, None, MLSTMBlocks(*tiles), interpret=interpret)
            h_fn = partial(tiled_h, blocks=blocks, interpret=interpret)
            fwd = jax.jit(h_fn)
            grad = jax.jit(jax.grad(partial(summed, h_fn), argnums=(0, 1, 2, 3, 4)))
            h = fwd(*xs).astype(jnp.float32)
            ref = h if ref is None else ref
            rec["max_err_vs_default"] = float(jnp.max(jnp.abs(h - ref)) / jnp.max(jnp.abs(ref)))
            rec["fwd_ms"] = median_ms(fwd, xs, reps)
            rec["fwdbwd_ms"] = median_ms(grad, xs, reps)
        except Exception as err:
            rec["error"] = f"{type(err).__name__}: {err}"[:800]
        emit(rec)


SECTIONS = {"env": section_env, "mlstm": section_mlstm, "slstm": section_slstm, "train": section_train,
            "tune": section_tune}  # fmt: skip


def summary(path: str) -> None:
    """A short table of a results file (the end of the device tool's reply)."""
    for line in open(path):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        sec = r.get("section") or r.get("case") or r.get("bench")
        if sec == "done":
            print(f"-- {r['name']}: rc {r['rc']} in {r['wall_s']} s", flush=True)
            continue
        keys = ("blocks", "max_err_vs_default", "S", "DH", "gates", "dtype", "variant", "backend", "ok", "worst",
                "fwd_ms", "fwdbwd_ms", "step_ms", "tokens_per_s", "mfu_vs_989_tflops", "matmul_bf16_tflop_per_s",
                "copy_gb_per_s", "error", "skipped")  # fmt: skip
        short = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items() if k in keys}
        if r.get("bench") == "summary":
            print("summary", json.dumps(r.get("ratios")), flush=True)
            continue
        if r.get("bench") == "env" or r.get("section") == "env":
            short.update({k: r[k] for k in ("device_kind", "jax") if k in r})
        if r.get("bench") == "mlstm_kernel":
            short.update({k: round(r[k]["median_ms"], 3) for k in ("fwd", "fwdbwd") if k in r})
            short.update({k: r[k] for k in ("case", "S", "max_err_vs_xla") if k in r})
        if "error" in short:
            short["error"] = str(short["error"])[:200]
        print(sec, json.dumps(short), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--section", choices=sorted(SECTIONS))
    p.add_argument("--smoke", action="store_true", help="tiny shapes (kernels interpreted on a CPU)")
    p.add_argument("--summary", metavar="JSONL", help="print a short table of a results file and exit")
    args = p.parse_args(argv)
    if args.summary:
        summary(args.summary)
        return
    if args.section is None:
        p.error("--section is required unless --summary is given")
    SECTIONS[args.section](args.smoke)


if __name__ == "__main__":
    sys.exit(main())
