"""benchmarks/paper/reproduce.py --smoke: every code path of the paper reproduction at tiny sizes.

One smoke run (module fixture, a subprocess) trains every model kind on every formal task and MQAR,
plus the longer-training runs, and writes the report; then a second run must skip every finished
run and ``--report-only`` must regenerate the report. The smoke run is compile-bound (one step per
model, compiled two at a time with most XLA optimizations off): about 55 CPU-seconds cold, less with
its persistent compilation cache warm.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "benchmarks" / "paper"
MODEL_ROWS = ("xLSTM[1:0]", "xLSTM[0:1]", "xLSTM[1:1]", "Transformer")
CELL = re.compile(r"^(\d+\.\d) (?:± (\d+\.\d) )?\(n=(\d+)\)(?: @ ([0-9.e-]+))?$")


@pytest.fixture(scope="module")
def paper():
    """The benchmarks/paper modules (reproduce, experiments, report)."""
    sys.path.insert(0, str(PAPER))
    try:
        import experiments
        import report
        import reproduce
    finally:
        sys.path.remove(str(PAPER))
    return reproduce, experiments, report


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


def _tables(markdown: str) -> list[list[list[str]]]:
    """Every markdown table of ``markdown`` as rows of stripped cells (separator rows included)."""
    tables, current = [], []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            assert line.endswith("|"), line
            current.append([c.strip() for c in line[1:-1].split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


def test_smoke_rows_cover_the_grid(smoke_dir, paper):
    reproduce, experiments, _ = paper
    rows = _rows(smoke_dir)
    specs = reproduce.SMOKE.runs() + reproduce.SMOKE.longer_runs()
    assert [r["key"] for r in rows] == [s.key for s in specs]  # each run once, in the protocol's order
    assert {(r["experiment"], r["model"]) for r in rows} == {
        *(("formal", m) for m in experiments.MODELS),
        *(("mqar", m) for m in ("xlstm10", "xlstm11", "transformer")),
    }
    assert {r["task"] for r in rows} == {*experiments.FORMAL_TASKS, "mqar"}
    buckets = set()
    for r in rows:
        n = r["eval_examples"]
        assert 0.0 <= r["seq_acc"] <= r["query_acc"] <= 1.0, r  # every answer right implies each one right
        assert abs(r["seq_acc"] * n - round(r["seq_acc"] * n)) < 1e-9, r  # a share of the n held-out examples
        assert np.isfinite(r["final_loss"]) and 0 < r["final_loss"] < 10 and not r["nonfinite_loss"], r
        assert r["params"] > 0 and 0 <= r["train_s"] <= r["wall_s"], r
        if r["experiment"] == "formal":  # one answer per example; held-out accuracy per length bucket
            assert r["seq_acc"] == r["query_acc"] and r["vocab"] == 10, r
            assert 0.0 <= r["seq_acc_train_len"] <= 1.0, r
            buckets |= {k for k in r if re.fullmatch(r"seq_acc_\d+_\d+", k)}
    assert buckets == {"seq_acc_13_16", "seq_acc_17_24"}  # the evaluation lengths 13-24 cut at 16


def test_smoke_writes_tables_plots_and_readme(smoke_dir):
    tables = (smoke_dir / "tables.md").read_text()
    assert "(no runs yet)" not in tables
    formal, buckets, mqar, longer = _tables(tables)
    assert formal[0] == ["model", "parity", "even pairs", "modular arithmetic", "cycle navigation"]
    assert [row[0] for row in formal[2:]] == list(MODEL_ROWS)
    for row in formal[2:]:
        for cell in row[1:]:
            value, std, n, lr = CELL.match(cell).groups()
            assert 0 <= float(value) <= 100 and std is None and n == "1" and float(lr) == 3e-3, cell
    assert buckets[0] == ["task", "model", "train lengths", "13-16", "17-24"]
    assert len(buckets) == 2 + 4 * 4 and all(0 <= float(v) <= 100 for row in buckets[2:] for v in row[2:])
    assert mqar[0] == ["context, pairs", "xLSTM[1:0] d=16", "xLSTM[1:1] d=16", "Transformer d=16"]
    assert mqar[2][0] == "24, 2" and all(0 <= float(CELL.match(c).group(1)) <= 100 for c in mqar[2][1:])
    assert [row[:5] for row in longer[2:]] == [
        ["parity", "xLSTM[0:1]", "3 x 4", "0.003", "0"],
        ["MQAR 24, 2 (d=16)", "xLSTM[1:0]", "3 x 4", "0.003", "1"],
    ]
    assert tables.rstrip().endswith("min of run wall time in total.") and "21 runs" in tables
    for png in ("formal_languages.png", "mqar.png"):
        assert (smoke_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    readme = (smoke_dir / "README_section.md").read_text()
    assert readme.startswith("## Paper results\n\n**Protocol.**")
    assert "Regenerate: `python benchmarks/paper/reproduce.py --smoke [--report-only]`" in readme
    assert tables.strip() in readme
    for table in _tables(readme):  # well-formed: a header, a separator, rows of the header's width
        assert set(table[1]) == {"---"} and {len(row) for row in table} == {len(table[0])}, table
    assert not list(smoke_dir.glob("RUNNING*")) and not list(smoke_dir.glob(".*"))


def test_finished_runs_are_skipped_and_report_only_regenerates(smoke_dir):
    before = (smoke_dir / "runs.jsonl").read_text()
    tables = (smoke_dir / "tables.md").read_text()
    (smoke_dir / "tables.md").unlink()
    proc = _reproduce("--smoke", "--out", str(smoke_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("21 runs done, 0 to go") and "compiled" not in proc.stdout
    assert (smoke_dir / "runs.jsonl").read_text() == before
    assert (smoke_dir / "tables.md").read_text() == tables
    (smoke_dir / "tables.md").unlink()
    assert _reproduce("--smoke", "--report-only", "--out", str(smoke_dir)).returncode == 0
    assert (smoke_dir / "tables.md").read_text() == tables


def test_compile_shapes_fit_their_examples(paper):
    """The full protocol's compiles: per model one training and one evaluation row length (MQAR: one)."""
    reproduce, experiments, _ = paper
    specs = reproduce.FULL.runs() + reproduce.FULL.longer_runs()
    shapes = experiments.step_shapes(specs)
    formal = {k for k in shapes if k[1] == 10}
    assert formal == {(m, 10, 64, 32, s) for m in experiments.MODELS for s in (40, 256)}
    assert {k[4] for k in shapes if k not in formal} == {64, 128, 256}
    for (_, _, _, batch_size, seq_len), cfg in shapes.items():
        batch, lengths = experiments.make_batch(cfg, "train", np.arange(batch_size), seq_len)
        assert batch["inputs"].shape == (batch_size, seq_len) and lengths.max() <= seq_len + 1


def test_length_buckets(paper):
    _, experiments, _ = paper
    assert experiments.length_buckets(41, 256) == [(41, 64), (65, 128), (129, 256)]
    assert experiments.length_buckets(13, 24) == [(13, 16), (17, 24)]
    assert experiments.length_buckets(64, 64) == [(64, 64)]


def test_readme_holds_the_generated_section():
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- paper-results:start -->\n", "\n<!-- paper-results:end -->"
    section = readme[readme.index(start) + len(start) : readme.index(end)]
    assert section.strip() == (PAPER / "README_section.md").read_text().strip()


def test_transformer_baseline_is_causal():
    sys.path.insert(0, str(PAPER))
    try:
        from flax import nnx
        from transformer import CausalTransformer
    finally:
        sys.path.remove(str(PAPER))
    ids = np.array([[1, 2, 3, 4, 5, 6]])
    changed = ids.copy()
    changed[0, 4:] = [6, 1]
    for conv_kernel in (0, 4):  # the baseline, and the variant with a short causal conv in front of q and k
        model = CausalTransformer(7, 16, num_heads=2, conv_kernel=conv_kernel, rngs=nnx.Rngs(0))
        assert all((b.conv is None) == (conv_kernel == 0) for b in model.blocks)
        a, b = np.asarray(model(ids)), np.asarray(model(changed))
        assert a.shape == (1, 6, 7)
        np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=1e-6, atol=1e-6)
        assert np.abs(a[:, 4:] - b[:, 4:]).max() > 1e-3


def test_transformer_rotary_scores_depend_on_relative_position_only():
    """q_i . k_j after the rotary embedding is a function of i - j (and is the plain dot product at i = j)."""
    sys.path.insert(0, str(PAPER))
    try:
        from transformer import rotary
    finally:
        sys.path.remove(str(PAPER))
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((2, 8))  # one query and one key vector, Dh = 8, placed at every position
    rq, rk = (np.asarray(rotary(np.tile(v, (1, 12, 1, 1)).astype(np.float32)))[0, :, 0] for v in (q, k))  # S=12
    scores = rq @ rk.T  # (S, S): position i's query against position j's key
    for offset in range(-11, 12):
        diagonal = np.diagonal(scores, offset)
        np.testing.assert_allclose(diagonal, diagonal[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.diagonal(scores), q @ k, rtol=1e-5)
    assert np.ptp([np.diagonal(scores, o)[0] for o in range(-11, 12)]) > 0.1  # positions do change the score


def test_transformer_variants_set_the_heads(paper):
    _, experiments, _ = paper
    for name, heads in experiments.TRANSFORMER_HEADS.items():
        model = experiments.build_model(name, 10, 16, seed=0)
        assert [b.attention.num_heads for b in model.blocks] == [heads, heads]
        assert name in experiments.MODEL_NAMES
    with pytest.raises(ValueError, match="model must be one of .*'transformer_h4'.*, got 'transformer_h3'"):
        experiments.build_model("transformer_h3", 10, 16, seed=0)


@pytest.mark.slow
def test_official_side_by_side_arms_agree(paper):
    """official_side_by_side.py: from the same weights and batches, the official PyTorch arm and ours
    give the same first training losses (they part only once float32 rounding grows, after ~200 steps)."""
    pytest.importorskip("xlstm")
    sys.path.insert(0, str(PAPER))
    try:
        import official_side_by_side as sbs
    finally:
        sys.path.remove(str(PAPER))
    # the run's batch of 32: at a batch of 4 the first Adam steps (nearly sign(g)) already amplify
    # float32 rounding in near-zero gradients to 2e-5 by step 3
    spec = sbs.spec_for(steps=3, seed=0, lr=3e-3, batch_size=32, eval_examples=32)
    official, ours = (sbs.side(impl, spec, log_every=0) for impl in ("official", "ours"))
    assert len(official["losses"]) == len(ours["losses"]) == 3
    np.testing.assert_allclose(official["losses"], ours["losses"], rtol=1e-5, atol=1e-5)
    assert official["losses"][0] > official["losses"][-1]  # it trains
    for key in ("seq_acc", "seq_acc_train_len"):
        assert 0.0 <= official[key] <= 1.0 and 0.0 <= ours[key] <= 1.0
