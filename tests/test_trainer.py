"""The trainer end to end: CLI, checkpoints and resume, preemption, corruption,
8 fake devices vs 1, and a real two-process ``jax.distributed`` run on localhost.

Runs go through ``python -m xlstm_jax.train`` in subprocesses (the way users and clusters
start it), on a tiny model so that each compiles in seconds.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import yaml

from helpers import xla_flags
from tests.trainer_cases import jit_cache_env

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "model": {
        "arch": "xlstm_lm",
        "embedding_dim": 32,
        "num_blocks": 2,
        "slstm_at": [1],
        "mlstm": {"num_heads": 2},
        "slstm": {"num_heads": 2},
        "chunk_size": 8,
    },
    "data": {"kind": "parity", "train_max_len": 17, "eval_min_len": 10, "eval_max_len": 17, "num_eval_examples": 32},
    "train": {
        "steps": 8,
        "global_batch_size": 8,
        "seq_len": 16,
        "log_every": 1,
        "eval_every": 0,
        "eval_batches": 2,
        "checkpoint_every": 2,
        "keep_checkpoints": 10,
        "sample_tokens": 1,
        "tensorboard": True,
    },
    "optim": {"lr": 3.0e-3, "warmup_steps": 2},
}


def _write_config(path: Path, **sections) -> Path:
    cfg = json.loads(json.dumps(TINY))
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path


_JIT_CACHE: dict[str, str] = {}  # set once per module by _shared_jit_cache


@pytest.fixture(scope="module", autouse=True)
def _shared_jit_cache(tmp_path_factory):
    """One persistent compilation cache for this module's subprocesses (see ``jit_cache_env``)."""
    _JIT_CACHE.update(jit_cache_env(tmp_path_factory.mktemp("jit_cache")))
    yield
    _JIT_CACHE.clear()


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", XLA_FLAGS=xla_flags(), **_JIT_CACHE, **extra)
    return env


def _train(config: Path, *args: str, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "xlstm_jax.train", "--config", str(config), *args],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"train exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


def _metrics(out_dir: Path, kind: str = "train") -> list[dict]:
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def _params(out_dir: Path, step: int | None = None) -> dict:
    """Parameters of a checkpoint as flat {path: numpy array}."""
    steps = sorted(int(p.name) for p in (out_dir / "checkpoints").iterdir() if p.name.isdigit())
    path = out_dir / "checkpoints" / str(steps[-1] if step is None else step) / "state"
    # Restore onto this process's one device, whatever mesh the run used.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(path).item_metadata
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
        state = checkpointer.restore(path, target)
    flat = {}

    def collect(prefix, node):
        if isinstance(node, dict):
            for k, v in node.items():
                collect(f"{prefix}/{k}", v)
        elif isinstance(node, (list, tuple)):
            for k, v in enumerate(node):
                collect(f"{prefix}/{k}", v)
        else:
            flat[prefix] = np.asarray(node)

    collect("", state["params"] if isinstance(state, dict) else state[1])
    return flat


def _assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted 8-step run (checkpoints every 2 steps)."""
    out = tmp_path_factory.mktemp("reference")
    _train(_write_config(out / "cfg.yaml", train={"out_dir": str(out / "run")}))
    return out / "run"


def test_run_writes_metrics_checkpoints_and_a_sample(reference_run):
    train = _metrics(reference_run)
    assert [r["step"] for r in train] == list(range(1, 9))
    assert all(np.isfinite(r["loss"]) and r["tokens_per_s"] > 0 for r in train)
    evals = _metrics(reference_run, "eval")
    assert evals and 0.0 <= evals[-1]["sequence_accuracy"] <= 1.0 and evals[-1]["perplexity"] > 1.0
    steps = sorted(int(p.name) for p in (reference_run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2, 4, 6, 8]
    meta = json.loads((reference_run / "checkpoints" / "8" / "meta" / "metadata").read_text())
    assert meta["row_blocks"] == 1  # compared on resume (resume.check_row_blocks)
    assert list((reference_run / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard event file"


def test_resume_after_kill_9_equals_an_uninterrupted_run(tmp_path, reference_run):
    """SIGKILL at a random step, restart: the final parameters are bit-identical."""
    out = tmp_path / "run"
    cfg = _write_config(tmp_path / "cfg.yaml", train={"out_dir": str(out), "checkpoint_every": 1})
    proc = subprocess.Popen([sys.executable, "-m", "xlstm_jax.train", "--config", str(cfg)], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    kill_after = random.Random(os.getpid()).randint(2, 6)
    deadline = time.time() + 240
    for line in proc.stdout:
        if f"step {kill_after}/8" in line or time.time() > deadline:
            break
    proc.kill()
    proc.wait()
    _train(cfg)  # resumes from the newest complete checkpoint
    _assert_same_params(_params(out), _params(reference_run))
    resumed = [r["step"] for r in _metrics(out)]
    assert resumed[-1] == 8 and sorted(set(resumed)) == list(range(1, 9))


def test_sigterm_saves_a_usable_checkpoint_and_exits_cleanly(tmp_path, reference_run):
    out = tmp_path / "run"
    cfg = _write_config(tmp_path / "cfg.yaml", train={"out_dir": str(out), "checkpoint_every": 0})
    proc = subprocess.Popen([sys.executable, "-m", "xlstm_jax.train", "--config", str(cfg)], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    for line in proc.stdout:
        if "step 3/8" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, rest
    assert "saving a checkpoint" in rest
    saved = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert len(saved) == 1 and 3 <= saved[0] < 8
    _train(cfg)
    _assert_same_params(_params(out), _params(reference_run))


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, reference_run):
    out = tmp_path / "run"
    cfg = _write_config(tmp_path / "cfg.yaml", train={"out_dir": str(out), "stop_after_steps": 4})
    _train(cfg)
    for f in (out / "checkpoints" / "4" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"\x00garbage" * 3)
    proc = _train(cfg, "train.stop_after_steps=null")
    assert "checkpoint step 4 is unusable" in proc.stdout + proc.stderr
    assert "resumed from" in proc.stdout and "at step 2" in proc.stdout
    _assert_same_params(_params(out), _params(reference_run))


def test_bad_configs_give_clear_errors(tmp_path, monkeypatch, capsys):
    """The first case through a real ``python -m xlstm_jax.train`` process, the others through the
    same ``main`` in this process (a process start per case only re-imports JAX): exit status 2 and
    a message naming the field."""
    from xlstm_jax.train.cli import main

    cfg = _write_config(tmp_path / "cfg.yaml", train={"out_dir": str(tmp_path / "run")})
    proc = _train(cfg, "optim.lr=-1", check=False, timeout=600)
    assert proc.returncode == 2, (proc.stdout, proc.stderr[-2000:])
    assert "optim.lr must be a finite number > 0, got -1" in proc.stderr, proc.stderr[-2000:]
    monkeypatch.chdir(tmp_path)
    for override, message in [
        ("train.steps=1.5", "train.steps must be an integer >= 1, got 1.5"),
        ("train.stepz=3", "unknown key(s) train.stepz"),
        ("model.arch=gpt", "model.arch must be one of"),
        ("model.embedding_dim=33", "model"),
        ("data.kind=wikipedia", "kind"),
        ("mesh.data=3", "mesh"),
    ]:
        assert main(["--config", str(cfg), override]) == 2, (override, capsys.readouterr())
        err = capsys.readouterr().err
        assert message in err, (override, err[-2000:])


def test_8_fake_devices_on_a_2x2x2_mesh_match_1_device_and_resume_on_1(tmp_path, reference_run):
    """Steps 1-4 on a (2, 2, 2) mesh of 8 fake CPU devices, then a resume onto 1 device:
    the losses match the 1-device run throughout."""
    out = tmp_path / "mesh"
    cfg = _write_config(tmp_path / "cfg.yaml", train={"out_dir": str(out), "checkpoint_every": 0})
    proc = _train(cfg, "--cpu-devices", "8", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "train.stop_after_steps=4")
    assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 2} on 8 cpu devices" in proc.stdout
    proc = _train(cfg)  # default mesh on the 1 device of this run
    assert "resumed from" in proc.stdout and "at step 4" in proc.stdout
    ours = [r["loss"] for r in _metrics(out)]
    ref = [r["loss"] for r in _metrics(reference_run)]
    np.testing.assert_allclose(ours, ref, rtol=2e-5)


def test_export_to_hugging_face_format(tmp_path):
    """An xLSTM-7B-architecture run exports a folder that ``from_pretrained`` loads with the
    checkpoint's parameters."""
    from flax import nnx

    import xlstm_jax

    out = tmp_path / "run"
    model = {"arch": "xlstm_large", "embedding_dim": 32, "num_heads": 2, "num_blocks": 2, "chunk_size": 8}
    cfg = _write_config(tmp_path / "cfg.yaml", train={"out_dir": str(out), "steps": 2, "checkpoint_every": 0},
                        export={"hf_path": str(tmp_path / "hf")})  # fmt: skip
    raw = yaml.safe_load(cfg.read_text())
    raw["model"] = model
    cfg.write_text(yaml.safe_dump(raw))
    proc = _train(cfg)
    assert "exported the model in the Hugging Face format" in proc.stdout
    assert (tmp_path / "hf" / "config.json").is_file()
    loaded = xlstm_jax.from_pretrained(tmp_path / "hf")
    flat = {"/".join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(loaded, nnx.Param))}
    saved = {k.strip("/").removesuffix("/value"): v for k, v in _params(out).items()}
    assert flat.keys() == saved.keys()
    for key in flat:
        np.testing.assert_array_equal(flat[key].astype(np.float32), saved[key], err_msg=key)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(cfg: Path, *args: str) -> list[str]:
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "xlstm_jax.train",
                "--config",
                str(cfg),
                "--cpu-devices",
                "2",
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(pid),
                *args,
            ],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for pid in range(2)
    ]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for p, text in zip(procs, outs):
        assert p.returncode == 0, text[-4000:]
    return outs


def test_two_process_distributed_run_saves_and_restores(tmp_path, reference_run):
    """Two ``jax.distributed`` processes (2 CPU devices each) train steps 1-4 with every sequence
    split over a context axis that spans both processes (context=4: each process's devices hold half
    of every row), checkpoint, then resume from that checkpoint on (data=2, fsdp=2), each process
    loading its own rows; the losses equal the single-process run. (``test_context_trainer.py``'s
    slow two-process test also checks each process's rows and tokens per device.)"""
    out = tmp_path / "run"
    # Checkpoints at steps 4 (the resume point) and 8 only: a two-process save costs ~4 s on 2 cores.
    train = {"out_dir": str(out), "stop_after_steps": 4, "checkpoint_every": 4}
    cfg = _write_config(tmp_path / "cfg.yaml", train=train, mesh={"data": 2, "fsdp": 2, "tensor": 1})
    first = _two_processes(cfg, "mesh.data=1", "mesh.fsdp=1", "mesh.context=4")
    assert "2 process(es)" in first[0] and "stopped after 4 steps" in first[0]
    assert "mesh {'data': 1, 'fsdp': 1, 'context': 4, 'tensor': 1}" in first[0]
    second = _two_processes(cfg, "train.stop_after_steps=null")
    assert "resumed from" in second[0] and "at step 4" in second[0]
    np.testing.assert_allclose(
        [r["loss"] for r in _metrics(out)], [r["loss"] for r in _metrics(reference_run)], rtol=2e-5
    )
