"""The Python training API: ``fit`` returns the model, state, history and run folder; ``load_run``
gives the model back; resume is explicit and refuses a changed config; a user's own model,
optimizer and data train through the same loop."""

from __future__ import annotations

import re
import shutil

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from tests.trainer_cases import TINY, checkpoint_steps, metrics_rows
from xlstm_jax.train import fit, load_run
from xlstm_jax.train.config import ConfigError, load_config


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """4 steps of the tiny quickstart, checkpoints at 2 and 4."""
    out = tmp_path_factory.mktemp("api") / "run"
    return fit("quickstart", [*TINY, "train.steps=4", "train.checkpoint_every=2"], out_dir=out, progress="lines")


def _flat(params) -> dict:
    return {k: np.asarray(v) for k, v in nnx.to_flat_state(params)}


def test_fit_returns_model_state_history_and_folder(first_run):
    r = first_run
    assert r.step == 4 and int(r.state.step) == 4 and r.out_dir.name == "run"
    assert r.history.column("step") == [1, 2, 3, 4]
    assert all(np.isfinite(r.history.column("loss")))
    assert {row["run_id"] for row in r.history} == {r.run_id}
    assert [row["run_id"] for row in metrics_rows(r.out_dir)] == [r.run_id] * len(r.history)
    assert set(r.eval) >= {"loss", "token_accuracy", "sequence_accuracy"}
    table = r.history.table(["step", "loss"]).splitlines()
    assert table[0].split() == ["step", "loss"] and len(table) == 5
    model_params = _flat(nnx.state(r.model, nnx.Param))
    state_params = _flat(r.state.params)
    assert model_params.keys() == state_params.keys()
    for k in model_params:
        np.testing.assert_array_equal(model_params[k], state_params[k], err_msg=str(k))
    assert checkpoint_steps(r.out_dir) == [2, 4]
    # The end-of-run sample in the task's symbols: parity bits, then the answer and the expected one.
    assert re.fullmatch(r"[01]( [01])* -> (even|odd) \(expected (even|odd)\)", r.summary["sample"]["text"])


def test_load_run_gives_back_the_trained_model(first_run):
    run = load_run(first_run.out_dir)
    assert run.step == 4 and run.config.data.kind == "parity"
    ids = jax.numpy.asarray([[2, 1, 2, 2, 1]])
    np.testing.assert_array_equal(np.asarray(run.model(ids)), np.asarray(first_run.model(ids)))
    assert run.codec.format([2, 1, 2, 2], [2], [2]) == "1 0 1 1 -> odd (expected odd)"
    with pytest.raises(ConfigError, match=r"step must be one of the checkpoints \[2, 4\], got 3"):
        load_run(first_run.out_dir, step=3)


@pytest.mark.parametrize(
    ("override", "key"),
    [("model.embedding_dim=32", "model.embedding_dim"), ("optim.lr=0.01", "optim.lr"), ("train.seed=1", "train.seed")],
)
def test_resume_refuses_a_changed_config_naming_the_keys(first_run, override, key):
    with pytest.raises(ConfigError, match=rf"different config; differing keys:\n  {key}: checkpoint"):
        fit("quickstart", [*TINY, "train.steps=4", override], out_dir=first_run.out_dir)


def test_resume_modes(first_run, tmp_path):
    with pytest.raises(ConfigError, match=r"resume='never' but .* holds checkpoints \(steps \[2, 4\]\)"):
        fit("quickstart", [*TINY, "train.steps=4"], out_dir=first_run.out_dir, resume="never")
    with pytest.raises(ConfigError, match=r"resume='must' but no checkpoint"):
        fit("quickstart", [*TINY, "train.steps=4"], out_dir=tmp_path / "empty", resume="must")
    with pytest.raises(ConfigError, match=r"resume must be one of 'auto', 'never', 'must', got 'yes'"):
        fit("quickstart", [*TINY, "train.steps=4"], out_dir=tmp_path / "empty", resume="yes")


@pytest.mark.slow  # a second compile and 2 more steps (~1 min on 2 busy cores); test_trainer covers resuming
def test_resume_with_more_steps_continues_under_a_new_run_id(first_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(first_run.out_dir, out)
    # More steps, another cadence: allowed. Resumes at step 4, trains 5 and 6.
    more = fit("quickstart", [*TINY, "train.steps=6", "train.checkpoint_every=3", "train.log_every=2"], out_dir=out)
    assert more.history.column("step") == [6] and more.run_id != first_run.run_id
    rows = metrics_rows(out, "train")
    assert [(r["step"], r["run_id"]) for r in rows][-1] == (6, more.run_id)
    assert {r["run_id"] for r in rows} == {first_run.run_id, more.run_id}


class _Bigram(nnx.Module):
    def __init__(self, vocab: int, rngs: nnx.Rngs):
        self.table = nnx.Embed(vocab, vocab, rngs=rngs)

    def __call__(self, ids, segment_ids=None):
        return self.table(ids)


def test_fit_trains_a_users_model_optimizer_and_data(tmp_path):
    rng = np.random.default_rng(0)

    def batches():
        while True:
            x = rng.integers(0, 5, (8, 12))
            yield {"inputs": x, "targets": (x + 1) % 5}  # the next id: learnable by a bigram table

    model = _Bigram(5, nnx.Rngs(0))
    r = fit("quickstart", [*TINY, "train.steps=30", "train.checkpoint_every=0"], model=model,
            optimizer=optax.adam(0.3), data=batches(), out_dir=tmp_path / "run")  # fmt: skip
    loss = r.history.column("loss")
    assert isinstance(r.model, _Bigram) and r.eval is None
    assert loss[-1] < 0.2 * loss[0], loss
    assert "lr" not in r.history[0]  # the user's optimizer has its own schedule


def test_codecs_show_symbols_and_text():
    from xlstm_jax.train.data import DataConfig
    from xlstm_jax.train.data.codec import codec_for

    arith = codec_for(DataConfig(kind="modular_arithmetic"))
    assert arith.format([8, 2, 7, 3, 9, 4], [5], [5]) == "3 - 2 * 4 = -> 0 (expected 0)"
    assert codec_for(DataConfig(kind="cycle_navigation")).format([2, 2, 3, 1], [5]) == "+1 +1 -1 stay -> @1"
    parity = codec_for(DataConfig(kind="parity"))
    assert (
        parity.format([2] * 30, [1], max_prompt=24)
        == " ".join(["1"] * 10) + " ... " + " ".join(["1"] * 10) + " -> even"
    )
    text = codec_for(DataConfig(kind="text", path="x.txt"))
    assert text.format(list(b"hello "), list(b"world"), list(b"there")) == "'hello ' -> 'world' (expected 'there')"


def test_overrides_as_strings_or_mappings():
    a = load_config("quickstart", ["train.steps=5", "optim.lr=3e-4"])
    b = load_config("quickstart", {"train.steps": 5, "optim": {"lr": 3e-4}})
    assert a == b and a["train"]["steps"] == 5 and a["optim"]["warmup_steps"] == 50
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        load_config("quickstart", ["train.steps"])
