"""``benchmarks/gpu_check.py``, the script a GPU session runs in one prepared call: its verdict and a
section end to end at tiny shapes (the kernels interpreted on the CPU), so that it does not rot
between the sessions that have a GPU."""

from __future__ import annotations

import json
import math

import jax.numpy as jnp
import numpy as np

import gpu_check


def test_judge_takes_the_tolerance_or_twice_the_xla_error():
    xla = {"h": 1e-2, "dq": 1e-1}
    assert gpu_check.judge({"h": 1e-5, "dq": 1e-4}, xla, "float32", n_fwd=1)
    assert gpu_check.judge({"h": 1.5e-2, "dq": 1e-4}, xla, "float32", n_fwd=1)  # over 1e-4, under 2 x 1e-2
    assert not gpu_check.judge({"h": 3e-2, "dq": 1e-4}, xla, "float32", n_fwd=1)
    assert gpu_check.judge({"h": 1e-5, "dq": 4e-2}, {"h": 0.0, "dq": 0.0}, "bfloat16", n_fwd=1)
    assert not gpu_check.judge({"h": 1e-5, "dq": 6e-2}, {"h": 0.0, "dq": 0.0}, "bfloat16", n_fwd=1)
    assert not gpu_check.judge({"h": math.inf, "dq": 0.0}, {"h": math.inf, "dq": 0.0}, "float32", n_fwd=1)


def test_rel_errors_flag_non_finite_values():
    truth = (jnp.ones(3), jnp.array([2.0, -4.0]))
    errs = gpu_check.rel_errors((jnp.array([1.0, 1.0, 1.5]), jnp.array([2.0, np.nan])), truth, ("a", "b"))
    assert errs == {"a": 0.5, "b": math.inf}


def test_mlstm_section_runs_and_passes_at_tiny_shapes(capsys, tmp_path):
    gpu_check.section_mlstm(smoke=True)
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["gates"], r["dtype"]) for r in rows] == [
        (g, d) for g in ("normal", "extreme") for d in ("bfloat16", "float32")
    ]
    for r in rows:
        assert r["ok"] and "error" not in r, r
        assert set(r["kernel_rel"]) == set(gpu_check.MLSTM_NAMES)
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    gpu_check.summary(str(path))
    assert capsys.readouterr().out.count('"ok": true') == 4
