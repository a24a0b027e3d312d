"""Context parallelism in the trainer (the ``context`` mesh axis) and in generation.

Config checks run here; the runs use one subprocess with 8 fake CPU devices (the device count
is fixed when JAX starts).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import xla_flags
from xlstm_jax.train.config import ConfigError, MeshConfig, build_dataclass
from xlstm_jax.train.mesh import row_blocks
from xlstm_jax.train.trainer import resolve

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "model": {"arch": "xlstm_lm", "embedding_dim": 16, "num_blocks": 1, "slstm_at": [], "chunk_size": 4},
    "data": {"kind": "parity", "train_max_len": 16, "eval_min_len": 3, "eval_max_len": 16},
    "train": {"steps": 4, "global_batch_size": 8, "seq_len": 16},
}


@pytest.mark.parametrize(
    "values,message",
    [
        ({"context": 0}, r"mesh.context must be an integer >= 1 or -1 \(all devices left over\), got 0"),
        ({"context": 2.5}, r"mesh.context must be an integer >= -1, got 2.5"),
        ({"context": -1, "data": -1}, r"at most one mesh axis may be -1"),
        ({"rules": {"length": ["ctx"]}}, r"mesh.rules.length: unknown mesh axis .ctx.; use data, fsdp, context"),
        (
            {"context": 4, "rules": {"batch": ["data"], "length": []}},
            r"mesh.rules.length must include 'context' when mesh.context=4",
        ),
    ],
)
def test_bad_mesh_context(values, message):
    with pytest.raises(ConfigError, match=message):
        build_dataclass(MeshConfig, values, "mesh.")


def test_default_rules_split_the_sequence_over_context():
    cfg = MeshConfig(context=4)
    assert cfg.rules["length"] == ["context"] and cfg.rules["batch"] == ["data", "fsdp"]


@pytest.mark.parametrize(
    "train,message",
    [
        ({"seq_len": 30}, r"train.seq_len=30 must be divisible by mesh.context=4"),
        ({"seq_len": 32, "eval_seq_len": 42}, r"train.eval_seq_len=42 must be divisible by mesh.context=4"),
    ],
)
def test_sequence_lengths_must_split_evenly_over_context(train, message):
    raw = {**TINY, "train": {**TINY["train"], **train}, "mesh": {"context": 4}}
    with pytest.raises(ConfigError, match=message):
        resolve(raw)


def test_processes_sharing_rows_load_the_same_block():
    """(process, first row, end row) per device, as ``mesh.process_rows`` reads them off a sharding."""
    # 2 processes x 4 devices, (data=2, context=4): each process holds its own 4 of 8 rows.
    layout = [(d // 4, 4 * (d // 4), 4 * (d // 4) + 4) for d in range(8)]
    assert [row_blocks(layout, p) for p in (0, 1)] == [(0, 2), (1, 2)]
    # (data=1, context=8) across both processes: both hold all rows, so both load the whole batch.
    layout = [(d // 4, 0, 8) for d in range(8)]
    assert [row_blocks(layout, p) for p in (0, 1)] == [(0, 1), (0, 1)]
    # 4 processes, (data=2, context=4) with the context axis across processes 0-1 and 2-3.
    layout = [(d // 2, 4 * (d // 4), 4 * (d // 4) + 4) for d in range(8)]
    assert [row_blocks(layout, p) for p in range(4)] == [(0, 2), (0, 2), (1, 2), (1, 2)]
    with pytest.raises(ConfigError, match="overlapping or unequal blocks of batch rows"):
        row_blocks([(0, 0, 4), (0, 6, 8), (1, 4, 6)], 0)


def _run(script: str, *args: str) -> str:
    """``script`` in a subprocess with 8 fake CPU devices (``args`` in ``sys.argv``); its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env.update(XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=8"), JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")]))  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    return proc.stdout


_GENERATE = """
import jax, numpy as np
from flax import nnx
from jax.sharding import AxisType
from helpers import assert_close, perturbed
from xlstm_jax import backends
from xlstm_jax.generation import generate
from xlstm_jax.generation._generate import _prepare
from xlstm_jax.models.xlstm_lm import mLSTMLayerConfig, sLSTMLayerConfig, xLSTMLMConfig, xLSTMLMModel
from xlstm_jax.ops import context_parallel
assert jax.device_count() == 8
lm = xLSTMLMModel(xLSTMLMConfig(vocab_size=50, embedding_dim=32, num_blocks=2, slstm_at=(1,), chunk_size=4,
                                mlstm=mLSTMLayerConfig(num_heads=2), slstm=sLSTMLayerConfig(num_heads=4)),
                  rngs=nnx.Rngs(0))
model = perturbed(lm, seed=1)
rng = np.random.default_rng(0)
prompts = [rng.integers(0, 50, 27).tolist(), rng.integers(0, 50, 13).tolist()]
def run():  # the prefill's carry (next-token logits, model state) and the greedy tokens
    carry = _prepare(model, prompts, 6, None, None, None, None, (), None, None, None, buckets=False).carry
    return carry, generate(model, prompts, 6, eos_id=(), buckets=False).tokens
calls = []  # the mLSTM context path's combine, counted while tracing
original = context_parallel.context_states
context_parallel.context_states = lambda *a: calls.append(1) or original(*a)
ref_carry, ref_tokens = run()  # one device, width 27
assert not calls
mesh = jax.make_mesh((2, 4), ("data", "ctx"), axis_types=(AxisType.Auto,) * 2)
with jax.set_mesh(mesh), backends.axis_rules({"batch": "data", "length": "ctx"}):
    carry, tokens = run()  # width 27 rounded up to 28: 7 tokens per device
assert calls, "the prefill did not split the prompt"
assert_close(carry.logits, ref_carry.logits, 1e-5, "next-token logits")
for x, y in zip(jax.tree.leaves(carry.model_state), jax.tree.leaves(ref_carry.model_state)):
    assert_close(x, y, 1e-5, "state after the prompt")
np.testing.assert_array_equal(tokens, ref_tokens)
print("GENERATE-OK")
"""


def test_prefill_with_the_prompt_split_over_context_equals_one_device():
    """``generate`` under ``jax.set_mesh`` and axis rules (batch -> data, length -> ctx) on a (2, 4)
    mesh: an NeurIPS LM with sLSTM and conv, prompts of 27 and 13 tokens (left-padded to 28, a
    multiple of the context size): the prefill takes the context path and gives the one-device
    next-token logits and state (1e-5 of max|ref|); decoding with the replicated state gives the
    same greedy tokens."""
    assert "GENERATE-OK" in _run(_GENERATE)


_TRAIN = """
import sys
import jax, numpy as np
from xlstm_jax.train import fit
assert jax.device_count() == 8
out = sys.argv[1]
config = {**TINY, "optim": {"lr": 3.0e-3, "warmup_steps": 1},
          "train": {**TINY["train"], "steps": 6, "log_every": 1, "eval_every": 0, "eval_batches": 1,
                    "checkpoint_every": 0, "sample_tokens": 2, "tensorboard": False}}
def run(mesh, name, **train):
    overrides = {**{f"mesh.{k}": v for k, v in mesh.items()}, **{f"train.{k}": v for k, v in train.items()}}
    return fit(config, overrides, out_dir=f"{out}/{name}", progress="off")
ref = run({"data": 8}, "ref")
first = run({"data": 2, "context": 4}, "ctx", stop_after_steps=3)
second = run({"data": 1, "context": 8}, "ctx")  # resumes at step 3 on another mesh, to the end
assert first.eval is None and second.history.of("train")[0]["step"] == 4
for key in ("loss", "grad_norm", "tokens"):
    np.testing.assert_allclose(first.history.column(key) + second.history.column(key), ref.history.column(key),
                               rtol=2e-5, err_msg=key)
np.testing.assert_allclose(second.eval["loss"], ref.eval["loss"], rtol=2e-5)
assert second.summary["sample"]["generated"] == ref.summary["sample"]["generated"]
for a, b in zip(jax.tree.leaves(second.state.params), jax.tree.leaves(ref.state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
print("TRAIN-OK", ref.history.column("loss"))
"""


def test_trainer_on_a_context_mesh_equals_data_parallel_and_resumes_on_another_mesh(tmp_path):
    """8 fake devices, a one-block model, rows of 16 tokens: steps 1-3 on (data=2, context=4), then a
    resume on (context=8) for steps 4-6 and the final evaluation and sample; losses, gradient norms and
    scored tokens per step, the evaluation loss (float32, rtol 2e-5), the sampled tokens and the final
    parameters equal an uninterrupted run on (data=8)."""
    script = f"TINY = {TINY!r}\n" + textwrap.dedent(_TRAIN)
    assert "TRAIN-OK" in _run(script, str(tmp_path))
