"""Where a training step's and a decode step's time goes, per op kind, from XLA's own per-op profile.

Run from the repository root::

    python benchmarks/profile_step.py                 # both programs, about 1-2 minutes
    python benchmarks/profile_step.py --only train --reps 5
    python benchmarks/profile_step.py --markdown      # also a markdown table on stderr
    python benchmarks/profile_step.py --only train --cpu-devices auto   # data parallel, one device per core

Programs (float32, one process, the 2-core CPU or whatever ``jax.devices()[0]`` is):

* ``train``: the trainer's step (``xlstm_jax.train.step.make_train_step``: forward, masked cross
  entropy, backward, global-norm clip 1.0, AdamW) of the NeurIPS ``xLSTMLMModel``, D=256, 4 blocks
  [mLSTM, sLSTM, mLSTM, mLSTM], 4 heads, qkv blocksize 4, vocab 1024, chunkwise mLSTM (chunk 64),
  B=8, S=256 (``benchmarks/bench_train.py``'s model, with its own random init). With
  ``--cpu-devices N`` (or ``auto``: one per usable core) the same step runs data parallel over N CPU
  devices (``xlstm-train --cpu-devices N``: the batch split, parameters replicated, gradients
  all-reduced), and its FLOPs are the unpartitioned step's, so ``frac_of_matmul_peak`` counts the
  same work; per-op times then add up over the devices' threads.
* ``decode``: ``xlstm_jax.generation``'s compiled decode loop (one ``lax.while_loop``, greedy) of
  ``xLSTMLarge`` (the xLSTM-7B architecture) at D=256, 4 blocks, 4 heads, vocab 1024, batch 1,
  after a 64-token prompt; ``--decode-steps`` steps per call, per-step time = call time / steps.

Method:

1. Compile the program ahead of time; time ``--reps`` calls (median, each blocked on).
2. Trace ``--trace-reps`` more calls with ``jax.profiler.trace`` and read the XSpace back with
   ``jax.profiler.ProfileData``: on CPU every HLO thunk is an event with an ``hlo_op`` stat.
   An op's *self* time is its event's duration minus the events nested in it on the same thread
   (a ``while`` thunk contains its body's thunks). Ops of one program can overlap on the two
   threads of XLA's executor, so the per-op times add up to the "op time", which can exceed the
   wall time (``op_time_over_wall``).
3. Classify each op by the source location XLA keeps in its metadata (the innermost Python frame
   that is not jax itself: our layer, optax, the step): the file and the function enclosing the
   line give the kind (``KINDS``). Ops without a source location (copies and transposes XLA adds)
   are ``other``. ``bwd`` marks ops whose ``op_name`` lies under ``transpose(``: the backward pass.
   ``mb``: the megabytes an op reads and writes per call, from the optimized HLO
   (``hlo_stats.instruction_bytes``: operands and output of each instruction outside fusions, slices
   in place, times its loop's trip count); ``gb_per_s`` = ``mb`` / self time in ms, the rate the op
   reached (``benchmarks/dot_bound.py`` measures the rate an elementwise pass can reach).
4. Limits measured in the same run: ``matmul_peak_gflop_per_s`` (jitted float32 2048x2048 matmul,
   median), and for decode the weight-read floor: the bytes of every weight matrix the step uses
   (all parameters but the embedding table; the output head included) read once, as one
   matrix-vector product over a contiguous float32 matrix of that size, median. ``weight_read_per_matrix_ms`` reads
   the same matrices one by one in one jitted call (the floor before session 27: on the Intel Xeon
   its ~40 small dots cost more in per-op overhead than the decode step takes, so it was no floor).
   ``frac_of_matmul_peak`` = XLA's cost-analysis FLOPs / median time / peak;
   ``over_weight_read_floor`` = decode step time / floor.

Host memory: ``--host-memory`` takes ``xlstm-train``'s choices and default (``auto``: transparent huge
pages where the system has them, the process starting itself again with ``GLIBC_TUNABLES`` set, else
freed memory kept; ``xlstm_jax.train.host_memory``); ``release`` leaves glibc's malloc as it is, which
maps XLA's temporary buffer afresh in 4 KiB pages on every call. ``minor_faults_per_call`` and
``system_s_per_call`` (``getrusage`` over 3 more calls) show the difference; the env row names the
mode (``host_memory``).

Output: one JSON line per program (``bench="profile"``) with ``kinds`` {kind: {ms, share, bwd_ms,
ops, mb, gb_per_s}}, the top ops, the limits and the machine's load (``/proc/loadavg`` before and after).
"""

from __future__ import annotations

import argparse
import ast
import functools
import glob
import os
import re
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from hlo_stats import instruction_bytes

import _timing as T
from _timing import loadavg

D, VOCAB = 256, 1024
TRAIN = dict(
    arch="xlstm_lm",
    embedding_dim=D,
    num_blocks=4,
    slstm_at=[1],
    mlstm=dict(num_heads=4, conv1d_kernel_size=4, qkv_proj_blocksize=4, proj_factor=2.0),
    slstm=dict(num_heads=4, conv1d_kernel_size=4, bias_init="powerlaw_blockdependent"),
    feedforward=dict(proj_factor=1.3, act_fn="gelu"),
    backend="chunkwise",
    chunk_size=64,
)
OPTIM = dict(lr=1e-3, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0)
DECODE_ARCH = dict(embedding_dim=D, num_heads=4, num_blocks=4, vocab_size=VOCAB)

# (path fragment, function names or None for any, kind); the first match wins.
KINDS = [
    (
        "xlstm_jax/nn/layers.py",
        {"HeadwiseLinear." + m for m in ("__call__", "heads_major", "fold_into")}
        | {"blockwise", "_blockwise_apply", "_blockwise_fwd", "_blockwise_bwd", "_blockwise_dw"},
        "projections (headwise q/k/v)",
    ),
    ("xlstm_jax/nn/layers.py", {"Linear.__call__"}, "projections (dense)"),
    ("xlstm_jax/nn/layers.py", {"Embed.__call__", "Embed.attend"}, "embedding + lm head"),
    ("xlstm_jax/nn/layers.py", {"CausalConv1d.__call__", "CausalConv1d.zero_state"}, "causal conv"),
    ("xlstm_jax/nn/layers.py", None, "norms, gates, activations"),
    ("xlstm_jax/ops/_slstm", None, "sLSTM scan"),
    ("xlstm_jax/ops/", None, "mLSTM cell"),
    ("xlstm_jax/backends.py", None, "mLSTM cell"),
    ("xlstm_jax/pallas_kernels/", None, "mLSTM cell"),
    ("xlstm_jax/models/", None, "norms, gates, activations"),
    ("xlstm_jax/generation/", None, "sampling + loop"),
    ("optax/losses", None, "loss"),
    ("train/step.py", {"_token_losses"}, "loss"),
    ("optax/", None, "optimizer"),
    ("train/optim.py", None, "optimizer"),
    # optax's own frames are not kept in the metadata: its ops carry the step's line that calls it
    ("train/step.py", {"make_train_step"}, "optimizer"),
]
# Helpers whose ops belong to their caller's kind (a dense projection's matmul, or the mLSTM gates'):
# the classification skips their frames.
CALLER_KIND = [("xlstm_jax/nn/layers.py", {"matmul_rows"})]
KIND_ORDER = [
    "projections (headwise q/k/v)",
    "projections (dense)",
    "embedding + lm head",
    "causal conv",
    "mLSTM cell",
    "sLSTM scan",
    "norms, gates, activations",
    "loss",
    "optimizer",
    "sampling + loop",
    "other",
]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- #
# classification: HLO op -> source location -> kind
# --------------------------------------------------------------------------- #
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?metadata=\{([^}]*)\}")
_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')
_TABLE_ROW = re.compile(r"^(\d+)\s+(.*)$")


def _tables(hlo_text: str) -> dict[str, dict[int, str]]:
    """The FileNames / FunctionNames / FileLocations / StackFrames tables of an HLO module's text."""
    tables, current = {}, None
    for line in hlo_text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = tables.setdefault(line, {})
        elif current is not None and (m := _TABLE_ROW.match(line)):
            current[int(m.group(1))] = m.group(2)
        elif not line.strip() or line.startswith("%") or line.startswith("ENTRY"):
            current = None if line.startswith(("%", "ENTRY")) else current
    return tables


def hlo_metadata(hlo_text: str) -> dict[str, dict]:
    """instruction name -> {op_name, frames: [(file, line), ...] innermost first}."""
    t = _tables(hlo_text)
    files = {k: v.strip('"') for k, v in t.get("FileNames", {}).items()}
    locs = {k: dict(_FIELD.findall(v.strip("{}"))) for k, v in t.get("FileLocations", {}).items()}
    frames = {k: dict(_FIELD.findall(v.strip("{}"))) for k, v in t.get("StackFrames", {}).items()}

    @functools.cache
    def stack(frame_id: int) -> tuple:
        out, seen = [], set()
        while frame_id in frames and frame_id not in seen:
            seen.add(frame_id)
            loc = locs.get(int(frames[frame_id]["file_location_id"]), {})
            out.append((files.get(int(loc.get("file_name_id", 0)), "?"), int(loc.get("line", 0))))
            # the text prints a parent as its id + 1 (0: none)
            frame_id = int(frames[frame_id].get("parent_frame_id", 0)) - 1
        return tuple(out)

    out = {}
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if m:
            fields = {k: v.strip('"') for k, v in _FIELD.findall(m.group(2))}
            if "stack_frame_id" in fields:
                fields["frames"] = stack(int(fields["stack_frame_id"]))
            elif "source_file" in fields:
                fields["frames"] = ((fields["source_file"], int(fields.get("source_line", 0))),)
            out[m.group(1)] = fields
    return out


@functools.cache
def _functions(path: str) -> list[tuple[int, int, str]]:
    """(first line, last line, Class.function) of every function in a Python file."""
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return []
    spans = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                spans.append((child.lineno, child.end_lineno, name))
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return spans


def enclosing_function(path: str, line: int) -> str | None:
    """The top-level function or method (Class.method) whose lines contain ``line``."""
    for first, last, name in _functions(path):
        if first <= line <= last:
            return name
    return None


# (fragment of the op's name, kind), checked before the frames: named scopes of functions whose ops
# XLA keeps only the caller's frames for (a custom VJP's backward)
NAMED_KINDS = [("blockwise_bwd", "projections (headwise q/k/v)")]


def classify(meta: dict | None) -> str:
    """The kind of the innermost frame of the op's Python stack that a ``KINDS`` rule matches
    (a ``NAMED_KINDS`` scope in the op's name first)."""
    for fragment, kind in NAMED_KINDS:
        if fragment in (meta or {}).get("op_name", ""):
            return kind
    for path, line in (meta or {}).get("frames", ()):
        path_ = path.replace("\\", "/")
        func = enclosing_function(path, line) if any(f in path_ for f, _ in CALLER_KIND) else None
        if any(f in path_ and func in funcs for f, funcs in CALLER_KIND):
            continue
        for fragment, funcs, kind in KINDS:
            if fragment in path_:
                if funcs is None:
                    return kind
                func = func or enclosing_function(path, line)
                if func in funcs:
                    return kind
    return "other"


# --------------------------------------------------------------------------- #
# the per-op profile
# --------------------------------------------------------------------------- #
def op_self_times(call, reps: int, module_prefix: str) -> dict[str, float]:
    """Seconds of self time per HLO op (summed over ``reps`` traced calls, divided by reps)."""
    import jax
    from jax.profiler import ProfileData

    with tempfile.TemporaryDirectory(prefix="profile_step_") as d:
        with jax.profiler.trace(d):
            for _ in range(reps):
                jax.block_until_ready(call())
        files = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
        data = ProfileData.from_file(files[0])
        totals = defaultdict(float)
        for plane in data.planes:
            for line in plane.lines:
                events = []
                for ev in line.events:
                    stats = dict(ev.stats)
                    if "hlo_op" in stats and str(stats.get("hlo_module", "")).startswith(module_prefix):
                        events.append((ev.start_ns, ev.start_ns + ev.duration_ns, stats["hlo_op"]))
                events.sort(key=lambda e: (e[0], -e[1]))
                stack = []  # [end, name, child time] of the open events
                for start, end, name in events:
                    while stack and stack[-1][0] <= start:
                        _close(stack, totals)
                    stack.append([end, name, 0.0, end - start])
                while stack:
                    _close(stack, totals)
    return {k: v / reps * 1e-9 for k, v in totals.items()}


def _close(stack, totals):
    end, name, child, dur = stack.pop()
    totals[name] += max(dur - child, 0.0)
    if stack:
        stack[-1][2] += dur


def breakdown(compiled, call, reps: int) -> tuple[dict, list, float]:
    """({kind: {ms, bwd_ms, ops}}, top ops, op time in s) of one call."""
    text = compiled.as_text()
    meta = hlo_metadata(text)
    moved = instruction_bytes(text)
    module = re.search(r"HloModule\s+([\w.\-]+)", text).group(1)
    times = op_self_times(call, reps, module.split(".")[0])
    kinds = {k: {"ms": 0.0, "bwd_ms": 0.0, "ops": 0, "mb": 0.0} for k in KIND_ORDER}
    rows = []
    for name, sec in times.items():
        m = meta.get(name)
        kind = classify(m)
        bwd = bool(m and "transpose(" in m.get("op_name", ""))
        kinds[kind]["ms"] += sec * 1e3
        kinds[kind]["bwd_ms"] += sec * 1e3 if bwd else 0.0
        kinds[kind]["ops"] += 1
        mb = moved.get(name, 0.0) / 1e6
        kinds[kind]["mb"] += mb
        where = ", ".join(f"{Path(f).name}:{ln}" for f, ln in (m or {}).get("frames", ())[:3]) or None
        rows.append({"op": name, "ms": sec * 1e3, "mb": mb, "gb_per_s": mb / (sec * 1e3) if sec else None,
                     "kind": kind, "bwd": bwd, "at": where})  # fmt: skip
    total = sum(times.values())
    for v in kinds.values():
        v["share"] = v["ms"] / (total * 1e3) if total else None
        v["gb_per_s"] = v["mb"] / v["ms"] if v["ms"] else None  # MB per ms
    rows.sort(key=lambda r: -r["ms"])
    return kinds, rows, total


# --------------------------------------------------------------------------- #
# programs
# --------------------------------------------------------------------------- #
def train_program(batch: int, seq_len: int, cpu_devices: int = 1, backend: str = "chunkwise"):
    """(compiled step, call, model FLOPs, XLA's FLOPs) of the trainer's step on random weights and tokens.

    ``backend``: the model's mLSTM backend (``TRAIN``'s is the XLA chunkwise form).

    The model FLOPs (``train.step.model_flops``, what the trainer's MFU counts: three times the
    forward pass's matmuls, every loop iteration counted, branches taken only on exceptional inputs
    left out) are the work the fractions of the matmul peak divide by: they stay the same whatever
    form the step takes. XLA's cost analysis (``flops``) counts a loop body once and a ``lax.cond``
    as its dearest branch, so it changes with the implementation: the chunkwise mLSTM's guarded pass
    for non-finite inputs, a branch that does not run, added a third to it (32.2 to 41.5 GFLOP for
    this step; ``benchmarks/RESULTS.md``, session 26). It is reported as well, as ``xla_flops``.

    The step is traced inside the mesh and the trainer's axis rules, as ``trainer.train`` does, so a
    kernel backend runs under ``shard_map`` (outside a mesh its custom call would be replicated).

    ``cpu_devices`` > 1: the trainer's data-parallel step (``train.step.jit_train_step`` on a
    ``mesh.data=cpu_devices`` mesh, parameters and optimizer state replicated, the batch split over
    the devices), what ``xlstm-train --cpu-devices N`` runs. The FLOPs are the unpartitioned step's
    (XLA's cost analysis of the lowered program), so the figure counts the same work either way.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from xlstm_jax import backends
    from xlstm_jax.train.config import MeshConfig, OptimConfig
    from xlstm_jax.train.mesh import batch_sharding, make_mesh, replicated
    from xlstm_jax.train.models import build_model, model_config
    from xlstm_jax.train.optim import make_optimizer
    from xlstm_jax.train.step import TrainState, jit_train_step, model_flops

    cfg = model_config(
        {**TRAIN, "backend": backend}, vocab_size=VOCAB, dtype="float32", param_dtype="float32", remat=False
    )
    graphdef, params, rest = nnx.split(build_model(cfg, 0), nnx.Param, ...)
    tx = make_optimizer(OptimConfig(schedule="constant", warmup_steps=0, **OPTIM), 1000, params)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    rng = np.random.default_rng(0)
    data = {
        "inputs": jnp.asarray(rng.integers(0, VOCAB, (batch, seq_len)), jnp.int32),
        "targets": jnp.asarray(rng.integers(0, VOCAB, (batch, seq_len)), jnp.int32),
        "loss_mask": jnp.ones((batch, seq_len), jnp.float32),
        "segment_ids": jnp.ones((batch, seq_len), jnp.int32),
    }
    work = model_flops(graphdef, rest, params, data)
    mesh_cfg = MeshConfig(data=cpu_devices)
    mesh = make_mesh(mesh_cfg, jax.devices()[:cpu_devices])
    state_sharding = jax.tree.map(lambda _: replicated(mesh), state)
    state = jax.device_put(state, state_sharding)
    data = jax.device_put(data, batch_sharding(mesh, mesh_cfg.rules))
    step = jit_train_step(graphdef, rest, tx, 1, state_sharding, batch_sharding(mesh, mesh_cfg.rules))
    with jax.set_mesh(mesh), backends.axis_rules(mesh_cfg.rules):  # as the trainer traces it (trainer.train)
        lowered = step.lower(state, data)
    compiled = lowered.compile()
    xla_flops = flops(compiled) if cpu_devices == 1 else flops(lowered)
    box = [state]

    def call():
        box[0], metrics = compiled(box[0], data)
        return box[0], metrics

    return compiled, call, work, xla_flops


def greedy_settings(steps: int):
    """``generation._loop.Settings`` of a greedy decode of ``steps`` tokens that never stops early."""
    import jax.numpy as jnp

    from xlstm_jax.generation import _loop

    return _loop.Settings(
        temperature=jnp.float32(0.0),
        top_k=jnp.int32(0),
        top_p=jnp.float32(1.0),
        eos_ids=jnp.full((8,), -1, jnp.int32),
        pad_id=jnp.int32(0),
        max_new_tokens=jnp.int32(steps),
    )


def decode_program(steps: int, prompt_len: int):
    """(compiled decode loop, call, the model's parameters) at batch 1 after a prompt."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from xlstm_jax.generation import _loop
    from xlstm_jax.models.xlstm_large import xLSTMLarge, xLSTMLargeConfig

    model = xLSTMLarge(xLSTMLargeConfig(**DECODE_ARCH), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (1, prompt_len)), jnp.int32)
    carry = _loop.prefill(graphdef, params, ids, jnp.ones_like(ids), jax.random.key(0), steps)
    settings = greedy_settings(steps)
    fn = jax.jit(functools.partial(_loop.decode.__wrapped__, graphdef, steps=steps))
    compiled = fn.lower(params, carry, settings).compile()
    return compiled, lambda: compiled(params, carry, settings), params


def matmul_peak(reps: int) -> float:
    import jax
    import jax.numpy as jnp

    n = 2048
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
    f = jax.jit(lambda x, y: x @ y).lower(a, a).compile()
    return 2 * n**3 / 1e9 / T.median_time(lambda: f(a, a), warmup=2, reps=max(reps, 5))["median_s"]


def weight_read_floor(params, reps: int) -> tuple[float, float, int]:
    """(floor s, per-matrix s, bytes): medians of reading every weight matrix's bytes once, as one
    matrix-vector product over a contiguous float32 matrix of the same size (the floor), and as one
    batch-1 product per weight matrix in one call."""
    import jax
    import jax.numpy as jnp

    mats = [
        w.reshape(-1, w.shape[-1])
        for path, w in jax.tree_util.tree_leaves_with_path(params)
        if w.ndim >= 2 and "embedding" not in jax.tree_util.keystr(path)
    ]
    head = [w for path, w in jax.tree_util.tree_leaves_with_path(params) if "embedding" in jax.tree_util.keystr(path)]
    mats += [w.T for w in head if w.ndim == 2]  # the output head reads the (tied or own) table once

    def read_all(ws):
        return [jnp.ones((1, w.shape[0]), w.dtype) @ w for w in ws]

    f = jax.jit(read_all).lower(mats).compile()
    per_matrix = T.median_time(lambda: f(mats), warmup=3, reps=max(reps, 20))["median_s"]
    nbytes = int(sum(w.size * w.dtype.itemsize for w in mats))
    cols = 1024
    flat = jnp.ones((-(-nbytes // (4 * cols)), cols), jnp.float32)  # as many bytes, rounded up to a row
    # w @ ones: the fastest of the one-pass reads timed on the Intel Xeon (a vector-matrix product,
    # column or row sums, a max: 0.50-0.58 ms for 15 MB)
    g = jax.jit(lambda w: w @ jnp.ones((w.shape[1], 1), w.dtype)).lower(flat).compile()
    floor = T.median_time(lambda: g(flat), warmup=3, reps=max(reps, 20))["median_s"]
    return floor, per_matrix, nbytes


# --------------------------------------------------------------------------- #
def flops(compiled) -> float | None:
    """XLA's FLOP count of a compiled (per device) or lowered (whole program) step."""
    try:
        ca = compiled.cost_analysis()
        ca = ca[0] if isinstance(ca, list) else ca
        return float(ca["flops"])
    except Exception:
        return None


def run_program(name, compiled, call, a, per_call_steps=1, step_flops=None):
    import jax

    idle = T.wait_for_idle_cpu(max_wait_s=a.max_idle_wait)
    with T.CpuMonitor() as mon:
        med = T.median_time(call, warmup=2, reps=a.reps)["median_s"]
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(3):
        jax.block_until_ready(call())
    after = resource.getrusage(resource.RUSAGE_SELF)
    kinds, rows, op_time = breakdown(compiled, call, a.trace_reps)
    return {
        "bench": "profile",
        "program": name,
        "median_ms": med * 1e3 / per_call_steps,
        "op_time_ms": op_time * 1e3 / per_call_steps,
        "op_time_over_wall": op_time / med,
        "flops": (step_flops or flops(compiled) or 0) / per_call_steps or None,
        "kinds": {
            k: {**v, "ms": v["ms"] / per_call_steps, "bwd_ms": v["bwd_ms"] / per_call_steps} for k, v in kinds.items()
        },
        "top_ops": [{**r, "ms": r["ms"] / per_call_steps} for r in rows[: a.top]],
        "cpu_busy_before": idle["cpu_busy_before"],
        "cpu_other_during": mon.other,
        # page faults and kernel time per call (the first touch of freshly mapped buffers: --host-memory)
        "minor_faults_per_call": (after.ru_minflt - before.ru_minflt) / 3 / per_call_steps,
        "system_s_per_call": (after.ru_stime - before.ru_stime) / 3 / per_call_steps,
    }


def markdown(records) -> str:
    progs = [r for r in records if r.get("bench") == "profile"]
    head = "| op kind | " + " | ".join(f"{r['program']} ms (share)" for r in progs) + " |"
    lines = [head, "| --- |" + " --- |" * len(progs)]
    for k in KIND_ORDER:
        cells = []
        for r in progs:
            v = r["kinds"][k]
            cells.append(f"{v['ms']:.3g} ({100 * v['share']:.0f}%)" if v["ops"] else "-")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append(
        "| **op time / wall time** | "
        + " | ".join(f"{r['op_time_ms']:.3g} / {r['median_ms']:.3g}" for r in progs)
        + " |"
    )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=["train", "decode"], default=None)
    p.add_argument("--reps", type=int, default=7, help="timed calls per program (median)")
    p.add_argument("--trace-reps", type=int, default=3, help="calls traced for the per-op profile")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--decode-steps", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--top", type=int, default=15, help="top ops listed per program")
    p.add_argument("--max-idle-wait", type=float, default=60.0, help="seconds to wait for an idle CPU per program")
    p.add_argument("--markdown", action="store_true", help="print a markdown table to stderr")
    p.add_argument("--cpu-devices", default="1",
                   help="train: run the trainer's data-parallel step over N CPU devices (an integer, or 'auto': "
                   "one per usable core, as xlstm-train --cpu-devices auto); decode stays on one device")  # fmt: skip
    p.add_argument("--backend", default="chunkwise", help="train: the model's mLSTM backend (cpu_ffi: the C++ kernel)")
    p.add_argument("--host-memory", choices=("auto", "huge-pages", "keep", "release"), default="auto",
                   help="as xlstm-train's --host-memory (module docstring); release: malloc as it is")  # fmt: skip
    a = p.parse_args(argv)

    from xlstm_jax.train import host_memory

    memory_mode = host_memory.resolve(a.host_memory, cpu_devices=1)  # this benchmark runs on the CPU
    applied = host_memory.apply(memory_mode, may_restart=argv is None)  # before JAX starts its threads
    kept = memory_mode == "keep" and applied

    import jax

    from xlstm_jax.train.cli import cpu_device_count

    a.cpu_devices = cpu_device_count(a.cpu_devices)
    if a.cpu_devices > 1:
        jax.config.update("jax_num_cpu_devices", a.cpu_devices)

    load0 = loadavg()
    peak = matmul_peak(a.reps)
    env = {
        "bench": "env",
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "cpu": T.cpu_model(),
        "argv": sys.argv[1:],
        "matmul_peak_gflop_per_s": peak,
        "cpu_devices": a.cpu_devices,
        "host_memory": memory_mode,
        "host_memory_kept": kept,
        "huge_pages_active": host_memory.huge_pages_active(),
    }
    T.emit(env)
    log(f"matmul peak {peak:.1f} GFLOP/s")
    records = [env]
    if a.only in (None, "train"):
        t0 = time.perf_counter()
        compiled, call, step_flops, xla_flops = train_program(a.batch, a.seq_len, a.cpu_devices, a.backend)
        log(f"train step compiled in {time.perf_counter() - t0:.1f} s")
        r = run_program("train", compiled, call, a, step_flops=step_flops)
        r["xla_flops"] = xla_flops
        r["frac_of_matmul_peak"] = r["flops"] / (r["median_ms"] * 1e-3) / 1e9 / peak if r["flops"] else None
        r.update(B=a.batch, S=a.seq_len, matmul_peak_gflop_per_s=peak, cpu_devices=a.cpu_devices, backend=a.backend)
        records.append(r)
        T.emit(r)
    if a.only in (None, "decode"):
        t0 = time.perf_counter()
        compiled, call, params = decode_program(a.decode_steps, a.prompt_len)
        log(f"decode loop compiled in {time.perf_counter() - t0:.1f} s")
        r = run_program("decode", compiled, call, a, per_call_steps=a.decode_steps)
        floor_s, per_matrix_s, nbytes = weight_read_floor(params, a.reps)
        r.update(
            weight_read_floor_ms=floor_s * 1e3,
            weight_read_per_matrix_ms=per_matrix_s * 1e3,
            weight_bytes=nbytes,
            over_weight_read_floor=r["median_ms"] / (floor_s * 1e3),
            steps_per_call=a.decode_steps,
            matmul_peak_gflop_per_s=peak,
        )
        records.append(r)
        T.emit(r)
    T.emit({"bench": "load", "loadavg_before": load0, "loadavg_after": loadavg()})
    if a.markdown:
        log(markdown(records))


if __name__ == "__main__":
    main()
