"""benchmarks/pod_compile_report.py and its HLO counts (benchmarks/hlo_stats.py).

The counts are checked against XLA's own cost analysis on CPU-compiled modules and on a module the
TPU compiler wrote (``fixtures/tpu_v5e_scan_matmul.hlo.txt``: a 10-step ``lax.scan`` of a
(256, 512) x (512, 512) matmul on a 4-chip v5e mesh, the weight all-gathered in the loop). The
topology compile of the real train step needs ``libtpu`` and minutes: it is ``slow``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import pod_compile_report as report
import pytest
from hlo_stats import hlo_stats

FIXTURE = Path(__file__).parent / "fixtures" / "tpu_v5e_scan_matmul.hlo.txt"


def _scan_matmul(steps: int):
    def f(x, w):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=steps)[0]

    return f


def test_loop_bodies_are_weighted_by_their_trip_count_on_cpu():
    x, w = jnp.ones((64, 32)), jnp.ones((32, 32))
    compiled = jax.jit(_scan_matmul(10)).lower(x, w).compile()
    stats = hlo_stats(compiled.as_text())
    one_step = 2 * 64 * 32 * 32
    assert compiled.cost_analysis()["flops"] == pytest.approx(one_step, rel=0.1)  # XLA counts the body once
    assert stats["dot_flops_once"] == one_step
    assert stats["dot_flops"] == 10 * one_step
    assert stats["loop_iterations"] == 10 and stats["unknown_trip_counts"] == 0


def test_loop_free_counts_match_cost_analysis():
    compiled = jax.jit(lambda x, w: jnp.tanh(x @ w).sum()).lower(jnp.ones((64, 32)), jnp.ones((32, 16))).compile()
    stats, cost = hlo_stats(compiled.as_text()), compiled.cost_analysis()
    assert stats["dot_flops"] == 2 * 64 * 32 * 16
    assert stats["hbm_bytes"] == pytest.approx(cost["bytes accessed"], rel=0.05)


def test_tpu_module_matmuls_trip_count_and_collectives():
    stats = hlo_stats(FIXTURE.read_text())
    # The TPU compiler writes the matmul as a convolution and drops known_trip_count: the trip
    # count comes from the loop condition (i < 10).
    assert stats["dot_flops"] == 10 * 2 * 256 * 512 * 512
    assert stats["loop_iterations"] == 10 and stats["unknown_trip_counts"] == 0
    # Each step all-gathers the chip's bf16 (512, 128) column block of the weight.
    assert stats["collective_bytes"]["all-gather"] == 10 * 512 * 128 * 2
    assert stats["collective_bytes"]["all-reduce"] == 4  # the final f32 sum


def test_mesh_argument_names_the_axes():
    assert report.parse_mesh("data=-1,fsdp=8") == {"mesh.data": -1, "mesh.fsdp": 8, "mesh.context": 1, "mesh.tensor": 1}
    with pytest.raises(ValueError, match="mesh axis must be one of"):
        report.parse_mesh("model=2")


@pytest.mark.slow
def test_quick_train_step_compiles_for_a_v5e_slice():
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("libtpu is not installed (pip install 'libtpu==0.0.42.*'): no TPU topology to compile for")
    row = report.compile_case("xlstm71_125m", "v5e-4", "data=2,fsdp=2", quick=True)
    assert row["status"] == "compiled", row.get("error")
    assert row["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
    assert row["fits"] and 0 < row["memory_gib"]["per_chip"] < row["hbm_gib"]
    # FSDP over 2 chips gathers parameters and reduce-scatters or all-reduces gradients.
    assert row["hlo"]["collective_bytes"].get("all-gather", 0) > 0
    # Remat recomputes the forward: the compiled FLOPs exceed 6 x params x tokens per chip.
    assert row["hlo"]["dot_flops"] * row["chips"] > 0.5 * row["model_flops_per_step"]
    json.dumps(row)
