"""Where the training step's time would go on a TPU, per op kind: compile-time estimates, nothing ran.

The trainer's real step (``pod_compile_report.compile_case``: ``train.step.jit_train_step`` on the
preset's abstract state, the mesh of ``train.mesh``) is compiled ahead of time by the TPU compiler
(``libtpu``) for a small slice described by topology, on this CPU host. Every op of the optimized
HLO outside fusions (a fusion is one op: what happens inside it stays on chip) gets, weighted by
how often it runs per step (``while`` bodies by their trip counts, as ``hlo_stats`` counts them):

  matmul FLOPs (the ``dot`` and ``convolution`` instructions in it, 2 x multiply-adds: MXU work);
  elementwise element-ops (arithmetic instructions inside it, one per output element, a reduce one
    per input element: VPU work, approximate, not in the roofline: the spec sheets give no VPU peak);
  HBM bytes (its operands and output, slices in place, as ``hlo_stats`` counts them; an async
    ``slice-start`` its slice, read and written, where ``hlo_stats`` charges the whole source);
  a roofline time, max(FLOPs / bf16 peak, bytes / HBM bandwidth) (collectives: bytes / ICI
    bandwidth), with the chip figures of ``pod_compile_report.CHIPS``;
  the same bytes and roofline "off chip": less the arrays whose TPU layout puts them in memory
    space 1 or above (``S(1)``, the compiler's alternate on-chip memory; its prefetch copies count),
    which ``hlo_stats`` charges like any other;

and a kind from the Python source location in its metadata (``profile_step.classify``: headwise
q/k/v projections, dense projections, causal conv, mLSTM cell, sLSTM scan, norms/gates/activations,
loss, optimizer, other). Per kind: FLOPs, bytes, roofline ms and its share of the summed per-op
roofline; then the top ops. These are estimates from the compiler's output, not measurements: no
TPU ran anything, and a roofline ignores latency, overlap and the VPU.

Two micro-programs isolate what the step's table points at, compiled for one chip:

  ``cell``: the chunkwise mLSTM cell's forward and backward (``backends.mlstm``, backend
    ``chunkwise``) at the step's per-chip shape, per chunk size (``--chunks``);
  ``qkv``: one headwise q/k/v map (4 x 4 blocks) forward and backward at the step's per-chip shape,
    in five forms: elementwise (``nn.layers._blockwise_apply`` with its custom backward: the CPU's
    form), a batched dot over the blocks, the blocks grouped into 128 x 128 block-diagonal tiles
    (one MXU tile), one dense block-diagonal (DH x DH) matrix per head, and ``model``:
    ``nn.layers.blockwise`` as the model calls it (on a TPU, its tiled form).

Run from the repository root (libtpu 0.0.42.1 installed; minutes per step compile on 2 cores)::

    JAX_PLATFORMS=cpu python benchmarks/tpu_step_hotspots.py --what step
    JAX_PLATFORMS=cpu python benchmarks/tpu_step_hotspots.py --what cell,qkv --topologies v5p:2x2x1,v6e:2x2
    JAX_PLATFORMS=cpu python benchmarks/tpu_step_hotspots.py --what step --set model.chunk_size=128

One JSON line per case on stdout, appended to ``benchmarks/results_tpu_hotspots.jsonl``. Each
compile's HLO is saved (``--hlo-dir``); ``--reanalyze ROWS.jsonl`` recounts saved rows (with
``--source-root OLD=NEW`` against an older checkout's sources, for the classifier).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import math
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import hlo_stats as hs
import pod_compile_report as pod
from profile_step import KIND_ORDER, classify, enclosing_function, hlo_metadata

# Cloud TPU names count TensorCores on v5p (two per chip): v5p-8 is 4 chips, one host.
pod.SLICES.setdefault("v5p-8", "v5p:2x2x1")
pod.SLICES.setdefault("v6e-4", "v6e:2x2")

ESTIMATE = "compile-time estimate from the optimized TPU HLO; nothing ran on a TPU"
_ELEMENTWISE = {
    "add", "subtract", "multiply", "divide", "maximum", "minimum", "exponential", "exponential-minus-one",
    "log", "log-plus-one", "tanh", "logistic", "rsqrt", "sqrt", "power", "negate", "abs", "select", "compare",
    "clamp", "sign", "floor", "ceil", "and", "or", "not", "atan2", "remainder",
}  # fmt: skip
_CALLS = re.compile(r"\b(?:calls|body|condition|true_computation|false_computation)=%?([\w.\-]+)")
_OUT = Path(__file__).with_name("results_tpu_hotspots.jsonl")
# Ops without a source location that only move their operand (layout copies, the async copies of a
# loop's carry, ...): they count as their operand's kind.
_MOVES = {"copy", "copy-start", "transpose", "bitcast", "get-tuple-element", "reshape", "slice", "dynamic-slice",
          "broadcast", "concatenate", "pad", "convert"}  # fmt: skip


# --------------------------------------------------------------------------- #
# per-op counts of a compiled module
# --------------------------------------------------------------------------- #
def _inner(computations: dict, types: dict, name: str, seen=None) -> tuple[float, float, bool]:
    """(matmul FLOPs, elementwise element-ops, has a custom call) of one run of computation ``name``
    and what it calls (nested fusions)."""
    seen = set() if seen is None else seen
    if name in seen or name not in computations:
        return 0.0, 0.0, False
    seen.add(name)
    flops = elems = 0.0
    custom = False
    for _, type_text, opcode, operands, attrs in computations[name]:
        if opcode in ("dot", "convolution"):
            flops += hs._matmul_flops(type_text, opcode, [types.get(o, "") for o in operands], attrs)
        elif opcode in _ELEMENTWISE:
            elems += sum(hs._elements(d) for _, d in hs._SHAPE.findall(type_text))
        elif opcode == "reduce" and operands:
            elems += sum(hs._elements(d) for _, d in hs._SHAPE.findall(types.get(operands[0], "")))
        custom |= opcode == "custom-call"
        for callee in _CALLS.findall(attrs):
            f, e, c = _inner(computations, types, callee, seen)
            flops, elems, custom = flops + f, elems + e, custom or c
    return flops, elems, custom


# Functions of nn/layers.py that apply the headwise blocks on a TPU only (profile_step.KINDS lists the
# CPU's: on a CPU these never run, so its profiles do not need them).
_TPU_HEADWISE = {"_apply", "_tiled_apply", "_tiled_dw", "_grouped_dw", "_group"}


def _classify(m: dict | None) -> str:
    """``profile_step.classify``, with the TPU-only headwise functions of ``nn/layers.py`` as headwise."""
    for path, line in (m or {}).get("frames", ())[:1]:
        in_layers = path.replace("\\", "/").endswith("xlstm_jax/nn/layers.py")
        if in_layers and enclosing_function(path, line) in _TPU_HEADWISE:
            return "projections (headwise q/k/v)"
    return classify(m)


def _kind(name: str, attrs: str, meta: dict, computations: dict) -> str:
    """The op's kind from its metadata; for a fusion without a located source, from the ops inside
    it (its matmul's kind if it has one, else the most common located kind)."""
    kind = _classify(meta.get(name))
    callee = re.search(r"calls=%?([\w.\-]+)", attrs)
    if kind != "other" or not callee or callee.group(1) not in computations:
        return kind
    kinds = collections.Counter()
    for inner_name, _, opcode, _, _ in computations[callee.group(1)]:
        k = _classify(meta.get(inner_name))
        if k != "other":
            kinds[k] += 100 if opcode in ("dot", "convolution") else 1
    return kinds.most_common(1)[0][0] if kinds else "other"


_TYPED = re.compile(r"\b(?:pred|[suf]\d+|bf16|c64|c128|f8e\w+)\[[\d,]*\](?:\{[^}]*\})?")
_ON_CHIP = re.compile(r"S\([1-9]")


def _off_chip(type_text: str) -> float:
    """Bytes of the arrays of an HLO type outside memory spaces 1+ (``S(1)`` in a TPU layout: the
    compiler's alternate memory, on chip; ``S(2)``: semaphores)."""
    return sum(hs.shape_bytes(t) for t in _TYPED.findall(type_text) if not _ON_CHIP.search(t))


def _off_chip_traffic(type_text, opcode, operands, attrs, types, computations, roots) -> float:
    """``hlo_stats``' bytes of one op, less what it reads from or writes to on-chip memory."""
    parts = _TYPED.findall(type_text)
    if opcode == "copy-start":  # (destination, source, context): reads the source, writes the destination
        return sum(_off_chip(types.get(o, "")) for o in operands[:1]) + (_off_chip(parts[0]) if parts else 0.0)
    if opcode == "slice-start":  # ((source), slice, context)
        return 2 * _off_chip(parts[1]) if len(parts) > 1 else 0.0
    if opcode == "dynamic-slice":
        out = hs.shape_bytes(type_text)
        return (out if _off_chip(types.get(operands[0], "")) else 0.0) + _off_chip(type_text)
    if opcode == "dynamic-update-slice":
        update = hs.shape_bytes(types.get(operands[1], ""))
        return (update if _off_chip(types.get(operands[0], "")) else 0.0) + _off_chip(types.get(operands[1], ""))
    callee = re.search(r"calls=%?([\w.\-]+)", attrs) if opcode == "fusion" else None
    if callee is None or callee.group(1) not in computations:
        return _off_chip(type_text) + sum(_off_chip(types.get(o, "")) for o in operands)
    body = hs._Body(computations, callee.group(1))
    read = sum(body.read(n, _off_chip(types.get(o, ""))) for n, o in enumerate(operands))
    return read + min(body.written(roots.get(callee.group(1)), roots), _off_chip(type_text))


def per_op(text: str, chip: pod.Chip) -> list[dict]:
    """One record per op outside fusions (weighted by executions per step)."""
    computations, roots, entry = hs._parse(text)
    types = {inst[0]: inst[1] for instructions in computations.values() for inst in instructions}
    weight, inside_fusion, _, _ = hs._weights(computations, roots, entry)
    meta = hlo_metadata(text)
    ops, kinds = [], {}
    for comp, instructions in computations.items():
        w = weight.get(comp, 0)
        if comp in inside_fusion or not w:
            continue
        for name, type_text, opcode, operands, attrs in instructions:
            kind = _kind(name, attrs, meta, computations)
            if kind == "other" and opcode in _MOVES and operands:  # a copy XLA added: its operand's kind
                kind = kinds.get(operands[0]) or _classify(meta.get(operands[0]))
            kinds[name] = kind
            if opcode in hs._NO_TRAFFIC or opcode.endswith("-done"):
                continue
            moved = hs._traffic(type_text, opcode, operands, attrs, types, computations, roots)
            if opcode == "slice-start":  # async slice ((source), slice, context): reads and writes the slice
                shapes = hs._SHAPE.findall(type_text)
                moved = 2 * hs.shape_bytes("{}[{}]".format(*shapes[1])) if len(shapes) > 1 else moved
            off_chip = _off_chip_traffic(type_text, opcode, operands, attrs, types, computations, roots)
            if opcode in ("dot", "convolution"):
                operand_types = [types.get(o, "") for o in operands]
                flops, elems, custom = hs._matmul_flops(type_text, opcode, operand_types, attrs), 0.0, False
            else:
                flops, elems, custom = 0.0, 0.0, opcode == "custom-call"
                for callee in _CALLS.findall(attrs):
                    f, e, c = _inner(computations, types, callee)
                    flops, elems, custom = flops + f, elems + e, custom or c
            collective = opcode.removesuffix("-start") in hs.COLLECTIVES
            compute_s, hbm_s = flops / chip.peak_flops, moved / chip.hbm_bandwidth
            seconds = moved / chip.ici_bandwidth if collective else max(compute_s, hbm_s)
            seconds_off_chip = (
                off_chip / chip.ici_bandwidth if collective else max(compute_s, off_chip / chip.hbm_bandwidth)
            )
            m = meta.get(name, {})
            ops.append({
                "op": name, "opcode": opcode, "kind": kind,
                "bwd": "transpose(" in m.get("op_name", ""), "runs": w, "flops": w * flops, "elem_ops": w * elems,
                "bytes": w * moved, "roofline_s": w * seconds, "off_chip_bytes": w * off_chip,
                "off_chip_roofline_s": w * seconds_off_chip, "bound": "ici" if collective else
                ("compute" if compute_s > hbm_s else "hbm"),
                "custom_call": custom, "shape": type_text[:120],
                "at": ", ".join(f"{Path(f).name}:{ln}" for f, ln in m.get("frames", ())[:2]) or None,
                "op_name": m.get("op_name", "")[-160:], "computation": comp,
            })  # fmt: skip
    return _loop_kinds(ops, entry)


def _loop_kinds(ops: list[dict], entry: str) -> list[dict]:
    """Ops still ``other`` in a loop body (or other non-entry computation) whose located ops are of
    one kind (90 % of their bytes or more) take that kind (``kind_from``: the body): the copies and
    carries of the chunkwise cell's and the sLSTM's loops have no source location of their own."""
    by_comp = collections.defaultdict(collections.Counter)
    for o in ops:
        if o["kind"] != "other":
            by_comp[o["computation"]][o["kind"]] += o["bytes"] + 1.0
    for o in ops:
        counts = by_comp.get(o["computation"])
        if o["kind"] == "other" and o["computation"] != entry and counts:
            kind, n = counts.most_common(1)[0]
            if n >= 0.9 * sum(counts.values()):
                o["kind"], o["kind_from"] = kind, "loop body"
    return ops


def summarize(ops: list[dict], chip: pod.Chip, top: int = 25) -> dict:
    """Per kind: FLOPs, bytes, element-ops, roofline ms and share; the module's totals; the top ops."""
    total = sum(o["roofline_s"] for o in ops) or 1.0
    kinds = {}
    for kind in [*KIND_ORDER, *sorted({o["kind"] for o in ops} - set(KIND_ORDER))]:
        mine = [o for o in ops if o["kind"] == kind]
        if not mine:
            continue
        seconds = sum(o["roofline_s"] for o in mine)
        kinds[kind] = {
            "flops": sum(o["flops"] for o in mine),
            "bytes": sum(o["bytes"] for o in mine),
            "elem_ops": sum(o["elem_ops"] for o in mine),
            "roofline_ms": round(seconds * 1e3, 3),
            "share": round(seconds / total, 4),
            "off_chip_bytes": sum(o["off_chip_bytes"] for o in mine),
            "off_chip_roofline_ms": round(sum(o["off_chip_roofline_s"] for o in mine) * 1e3, 3),
            "bwd_roofline_ms": round(sum(o["roofline_s"] for o in mine if o["bwd"]) * 1e3, 3),
            "compute_bound_ms": round(sum(o["roofline_s"] for o in mine if o["bound"] == "compute") * 1e3, 3),
            "ops": len(mine),
        }
    flops, moved = sum(o["flops"] for o in ops), sum(o["bytes"] for o in ops)
    off_chip_total = sum(o["off_chip_roofline_s"] for o in ops)
    rows = sorted(ops, key=lambda o: -o["roofline_s"])[:top]
    for o in rows:
        o["roofline_ms"] = round(o.pop("roofline_s") * 1e3, 4)
        o["off_chip_roofline_ms"] = round(o.pop("off_chip_roofline_s") * 1e3, 4)
    compute_ms, hbm_ms = flops / chip.peak_flops * 1e3, moved / chip.hbm_bandwidth * 1e3
    return {
        "totals": {
            "flops": flops,
            "bytes": moved,
            "elem_ops": sum(o["elem_ops"] for o in ops),
            "sum_of_op_rooflines_ms": round(total * 1e3, 3),
            "module_roofline_ms": round(max(compute_ms, hbm_ms), 3),
            "off_chip_bytes": sum(o["off_chip_bytes"] for o in ops),
            "sum_of_off_chip_op_rooflines_ms": round(off_chip_total * 1e3, 3),
            "compute_ms": round(compute_ms, 3),
            "hbm_ms": round(hbm_ms, 3),
        },  # fmt: skip
        "kinds": kinds,
        "top": rows,
    }


# --------------------------------------------------------------------------- #
# cases
# --------------------------------------------------------------------------- #
def step_case(preset: str, slice_name: str, mesh_text: str, overrides: list, hlo_dir: str, timeout: float) -> dict:
    """The trainer's step compiled in a subprocess (``pod_compile_report.compile_case``), then the
    per-op table of its saved HLO."""
    case = {"preset": preset, "slice": slice_name, "mesh_text": mesh_text, "quick": False,
            "overrides": overrides, "hlo_dir": hlo_dir}  # fmt: skip
    limit = math.ceil(timeout)
    cmd = [sys.executable, __file__, "--compile-case", json.dumps(case)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CPU, (limit, limit + 5)))  # fmt: skip
    head = {"bench": "tpu_step_hotspots", "case": "step", "preset": preset, "slice": slice_name,
            "mesh_arg": mesh_text, "overrides": overrides, "estimate": ESTIMATE}  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        why = "CPU limit" if proc.returncode == -signal.SIGXCPU else f"exit {proc.returncode}"
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])[:600]
        return {**head, "status": "failed", "error": f"{why}: {tail}", "wall_s": round(time.perf_counter() - start)}
    row = json.loads(lines[-1])
    keep = ("status", "error", "topology", "device_kind", "chips", "mesh", "params", "tokens_per_step",
            "compile_s", "memory_gib", "fits", "step_s", "bound", "roofline", "hlo_file")  # fmt: skip
    out = {**head, **{k: row[k] for k in keep if k in row}, "wall_s": round(time.perf_counter() - start)}
    if row.get("status") != "compiled":
        return out
    return analyze(out)


def analyze(row: dict, source_root: tuple[str, str] | None = None, top: int = 25) -> dict:
    """``row`` with the per-kind table and top ops of its saved ``hlo_file``. ``source_root``
    (old, new): read the source files the metadata names under ``new`` instead of ``old`` (the
    classifier reads the Python files the HLO points to: an HLO compiled from an older checkout is
    classified against that checkout's files)."""
    chip = pod.CHIPS[row["device_kind"]]
    with gzip.open(row["hlo_file"], "rt") as f:
        text = f.read()
    if source_root:
        text = text.replace(*source_root)
    return {**row, "chip": chip.source, **summarize(per_op(text, chip), chip, top)}


def _one_chip(topology: str):
    from jax.experimental import topologies

    device = topologies.get_topology_desc(topology_name=topology, platform="tpu").devices[0]
    return device, pod.CHIPS[device.device_kind]


def _compile_micro(fn, args, topology: str, hlo_dir: str | None, name: str) -> dict:
    import jax

    device, chip = _one_chip(topology)
    sharding = jax.sharding.SingleDeviceSharding(device)
    structs = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding) for a in args]
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*structs).compile()
    text = compiled.as_text()
    saved = {}
    if hlo_dir:
        Path(hlo_dir).mkdir(parents=True, exist_ok=True)
        path = Path(hlo_dir) / f"{name}_{topology.replace(':', '-')}.hlo.txt.gz"
        with gzip.open(path, "wt") as f:
            f.write(text)
        saved["hlo_file"] = str(path)
    m = compiled.memory_analysis()
    summary = summarize(per_op(text, chip), chip, top=6)
    return {"topology": topology, "device_kind": device.device_kind, "compile_s": round(time.perf_counter() - start, 1),
            "temp_gib": round(m.temp_size_in_bytes / 2**30, 3),
        **saved, **summary}  # fmt: skip


def cell_case(topology: str, chunk: int, b: int, nh: int, s: int, dh: int, hlo_dir) -> dict:
    """The chunkwise mLSTM cell's forward + backward, per chip, at one chunk size."""
    import jax
    import jax.numpy as jnp

    from xlstm_jax import backends

    def fwd_bwd(q, k, v, i, f, dh_):
        def cell(q, k, v, i, f):
            return backends.mlstm(q, k, v, i, f, backend="chunkwise", chunk_size=chunk)

        h, vjp = jax.vjp(cell, q, k, v, i, f)
        return h, vjp(dh_)

    bf, f32 = jnp.bfloat16, jnp.float32
    args = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in (
        ((b, nh, s, dh), bf), ((b, nh, s, dh), bf), ((b, nh, s, dh), bf), ((b, nh, s), f32), ((b, nh, s), f32),
        ((b, nh, s, dh), bf))]  # fmt: skip
    row = _compile_micro(fwd_bwd, args, topology, hlo_dir, f"cell_chunk{chunk}")
    return {"bench": "tpu_step_hotspots", "case": "cell", "chunk_size": chunk, "shape": [b, nh, s, dh],
            "dtype": "q/k/v bfloat16, gates float32", "estimate": ESTIMATE, **row}  # fmt: skip


QKV_FORMS = ("elementwise", "batched_dot", "tiles_128", "dense_per_head", "model")


def qkv_case(topology: str, form: str, b: int, nh: int, s: int, dh: int, block: int, hlo_dir) -> dict:
    """One headwise q/k/v map (x (B, NH, S, DH), DH / block blocks of block x block per head), forward
    and backward (dx and dw), in one of ``QKV_FORMS``."""
    import jax
    import jax.numpy as jnp

    from xlstm_jax.nn import layers
    from xlstm_jax.nn.layers import blockwise

    j = dh // block

    @jax.custom_vjp
    def _elementwise(x, w):
        return layers._blockwise_apply(x, w[:, None])

    def _elementwise_fwd(x, w):
        return _elementwise(x, w), (x, w)

    def _elementwise_bwd(res, dy):
        x, w = res
        dx = layers._blockwise_apply(dy, jnp.swapaxes(w, -1, -2)[:, None])
        return dx, layers._blockwise_dw(dy, x).astype(w.dtype)

    _elementwise.defvjp(_elementwise_fwd, _elementwise_bwd)

    def apply(x, w):  # w (NH, J, DO, DI)
        if form == "elementwise":  # the CPU's form, forced (the model's own chooses per platform)
            return _elementwise(x.reshape(b, nh, s, j, block), w).reshape(b, nh, s, dh)
        if form == "model":  # nn.layers.blockwise as the model calls it: on a TPU its tiled form
            return blockwise(x.reshape(b, nh, s, j, block), w).reshape(b, nh, s, dh)
        if form == "batched_dot":
            y = jnp.einsum("bhsji,hjoi->bhsjo", x.reshape(b, nh, s, j, block), w)
            return y.reshape(b, nh, s, dh)
        if form == "tiles_128":  # 128 / block blocks per tile: a (128 x 128) block-diagonal matrix
            g = min(128 // block, j)
            eye = jnp.eye(g, dtype=w.dtype)
            tiles = jnp.einsum("htgoi,gk->htgoki", w.reshape(nh, j // g, g, block, block), eye)
            tiles = tiles.reshape(nh, j // g, g * block, g * block)
            return jnp.einsum("bhsti,htoi->bhsto", x.reshape(b, nh, s, j // g, g * block), tiles).reshape(b, nh, s, dh)
        eye = jnp.eye(j, dtype=w.dtype)  # dense_per_head
        dense = jnp.einsum("hjoi,jk->hjoki", w, eye).reshape(nh, dh, dh)
        return jnp.einsum("bhsi,hoi->bhso", x, dense)

    def fwd_bwd(x, w, dy):
        y, vjp = jax.vjp(apply, x, w)
        return y, vjp(dy)

    bf = jnp.bfloat16
    args = [jax.ShapeDtypeStruct((b, nh, s, dh), bf), jax.ShapeDtypeStruct((nh, j, block, block), bf),
            jax.ShapeDtypeStruct((b, nh, s, dh), bf)]  # fmt: skip
    row = _compile_micro(fwd_bwd, args, topology, hlo_dir, f"qkv_{form}")
    return {"bench": "tpu_step_hotspots", "case": "qkv", "form": form, "shape": [b, nh, s, dh], "block": block,
            "dtype": "bfloat16 (the step's compute dtype)", "estimate": ESTIMATE, **row}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--what", default="step", help="comma-separated: step, cell, qkv")
    parser.add_argument("--preset", default="xlstm71_125m", choices=list(pod.PRESETS))
    parser.add_argument("--slice", default="v5p-8", help=f"for the step, from {list(pod.SLICES)}")
    parser.add_argument("--mesh", default="data=-1")
    parser.add_argument("--set", action="append", default=None,
                        help="config override key=value for the step (default: train.global_batch_size=32: "
                             "8 x 2048 tokens per chip on v5p-8, as the preset's data 32 on v5p-64)")  # fmt: skip
    parser.add_argument("--topologies", default="v5p:2x2x1", help="for cell and qkv: one chip of each")
    parser.add_argument("--chunks", default="64,128,256")
    parser.add_argument("--shape", default="8,4,2048,384", help="B,NH,S,DH per chip for cell and qkv (the 125M's)")
    parser.add_argument("--forms", default=",".join(QKV_FORMS))
    parser.add_argument("--timeout", type=float, default=3600, help="CPU seconds for the step's compile")
    parser.add_argument("--hlo-dir", default="/tmp/tpu_step_hotspots_hlo")
    parser.add_argument("--out", default=str(_OUT), help="'' for stdout only")
    parser.add_argument("--reanalyze", help="a .jsonl of rows: redo their tables from their saved HLO (hlo_file)")
    parser.add_argument("--source-root", help="OLD=NEW: with --reanalyze, classify against the files under NEW")
    parser.add_argument("--compile-case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compile_case:
        print(json.dumps(pod.compile_case(**json.loads(args.compile_case))), flush=True)
        return
    out = Path(args.out) if args.out else None
    if args.reanalyze:
        root = tuple(args.source_root.split("=", 1)) if args.source_root else None
        for line in Path(args.reanalyze).read_text().splitlines():
            row = json.loads(line)
            if row.get("hlo_file") and row.get("status", "compiled") == "compiled":
                keep = {k: v for k, v in row.items() if k not in ("chip", "totals", "kinds", "top")}
                top = 25 if row.get("case") == "step" else 6
                pod._emit({**analyze(keep, root, top), **({"source_root": args.source_root} if root else {})}, out)
        return
    what = args.what.split(",")
    b, nh, s, dh = (int(x) for x in args.shape.split(","))
    if "step" in what:
        overrides = args.set if args.set is not None else ["train.global_batch_size=32"]
        pod._emit(step_case(args.preset, args.slice, args.mesh, overrides, args.hlo_dir, args.timeout), out)
    for topology in args.topologies.split(","):
        if "cell" in what:
            for chunk in (int(c) for c in args.chunks.split(",")):
                pod._emit(cell_case(topology, chunk, b, nh, s, dh, args.hlo_dir), out)
        if "qkv" in what:
            for form in args.forms.split(","):
                pod._emit(qkv_case(topology, form, b, nh, s, dh, 4, args.hlo_dir), out)


if __name__ == "__main__":
    main()
