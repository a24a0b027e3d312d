"""benchmarks/paper/reproduce.py --smoke: every code path of the paper reproduction at tiny sizes.

The smoke run is compile-bound (one compile per model, about 2 CPU-minutes in all, much less with
its persistent compilation cache warm), so its tests are marked slow: ``pytest -m slow tests/test_paper_smoke.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PAPER = Path(__file__).resolve().parents[1] / "benchmarks" / "paper"


def _reproduce(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(PAPER / "reproduce.py"), *args], capture_output=True, text=True, timeout=1800, check=False
    )


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("paper")
    proc = _reproduce("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_smoke_rows_cover_the_grid(smoke_dir):
    sys.path.insert(0, str(PAPER))
    try:
        from reproduce import SMOKE
    finally:
        sys.path.remove(str(PAPER))
    rows = _rows(smoke_dir)
    assert sorted(r["key"] for r in rows) == sorted(s.key for s in SMOKE.runs() + SMOKE.longer_runs())
    assert {(r["experiment"], r["model"]) for r in rows} == {
        *(("formal", m) for m in ("xlstm10", "xlstm01", "xlstm11", "transformer")),
        *(("mqar", m) for m in ("xlstm10", "xlstm11", "transformer")),
    }
    for r in rows:
        accs = [v for k, v in r.items() if k.startswith("seq_acc")]
        assert accs and all(0.0 <= v <= 1.0 for v in accs), r
        assert np.isfinite(r["final_loss"]) and r["final_loss"] > 0, r
        if r["experiment"] == "formal":
            assert "seq_acc_train_len" in r and r["vocab"] == 10


@pytest.mark.slow
def test_smoke_writes_tables_plots_and_readme(smoke_dir):
    tables = (smoke_dir / "tables.md").read_text()
    for name in ("xLSTM[1:0]", "xLSTM[0:1]", "xLSTM[1:1]", "Transformer", "parity", "cycle navigation", "24, 2"):
        assert name in tables
    assert "| parity | xLSTM[0:1] | 3 x 4 | 0.003 |" in tables  # the longer-training table
    assert "(no runs yet)" not in tables
    for png in ("formal_languages.png", "mqar.png"):
        assert (smoke_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    readme = (smoke_dir / "README_section.md").read_text()
    assert readme.startswith("## Paper results") and tables.splitlines()[1] in readme
    assert not (smoke_dir / "RUNNING").exists()


@pytest.mark.slow
def test_finished_runs_are_skipped_and_report_only_regenerates(smoke_dir):
    before = (smoke_dir / "runs.jsonl").read_text()
    (smoke_dir / "tables.md").unlink()
    proc = _reproduce("--smoke", "--out", str(smoke_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 to go" in proc.stdout
    assert (smoke_dir / "runs.jsonl").read_text() == before
    (smoke_dir / "tables.md").unlink()
    assert _reproduce("--smoke", "--report-only", "--out", str(smoke_dir)).returncode == 0
    assert (smoke_dir / "tables.md").exists()


def test_transformer_baseline_is_causal():
    sys.path.insert(0, str(PAPER))
    try:
        from flax import nnx
        from transformer import CausalTransformer
    finally:
        sys.path.remove(str(PAPER))
    model = CausalTransformer(7, 16, num_heads=2, rngs=nnx.Rngs(0))
    ids = np.array([[1, 2, 3, 4, 5, 6]])
    changed = ids.copy()
    changed[0, 4:] = [6, 1]
    a, b = np.asarray(model(ids)), np.asarray(model(changed))
    assert a.shape == (1, 6, 7)
    np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=1e-6, atol=1e-6)
    assert np.abs(a[:, 4:] - b[:, 4:]).max() > 1e-3
