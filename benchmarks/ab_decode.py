"""Interleaved A/B of the batch-1 decode step in one process: the model's own layout against its decode form.

Run from the repository root::

    python benchmarks/ab_decode.py                       # D=256 (profile_step.py's decode model)
    python benchmarks/ab_decode.py --dims 256 1024 --reps 15
    python benchmarks/ab_decode.py --profile             # also each program's ops per step

Model: ``xLSTMLarge`` (the xLSTM-7B architecture), ``--dims`` D, 4 blocks, 4 heads, vocab 1024,
float32, random weights (noise on every tensor so that the gates matter), batch 1 after a 64-token
prompt. Every program is ``xlstm_jax.generation``'s compiled decode loop (``_loop.decode``, greedy,
``--steps`` steps per call); they differ only in the module it runs:

* ``model``: the model itself (blocks stacked, one ``lax.scan`` over them, weight_mode "single"):
  the loop before the decode form (the decode form is switched off while tracing it);
* ``model_unrolled``: the same with ``scan_blocks=False`` (static slices of the stacked weights);
* ``per_block``: ``decode_form(model, fuse=False)``: one module per block, weights not fused;
* ``decode_form``: ``model.decode_form()``, what ``generate`` runs: per block, q/k/v/o, i/f and the
  FFN up-projections each one fused kernel.

Limits measured in the same rounds:

* ``floor_one_call``: ``profile_step.py``'s weight-read floor, one jitted call multiplying a batch-1
  vector by every weight matrix once (all parameters but the embedding table, reshaped to 2-D, and
  the embedding table transposed, as that script counts it);
* ``floor_loop``: the decode form's matrices (what one step must read: every block's kernels and the
  head), multiplied by a batch-1 vector in a ``fori_loop`` of ``--steps`` iterations, each depending
  on the last: the same read per step inside one compiled loop, without a model's other work;
* ``matmul``: a jitted float32 2048x2048 matmul (the same-run peak).

All programs are compiled first, then called in ``--reps`` rounds, one call each per round (order
reversed every other round). Medians of wall time and of process CPU time (``time.process_time``)
per step (per call for ``floor_one_call``). Greedy tokens of every variant are compared with the
first variant's (``tokens_equal_first``). ``--profile`` traces each decode program once more
(``jax.profiler``) and lists its ops per step: self time and the bytes of their operands (from the
compiled HLO).

Output: one JSON line per D (``bench="ab_decode"``), with ``/proc/loadavg`` before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import time
from pathlib import Path
from unittest import mock

import numpy as np
import profile_step

VOCAB, HEADS, BLOCKS, PROMPT = 1024, 4, 4, 64
VARIANTS = ("model", "model_unrolled", "per_block", "decode_form")


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def build_model(dim: int):
    import jax
    from flax import nnx

    from xlstm_jax.models.xlstm_large import xLSTMLarge, xLSTMLargeConfig

    model = xLSTMLarge(
        xLSTMLargeConfig(embedding_dim=dim, num_heads=HEADS, num_blocks=BLOCKS, vocab_size=VOCAB), rngs=nnx.Rngs(0)
    )
    graphdef, params = nnx.split(model)
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(1)
    leaves = [w + (0.02 * rng.standard_normal(w.shape)).astype(w.dtype) for w in leaves]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))


def variant(model, name: str):
    from xlstm_jax.models.xlstm_large._decode import decode_form

    if name == "model":
        return model
    if name == "model_unrolled":
        from flax import nnx

        graphdef, params = nnx.split(model)
        clone = nnx.merge(graphdef, params)
        clone.config = dataclasses.replace(model.config, scan_blocks=False)
        return clone
    return decode_form(model, fuse=name == "decode_form")


def decode_program(module, carry, settings, steps: int):
    """(compiled ``_loop.decode`` of ``module`` as given, call)."""
    import jax
    from flax import nnx

    from xlstm_jax.generation import _loop

    graphdef, params = nnx.split(module)
    fn = jax.jit(functools.partial(_loop.decode.__wrapped__, graphdef, steps=steps))
    with mock.patch.object(_loop, "decode_form", lambda m: m):  # run the module given, whatever its layout
        compiled = fn.lower(params, carry, settings).compile()
    return compiled, lambda: compiled(params, carry, settings)


def weight_matrices(module) -> list:
    """Every parameter with >= 2 dimensions but the embedding table, as 2-D (K, N) matrices."""
    import jax
    from flax import nnx

    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(module, nnx.Param))
    return [w.reshape(-1, w.shape[-1]) for p, w in leaves if w.ndim >= 2 and "embedding" not in jax.tree_util.keystr(p)]


def floor_one_call(model):
    """profile_step.py's floor: every matrix once (the embedding table transposed too), one call."""
    import jax
    import jax.numpy as jnp

    mats = weight_matrices(model) + [model.embedding.embedding[...].T]
    f = jax.jit(lambda ws: [jnp.ones((1, w.shape[0]), w.dtype) @ w for w in ws]).lower(mats).compile()
    return lambda: f(mats), sum(w.size * w.dtype.itemsize for w in mats)


def floor_loop(decoder, steps: int):
    """The decode form's matrices read once per iteration of a ``fori_loop`` (a chain of iterations)."""
    import jax
    import jax.numpy as jnp

    mats = [w for w in weight_matrices(decoder) if min(w.shape) > 1]  # the kernels (norm weights are vectors)

    def loop(ws):
        def body(_, s):
            ys = [jnp.full((1, w.shape[0]), s, w.dtype) @ w for w in ws]
            return s + 1e-30 * sum(jnp.sum(y) for y in ys)

        return jax.lax.fori_loop(0, steps, body, jnp.float32(1.0))

    f = jax.jit(loop).lower(mats).compile()
    return lambda: f(mats), sum(w.size * w.dtype.itemsize for w in mats)


# --------------------------------------------------------------------------- #
# ops per step: self time (profiler) and operand bytes (compiled HLO)
# --------------------------------------------------------------------------- #
_DEF = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(\S+?\[[^\]]*\])(?:\{[^}]*\})?\s+([\w\-]+)\((.*)$")
_SIZES = {"f32": 4, "s32": 4, "u32": 4, "pred": 1, "f64": 8, "bf16": 2, "s64": 8, "u64": 8, "u8": 1, "s8": 1}


def _bytes(shape: str) -> int:
    dtype, dims = shape.split("[", 1)
    dims = [int(x) for x in dims.rstrip("]").split(",") if x.strip()]
    return _SIZES.get(dtype, 4) * int(np.prod(dims))


def operand_bytes(hlo_text: str) -> dict[str, tuple[str, int]]:
    """instruction -> (opcode, bytes of its array operands) for every array-valued instruction."""
    shapes, out = {}, {}
    for line in hlo_text.splitlines():
        m = _DEF.match(line)
        if not m:
            continue
        name, shape, opcode, rest = m.groups()
        shapes[name] = _bytes(shape)
        args = rest.split(")", 1)[0]
        out[name] = (opcode, sum(shapes.get(a, 0) for a in re.findall(r"%([\w.\-]+)", args)))
    return out


def op_profile(compiled, call, steps: int, top: int) -> list[dict]:
    text = compiled.as_text()
    module = re.search(r"HloModule\s+([\w.\-]+)", text).group(1)
    times = profile_step.op_self_times(call, 1, module.split(".")[0])
    sizes = operand_bytes(text)
    rows = []
    for k, v in times.items():
        opcode, nbytes = sizes.get(k, ("?", 0))
        rows.append({"op": k, "us": v * 1e6 / steps, "opcode": opcode, "operand_bytes": nbytes})
    rows.sort(key=lambda r: -r["us"])
    return rows[:top]


# --------------------------------------------------------------------------- #
def run_dim(dim: int, a) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from xlstm_jax.generation import _loop

    load_before = loadavg()
    model = build_model(dim)
    graphdef, params = nnx.split(model)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (1, PROMPT)), jnp.int32)
    carry = _loop.prefill(graphdef, params, ids, jnp.ones_like(ids), jax.random.key(0), a.steps)
    settings = profile_step.greedy_settings(a.steps)
    progs, compiled, compile_s = {}, {}, {}
    for name in a.variants:
        t0 = time.perf_counter()
        compiled[name], progs[name] = decode_program(variant(model, name), carry, settings, a.steps)
        compile_s[name] = time.perf_counter() - t0
    tokens = {name: np.asarray(jax.block_until_ready(call())[0]) for name, call in progs.items()}
    progs["floor_one_call"], one_call_bytes = floor_one_call(model)
    progs["floor_loop"], loop_bytes = floor_loop(variant(model, "decode_form"), a.steps)
    n = 2048
    mat = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    mm = jax.jit(lambda x, y: x @ y).lower(mat, mat).compile()
    progs["matmul"] = lambda: mm(mat, mat)
    for call in progs.values():
        jax.block_until_ready(call())
    wall = {k: [] for k in progs}
    cpu = {k: [] for k in progs}
    for rep in range(a.reps):
        for k in list(progs) if rep % 2 == 0 else list(progs)[::-1]:
            c0, t0 = time.process_time(), time.perf_counter()
            jax.block_until_ready(progs[k]())
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    per = {k: (1 if k in ("floor_one_call", "matmul") else a.steps) for k in progs}
    med = {k: float(np.median(wall[k])) / per[k] * 1e3 for k in progs}
    med_cpu = {k: float(np.median(cpu[k])) / per[k] * 1e3 for k in progs}
    row = {
        "bench": "ab_decode",
        "D": dim,
        "blocks": BLOCKS,
        "heads": HEADS,
        "vocab": VOCAB,
        "steps_per_call": a.steps,
        "reps": a.reps,
        "wall_ms_per_step": med,
        "cpu_ms_per_step": med_cpu,
        "over_floor_one_call": {k: med[k] / med["floor_one_call"] for k in a.variants},
        "over_floor_loop": {k: med[k] / med["floor_loop"] for k in a.variants},
        "new_over_model": {k: med[k] / med["model"] for k in a.variants} if "model" in med else None,
        "floor_one_call_bytes": one_call_bytes,
        "floor_loop_bytes": loop_bytes,
        "floor_loop_gb_per_s": loop_bytes / (med["floor_loop"] * 1e-3) / 1e9,
        "matmul_peak_gflop_per_s": 2 * n**3 / (med["matmul"] * 1e-3) / 1e9,
        "tokens_equal_first": {k: bool(np.array_equal(tokens[k], tokens[a.variants[0]])) for k in a.variants},
        "compile_s": compile_s,
        "loadavg": {"before": load_before, "after": loadavg()},
    }
    if a.profile:
        row["ops"] = {k: op_profile(compiled[k], progs[k], a.steps, a.top) for k in a.variants}
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dims", type=int, nargs="+", default=[256])
    p.add_argument("--steps", type=int, default=64, help="decode steps per call")
    p.add_argument("--reps", type=int, default=11)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--profile", action="store_true", help="also list each program's ops per step")
    p.add_argument("--top", type=int, default=25, help="ops listed per program with --profile")
    a = p.parse_args(argv)
    for dim in a.dims:
        print(json.dumps(run_dim(dim, a)), flush=True)


if __name__ == "__main__":
    main()
