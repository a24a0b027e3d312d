"""Compile the pretraining presets' real train step for TPU pod slices, on a CPU host.

Nothing runs and nothing is allocated: the trainer's own step (``train.step.jit_train_step``, the
mesh of ``train.mesh``, the preset's logical-axis rules and parameter shardings, the optimizer of
``train.optim``) is lowered on ``jax.ShapeDtypeStruct`` inputs and compiled ahead of time by the
real TPU compiler for a slice that ``libtpu`` describes by topology. Per preset, slice and mesh it
prints one JSON line (and appends it to ``results_pod_compile.jsonl``):

  compiled or not (the compiler's reason); per-chip memory from ``memory_analysis()`` against the
  chip's HBM; FLOPs and bytes from ``cost_analysis()`` (which counts each loop body once) and the
  same counted from the HLO with loop bodies weighted by their trip counts (``hlo_stats``);
  collective bytes (all-gather, reduce-scatter, all-reduce, all-to-all, collective-permute operand
  bytes per chip); a roofline step time, max(FLOPs / peak, HBM bytes / HBM bandwidth, collective
  bytes / ICI bandwidth), and the MFU it implies (6 x parameters x tokens per step, the usual model
  FLOPs, over step time x peak x chips).

The last line per (preset, slice) recommends the mesh with the shortest roofline step time among
those that fit in HBM. Chip figures are the vendor's public spec sheets (``CHIPS``). This says
nothing measured about speed: no TPU ran anything.

    python -m pip install "libtpu==0.0.42.*"      # the version jax 0.10.2 pins (jax[tpu])
    JAX_PLATFORMS=cpu nice python benchmarks/pod_compile_report.py --presets xlstm71_125m --slices v5p-64
    JAX_PLATFORMS=cpu python benchmarks/pod_compile_report.py --quick     # tiny model, 4 chips (for tests)

``--meshes 'data=-1;data=-1,fsdp=8'`` lists the meshes to try (``;`` between meshes, ``,`` between
axes; default: the preset's own mesh and an FSDP variant). ``--quick`` shrinks the model to two
blocks and the batch to 8 x 256 tokens: it checks the machinery, its rows are not the presets'.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from hlo_stats import hlo_stats
from jax.sharding import AxisType

PRESETS = {
    "xlstm71_125m": "pretrain_xlstm71_125m",
    "xlstm71_350m": "pretrain_xlstm71_350m",
    "xlstm71_1300m": "pretrain_xlstm71_1300m",
    "xlstm_7b": "pretrain_xlstm_7b",
}
# Cloud TPU slice names count chips (v5p: TensorCores, two per chip, one JAX device per chip).
SLICES = {
    "v5e-4": "v5e:2x2",
    "v5p-64": "v5p:2x4x4",
    "v5p-256": "v5p:4x4x8",
    "v5e-256": "v5e:16x16",
    "v6e-256": "v6e:16x16",
}


@dataclasses.dataclass(frozen=True)
class Chip:
    """One chip's public figures: bf16 peak FLOP/s, HBM bytes and bytes/s, ICI bytes/s (bidirectional)."""

    peak_flops: float
    hbm_bytes: float
    hbm_bandwidth: float
    ici_bandwidth: float
    source: str


# The Cloud TPU system-architecture pages (docs.cloud.google.com/tpu/docs/v5e, /v5p, /v6e), per chip.
CHIPS = {
    "TPU v5 lite": Chip(197e12, 16e9, 819e9, 400e9, "v5e: 197 TFLOP/s bf16, 16 GB HBM at 819 GB/s, ICI 400 GB/s"),
    "TPU v5": Chip(459e12, 95e9, 2765e9, 1200e9, "v5p: 459 TFLOP/s bf16, 95 GB HBM at 2765 GB/s, ICI 1200 GB/s"),
    "TPU v6 lite": Chip(918e12, 32e9, 1638e9, 800e9, "v6e: 918 TFLOP/s bf16, 32 GB HBM at 1638 GB/s, ICI 800 GB/s"),
}

DEFAULT_MESHES = {
    "xlstm71_125m": "data=-1;data=-1,fsdp=4",
    "xlstm71_350m": "data=-1;data=-1,fsdp=4",
    "xlstm71_1300m": "data=-1;data=-1,fsdp=8",
    "xlstm_7b": "data=-1,fsdp=8;data=-1,fsdp=16",
}
QUICK = {"model.num_blocks": 2, "model.slstm_at": [1], "train.global_batch_size": 8, "train.seq_len": 256}


def parse_mesh(text: str) -> dict:
    """``'data=-1,fsdp=8'`` -> ``{'mesh.data': -1, 'mesh.fsdp': 8, 'mesh.context': 1, 'mesh.tensor': 1}``
    (axes not named are 1)."""
    from xlstm_jax.train.mesh import AXES

    sizes = dict.fromkeys(AXES, 1)
    for part in filter(None, text.split(",")):
        axis, _, size = part.partition("=")
        if axis.strip() not in sizes:
            raise ValueError(f"mesh axis must be one of {list(AXES)}, got {axis.strip()!r} in {text!r}")
        sizes[axis.strip()] = int(size)
    return {f"mesh.{axis}": size for axis, size in sizes.items()}


def load_spec(preset: str, overrides: dict):
    """The preset's RunSpec with ``overrides``. The data section becomes a synthetic task (no corpus
    is needed to compile; the model sets its own vocabulary); model, optim, train and mesh are the preset's."""
    from xlstm_jax.train.config import load_config
    from xlstm_jax.train.trainer import resolve

    raw = load_config(PRESETS[preset], overrides)
    raw["data"] = {"kind": "parity"}
    return resolve(raw)


def abstract_step(spec, devices):
    """(jitted train step, abstract state, abstract batch, mesh): the trainer's, nothing allocated."""
    from xlstm_jax.train.mesh import AXES, batch_sharding, mesh_shape
    from xlstm_jax.train.optim import make_optimizer
    from xlstm_jax.train.step import abstract_train_state, jit_train_step
    from xlstm_jax.train.trainer import _check_batch_fits_mesh, _seq_lens, abstract_model

    # What train.mesh.make_mesh builds on a one-slice pod (jax.make_mesh over all its devices).
    shape = mesh_shape(spec.mesh, len(devices))
    mesh = jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)
    t = spec.train
    _check_batch_fits_mesh(t.global_batch_size, mesh, spec.mesh.rules, _seq_lens(t))
    graphdef, abstract_params, rest, param_shardings = abstract_model(spec, mesh)
    tx = make_optimizer(spec.optim, t.steps, abstract_params)
    state = abstract_train_state(tx, abstract_params, param_shardings)
    bsh = batch_sharding(mesh, spec.mesh.rules)
    batch = {
        name: jax.ShapeDtypeStruct((t.global_batch_size, t.seq_len), dtype, sharding=bsh)
        for name, dtype in {
            "inputs": jnp.int32,
            "targets": jnp.int32,
            "loss_mask": jnp.float32,
            "segment_ids": jnp.int32,
        }.items()  # fmt: skip
    }
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    step = jit_train_step(graphdef, rest, tx, spec.optim.grad_accum_steps, state_sharding, bsh)
    return step, state, batch, mesh


def compile_case(preset: str, slice: str, mesh_text: str, quick: bool, overrides=(), hlo_dir=None) -> dict:  # noqa: A002
    """One row: compile the preset's train step for the slice and mesh (and config ``overrides``,
    ``key=value`` strings), and what the compiler says. With ``hlo_dir``, the optimized HLO text is
    also written there (gzipped), for ``hlo_stats`` to be rerun on it."""
    from jax.experimental import topologies

    from xlstm_jax import backends

    row = {"preset": preset, "slice": slice, "topology": SLICES[slice], "mesh_arg": mesh_text}
    if overrides:
        row["overrides"] = list(overrides)
    if quick:
        row["quick"] = "2 blocks, batch 8 x 256 tokens: not the preset"
    topology = topologies.get_topology_desc(topology_name=SLICES[slice], platform="tpu")
    devices = list(topology.devices)
    chip = CHIPS[devices[0].device_kind]
    row.update(device_kind=devices[0].device_kind, chips=len(devices))
    from xlstm_jax.train.config import apply_overrides

    extra = apply_overrides({}, list(overrides))
    spec = load_spec(preset, {**parse_mesh(mesh_text), **(QUICK if quick else {}), **_flatten(extra)})
    start = time.perf_counter()
    try:
        step, state, batch, mesh = abstract_step(spec, devices)
        row["mesh"] = dict(mesh.shape)
        with jax.set_mesh(mesh), backends.axis_rules(spec.mesh.rules):  # as the trainer's loop compiles it
            lowered = step.lower(state, batch)
            row["lower_s"] = round(time.perf_counter() - start, 1)
            compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - the compiler's (or the mesh's) refusal is the result
        row.update(status="error", error=f"{type(e).__name__}: {str(e)[:600]}")
        row["compile_s"] = round(time.perf_counter() - start, 1)
        return row
    row["compile_s"] = round(time.perf_counter() - start, 1)
    row["status"] = "compiled"
    params = sum(math.prod(x.shape) for x in jax.tree.leaves(state.params))
    tokens = spec.train.global_batch_size * spec.train.seq_len
    row.update(params=params, tokens_per_step=tokens, remat=spec.train.remat, compute_dtype=spec.train.compute_dtype)
    row.update(_memory(compiled, chip))
    text = compiled.as_text()
    if hlo_dir:
        row["hlo_file"] = _save_hlo(text, Path(hlo_dir), row)
    row.update(_costs(compiled, text))
    row.update(_roofline(row, chip, params, tokens, len(devices)))
    return row


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _memory(compiled, chip: Chip) -> dict:
    m = compiled.memory_analysis()
    peak = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    return {
        "memory_gib": {
            "arguments": round(m.argument_size_in_bytes / 2**30, 3),
            "outputs": round(m.output_size_in_bytes / 2**30, 3),
            "aliased": round(m.alias_size_in_bytes / 2**30, 3),
            "temporaries": round(m.temp_size_in_bytes / 2**30, 3),
            "per_chip": round(peak / 2**30, 3),
        },
        "hbm_gib": round(chip.hbm_bytes / 2**30, 1),
        "hbm_fraction": round(peak / chip.hbm_bytes, 3),
        "fits": peak <= chip.hbm_bytes,
    }


def _save_hlo(text: str, folder: Path, row: dict) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    parts = [row["preset"], row["slice"], row["mesh_arg"], *row.get("overrides", ())]
    name = "_".join(parts).translate(str.maketrans("=,/", "--_"))
    path = folder / f"{name}.hlo.txt.gz"
    with gzip.open(path, "wt") as f:
        f.write(text)
    return str(path)


def _costs(compiled, text: str) -> dict:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    stats = hlo_stats(text)
    return {
        "cost_analysis": {"flops": cost.get("flops"), "bytes_accessed": cost.get("bytes accessed")},
        "hlo": stats,
    }


def _roofline(row: dict, chip: Chip, params: int, tokens: int, chips: int) -> dict:
    hlo = row["hlo"]
    flops = max(hlo["dot_flops"], row["cost_analysis"]["flops"] or 0.0)
    terms = {
        "compute_s": flops / chip.peak_flops,
        "hbm_s": hlo["hbm_bytes"] / chip.hbm_bandwidth,
        "collective_s": sum(hlo["collective_bytes"].values()) / chip.ici_bandwidth,
    }
    step_s = max(terms.values())
    model_flops = 6 * params * tokens
    return {
        "roofline": {k: round(v, 5) for k, v in terms.items()},
        "bound": max(terms, key=terms.get).removesuffix("_s"),
        "step_s": round(step_s, 5),
        "model_flops_per_step": model_flops,
        "mfu": round(model_flops / (step_s * chip.peak_flops * chips), 3),
        "chip": chip.source,
    }


def recount(row: dict) -> dict:
    """``row`` with its HLO counts and roofline recomputed from its saved ``hlo_file`` (after a fix
    to ``hlo_stats``; the compiler's own figures are unchanged)."""
    with gzip.open(row["hlo_file"], "rt") as f:
        row = {**row, "hlo": hlo_stats(f.read())}
    chip = next(c for c in CHIPS.values() if c.source == row["chip"])
    return {**row, **_roofline(row, chip, row["params"], row["tokens_per_step"], row["chips"])}


def _recommend(rows: list[dict]) -> dict:
    fitting = [r for r in rows if r.get("status") == "compiled" and r["fits"]]
    head = {"recommend": True, "preset": rows[0]["preset"], "slice": rows[0]["slice"]}
    if not fitting:
        return {**head, "mesh": None, "reason": "no tried mesh compiled and fit in HBM"}
    best = min(fitting, key=lambda r: (r["step_s"], r["memory_gib"]["per_chip"]))
    return {**head, "mesh": best["mesh"], "mesh_arg": best["mesh_arg"], "step_s": best["step_s"], "mfu": best["mfu"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default=",".join(PRESETS), help=f"comma-separated, from {list(PRESETS)}")
    parser.add_argument("--slices", default="v5p-64,v5e-256,v6e-256", help=f"comma-separated, from {list(SLICES)}")
    parser.add_argument("--meshes", default=None, help="';'-separated meshes (default: per preset, DEFAULT_MESHES)")
    parser.add_argument("--quick", action="store_true", help="2 blocks, batch 8 x 256 (a check, not the preset)")
    parser.add_argument("--set", action="append", default=[], help="a config override key=value (repeatable)")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="CPU seconds per compile (each runs in a subprocess; CPU, not wall: a shared host "
                             "starves a low-priority compile without it being slow)")  # fmt: skip
    parser.add_argument("--hlo-dir", default=None, help="also write each compiled module's HLO text here (gzipped)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results_pod_compile.jsonl")))
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case as JSON, in this process
    args = parser.parse_args()
    if args.case:
        case = json.loads(args.case)
        print(json.dumps(compile_case(**case)), flush=True)
        return
    out = Path(args.out) if args.out else None
    for preset in args.presets.split(","):
        for slice_name in args.slices.split(","):
            rows = []
            for mesh_text in (args.meshes or DEFAULT_MESHES[preset]).split(";"):
                case = {"preset": preset, "slice": slice_name, "mesh_text": mesh_text, "quick": args.quick,
                        "overrides": args.set, "hlo_dir": args.hlo_dir}  # fmt: skip
                rows.append(_run_case(case, args.timeout))
                _emit(rows[-1], out)
            _emit(_recommend(rows), out)


def _run_case(case: dict, timeout: float) -> dict:
    """A case in a subprocess: a compile that uses more than ``timeout`` CPU seconds (``RLIMIT_CPU``:
    the kernel stops it with SIGXCPU) or runs out of memory becomes a row."""
    head = {key: case[key] for key in ("preset", "slice", "overrides")} | {"mesh_arg": case["mesh_text"]}
    cmd = [sys.executable, __file__, "--case", json.dumps(case)]
    limit = math.ceil(timeout)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CPU, (limit, limit + 5)))  # fmt: skip
    if proc.returncode == -signal.SIGXCPU:
        return {**head, "status": "timeout", "error": f"did not compile within {limit} CPU s",
                "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        why = "killed (out of memory?)" if proc.returncode < 0 else f"exit code {proc.returncode}"
        tail = proc.stderr.strip().splitlines()[-3:]
        return {**head, "status": "crashed", "error": f"{why}: {' | '.join(tail)[:600]}",
                "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    return json.loads(lines[-1])


def _emit(row: dict, out: Path | None) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if out is not None:
        with out.open("a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
