"""benchmarks/pod_compile_report.py (its HLO counts, benchmarks/hlo_stats.py, are tested in
test_hlo_stats.py). The topology compile of the real train step needs ``libtpu`` and minutes: it is
``slow``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pod_compile_report as report
import pytest

from helpers import xla_flags

ROOT = Path(__file__).resolve().parents[1]


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


_FSDP_PROBE = r"""
import json, re, sys
import jax
sys.path.insert(0, "benchmarks")
from pod_compile_report import abstract_step, load_spec, parse_mesh
from xlstm_jax import backends

spec = load_spec("xlstm_7b", {**parse_mesh("fsdp=4"), "model.embedding_dim": 64, "model.num_heads": 2,
                              "model.num_blocks": 2, "model.vocab_size": 256, "model.chunk_size": 16,
                              "train.global_batch_size": 8, "train.seq_len": 48, "train.compute_dtype": "float32"})
step, state, batch, mesh = abstract_step(spec, jax.devices())
with jax.set_mesh(mesh), backends.axis_rules(spec.mesh.rules):
    text = step.lower(state, batch).compile().as_text()
rows = []
for line in text.splitlines():
    m = re.search(r"= (.*?) (all-reduce|all-gather|reduce-scatter|all-to-all)(-start)?\(", line)
    if m:
        name = re.search(r'op_name="([^"]+)"', line)
        rows.append([m.group(2), m.group(1), name.group(1) if name else ""])
print(json.dumps(rows))
"""


def test_fsdp_gathers_weights_not_activations(tmp_path):
    # The xLSTM-7B step (tiny width) compiled on 4 fake CPU devices, FSDP over all 4: every collective
    # moves parameters or gradients. Before the blocks pinned the residual stream to the batch axes
    # (nn.stack.RESIDUAL), GSPMD met the fsdp-sharded weights by gathering each block's (B, S, D)
    # input over fsdp and all-reducing partial products: on the 7B at v5p-256 1.43 TB per chip and step.
    env = {**os.environ, "XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=4"), "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-c", _FSDP_PROBE]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert any(kind == "all-gather" for kind, _, _ in rows), rows  # the weights are gathered
    seq_sized = [r for r in rows if re.search(r"\[[\d,]*\b48\b", r[1]) and "_take" not in r[2]]
    # (the embedding lookup of a table sharded over fsdp is the one activation collective, once per step)
    assert not seq_sized, seq_sized
