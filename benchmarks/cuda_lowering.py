"""The GPU kernels lowered for CUDA on a machine without a GPU: the StableHLO text, and each
Pallas-Triton kernel's Triton IR with its launch parameters.

Used by the CPU tests (cross-lowering in CI) and by ``benchmarks/gpu_compile_report.py``, which
compiles the IR for an H100. Reads JAX's private Pallas-Triton lowering module: an upgrade that
moves it makes these fail loudly rather than report nothing.
"""

from __future__ import annotations

import re
import warnings
from typing import NamedTuple

import jax
from jax.sharding import AbstractDevice, AbstractMesh

# jax 0.11 reads the GPU generation from the abstract mesh when no GPU is attached; 0.10 accepts it.
H100 = AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")


class TritonKernel(NamedTuple):
    """One ``pallas_call`` lowered by Pallas-Triton."""

    ttir: str  # the Triton IR module, as text
    num_warps: int
    num_stages: int


def on_h100():
    """A context in which a CUDA lowering targets an H100 without a GPU attached."""
    return jax.sharding.use_abstract_mesh(AbstractMesh((1,), ("x",), abstract_device=H100))


def lower_for_h100(fn, *args) -> str:
    """StableHLO text of ``jax.jit(fn)(*args)`` lowered for CUDA (args may be ShapeDtypeStructs)."""
    with on_h100():
        return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


def triton_kernels(fn, *args) -> dict[str, TritonKernel]:
    """{kernel name: ``TritonKernel``} for every Pallas-Triton call in ``fn(*args)`` lowered for CUDA."""
    from jax._src.pallas.triton import pallas_call_registration as registration

    modules: dict[str, str] = {}
    lower = registration.lowering.lower_jaxpr_to_triton_module

    def recording_lower(*a, **kw):
        result = lower(*a, **kw)
        asm = result.module.operation.get_asm()
        modules[re.search(r"tt\.func (?:public )?@(\w+)", asm).group(1)] = asm
        return result

    registration.lowering.lower_jaxpr_to_triton_module = recording_lower
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The Pallas Triton backend is deprecated")
            text = lower_for_h100(fn, *args)
    finally:
        registration.lowering.lower_jaxpr_to_triton_module = lower
    kernels = {}
    for line in text.splitlines():
        if "__gpu$xla.gpu.triton" in line:
            name = re.search(r'name = "(\w+)"', line).group(1)
            warps, stages = (int(re.search(rf"{key} = (\d+)", line).group(1)) for key in ("num_warps", "num_stages"))
            kernels[name] = TritonKernel(modules[name], warps, stages)
    return kernels
