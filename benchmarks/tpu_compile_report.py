"""Compile the TPU (Mosaic) kernels for TPU v4 / v5e / v5p / v6e without a TPU.

JAX compiles ahead of time for a TPU topology described by ``libtpu`` on a CPU-only machine: this
runs the real Mosaic compiler (VMEM allocation, layouts, block shapes), which cross-lowering alone
does not. For each TPU generation it compiles the chunkwise mLSTM kernels (forward and VJP) and the
fused sLSTM kernels (forward and VJP) at production sizes and prints one JSON line per case
(compiled or the compiler's error, compile seconds); the last line is a summary::

    python -m pip install "libtpu==0.0.42.*"      # the version jax 0.10.2 pins (jax[tpu])
    JAX_PLATFORMS=cpu python benchmarks/tpu_compile_report.py
    JAX_PLATFORMS=cpu python benchmarks/tpu_compile_report.py --chips v5e --slstm-dh 512

A case the kernels refuse before compiling (``check_fits``: more VMEM than the chip has) is reported
as ``"refused"`` with the reason; ``backend="pallas_tpu"`` runs the XLA scan there. Nothing here
runs a kernel: it says nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
from jax.sharding import AbstractDevice, AbstractMesh

from xlstm_jax.pallas_kernels.mlstm.tpu import mlstm_chunkwise_tpu
from xlstm_jax.pallas_kernels.slstm.config import default_blocks
from xlstm_jax.pallas_kernels.slstm.tpu import check_fits, slstm_scan_tpu

TOPOLOGIES = {"v4": "v4:2x2x1", "v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}


def _vjp(fn):
    def run(*args):
        out, pullback = jax.vjp(fn, *args)
        return pullback(jnp.ones_like(out))

    return run


def _cases(sharding, args):
    sds = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
    b, nh, s, dhqk, dhv = 1, 2, args.seq, 128, 256
    mlstm_args = (
        sds((b, nh, s, dhqk), jnp.bfloat16),
        sds((b, nh, s, dhqk), jnp.bfloat16),
        sds((b, nh, s, dhv), jnp.bfloat16),
        sds((b, nh, s), jnp.float32),
        sds((b, nh, s), jnp.float32),
    )
    mlstm = lambda *a: mlstm_chunkwise_tpu(*a)[0]
    yield f"mlstm DHQK={dhqk} DHV={dhv} S={s} bf16", "forward", mlstm, mlstm_args, None
    yield f"mlstm DHQK={dhqk} DHV={dhv} S={s} bf16", "vjp", _vjp(mlstm), mlstm_args, None
    for dh in (int(x) for x in args.slstm_dh.split(",") if x):
        batch, seq = args.slstm_batch, args.slstm_seq
        slstm_args = (
            sds((batch, seq, 4, 1, dh), jnp.bfloat16),
            sds((1, dh, 4, dh), jnp.float32),
            sds((1, 4, dh), jnp.float32),
        )
        slstm = lambda *a: slstm_scan_tpu(*a)[0]
        blocks = default_blocks("tpu", batch, dh)
        fits = lambda blocks=blocks, seq=seq, dh=dh: check_fits(blocks, seq, dh, has_resets=False)
        family = f"slstm DH={dh} B={batch} S={seq} block_b={blocks.block_b} block_t={blocks.block_t}"
        yield family, "forward", slstm, slstm_args, fits
        yield family, "vjp", _vjp(slstm), slstm_args, fits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chips", default="v4,v5e,v5p,v6e", help=f"comma-separated, from {sorted(TOPOLOGIES)}")
    parser.add_argument("--seq", type=int, default=2048, help="mLSTM sequence length")
    parser.add_argument("--slstm-dh", default="128,256,512", help="sLSTM head dims (the presets use 192-512)")
    parser.add_argument("--slstm-batch", type=int, default=16)
    parser.add_argument("--slstm-seq", type=int, default=256)
    args = parser.parse_args()
    from jax.experimental import topologies

    rows = []
    for chip in args.chips.split(","):
        try:
            topology = topologies.get_topology_desc(topology_name=TOPOLOGIES[chip], platform="tpu")
        except Exception as e:  # noqa: BLE001 - no libtpu, or it does not know the chip
            sys.exit(f"cannot describe a {chip} topology ({type(e).__name__}: {e}); install libtpu (see the docstring)")
        device = topology.devices[0]
        abstract = AbstractDevice(device_kind=device.device_kind, num_cores=1, platform="tpu")
        sharding = jax.sharding.SingleDeviceSharding(device)
        with jax.sharding.use_abstract_mesh(AbstractMesh((1,), ("x",), abstract_device=abstract)):
            for family, what, fn, fn_args, fits in _cases(sharding, args):
                row = {"chip": chip, "device_kind": device.device_kind, "family": family, "what": what}
                start = time.perf_counter()
                try:
                    if fits is not None:
                        fits()
                except ValueError as e:
                    row.update(status="refused", reason=str(e))
                else:
                    try:
                        jax.jit(fn).trace(*fn_args).lower().compile()
                        row["status"] = "compiled"
                    except Exception as e:  # noqa: BLE001 - the compiler's error is the result
                        row.update(status="error", error=f"{type(e).__name__}: {str(e)[:400]}")
                row["seconds"] = round(time.perf_counter() - start, 1)
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {"summary": True, "jax": jax.__version__, "cases": len(rows)}
    for status in ("compiled", "refused", "error"):
        summary[status] = sum(r["status"] == status for r in rows)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
