"""Compile the GPU (Pallas-Triton) kernels for an H100 without one: registers, spills, shared memory.

Lowers the chunkwise mLSTM kernels (forward and VJP) and the fused sLSTM kernels (forward and VJP)
for CUDA on this machine, takes each kernel's Triton IR from JAX's Pallas-Triton lowering, compiles
it with the ``triton`` package for ``sm_90a`` (no GPU or driver needed) and reads ``ptxas -v``:

    python -m pip install triton          # the compiler only; no GPU needed
    python benchmarks/gpu_compile_report.py
    python benchmarks/gpu_compile_report.py --warps 4,8 --stages 1,2,3   # sweep launch parameters
    python benchmarks/gpu_compile_report.py --mlstm-blocks 64,64,64,64,64 --warps 4,8
    python benchmarks/gpu_compile_report.py --skip-mlstm --slstm-dh 128,512 --slstm-recurrent-dtype bfloat16

Prints one JSON line per (kernel, num_warps, num_stages): registers per thread, spill stores/loads
and stack frame (bytes per thread), static + dynamic shared memory (bytes per program), and
whether it fits an H100 (255 registers, 227 KiB shared memory per block). ``"default": true``
marks the launch parameters the kernel runs with today. The last line is a summary.

What this is and is not: a compile of the same Triton IR that jaxlib hands to its own Triton
pipeline, through the ``triton`` wheel's pipeline (versions can differ), so register and shared
memory numbers are close but not guaranteed equal to what XLA's GPU backend produces. It says
nothing about speed; ``bench_kernels.py`` on a GPU does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

from cuda_lowering import triton_kernels
from xlstm_jax.pallas_kernels.mlstm.config import MLSTMBlocks
from xlstm_jax.pallas_kernels.mlstm.gpu import choose_blocks, mlstm_chunkwise_gpu
from xlstm_jax.pallas_kernels.slstm.config import default_blocks as slstm_default_blocks
from xlstm_jax.pallas_kernels.slstm.gpu import slstm_scan_gpu

H100_MAX_REGISTERS = 255
H100_MAX_SHARED = 227 * 1024  # opt-in dynamic shared memory per block on sm_90
_PTXAS = re.compile(
    r"Function properties for (\w+)\s+(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
    r"\s+ptxas[\w-]* info\s+: Used (\d+) registers"
)


def _mlstm_kernels(dtype, s: int, dhqk: int, dhv: int, blocks: MLSTMBlocks | None):
    sds = jax.ShapeDtypeStruct
    b, nh = 1, 2
    args = (
        sds((b, nh, s, dhqk), dtype),
        sds((b, nh, s, dhqk), dtype),
        sds((b, nh, s, dhv), dtype),
        sds((b, nh, s), jnp.float32),
        sds((b, nh, s), jnp.float32),
    )

    def vjp(*a):
        out, pullback = jax.vjp(lambda *x: mlstm_chunkwise_gpu(*x, blocks=blocks)[0], *a)
        return pullback(jnp.ones_like(out))

    return triton_kernels(vjp, *args)


def _slstm_kernels(dtype, batch: int, s: int, nh: int, dh: int, blocks=None):
    sds = jax.ShapeDtypeStruct
    args = (sds((batch, s, 4, nh, dh), dtype), sds((nh, dh, 4, dh), jnp.float32), sds((nh, 4, dh), jnp.float32))

    def vjp(*a):
        out, pullback = jax.vjp(lambda *x: slstm_scan_gpu(*x, blocks=blocks)[0], *a)
        return pullback(jnp.ones_like(out))

    return triton_kernels(vjp, *args)


def _ptxas(triton_module) -> str:
    root = Path(triton_module.__file__).parent / "backends" / "nvidia" / "bin"
    for name in ("ptxas-blackwell", "ptxas"):  # the newer one reads the PTX versions newer Triton writes
        if (root / name).exists():
            return str(root / name)
    raise FileNotFoundError(f"no ptxas under {root}")


def _compile(triton, ptxas: str, name: str, ttir: str, num_warps: int, num_stages: int, arch: str) -> dict:
    from triton.backends.compiler import GPUTarget

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ttir"
        src.write_text(ttir)
        capability = int(re.fullmatch(r"sm_(\d+)a?", arch).group(1))
        options = {"num_warps": num_warps, "num_stages": num_stages}
        kernel = triton.compile(str(src), target=GPUTarget("cuda", capability, 32), options=options)
        ptx = Path(tmp) / "kernel.ptx"
        ptx.write_text(kernel.asm["ptx"])
        cmd = [ptxas, "-v", f"--gpu-name={arch}", str(ptx), "-o", os.devnull]
        out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"ptxas failed: {out.stderr.strip()[-500:]}")
    props = {m.group(1): m.groups()[1:] for m in _PTXAS.finditer(out.stderr)}
    if name not in props:
        raise RuntimeError(f"no ptxas -v report for {name}: {out.stderr.strip()[-500:]}")
    stack, spill_stores, spill_loads, registers = map(int, props[name])
    static_smem = re.search(r"(\d+) bytes smem", out.stderr)
    shared = kernel.metadata.shared + (int(static_smem.group(1)) if static_smem else 0)
    row = {
        "registers": registers,
        "spill_stores": spill_stores,
        "spill_loads": spill_loads,
        "stack_frame": stack,
        "shared_bytes": shared,
    }
    row["fits_h100"] = row["registers"] <= H100_MAX_REGISTERS and shared <= H100_MAX_SHARED
    return row


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="sm_90a", help="ptxas target (H100: sm_90a)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--seq", type=int, default=1024, help="sequence length of the lowered calls")
    parser.add_argument("--dhqk", type=int, default=128)
    parser.add_argument("--dhv", type=int, default=256)
    parser.add_argument(
        "--mlstm-blocks", default="", help="chunk,block_q,block_kv,block_dqk,block_dv (default: choose_blocks())"
    )
    parser.add_argument("--skip-mlstm", action="store_true", help="compile only the sLSTM kernels")
    parser.add_argument("--slstm-dh", default="64,128", help="sLSTM head dims to compile ('' skips sLSTM)")
    parser.add_argument("--slstm-block-dh", type=int, default=0, help="sLSTM head-dim tile (default: default_blocks)")
    parser.add_argument("--slstm-recurrent-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--warps", default="", help="num_warps to sweep (default: each kernel's own)")
    parser.add_argument("--stages", default="", help="num_stages to sweep (default: each kernel's own)")
    args = parser.parse_args()
    try:
        import triton
    except ImportError:
        sys.exit("this report needs the Triton compiler: python -m pip install triton")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's current default, stated to silence its warning
    ptxas = _ptxas(triton)
    dtype = jnp.dtype(args.dtype)

    blocks = None
    if args.mlstm_blocks:
        blocks = choose_blocks(args.dhqk, args.dhv, blocks=MLSTMBlocks(*_ints(args.mlstm_blocks)))
    shown = blocks or choose_blocks(args.dhqk, args.dhv)
    families = []
    if not args.skip_mlstm:
        tiles = f"{shown.chunk_size},{shown.block_q},{shown.block_kv},{shown.block_dqk},{shown.block_dv}"
        family = f"mlstm DHQK={args.dhqk} DHV={args.dhv} tiles={tiles}"
        families.append((family, _mlstm_kernels(dtype, args.seq, args.dhqk, args.dhv, blocks)))
    for dh in _ints(args.slstm_dh):
        bb = slstm_default_blocks("gpu", 16, dh)
        if args.slstm_block_dh:
            bb = dataclasses.replace(bb, block_dh=args.slstm_block_dh).validate_for("gpu", dh)
        bb = dataclasses.replace(bb, recurrent_dtype=args.slstm_recurrent_dtype)
        family = f"slstm DH={dh} block_b={bb.block_b} block_dh={bb.block_dh} recurrent {bb.recurrent_dtype}"
        families.append((family, _slstm_kernels(dtype, 16, 64, 2, dh, bb)))

    rows = []
    for family, kernels in families:
        for name, k in sorted(kernels.items()):
            for warps in _ints(args.warps) or [k.num_warps]:
                for stages in _ints(args.stages) or [k.num_stages]:
                    row = {"family": family, "kernel": name, "dtype": args.dtype}
                    row.update(num_warps=warps, num_stages=stages)
                    row["default"] = (warps, stages) == (k.num_warps, k.num_stages)
                    try:
                        row.update(_compile(triton, ptxas, name, k.ttir, warps, stages, args.arch))
                    except Exception as e:  # a config that does not compile is a result, not a crash
                        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    defaults = [r for r in rows if r["default"] and "error" not in r]
    print(
        json.dumps(
            {
                "summary": True,
                "arch": args.arch,
                "compiler": f"triton {triton.__version__} (pip wheel; jaxlib bundles its own Triton)",
                "jax": jax.__version__,
                "default_kernels": len(defaults),
                "default_kernels_spilling": sorted(r["kernel"] for r in defaults if r["spill_stores"]),
                "default_kernels_not_fitting": sorted(r["kernel"] for r in defaults if not r["fits_h100"]),
                "errors": sum("error" in r for r in rows),
            }
        )
    )


if __name__ == "__main__":
    main()
