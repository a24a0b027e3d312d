"""Context parallelism in the trainer (the ``context`` mesh axis) and in generation.

Config checks run here; the runs use subprocesses with fake CPU devices (the device count is
fixed when JAX starts): 8 in one process (the reference run every trainer test compares with, the
context meshes, generation), 4 for the Pallas kernel in the context step, and two ``jax.distributed``
processes of 4 for a context axis that spans processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers import xla_flags
from xlstm_jax.train.config import ConfigError, MeshConfig, build_dataclass
from xlstm_jax.train.data import make_train_dataset
from xlstm_jax.train.mesh import row_blocks
from xlstm_jax.train.resume import check_row_blocks
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


def _env(devices: int | None) -> dict:
    """The environment of a test subprocess: CPU, ``devices`` fake devices (None: the script sets them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    flags = [f"--xla_force_host_platform_device_count={devices}"] if devices else []
    env.update(XLA_FLAGS=xla_flags(*flags), JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")]))  # fmt: skip
    return env


def _run(script: str, *args: str, devices: int = 8) -> str:
    """``script`` in a subprocess with ``devices`` fake CPU devices (``args`` in ``sys.argv``); its stdout."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], env=_env(devices), cwd=REPO,
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


# The run every trainer test below compares with: the same config on (data=8), one process.
CONFIG = {
    **TINY,
    "optim": {"lr": 3.0e-3, "warmup_steps": 1},
    "train": {**TINY["train"], "steps": 6, "log_every": 1, "eval_every": 0, "eval_batches": 1,
              "checkpoint_every": 0, "sample_tokens": 2, "tensorboard": False},
}  # fmt: skip
COLUMNS = ("loss", "grad_norm", "tokens")

# Shared by the scripts: a fit with mesh and train overrides, and its result as files for the test.
_FIT = """
import json, sys
import jax, numpy as np

def run(mesh, out_dir, **train):
    from xlstm_jax.train import fit
    overrides = {**{f"mesh.{k}": v for k, v in mesh.items()}, **{f"train.{k}": v for k, v in train.items()}}
    return fit(CONFIG, overrides, out_dir=out_dir, progress="off")

def dump(result, path):  # process 0: columns, evaluation, sample and final parameters
    if jax.process_index() == 0:
        history = {key: result.history.column(key) for key in COLUMNS}
        history["steps"] = result.history.column("step")
        sample = (result.summary.get("sample") or {}).get("generated")
        info = {"history": history, "eval": result.eval, "sample": sample}
        open(path + ".json", "w").write(json.dumps(info))
        np.savez(path + ".npz", *[np.asarray(a) for a in jax.tree.leaves(result.state.params)])
"""

_REFERENCE = """
assert jax.device_count() == 8
dump(run({"data": 8}, sys.argv[1] + "/run"), sys.argv[1] + "/result")
"""


def _script(body: str) -> str:
    return f"CONFIG = {CONFIG!r}\nCOLUMNS = {COLUMNS!r}\n" + textwrap.dedent(_FIT) + textwrap.dedent(body)


def _assert_same_run(out: Path, ref: Path, names: list[str], sample: bool = True) -> None:
    """The runs ``names`` (dumped under ``out``) together equal the reference run: losses, gradient
    norms and scored tokens per step, and the last one's evaluation loss, sample (unless ``sample`` is
    False: the runs took none) and parameters."""
    ref_info = json.loads((ref / "result.json").read_text())
    infos = [json.loads((out / f"{name}.json").read_text()) for name in names]
    assert sum((info["history"]["steps"] for info in infos), []) == ref_info["history"]["steps"]
    for key in COLUMNS:
        ours = sum((info["history"][key] for info in infos), [])
        np.testing.assert_allclose(ours, ref_info["history"][key], rtol=2e-5, err_msg=key)
    np.testing.assert_allclose(infos[-1]["eval"]["loss"], ref_info["eval"]["loss"], rtol=2e-5)
    assert infos[-1]["sample"] == (ref_info["sample"] if sample else None)
    with np.load(out / f"{names[-1]}.npz") as ours, np.load(ref / "result.npz") as theirs:
        assert len(ours.files) == len(theirs.files)
        for key in theirs.files:
            np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted 6-step run on (data=8), 8 fake devices in one process, dumped by ``dump``."""
    out = tmp_path_factory.mktemp("reference")
    _run(_script(_REFERENCE), str(out))
    return out


_ONE_PROCESS = """
assert jax.device_count() == 8
out = sys.argv[1]
first = run({"data": 2, "context": 4}, out + "/run", stop_after_steps=3)
second = run({"data": 1, "context": 8}, out + "/run")  # resumes at step 3 on another mesh, to the end
assert first.eval is None and second.history.of("train")[0]["step"] == 4
dump(first, out + "/first")
dump(second, out + "/second")
"""


def test_trainer_on_a_context_mesh_equals_data_parallel_and_resumes_on_another_mesh(tmp_path, reference):
    """8 fake devices, a one-block model, rows of 16 tokens: steps 1-3 on (data=2, context=4), then a
    resume on (context=8) for steps 4-6 and the final evaluation and sample; losses, gradient norms and
    scored tokens per step, the evaluation loss (float32, rtol 2e-5), the sampled tokens and the final
    parameters equal an uninterrupted run on (data=8)."""
    _run(_script(_ONE_PROCESS), str(tmp_path))
    _assert_same_run(tmp_path, reference, ["first", "second"])


_PALLAS = """
import dataclasses
import jax.numpy as jnp, optax
from flax import nnx
from helpers import assert_close
from xlstm_jax import backends
from xlstm_jax.ops import context_parallel
from xlstm_jax.train import fit
from xlstm_jax.train.config import load_config
from xlstm_jax.train.models import build_model
from xlstm_jax.train.trainer import resolve
assert jax.device_count() == 4
calls = []  # counted while tracing: runs of the Pallas TPU kernel and of the context combine
kernel = backends.IMPLEMENTATIONS["mlstm", "pallas_tpu"]
counted = lambda *a, **k: calls.append("kernel") or kernel.run(*a, **k)
backends.IMPLEMENTATIONS["mlstm", "pallas_tpu"] = dataclasses.replace(kernel, run=counted)
combine = context_parallel.context_states
context_parallel.context_states = lambda *a: calls.append("combine") or combine(*a)

config = load_config(CONFIG, {"train.steps": 1, "train.global_batch_size": 2, "train.seq_len": 64,
                              "model.chunk_size": 8})  # the TPU kernel takes chunks of 8 or more
spec = resolve(config)
rng = np.random.default_rng(0)
ids = rng.integers(0, spec.model.vocab_size, (2, 65))
seg = np.ones((2, 64), np.int32)
seg[0, 16:], seg[0, 21:], seg[1, 38:] = 2, 3, 2  # documents from a shard boundary (16) and inside shards
mask = (rng.random((2, 64)) < 0.8).astype(np.float32)
batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": mask, "segment_ids": seg}

# One trainer step on (context=4) with the Pallas TPU kernel (interpret mode on CPU). The optimizer
# records the gradient as its state and leaves the parameters as they are.
record = optax.GradientTransformation(lambda p: jax.tree.map(jnp.zeros_like, p),
                                      lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g))
result = fit(config, {"mesh.context": 4, "model.backend": "pallas_tpu"}, data=[batch], optimizer=record,
             out_dir=sys.argv[1], progress="off")
assert "kernel" in calls and "combine" in calls, calls
grads = result.state.opt_state.inner_state

# The reference: the XLA chunkwise form (the config's backend) on one device, no mesh, at the same
# parameters; the loss the trainer minimizes.
graphdef, _, rest = nnx.split(build_model(spec.model, spec.train.seed), nnx.Param, ...)
params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), result.state.params)
def loss(params):
    logits = nnx.merge(graphdef, params, rest)(batch["inputs"], segment_ids=batch["segment_ids"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    return jnp.sum(ce * mask) / jnp.sum(mask)
calls.clear()
ref_loss, ref_grads = jax.jit(jax.value_and_grad(loss))(params)
assert spec.model.backend == "chunkwise" and not calls, calls
errors = {"loss": assert_close(result.history.column("loss")[0], ref_loss, 1e-5, "loss")}
assert len(jax.tree.leaves(grads)) == len(jax.tree.leaves(ref_grads)) > 5
for (path, g), r in zip(jax.tree.leaves_with_path(grads), jax.tree.leaves(ref_grads)):
    errors[jax.tree_util.keystr(path)] = assert_close(g, r, 1e-5, jax.tree_util.keystr(path))
print("PALLAS-OK", max(errors.values()), errors["loss"])
"""


@pytest.mark.slow  # ~32 CPU seconds (interpret mode): over the default suite's ~20 s per test
def test_pallas_kernel_in_the_context_step_equals_xla_on_one_device(tmp_path):
    """4 fake devices: one trainer step (``fit``) on (context=4) with ``model.backend: pallas_tpu`` (the
    Pallas TPU kernel in interpret mode after the context combine), a one-block model, 2 rows of 64
    tokens (16 per device, chunks of 8) with documents starting on a shard boundary and inside shards,
    a partial loss mask: the loss and every parameter's gradient equal the XLA chunkwise form's on one
    device without a mesh (float32; the kernel tests' tolerances 1e-4 and 1e-3 of max|ref|)."""
    out = _run(_script(_PALLAS), str(tmp_path / "run"), devices=4)
    assert "PALLAS-OK" in out, out[-3000:]


# One of two jax.distributed processes with 4 fake CPU devices each (devices 0-3 on process 0, 4-7 on
# process 1). Every batch this process hands to the mesh is checked: its row block is the expected one
# of the expected number, and each of its devices holds the rows and the sequence slice that the
# device's coordinates on the (data, fsdp, context, tensor) mesh give, with this process's loaded values.
_PROCESS = """
pid, port, out, name = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
mesh, train, blocks, groups, span = (json.loads(a) for a in sys.argv[5:10])
jax.config.update("jax_num_cpu_devices", 4)
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
from xlstm_jax.train import trainer
global_batch, seq_len = CONFIG["train"]["global_batch_size"], CONFIG["train"]["seq_len"]
index, count = blocks[pid]
loaded = []  # this process's row block of every batch, in order

def checked(local, sharding, n_blocks):
    arrays = original(local, sharding, n_blocks)
    rows = global_batch // count
    assert n_blocks == count and local["inputs"].shape == (rows, seq_len), (n_blocks, local["inputs"].shape)
    grid = sharding.mesh.devices  # (data, fsdp, context, tensor)
    if not loaded:  # the context groups span the processes as the test says
        spans = {frozenset(d.process_index for d in grid[a, f, :, t].flat)
                 for a in range(grid.shape[0]) for f in range(grid.shape[1]) for t in range(grid.shape[3])}
        print("context groups' processes:", sorted(map(sorted, spans)), flush=True)
        assert spans == {frozenset(p) for p in groups}, spans
    row_shards, tokens = global_batch // (grid.shape[0] * grid.shape[1]), seq_len // grid.shape[2]
    held = np.zeros((global_batch, seq_len), bool)  # the cells of the global batch on this process's devices
    for shard in arrays["inputs"].addressable_shards:
        a, f, c, _ = (int(i) for i in np.argwhere(grid == shard.device)[0])
        r0, c0 = (a * grid.shape[1] + f) * row_shards, c * tokens
        where = tuple(i.indices(n)[:2] for i, n in zip(shard.index, (global_batch, seq_len)))
        assert where == ((r0, r0 + row_shards), (c0, c0 + tokens)), (shard.device, where)
        mine = local["inputs"][r0 - index * rows : r0 - index * rows + row_shards, c0 : c0 + tokens]
        np.testing.assert_array_equal(np.asarray(shard.data), mine)
        held[shard.index] = True
    (r0, r1), (c0, c1) = span[pid]  # exactly this process's rows and tokens, nothing else
    assert held[r0:r1, c0:c1].all() and held.sum() == (r1 - r0) * (c1 - c0), np.argwhere(held)
    loaded.append(local["inputs"])
    return arrays

original, trainer._global_batch = trainer._global_batch, checked
result = run(mesh, out + "/run", **train)
np.save(f"{out}/{name}-loaded{pid}.npy", np.stack(loaded))
dump(result, f"{out}/{name}")
print("PROCESS-OK", pid, flush=True)
"""


def _two_processes(out: Path, name: str, mesh: dict, train: dict, **layout) -> list[str]:
    """``_PROCESS`` as processes 0 and 1 of a ``jax.distributed`` run on localhost; their outputs.
    ``layout``: ``blocks`` (index, count) of each process's row block, ``groups`` the sets of processes
    the context groups span, ``span`` ((first row, end row), (first token, end token)) per process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [json.dumps(x) for x in (mesh, train, layout["blocks"], layout["groups"], layout["span"])]
    procs = [subprocess.Popen([sys.executable, "-c", _script(_PROCESS), str(pid), str(port), str(out), name, *args],
                              env=_env(None), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for pid in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for pid, (p, text) in enumerate(zip(procs, outs)):
        assert p.returncode == 0 and f"PROCESS-OK {pid}" in text, f"process {pid}:\n{text[-5000:]}"
    return outs


# ~85 CPU s over 4 processes, 140-285 s wall on the loaded 2-core machine (gloo collectives wait for every
# process): slow. The default suite's two-process run (test_trainer.py) trains on a context axis that spans
# both processes and resumes on (data=2, fsdp=2) with the single-process losses.
@pytest.mark.slow
def test_context_axis_across_two_processes_trains_saves_and_resumes(tmp_path, reference):
    """Two ``jax.distributed`` processes with 4 fake CPU devices each. Steps 1-3 on (context=8): each
    sequence is split over both processes (process 0 holds tokens 0-7 of every row, process 1 tokens
    8-15), both load the whole batch; then a checkpoint, and the pair resumes on (data=2, context=4),
    where each process loads its own 4 rows, for steps 4-6 and the evaluation. Every batch
    is checked on each process (its row block, each device's rows and tokens); the losses, gradient
    norms, scored tokens, evaluation loss and final parameters equal the one-process (data=8)
    run, and the rows loaded are that run's batches. No sample at the end (the one-process test has it)."""
    lean = {"sample_tokens": 0}  # a prefill and a decode compiled less: this test is the suite's slowest
    first = _two_processes(tmp_path, "first", {"data": 1, "context": 8}, {"stop_after_steps": 3, **lean},
                           blocks=[[0, 1], [0, 1]], groups=[[0, 1]],
                           span=[[[0, 8], [0, 8]], [[0, 8], [8, 16]]])  # fmt: skip
    assert "2 process(es)" in first[0] and "stopped after 3 steps" in first[0]
    second = _two_processes(tmp_path, "second", {"data": 2, "context": 4}, lean,
                            blocks=[[0, 2], [1, 2]], groups=[[0], [1]],
                            span=[[[0, 4], [0, 16]], [[4, 8], [0, 16]]])  # fmt: skip
    assert "resumed from" in second[0] and "at step 3" in second[0]
    _assert_same_run(tmp_path, reference, ["first", "second"], sample=False)

    spec = resolve(CONFIG)
    stream = iter(make_train_dataset(spec.data, seq_len=spec.train.seq_len, global_batch_size=8))
    batches = [next(stream)["inputs"] for _ in range(6)]  # the one-process run's global batches
    loaded = {f"{name}{pid}": np.load(tmp_path / f"{name}-loaded{pid}.npy") for name in ("first", "second")
              for pid in range(2)}  # fmt: skip
    for pid in range(2):  # context 8: both processes load the whole batch
        np.testing.assert_array_equal(loaded[f"first{pid}"], batches[:3])
    for step in range(3):  # data 2: each loads its half of the rows (the evaluation batch follows)
        rows = np.concatenate([loaded["second0"][step], loaded["second1"][step]])
        assert sorted(map(tuple, rows)) == sorted(map(tuple, batches[3 + step])), f"step {4 + step}"
        assert not np.array_equal(loaded["second0"][step], loaded["second1"][step])


def test_a_corpus_position_saved_with_other_row_blocks_is_refused():
    # A corpus is sharded per row block: its saved position does not carry over to another count.
    with pytest.raises(ConfigError, match=r"saved with the batch rows loaded in 2 process block\(s\).*in 4"):
        check_row_blocks("tokens", saved=2, current=4)
    check_row_blocks("tokens", saved=2, current=2)
    check_row_blocks("tokens", saved=None, current=4)  # written before the count was saved
    check_row_blocks("parity", saved=2, current=4)  # synthetic rows come from their global index
