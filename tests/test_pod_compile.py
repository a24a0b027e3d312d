"""benchmarks/pod_compile_report.py (its HLO counts, benchmarks/hlo_stats.py, are tested in
test_hlo_stats.py). The topology compile of the real train step needs ``libtpu`` and minutes: it is
``slow``.
"""

from __future__ import annotations

import importlib.util
import json

import pod_compile_report as report
import pytest


def test_mesh_argument_names_the_axes():
    assert report.parse_mesh("data=-1,fsdp=8") == {"mesh.data": -1, "mesh.fsdp": 8, "mesh.context": 1, "mesh.tensor": 1}
    with pytest.raises(ValueError, match="mesh axis must be one of"):
        report.parse_mesh("model=2")


@pytest.mark.parametrize("preset", list(report.PRESETS))
def test_presets_scan_their_blocks_as_committed(preset):
    # The report's rows are the presets' own step: no --set model.scan_blocks=true is needed.
    assert report.load_spec(preset, {}).model.scan_blocks is True


def test_a_compile_past_its_cpu_limit_is_a_timeout_row():
    # One CPU second does not even import jax: the kernel stops the case, and the row says so.
    case = {"preset": "xlstm71_125m", "slice": "v5e-4", "mesh_text": "data=-1", "quick": True, "overrides": []}
    row = report._run_case(case, timeout=1)
    assert row["status"] == "timeout" and row["error"] == "did not compile within 1 CPU s", row
    assert row["mesh_arg"] == "data=-1" and row["preset"] == "xlstm71_125m"


@pytest.mark.slow
def test_quick_train_step_compiles_for_a_v5e_slice():
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("libtpu is not installed (pip install 'libtpu==0.0.42.*'): no TPU topology to compile for")
    row = report.compile_case("xlstm71_125m", "v5e-4", "data=2,fsdp=2", quick=True)
    assert row["status"] == "compiled", row.get("error")
    assert row["mesh"] == {"data": 2, "fsdp": 2, "context": 1, "tensor": 1}
    assert row["fits"] and 0 < row["memory_gib"]["per_chip"] < row["hbm_gib"]
    # FSDP over 2 chips gathers parameters and reduce-scatters or all-reduces gradients.
    assert row["hlo"]["collective_bytes"].get("all-gather", 0) > 0
    # Remat recomputes the forward: the compiled FLOPs exceed 6 x params x tokens per chip.
    assert row["hlo"]["dot_flops"] * row["chips"] > 0.5 * row["model_flops_per_step"]
    json.dumps(row)
