"""The fault battery: nothing is lost and nothing is silent.

Flipped bytes in the newest checkpoint -> the previous one is used, the bad one quarantined and
saved again; two trainers on one folder -> the second refuses naming the holder (a dead holder's
lock is taken over); SIGTERM on a checkpoint step -> exit with that checkpoint; a failed save ->
the run stops at once naming the path, the error and the last good checkpoint; non-finite steps
-> the run stops and nothing non-finite is saved; bad data and config values refused before
training, naming the field or file.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tests.trainer_cases import TINY, checkpoint_steps
from xlstm_jax.train import fit
from xlstm_jax.train.checkpoint import DIGESTS
from xlstm_jax.train.config import ConfigError
from xlstm_jax.train.errors import CheckpointSaveError, NonFiniteTrainingError, RunFolderBusy
from xlstm_jax.train.metrics import Logger
from xlstm_jax.train.runlock import LOCK_NAME, RunLock
from xlstm_jax.train.trainer import resolve

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """4 steps of the tiny quickstart, checkpoints at 2 and 4, at most 2 kept."""
    out = tmp_path_factory.mktemp("reliability") / "run"
    overrides = [*TINY, "train.steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=2"]
    return fit("quickstart", overrides, out_dir=out, progress="off"), overrides


# --------------------------------------------------------------------------- checkpoints


def test_flipped_bytes_fall_back_quarantine_and_save_that_step_again(base_run, tmp_path, capsys):
    result, overrides = base_run
    out = tmp_path / "run"
    shutil.copytree(result.out_dir, out)
    assert (out / "checkpoints" / "4" / DIGESTS).is_file() and (out / "checkpoints" / "2" / DIGESTS).is_file()
    data_file = max((p for p in (out / "checkpoints" / "4" / "state").rglob("*") if p.is_file()), key=os.path.getsize)
    raw = bytearray(data_file.read_bytes())
    for i in (len(raw) // 3, len(raw) // 2, 2 * len(raw) // 3):
        raw[i] ^= 0xFF
    data_file.write_bytes(bytes(raw))

    more = fit("quickstart", [*overrides, "train.steps=6"], out_dir=out, progress="off")
    printed = capsys.readouterr().out
    assert "checkpoint step 4 is unusable (CorruptCheckpoint: 1 file(s) differ from their digests" in printed
    assert "resumed from" in printed and "at step 2" in printed
    assert more.history.column("step") == [3, 4, 5, 6] and all(np.isfinite(more.history.column("loss")))
    quarantined = list((out / "quarantine").iterdir())
    assert [p.name.split("-")[0] for p in quarantined] == ["4"]
    # Step 4 was saved again, and the quarantined copy did not push step 4 out of keep_checkpoints=2.
    assert checkpoint_steps(out) == [4, 6]


def test_sigterm_on_a_checkpoint_step_exits_with_that_checkpoint(tmp_path):
    def batches():  # SIGTERM arrives while step 2, a checkpoint step, runs
        for step in range(1, 100):
            if step == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            x = np.arange(8 * 12).reshape(8, 12) % 5
            yield {"inputs": x, "targets": (x + 1) % 5}

    r = fit("quickstart", [*TINY, "train.steps=6", "train.checkpoint_every=2"], model=_Bigram(5), data=batches(),
            out_dir=tmp_path / "run", progress="off")  # fmt: skip
    assert r.summary["stopped_by_signal"] and r.step == 2
    assert checkpoint_steps(r.out_dir) == [2]


def test_a_failed_save_stops_the_run_at_once(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    real_save = ocp.CheckpointManager.save

    def disk_full(self, step, *args, **kwargs):
        if step >= 4:
            raise OSError(28, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", disk_full)
    out = tmp_path / "run"
    with pytest.raises(CheckpointSaveError) as info:
        fit("quickstart", [*TINY, "train.steps=8", "train.checkpoint_every=2"], model=_Bigram(5), data=_batches(),
            out_dir=out, progress="off")  # fmt: skip
    message = str(info.value)
    assert f"saving the checkpoint of step 4 to {out.resolve() / 'checkpoints' / '4'} failed" in message
    assert "No space left on device" in message and "last good checkpoint: step 2 in" in message
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4  # stopped at the failing step, not an interval later
    assert checkpoint_steps(out) == [2]


# ------------------------------------------------------------------------- run folders


def test_a_second_trainer_on_a_busy_folder_refuses_naming_the_holder(tmp_path):
    overrides = [*TINY, "train.steps=4"]
    out = tmp_path / "run"
    with RunLock(out, "holder-run"):
        with pytest.raises(RunFolderBusy, match=rf"in use by pid {os.getpid()} on host '{socket.gethostname()}' "
                                                r"\(run holder-run"):  # fmt: skip
            fit("quickstart", overrides, out_dir=out, progress="off")
        assert not (out / "checkpoints").exists()
        proc = subprocess.run(
            [sys.executable, "-m", "xlstm_jax.train", "--config", "quickstart", *overrides, f"train.out_dir={out}"],
            cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert (
            proc.stderr.strip().splitlines()[-1].startswith(f"error: run folder {out} is in use by pid {os.getpid()}")
        )
    assert not (out / LOCK_NAME).exists()  # released on exit


def test_a_dead_holders_lock_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "run_id": "old"}))
    said = []
    with RunLock(tmp_path, "new", message=said.append):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert said and f"taking over the stale lock of pid {dead.pid}" in said[0] and "process is gone" in said[0]
    other = {"pid": 1, "host": "another-host", "run_id": "remote", "time": 0}
    (tmp_path / LOCK_NAME).write_text(json.dumps(other))
    with pytest.raises(RunFolderBusy, match=r"host 'another-host'.*if that process is gone, delete .*\.lock"):
        RunLock(tmp_path, "new").__enter__()


# --------------------------------------------------------------------------- non-finite


class _Bigram(nnx.Module):
    def __init__(self, vocab: int, *, poison: float | None = None):
        self.table = nnx.Embed(vocab, vocab, rngs=nnx.Rngs(0))
        self.poison = poison

    def __call__(self, ids, segment_ids=None):
        logits = self.table(ids)
        return logits if self.poison is None else logits * jnp.sqrt(jnp.asarray(self.poison))


def _batches():
    rng = np.random.default_rng(0)
    while True:
        x = rng.integers(0, 5, (8, 12))
        yield {"inputs": x, "targets": (x + 1) % 5}


def test_consecutive_non_finite_steps_stop_the_run(tmp_path):
    with pytest.raises(NonFiniteTrainingError, match=r"3 consecutive steps up to step 3 had non-finite gradients "
                                                     r"\(train.max_consecutive_nonfinite=3; 3 non-finite"):  # fmt: skip
        fit("quickstart", [*TINY, "train.steps=20", "train.checkpoint_every=10", "train.max_consecutive_nonfinite=3"],
            model=_Bigram(5, poison=-1.0), optimizer=optax.sgd(0.1), data=_batches(), out_dir=tmp_path / "run",
            progress="off")  # fmt: skip
    assert not (tmp_path / "run" / "checkpoints").exists() or checkpoint_steps(tmp_path / "run") == []


def test_a_non_finite_state_is_never_saved(tmp_path):
    model = _Bigram(5)
    model.table.embedding[0, 0] = jnp.inf
    with pytest.raises(
        NonFiniteTrainingError, match=r"at step 2 are not finite: not saving them.*last good checkpoint: none"
    ):
        fit("quickstart", [*TINY, "train.steps=4", "train.checkpoint_every=2"], model=model,
            optimizer=optax.sgd(0.0), data=_batches(), out_dir=tmp_path / "run", progress="off")  # fmt: skip
    assert checkpoint_steps(tmp_path / "run") == []


@pytest.mark.slow
def test_a_huge_learning_rate_stops_non_zero(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "xlstm_jax.train", "--config", "quickstart", *TINY, "train.steps=40", "optim.lr=1e6",
         "train.checkpoint_every=0", f"train.out_dir={tmp_path / 'run'}"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert proc.returncode == 1 and "consecutive steps up to step" in proc.stderr, proc.stderr[-2000:]


# -------------------------------------------------------------------- data and config


def _token_file(tmp_path: Path, ids: np.ndarray, vocab: int) -> Path:
    ids.astype(np.uint16).tofile(tmp_path / "c.bin")
    (tmp_path / "c.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": vocab, "eos_id": 0}))
    return tmp_path / "c.bin"


def test_token_ids_outside_the_vocabulary_are_refused_naming_file_and_id(tmp_path):
    ids = np.random.default_rng(0).integers(1, 256, 4000)
    ids[::97] = 0
    ids[1234] = 1000
    path = _token_file(tmp_path, ids, 256)
    raw = {"data": {"kind": "tokens", "path": str(path), "heldout_fraction": 0.1}, "model": {"arch": "xlstm_lm"}}
    with pytest.raises(ConfigError, match=rf"token file {path} holds the id 1000, outside the vocabulary \[0, 256\)"):
        resolve(raw)
    raw["data"].pop("heldout_fraction")
    with pytest.raises(ConfigError, match=r"data.eval_path or data.heldout_fraction must be set for kind='tokens'"):
        resolve(raw)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"steps": True}, "train.steps must be an integer >= 1, got True"),
        ({"steps": "abc"}, "train.steps must be an integer >= 1, got 'abc'"),
        ({"steps": 1.5}, "train.steps must be an integer >= 1, got 1.5"),
        ({"max_consecutive_nonfinite": -1}, "train.max_consecutive_nonfinite must be an integer >= 1, got -1"),
    ],
)
def test_bad_train_values_name_the_field(override, message):
    raw = {"model": {"arch": "xlstm_lm", "embedding_dim": 16, "num_blocks": 1}, "train": override}
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve(raw)


def test_bad_values_on_the_command_line_name_the_field(tmp_path):
    for options, overrides, message in [
        (["--cpu-devices", "-1"], [], "--cpu-devices must be an integer >= 1 or 'auto', got '-1'"),
        (["--cpu-devices", "all"], [], "--cpu-devices must be an integer >= 1 or 'auto', got 'all'"),
        (["--cpu-devices", "2"], ["train.global_batch_size=3", f"train.out_dir={tmp_path}"],
         "train.global_batch_size=3 must be divisible by the 2 batch shards of the mesh {'data': 2, 'fsdp': 1, "
         "'tensor': 1}"),
    ]:  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", "xlstm_jax.train", *options, "--config", "quickstart", *TINY, *overrides],
            cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )  # fmt: skip
        assert proc.returncode == 2 and message in proc.stderr, (options, overrides, proc.stderr[-2000:])


def test_cpu_devices_auto_is_one_device_per_usable_core():
    from xlstm_jax.train.cli import cpu_device_count

    assert cpu_device_count("auto") == len(os.sched_getaffinity(0))
    assert (cpu_device_count("3"), cpu_device_count(2), cpu_device_count(None)) == (3, 2, None)
    for bad in ("0", "1.5", 0, True):
        with pytest.raises(ValueError, match="--cpu-devices must be an integer >= 1 or 'auto'"):
            cpu_device_count(bad)


# ----------------------------------------------------------------------------- progress


def test_progress_bar_and_plain_lines(tmp_path, monkeypatch):
    metrics = {"loss": 0.5, "tokens_per_s": 1234.0, "mfu": 0.25, "lr": 1e-3, "grad_norm": 1.0}
    for mode, expected in [("bar", ["loss=0.5000", "tok/s=1,234", "mfu=25.0%", "2/4"]),
                           ("lines", ["step 2/4  loss 0.5000  tok/s 1,234", "mfu 25.0%  eta"])]:  # fmt: skip
        buffer = io.StringIO()
        monkeypatch.setattr(sys, "stdout", buffer)
        with Logger(tmp_path / mode, 4, tensorboard=False, enabled=True, progress=mode) as logger:
            logger.begin(0)
            logger.log(2, metrics)
        text = buffer.getvalue()
        assert all(e in text for e in expected), (mode, text)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert Logger(tmp_path / "auto", 4, tensorboard=False, enabled=True).progress == "lines"  # not a terminal
    with pytest.raises(ConfigError, match="progress must be one of 'bar', 'lines', 'off', 'auto', got 'fancy'"):
        Logger(tmp_path / "x", 4, tensorboard=False, enabled=True, progress="fancy")
