"""benchmarks/gpu_compile_report.py: the parts that run without the Triton compiler (which the test
extra does not install): reading ``ptxas -v`` and collecting the kernels' Triton IR and launch
parameters from the CUDA lowering."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

import gpu_compile_report as report

_PTXAS_OUTPUT = """\
ptxas-blackwell info    : 11 bytes gmem
ptxas-blackwell info    : Function properties for helper
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas-blackwell info    : Compiling entry function 'mlstm_grad_q' for 'sm_90a'
ptxas-blackwell info    : Function properties for mlstm_grad_q
    192 bytes stack frame, 192 bytes spill stores, 196 bytes spill loads
ptxas-blackwell info    : Used 255 registers, used 1 barriers, 192 bytes cumulative stack size
"""


def test_ptxas_report_is_read_per_function():
    props = {m.group(1): tuple(map(int, m.groups()[1:])) for m in report._PTXAS.finditer(_PTXAS_OUTPUT)}
    assert props == {"mlstm_grad_q": (192, 192, 196, 255)}


@pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated")
def test_kernels_and_launch_parameters_are_collected():
    mlstm = report._mlstm_kernels(jnp.bfloat16, 256, 64, 128, None)
    names = {"mlstm_chunk_states", "mlstm_chunk_outputs", "mlstm_memory_cotangents", "mlstm_grad_q"}
    assert names | {"mlstm_grad_k", "mlstm_grad_v"} == set(mlstm)
    assert all((k.num_warps, k.num_stages) == (4, 2) for k in mlstm.values())
    assert all(f"tt.func public @{name}" in k.ttir for name, k in mlstm.items())
    slstm = report._slstm_kernels(jnp.bfloat16, 16, 8, 2, 64)
    assert set(slstm) == {"slstm_fwd_gpu", "slstm_bwd_gpu"}
    assert all((k.num_warps, k.num_stages) == (8, 1) for k in slstm.values())
