"""How close to the matmul peak could a program get, given what its dots and its bytes cost alone?

Run from the repository root::

    python benchmarks/dot_bound.py                          # train step and chunkwise forward, ~3 minutes
    python benchmarks/dot_bound.py --cpu-devices 2          # the data-parallel step, the heads over 2 devices
    python benchmarks/dot_bound.py --only chunkwise

The issue-14 targets put a program's FLOPs (the training step's model FLOPs, ``profile_step.train_program``;
the chunkwise forward's analytic count) over its time against the 2048² float32 matmul peak.
Most of those FLOPs are in ``dot`` instructions whose shapes are far from 2048²: 64x64 chunk
matrices, (2048, 256) x (256, 1024) projections, the sLSTM's 8-row recurrent products. This script
measures what those dots cost on this machine, one at a time, and what the program's other
instructions (elementwise work, layout copies, reductions) would cost if they ran at the memory rate
an elementwise pass reaches. Their sum is a floor under the program's time as XLA compiled it, and
the FLOPs over it an upper bound on ``frac_of_matmul_peak``.

Method:

1. Compile the program (the trainer's step of ``profile_step.py``, or the forward of
   ``ops.mlstm_chunkwise`` at ``bench_ops.py``'s S=4096 shape; with ``--cpu-devices N`` the
   data-parallel step, or the heads split over the devices) and time it (median of ``--reps``).
2. Read every ``dot`` from the optimized HLO text (per device), with how often it runs per call:
   its computation's weight from ``hlo_stats`` (a ``while`` body counts its trip count; of a
   ``conditional``'s branches only the cheapest). Also the bytes every other instruction outside
   fusions reads and writes (``other_bytes``; ``hlo_stats``' count, slices in place).
3. Time each distinct dot (operand shapes, dimension numbers) alone: a jitted ``lax.fori_loop`` that
   repeats ``lax.dot_general`` on operands of those shapes (one element of the left operand rewritten
   from the output after an ``optimization_barrier``, so the product is neither hoisted out of the
   loop nor narrowed), minus the same loop without the dot; per-iteration median over ``--reps``
   calls of at least ``--min-call-ms`` each. All dots are timed in ``--rounds`` rounds and each
   keeps its fastest round: a burst of other load on this shared machine once doubled a few dots'
   times in a single pass (``ms_rounds`` shows the spread). With N devices the loop runs on all of
   them at once (``jax.shard_map``), as the step's replicas do.
4. ``dot_ms`` = sum over dots of (runs per call x time alone). ``bound_frac_of_peak`` = the
   program's FLOPs / ``dot_ms`` / peak: the program's ``frac_of_matmul_peak`` if only its dots took
   time, at the speed they reach alone. ``dot_share_of_wall`` = ``dot_ms`` / the program's time.
5. ``bandwidth_gb_per_s_per_device``: ``x + 1`` on float32 arrays of 1-64 MiB per device (all
   devices at once); the fastest size counts. ``other_floor_ms`` = ``other_bytes`` / that rate;
   ``floor_ms`` = ``dot_ms`` + ``other_floor_ms`` (a device runs its ops mostly one after another:
   ``profile_step.py`` finds op time close to wall time on one device) and ``floor_frac_of_peak``
   the FLOPs over it.
6. With ``--trace-reps`` > 0, XLA's per-op profile of the program (``profile_step.op_self_times``)
   splits its op time into the dot instructions (``dot_ops_in_program_ms``: the same dots in place,
   to compare with ``dot_ms``) and the rest (``other_ops_in_program_ms``, to compare with
   ``other_floor_ms``). Like ``profile_step``'s op time these are summed over the devices' threads:
   with N devices, divide by N to compare with the per-device ``dot_ms`` and ``other_floor_ms``.

Host memory: by default malloc is left as it is (XLA's temporary buffers are mapped afresh on every
call, runs ``s22-a``/``s22-b`` of ``results_dot_bound_cpu.jsonl``). ``--host-memory keep`` keeps freed
memory, as ``xlstm-train`` does on a CPU without transparent huge pages (run ``s22-keep``): the
program's other ops lose their page faults, but with two devices the single malloc arena it needs
slows the standalone dot loops (the chunkwise forward's dots 6.2 ms instead of 3.5), which would
lower the bound.
The peak and the memory rate are measured at the start and the end of the run (both move between
runs on this machine); fractions use the larger of each. All operand layouts in these programs are
row-major (checked: ``non_default_layouts`` counts the others), so the standalone dots see the
step's layouts. One JSON line per program (``bench="dot_bound"``), the ``dots`` sorted by total time.
"""

from __future__ import annotations

import argparse
import collections
import functools
import re
import sys
import time

import bench_ops
import hlo_stats
import numpy as np
import profile_step

import _timing as T

_DIMS = re.compile(r"(lhs_batch_dims|lhs_contracting_dims|rhs_batch_dims|rhs_contracting_dims)=\{([\d,]*)\}")
_LISTED = ("lhs", "rhs", "runs", "ms", "ms_rounds", "total_ms", "gflop_per_s")
_TYPE = re.compile(r"^(\w+)\[([\d,]*)\](?:\{([\d,]*)\})?")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def _shape(type_text: str) -> tuple[str, tuple[int, ...], bool]:
    """(dtype, dims, row-major layout?) of an HLO array type like ``f32[4,8,64]{2,1,0}``."""
    m = _TYPE.match(type_text)
    dims = tuple(int(x) for x in m.group(2).split(",") if x)
    layout = tuple(int(x) for x in m.group(3).split(",") if x) if m.group(3) is not None else None
    return m.group(1), dims, layout in (None, tuple(range(len(dims) - 1, -1, -1)))


# the key under which ``program_dots``' call graph counts the bytes moved by everything but the dots
OTHER_BYTES = "other_bytes"


def program_dots(hlo_text: str) -> tuple[list[dict], dict, int]:
    """The distinct dots of a compiled module, the module's call graph and the number of dot
    operands with a layout that is not row-major.

    ``dots``: list of {dtype, lhs, rhs, numbers, flop}; the call graph (see ``per_call``) says how
    often each runs, and how many bytes the other instructions read and write (``OTHER_BYTES``:
    every instruction outside fusions that is not a dot or a fusion containing one, its operands and
    output as ``hlo_stats`` counts them, slices in place); its ``dot_ops`` names the instructions
    that are dots or contain one."""
    computations, roots, entry = hlo_stats._parse(hlo_text)
    _, inside_fusion, _, trips = hlo_stats._weights(computations, roots, entry)
    all_types = {inst[0]: inst[1] for instructions in computations.values() for inst in instructions}

    def is_dot(inst) -> bool:
        """A dot, or an instruction whose called computations (fusions, nested) contain one."""
        return inst[2] == "dot" or any(has_dot(c) for k, c in hlo_stats._CALLEES.findall(inst[4]) if k == "calls")

    @functools.cache
    def has_dot(name: str) -> bool:
        return any(is_dot(inst) for inst in computations.get(name, ()))

    keys, own, calls, odd, dot_ops = {}, {}, {}, 0, set()
    for name, instructions in computations.items():
        own[name], calls[name] = collections.Counter(), []
        for inst_name, type_text, opcode, operands, attrs in instructions:
            branches = [b.strip().lstrip("%") for g in hlo_stats._BRANCHES.findall(attrs) for b in g.split(",")]
            if opcode == "conditional":
                calls[name].append(("branches", [b for b in branches if b], 1))
            for kind, callee in hlo_stats._CALLEES.findall(attrs):
                if kind in ("body", "condition"):
                    calls[name].append(("call", [callee], trips.get(inst_name, 1)))
                elif kind == "calls":
                    calls[name].append(("call", [callee], 1))
            if opcode != "dot":
                continue
            dims = dict(_DIMS.findall(attrs))
            parsed = [_shape(all_types[o]) for o in operands[:2]] + [_shape(type_text)]
            odd += sum(not row_major for _, _, row_major in parsed)
            names = ("lhs_contracting_dims", "rhs_contracting_dims", "lhs_batch_dims", "rhs_batch_dims")
            numbers = tuple(tuple(int(x) for x in dims.get(k, "").split(",") if x) for k in names)
            key = (parsed[0][0], parsed[0][1], parsed[1][1], numbers)
            own[name][key] += 1
            keys[key] = None
    for name, inst, moved in hlo_stats._moves(computations, roots, all_types, inside_fusion):
        if is_dot(inst):
            dot_ops.add(inst[0])
        else:
            own[name][OTHER_BYTES] += moved
    dots = []
    for dtype, lhs, rhs, numbers in keys:
        contracted = int(np.prod([lhs[d] for d in numbers[0]]))
        batch = int(np.prod([lhs[d] for d in numbers[2]]))
        out = int(np.prod(lhs)) * int(np.prod(rhs)) // (contracted**2 * batch)
        dots.append(dict(key=(dtype, lhs, rhs, numbers), dtype=dtype, lhs=lhs, rhs=rhs, numbers=numbers,
                         flop=2 * out * contracted))  # fmt: skip
    return dots, {"entry": entry, "own": own, "calls": calls, "dot_ops": dot_ops}, odd


def per_call(graph: dict, seconds: dict) -> collections.Counter:
    """How often each dot runs in one call of the module, and the ``OTHER_BYTES`` moved: a ``while``
    body and condition by the loop's trip count, fusions and calls once, and of a ``conditional``'s
    branches only the one that takes the least time (``seconds``: dot key -> seconds per run,
    ``OTHER_BYTES`` -> seconds per byte), so the sums are lower bounds whichever branch runs."""

    @functools.cache
    def runs(name: str) -> tuple:
        total = collections.Counter(graph["own"].get(name, {}))
        for kind, callees, factor in graph["calls"].get(name, ()):
            options = [collections.Counter(dict(runs(c))) for c in callees]
            if kind == "branches":
                options = [min(options, key=lambda r: sum(seconds[k] * n for k, n in r.items()))] if options else []
            for r in options:
                for k, n in r.items():
                    total[k] += n * factor
        return tuple(total.items())

    return collections.Counter(dict(runs(graph["entry"])))


def _loop(dot, iters: int, with_dot: bool):
    """``iters`` dependent repetitions of ``dot(a, b)`` (or the same loop without it)."""
    import jax

    def run(a, b, out):
        def body(_, carry):
            a, out = carry
            if with_dot:
                out = dot(a, b)
            a, out = jax.lax.optimization_barrier((a, out))
            first = (0,) * a.ndim
            a = a.at[first].set(a[first] + 0.0 * out[(0,) * out.ndim])  # depends on the product
            return a, out

        return jax.lax.fori_loop(0, iters, body, (a, out))[1]

    return run


def _on_devices(devices: int):
    """(sharding of a leading axis over the first ``devices`` devices, ``f`` -> jitted ``f`` run on
    each device's slice at once)."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = jax.make_mesh((devices,), ("d",), devices=jax.devices()[:devices])
    spec = PartitionSpec("d")
    run = lambda f: jax.jit(jax.shard_map(f, mesh=mesh, in_specs=spec, out_specs=spec))
    return NamedSharding(mesh, spec), run


def dot_timer(spec: dict, devices: int, reps: int, min_call_ms: float):
    """A function that times the dot of ``spec`` alone (on ``devices`` devices at once) and returns
    seconds per dot, the empty loop subtracted; compiled once, so it can be called in several rounds."""
    import jax
    import jax.numpy as jnp

    lc, rc, lb, rb = spec["numbers"]
    dot = functools.partial(jax.lax.dot_general, dimension_numbers=((lc, rc), (lb, rb)))
    dtype = jnp.dtype({"f32": "float32", "bf16": "bfloat16", "f64": "float64"}.get(spec["dtype"], spec["dtype"]))
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((devices, *spec["lhs"])), dtype)
    b = jnp.asarray(rng.standard_normal((devices, *spec["rhs"])), dtype)
    out = jnp.zeros((devices, *jax.eval_shape(dot, a[0], b[0]).shape), dtype)
    sharding, on_devices = _on_devices(devices)
    a, b, out = (jax.device_put(x, sharding) for x in (a, b, out))

    def compiled(iters, with_dot):
        body = _loop(dot, iters, with_dot)
        return on_devices(lambda a, b, out: body(a[0], b[0], out[0])[None]).lower(a, b, out).compile()

    probe = compiled(16, True)
    per_iter = T.median_time(lambda: probe(a, b, out), warmup=1, reps=3)["median_s"] / 16
    iters = int(max(16, min(1_000_000, min_call_ms * 1e-3 / max(per_iter, 1e-7))))
    full, empty = compiled(iters, True), compiled(iters, False)

    def once() -> float:
        t_full = T.median_time(lambda: full(a, b, out), warmup=1, reps=reps)["median_s"]
        t_empty = T.median_time(lambda: empty(a, b, out), warmup=1, reps=reps)["median_s"]
        return max(t_full - t_empty, 0.0) / iters

    return once


def bandwidth(devices: int, reps: int) -> dict:
    """Bytes per second an elementwise pass reaches, per device, with all ``devices`` running one
    at once: ``x + 1`` (read and write) on float32 arrays of 1 to 64 MiB per device. The fastest size
    counts (``best``): a floor must not assume a slower memory than the program could find."""
    import jax
    import jax.numpy as jnp

    sharding, on_devices = _on_devices(devices)
    add = on_devices(lambda x: x + 1.0)
    rates = {}
    for mib in (1, 4, 16, 64):
        x = jax.device_put(jnp.zeros((devices, mib * 2**18), jnp.float32), sharding)
        t = T.median_time(lambda x=x: add(x), warmup=2, reps=max(reps, 9), min_time_s=0.2)["median_s"]
        rates[f"{mib}MiB"] = 2 * mib * 2**20 / t
    return {"best": max(rates.values()), "by_mib": rates}


def chunkwise_inputs(b: int, nh: int, seq_len: int, d: int) -> tuple[np.ndarray, ...]:
    """The chunkwise forward's float32 inputs from seed 0 (NumPy): q, k, v (B, NH, S, D), i, f (B, NH, S).

    Shared by ``chunkwise_program``, ``chunkwise_ablation.py`` and ``chunkwise_processes.py``."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((b, nh, seq_len, d)).astype(np.float32) for _ in range(3))
    i = rng.standard_normal((b, nh, seq_len)).astype(np.float32)
    f = (rng.standard_normal((b, nh, seq_len)) + 3.0).astype(np.float32)
    return q, k, v, i, f


def chunkwise_program(devices: int, seq_len: int):
    """(compiled forward, call, analytic FLOPs) of ``mlstm_chunkwise`` at bench_ops' S=4096 shape."""
    import jax
    import jax.numpy as jnp

    from xlstm_jax import ops

    b, nh, d, chunk = 1, 4, 64, 64
    q, k, v, i, f = map(jnp.asarray, chunkwise_inputs(b, nh, seq_len, d))
    h = lambda *x: ops.mlstm_chunkwise(*x, chunk_size=chunk)[0]
    if devices > 1:
        h = bench_ops.heads_over_devices(h)
        q, k, v, i, f = (jax.device_put(x, bench_ops.heads_sharding()) for x in (q, k, v, i, f))
    args = (q, k, v, i, f)
    compiled = jax.jit(h).lower(*args).compile()
    return compiled, lambda: compiled(*args), bench_ops.flops_chunkwise_fwd(b, nh, seq_len, d, d, chunk)


def measure(name: str, compiled, call, flop: float, bandwidth: float, a) -> dict:
    """The row of one program; ``bandwidth`` (bytes/s) only chooses a ``conditional``'s cheaper branch."""
    dots, graph, odd = program_dots(compiled.as_text())
    T.wait_for_idle_cpu(max_wait_s=a.max_idle_wait)
    with T.CpuMonitor() as mon:
        wall = T.median_time(call, warmup=2, reps=a.reps)["median_s"]
    t0 = time.perf_counter()
    timers = [dot_timer(spec, a.cpu_devices, a.reps, a.min_call_ms) for spec in dots]
    for spec in dots:
        spec["ms_rounds"] = []
    for _ in range(a.rounds):  # all dots, then all again: a burst of other load slows one round of a few
        for spec, once in zip(dots, timers, strict=True):
            spec["ms_rounds"].append(once() * 1e3)
    for spec in dots:
        spec["ms"] = min(spec["ms_rounds"])
    log(f"{name}: {len(dots)} distinct dots timed in {a.rounds} rounds in {time.perf_counter() - t0:.0f} s")
    runs = per_call(graph, {**{s["key"]: s["ms"] for s in dots}, OTHER_BYTES: 1e3 / bandwidth})
    for spec in dots:
        spec["runs"] = runs.get(spec["key"], 0)
        spec["total_ms"] = spec["ms"] * spec["runs"]
        spec["gflop_per_s"] = spec["flop"] / (spec["ms"] * 1e-3) / 1e9 * a.cpu_devices if spec["ms"] else None
    dots.sort(key=lambda s: -s["total_ms"])
    dot_ms = sum(s["total_ms"] for s in dots)
    in_step = {}
    if a.trace_reps:  # the same dots inside the program: XLA's per-op profile (profile_step's recipe)
        module = re.search(r"HloModule\s+([\w.\-]+)", compiled.as_text()).group(1).split(".")[0]
        times = profile_step.op_self_times(call, a.trace_reps, module)
        in_step = {
            "dot_ops_in_program_ms": sum(t for op, t in times.items() if op in graph["dot_ops"]) * 1e3,
            "other_ops_in_program_ms": sum(t for op, t in times.items() if op not in graph["dot_ops"]) * 1e3,
        }
    return {
        "bench": "dot_bound",
        "program": name,
        "cpu_devices": a.cpu_devices,
        "median_ms": wall * 1e3,
        "flops": flop,
        "dot_flops": sum(s["flop"] * s["runs"] for s in dots) * a.cpu_devices,
        "dot_ms": dot_ms,
        "dot_share_of_wall": dot_ms / (wall * 1e3),
        "other_bytes": runs.get(OTHER_BYTES, 0.0),
        **in_step,
        "non_default_layouts": odd,
        "cpu_other_during": mon.other,
        "dots": [{**{k: s[k] for k in _LISTED}, "dims": s["numbers"]} for s in dots[: a.top]],
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=["train", "chunkwise"], default=None)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--min-call-ms", type=float, default=30.0, help="length of one timed loop call per dot")
    p.add_argument("--rounds", type=int, default=3, help="each dot's time alone is its fastest round's median")
    p.add_argument("--trace-reps", type=int, default=2, help="calls traced for the in-program op times (0: none)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256, help="train step's S (the chunkwise program uses 4096)")
    p.add_argument("--top", type=int, default=12, help="dots listed per program")
    p.add_argument("--max-idle-wait", type=float, default=60.0)
    p.add_argument("--cpu-devices", default="1", help="an integer, or 'auto' (one per usable core)")
    p.add_argument("--host-memory", choices=("keep", "release"), default="release",
                   help="release: malloc as it is; keep: freed memory kept (module docstring)")  # fmt: skip
    a = p.parse_args(argv)

    from xlstm_jax.train import host_memory

    kept = a.host_memory == "keep" and host_memory.keep_freed_host_memory()  # before JAX starts its threads

    import jax

    from xlstm_jax.train.cli import cpu_device_count

    a.cpu_devices = cpu_device_count(a.cpu_devices)
    if a.cpu_devices > 1:
        jax.config.update("jax_num_cpu_devices", a.cpu_devices)
    load0 = T.loadavg()
    peaks = [profile_step.matmul_peak(a.reps)]
    rates = [bandwidth(a.cpu_devices, a.reps)]
    env = {"bench": "env", "jax": jax.__version__, "cpu": T.cpu_model(), "argv": sys.argv[1:], "host_memory_kept": kept}
    T.emit(env)
    rows = []
    if a.only in (None, "train"):
        compiled, call, flop, _ = profile_step.train_program(a.batch, a.seq_len, a.cpu_devices)
        rows.append(measure("train", compiled, call, flop, rates[0]["best"], a))
    if a.only in (None, "chunkwise"):
        compiled, call, flop = chunkwise_program(a.cpu_devices, 4096)
        rows.append(measure("chunkwise_fwd_S4096", compiled, call, flop, rates[0]["best"], a))
    peaks.append(profile_step.matmul_peak(a.reps))
    rates.append(bandwidth(a.cpu_devices, a.reps))
    peak, rate = max(peaks), max(r["best"] for r in rates)
    for r in rows:
        other_ms = r["other_bytes"] / rate * 1e3
        r.update(
            matmul_peak_gflop_per_s=peaks,
            bandwidth_gb_per_s_per_device=[
                {k: v / 1e9 for k, v in (("best", x["best"]), *x["by_mib"].items())} for x in rates
            ],
            frac_of_matmul_peak=r["flops"] / (r["median_ms"] * 1e-3) / 1e9 / peak,
            bound_frac_of_peak=r["flops"] / (r["dot_ms"] * 1e-3) / 1e9 / peak,
            other_floor_ms=other_ms,
            floor_ms=r["dot_ms"] + other_ms,
            floor_frac_of_peak=r["flops"] / ((r["dot_ms"] + other_ms) * 1e-3) / 1e9 / peak,
            loadavg=[load0, T.loadavg()],
        )
        T.emit(r)
        log(f"{r['program']}: {r['median_ms']:.1f} ms ({100 * r['frac_of_matmul_peak']:.1f}% of {peak:.0f} GFLOP/s); "
            f"dots alone {r['dot_ms']:.1f} ms -> bound {100 * r['bound_frac_of_peak']:.1f}%; "
            f"other bytes {r['other_bytes'] / 1e9:.2f} GB at {rate / 1e9:.1f} GB/s = {other_ms:.1f} ms; "
            f"dots + bytes {r['floor_ms']:.1f} ms -> {100 * r['floor_frac_of_peak']:.1f}%")  # fmt: skip
        if "dot_ops_in_program_ms" in r:
            log(f"  in the program's profile: dot ops {r['dot_ops_in_program_ms']:.1f} ms, "
                f"other ops {r['other_ops_in_program_ms']:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
