"""The training loop in three parts: ``init`` (sharded init or resume), ``loop`` (jitted steps,
evaluation, checkpoints, signals) and ``finish`` (final evaluation, sample, export).

``run(config_dict)`` trains from a resolved config (see ``train.config``) and returns a
summary. Everything that varies between a laptop and a pod is in the config: the mesh
shape, the logical-axis rules, the batch, and the distributed setup done by
``train.cli`` before this runs. The logger, the checkpointer and the signal handlers
are context managers, so every exit (done, stopped, signal, error) closes them once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import secrets
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from xlstm_jax import backends
from xlstm_jax._validation import check_choice
from xlstm_jax.generation import generate

from .checkpoint import Checkpointer
from .config import ConfigError, MeshConfig, OptimConfig, RunConfig, build_dataclass, to_json
from .data import CORPUS_KINDS, DataConfig, make_eval_dataset, make_train_dataset, vocab_size
from .data.codec import codec_for
from .data.sources import open_corpus
from .errors import NonFiniteTrainingError
from .mesh import batch_axes, batch_sharding, describe, make_mesh, process_rows, state_shardings
from .metrics import Logger, device_peak_flops
from .models import build_model, config_to_dict, model_config
from .optim import make_optimizer, schedule
from .resume import RESUME_MODES, check_resume, check_row_blocks, fingerprint
from .runlock import RunLock
from .step import TrainState, jit_train_step, make_eval_step, model_flops

SECTIONS = ("model", "data", "optim", "train", "mesh", "distributed", "export")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """A validated run config."""

    model: Any  # xLSTMLMConfig or xLSTMLargeConfig
    data: DataConfig
    optim: OptimConfig
    train: RunConfig
    mesh: MeshConfig
    export_hf: str | None
    raw: dict


def resolve(raw: dict) -> RunSpec:
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown config section(s) {unknown}; known: {list(SECTIONS)}")
    try:
        data = DataConfig.from_dict(raw.get("data") or {})
    except ValueError as err:
        raise ConfigError(f"data: {err}") from err
    run = build_dataclass(RunConfig, raw.get("train"), "train.")
    vocab = _check_corpus(data)
    model = model_config(
        raw.get("model") or {},
        vocab_size=vocab,
        dtype=run.compute_dtype,
        param_dtype=run.param_dtype,
        remat=run.remat,
        remat_policy=run.remat_policy,
    )
    export = dict(raw.get("export") or {})
    export_hf = export.pop("hf_path", None)
    if export:
        raise ConfigError(f"unknown key(s) {', '.join('export.' + k for k in export)}; known: hf_path")
    if export_hf and config_to_dict(model)["arch"] != "xlstm_large":
        raise ConfigError("export.hf_path: the Hugging Face format exists for model.arch=xlstm_large only")
    optim = build_dataclass(OptimConfig, raw.get("optim"), "optim.")
    if run.global_batch_size % (optim.grad_accum_steps * jax.process_count()):
        raise ConfigError(
            f"train.global_batch_size={run.global_batch_size} must be divisible by optim.grad_accum_steps="
            f"{optim.grad_accum_steps} x {jax.process_count()} processes"
        )
    mesh = build_dataclass(MeshConfig, raw.get("mesh"), "mesh.")
    for field, length in _seq_lens(run):
        mesh.check_seq_len(length, field)
    return RunSpec(model, data, optim, run, mesh, export_hf, raw)


def _check_corpus(data: DataConfig) -> int:
    """The data's vocabulary size; for corpora, also what would otherwise fail only later: an
    evaluation split must exist, and token files must hold ids inside the vocabulary."""
    try:
        vocab = vocab_size(data)
        if data.kind in CORPUS_KINDS and data.eval_path is None and data.heldout_fraction == 0:
            raise ValueError(
                f"data.eval_path or data.heldout_fraction must be set for kind={data.kind!r}: the run evaluates on "
                "held-out documents (at the end and every train.eval_every steps); neither is set"
            )
        if data.kind == "tokens":
            for files in (data.path, data.eval_path):
                if files is not None:
                    open_corpus(data, files, vocab)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"data: {err}") from err
    return vocab


def _num_params(params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def _global_batch(local: dict, sharding, blocks: int) -> dict:
    """This process's block of rows (numpy, one of ``blocks``; see ``mesh.process_rows``) -> global
    arrays laid out on the mesh (rows over the batch axes, each row's tokens over the context axis)."""
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v), (v.shape[0] * blocks, *v.shape[1:]))
        for k, v in local.items()
    }


class _StepTimer:
    """Wall time per training step since the last restart (evaluation, saving and
    compilation excluded by restarting around them)."""

    def __init__(self):
        self.restart()

    def restart(self):
        self.start, self.steps = time.perf_counter(), 0

    def count(self):
        self.steps += 1

    def per_step(self) -> float:
        return (time.perf_counter() - self.start) / max(self.steps, 1)


class _StopFlag:
    """While entered, SIGTERM / SIGINT request a checkpoint and a clean exit after the current step."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        self.signal = signum

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may handle signals (fit() called from a worker thread)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclasses.dataclass
class Session:
    """Everything ``init`` builds and ``loop`` / ``finish`` use."""

    spec: RunSpec
    logger: Logger
    ckpt: Checkpointer
    mesh: jax.sharding.Mesh
    graphdef: Any
    rest: Any
    state: TrainState
    train_step: Any
    eval_step: Any
    batch_sharding: Any
    data_iter: Any
    checkpointed_data: Any  # the data iterator whose position checkpoints save, or None
    start: int
    step: int
    meta: dict
    n_params: int
    peak_flops: tuple[float, str]  # per device, and where the figure comes from
    rows: tuple[int, int] = (0, 1)  # (index, count) of this process's block of batch rows (mesh.process_rows)
    custom: dict = dataclasses.field(default_factory=dict)  # which of model/optimizer/data the user gave
    last_metrics: dict | None = None


def _seq_lens(run: RunConfig) -> list[tuple[str, int]]:
    """(field, value) of the sequence lengths the run's batches have: training and evaluation."""
    return [("train.seq_len", run.seq_len)] + ([("train.eval_seq_len", run.eval_seq_len)] if run.eval_seq_len else [])


def _check_batch_fits_mesh(global_batch_size: int, mesh, rules, seq_lens=()) -> None:
    """``ConfigError`` unless the batch axes divide the global batch and the ``length`` axes (the
    context axis) divide every sequence length ``seq_lens`` ((field, value) pairs)."""
    rows, length = batch_axes(mesh, rules)
    shards = math.prod(mesh.shape[a] for a in rows)
    if global_batch_size % shards:
        raise ConfigError(
            f"train.global_batch_size={global_batch_size} must be divisible by the {shards} batch shards of the mesh "
            f"{describe(mesh)} (mesh.rules.batch={list(rules.get('batch', []))}); use a multiple of {shards} "
            "or another mesh"
        )
    shards = math.prod(mesh.shape[a] for a in length)
    for field, value in seq_lens:
        if value % shards:
            raise ConfigError(
                f"{field}={value} must be divisible by the {shards} sequence shards of the mesh {describe(mesh)} "
                f"(mesh.context, mesh.rules.length={list(rules.get('length', []))}); use a multiple of {shards} "
                "or another mesh"
            )


def _user_batches(data) -> Any:
    """A user's iterable of batches -> an iterator of complete batches (``loss_mask`` and
    ``segment_ids`` default to ones)."""
    for batch in data:
        missing = {"inputs", "targets"} - set(batch)
        if missing:
            raise ValueError(f"data batches must hold 'inputs' and 'targets', (b, S) ints; missing {sorted(missing)}")
        out = {"inputs": np.asarray(batch["inputs"], np.int32), "targets": np.asarray(batch["targets"], np.int32)}
        ones = np.ones(out["inputs"].shape, np.float32)
        out["loss_mask"] = np.asarray(batch.get("loss_mask", ones), np.float32)
        out["segment_ids"] = np.asarray(batch.get("segment_ids", ones), np.int32)
        yield out


def abstract_model(spec: RunSpec, mesh, model: nnx.Module | None = None):
    """``(graphdef, abstract_params, rest, param_shardings)`` of the run's model (or of ``model``)
    on ``mesh``; nothing is allocated.

    An abstract model gives the parameters' shapes and logical names (built outside the mesh
    context, where flax would read the logical names as mesh axes); the config's rules map the
    names to ``mesh`` axes.
    """
    if model is None:
        abstract = nnx.eval_shape(lambda: build_model(spec.model, spec.train.seed))
    else:
        abstract = nnx.eval_shape(lambda: model)
    graphdef, abstract_params, rest = nnx.split(abstract, nnx.Param, ...)
    return graphdef, abstract_params, rest, state_shardings(abstract_params, mesh, spec.mesh.rules)


def init(
    spec: RunSpec,
    logger: Logger,
    ckpt: Checkpointer,
    *,
    model: nnx.Module | None = None,
    optimizer: optax.GradientTransformation | None = None,
    data: Iterable[dict] | None = None,
    resume: str = "auto",
) -> Session:
    """Builds the sharded train state (or restores the newest usable checkpoint), the data
    iterator and the jitted steps.

    ``model``, ``optimizer`` and ``data`` replace what the config's model, optim and data
    sections describe (see ``xlstm_jax.train.fit``).
    """
    check_choice("resume", resume, RESUME_MODES, error=ConfigError)
    t = spec.train
    mesh = make_mesh(spec.mesh)
    rules = spec.mesh.rules
    _check_batch_fits_mesh(t.global_batch_size, mesh, rules, _seq_lens(t))
    # Parameters are created sharded: the init is jitted straight into the abstract model's shardings.
    graphdef, abstract_params, rest, param_shardings = abstract_model(spec, mesh, model)
    arch = config_to_dict(spec.model)["arch"] if model is None else type(model).__name__
    model_meta = config_to_dict(spec.model) if model is None else {"arch": "custom", "class": arch}
    fp = fingerprint(spec, model_meta, abstract_params, optimizer)
    check_resume(ckpt, resume, fp)

    with jax.set_mesh(mesh):
        if model is None:
            init_fn = lambda: nnx.split(build_model(spec.model, t.seed), nnx.Param, ...)[1:]
            params = jax.jit(lambda: init_fn()[0], out_shardings=param_shardings)()
            if jax.tree.leaves(rest):  # non-parameter variables (none in the xLSTM models today)
                rest = init_fn()[1]
        else:
            _, params, rest = nnx.split(model, nnx.Param, ...)
            # A copy: the step donates its input buffers, which must not be the user's model's.
            params = jax.device_put(jax.tree.map(jnp.copy, params), param_shardings)
        if optimizer is None:
            tx = make_optimizer(spec.optim, t.steps, params)
        else:  # skip and count non-finite steps as with the built-in optimizer
            tx = optax.apply_if_finite(optimizer, max_consecutive_errors=1 << 30)
        opt_state = tx.init(params)  # eagerly, so the moments inherit the parameters' shardings
        state = TrainState(jnp.zeros((), jnp.int32), params, opt_state)
        state_sharding = jax.tree.map(lambda x: x.sharding, state)
        state = jax.device_put(state, state_sharding)
        n_params = _num_params(params)
        logger.message(
            f"model {arch}: {n_params:,} parameters; mesh {describe(mesh)} on "
            f"{jax.device_count()} {jax.devices()[0].platform} devices, {jax.process_count()} process(es)"
        )
        bsh = batch_sharding(mesh, rules)
        rows = process_rows(bsh, t.global_batch_size)
        if data is None:
            data_iter = iter(
                make_train_dataset(
                    spec.data,
                    seq_len=t.seq_len,
                    global_batch_size=t.global_batch_size,
                    process_index=rows[0],
                    process_count=rows[1],
                )
            )
        else:
            data_iter = _user_batches(data)
        checkpointed_data = data_iter if data is None else None  # a user's iterator has no saved position
        start = 0
        abstract_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        restored = ckpt.restore_latest(abstract_state, checkpointed_data)
        if restored is not None:
            start, state, saved = restored
            check_row_blocks(spec.data.kind, saved.get("row_blocks"), rows[1])
            logger.message(f"resumed from {ckpt.directory} at step {start}")
        elif resume == "must":
            raise ConfigError(f"resume='must' but no checkpoint in {ckpt.directory} restores")

        train_step = jit_train_step(graphdef, rest, tx, spec.optim.grad_accum_steps, state_sharding, bsh)
        eval_step = jax.jit(make_eval_step(graphdef, rest), in_shardings=(state_sharding.params, bsh))
    meta = {"config": spec.raw, "resolved_model": model_meta, "params": n_params, "fingerprint": fp}
    meta["row_blocks"] = rows[1]  # checked on resume (resume.check_row_blocks)
    custom = {"model": model is not None, "optimizer": optimizer is not None, "data": data is not None}
    return Session(spec, logger, ckpt, mesh, graphdef, rest, state, train_step, eval_step, bsh, data_iter,
                   checkpointed_data, start, start, meta, n_params, device_peak_flops(), rows, custom)  # fmt: skip


@jax.jit
def _all_finite(tree) -> jax.Array:
    """Whether every floating-point leaf of ``tree`` is finite (one boolean scalar)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.bool_(True)


def _last_good(s: Session) -> str:
    good = s.ckpt.last_good
    return f"step {good} in {s.ckpt.directory}" if good is not None else "none"


def _check_nonfinite(s: Session, metrics: dict, step: int) -> None:
    """Stops the run once ``train.max_consecutive_nonfinite`` steps in a row had non-finite gradients."""
    limit = s.spec.train.max_consecutive_nonfinite
    run = int(metrics["nonfinite_run"])
    if run >= limit:
        total = int(metrics["skipped_steps"])
        raise NonFiniteTrainingError(
            f"{run} consecutive steps up to step {step} had non-finite gradients (train.max_consecutive_nonfinite="
            f"{limit}; {total} non-finite steps in all, each skipped): the run stops; lower optim.lr or check the "
            f"data; last good checkpoint: {_last_good(s)}"
        )


def _save(s: Session) -> None:
    """Saves the state of ``s.step`` unless that step is saved already; never a non-finite state."""
    if s.ckpt.last_saved == s.step or s.step in s.ckpt.steps():
        return
    if not bool(_all_finite((s.state.params, s.state.opt_state))):
        raise NonFiniteTrainingError(
            f"the parameters or optimizer state at step {s.step} are not finite: not saving them; the run stops; "
            f"last good checkpoint: {_last_good(s)}"
        )
    s.ckpt.save(s.step, s.state, s.checkpointed_data, s.meta)


def loop(s: Session, stop: _StopFlag) -> str:
    """Trains from ``s.step`` to the end of this invocation; returns why it ended:
    ``"done"`` (all ``train.steps``), ``"stop_after_steps"`` or ``"signal"``.

    Raises ``NonFiniteTrainingError`` after ``train.max_consecutive_nonfinite`` non-finite steps
    in a row (read one step late, so that the host does not wait for every step) and
    ``CheckpointSaveError`` as soon as a save fails.
    """
    t = s.spec.train
    lr_at = schedule(s.spec.optim, t.steps)
    peak = s.peak_flops[0]
    flops = None  # one device's model FLOPs per step, counted on the first batch
    end = t.steps if t.stop_after_steps is None else min(t.steps, s.start + t.stop_after_steps)
    timer = _StepTimer()
    s.logger.begin(s.step)
    previous = None  # (step, metrics) of the step before, checked once the next one is dispatched
    while s.step < end:
        batch = _global_batch(next(s.data_iter), s.batch_sharding, s.rows[1])
        if flops is None:
            try:  # an SPMD step runs 1/size of the model's FLOPs per device
                flops = model_flops(s.graphdef, s.rest, s.state.params, batch) / s.mesh.size
            except Exception as err:  # noqa: BLE001 - MFU is informative: training goes on without it
                s.logger.message(f"MFU unavailable: counting the step's FLOPs failed ({type(err).__name__}: {err})")
                flops = math.nan
            timer.restart()  # tracing is not a training step
        s.state, metrics = s.train_step(s.state, batch)
        s.step += 1
        timer.count()
        if previous is not None:
            _check_nonfinite(s, *reversed(previous))
        previous = (s.step, metrics)
        s.ckpt.check()
        if s.step % t.log_every == 0 or s.step == t.steps:
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            per_step = timer.per_step()
            m.update(
                tokens_per_s=t.global_batch_size * t.seq_len / per_step,
                mfu=flops / per_step / peak,  # both per device
            )
            if not s.custom.get("optimizer"):  # a user's optimizer has its own schedule
                m["lr"] = float(lr_at(s.step - 1))
            s.logger.log(s.step, m)
            s.last_metrics = m
            timer.restart()
        if t.eval_every and not s.custom.get("data") and s.step % t.eval_every == 0 and s.step < t.steps:
            s.logger.log(s.step, evaluate(s), kind="eval")
            timer.restart()
        if t.checkpoint_every and s.step % t.checkpoint_every == 0:
            _check_nonfinite(s, metrics, s.step)
            _save(s)
            timer.restart()
        if stop.signal is not None:
            s.logger.message(f"signal {stop.signal}: saving a checkpoint at step {s.step} and exiting")
            _save(s)  # nothing to do when this step's periodic save just ran
            s.ckpt.wait()
            return "signal"
    if previous is not None:
        _check_nonfinite(s, previous[1], previous[0])
    _save(s)
    s.ckpt.wait()
    return "done" if s.step >= t.steps else "stop_after_steps"


def finish(s: Session, reason: str) -> dict:
    """The summary of this invocation; after the last step also the final evaluation, a sample
    and the Hugging Face export."""
    if reason == "signal":
        return {"step": s.step, "stopped_by_signal": True}
    if reason == "stop_after_steps":
        s.logger.message(f"stopped after {s.step - s.start} steps this run (train.stop_after_steps); resume to go on")
        return {"step": s.step, "stopped_after_steps": s.step - s.start}
    # A user's data iterator has no held-out split and no task to sample: no evaluation, no sample.
    final_eval = None if s.custom.get("data") else evaluate(s)
    if final_eval is not None:
        s.logger.log(s.step, final_eval, kind="eval")
    model = nnx.merge(s.graphdef, s.state.params, s.rest)
    sample = _sample(s.spec, model, s.logger) if s.spec.train.sample_tokens and final_eval is not None else None
    if s.spec.export_hf:
        from xlstm_jax.convert import save_pretrained

        if jax.process_index() == 0:
            save_pretrained(model, s.spec.export_hf)
        s.logger.message(f"exported the model in the Hugging Face format to {s.spec.export_hf}")
    s.logger.message(f"peak FLOP/s for MFU: {s.peak_flops[1]}; checkpoints in {s.ckpt.directory}")
    return {
        "step": s.step,
        "nonfinite_steps": int(jax.device_get(s.state.opt_state.total_notfinite)),
        "params": s.n_params,
        "train": s.last_metrics,
        "eval": final_eval,
        "sample": sample,
        "config": to_json(s.spec.raw),
    }


def new_run_id() -> str:
    """A run id per start of the trainer: UTC time and a random suffix (``20261203-071502-3fa9c1``)."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def train(
    spec: RunSpec,
    *,
    model: nnx.Module | None = None,
    optimizer: optax.GradientTransformation | None = None,
    data: Iterable[dict] | None = None,
    resume: str = "auto",
    progress: str | bool | None = None,
    run_id: str | None = None,
) -> tuple[dict, Session]:
    """Trains the run ``spec`` describes: ``init``, ``loop``, ``finish``. Returns the summary and
    the session (final state, history in ``session.logger.history``)."""
    t, out_dir = spec.train, Path(spec.train.out_dir)
    run_id = run_id or new_run_id()
    with contextlib.ExitStack() as stack:
        is_main = jax.process_index() == 0
        stack.enter_context(RunLock(out_dir, run_id, message=print if is_main else lambda _: None))
        logger = stack.enter_context(
            Logger(out_dir, t.steps, tensorboard=t.tensorboard, enabled=is_main, run_id=run_id, progress=progress)
        )
        ckpt = stack.enter_context(Checkpointer(out_dir / "checkpoints", keep=t.keep_checkpoints))
        session = init(spec, logger, ckpt, model=model, optimizer=optimizer, data=data, resume=resume)
        stack.enter_context(jax.set_mesh(session.mesh))
        stack.enter_context(backends.axis_rules(spec.mesh.rules))  # the kernels' shard_map axes
        with _StopFlag() as stop:
            reason = loop(session, stop)
        summary = finish(session, reason)
        summary["run_id"] = run_id
        return summary, session


def run(raw: dict) -> dict:
    """Trains the run described by ``raw`` (a config dict); returns the summary of ``finish``."""
    return train(resolve(raw))[0]


def evaluate(s: Session) -> dict:
    """Loss and perplexity, token and sequence accuracy over ``train.eval_batches`` batches."""
    spec = s.spec
    index, blocks = s.rows
    batches = make_eval_dataset(
        spec.data,
        seq_len=spec.train.eval_seq_len or spec.train.seq_len,
        batch_size=max(1, spec.train.global_batch_size // blocks),
        process_index=index,
        process_count=blocks,
    )
    totals: dict[str, float] = {}
    for n, local in enumerate(batches):
        if n >= spec.train.eval_batches:
            break
        out = jax.device_get(s.eval_step(s.state.params, _global_batch(local, s.batch_sharding, blocks)))
        for k, v in out.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    tokens = max(totals.get("tokens", 0.0), 1.0)
    loss = totals.get("loss_sum", math.nan) / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "token_accuracy": totals.get("correct_tokens", 0.0) / tokens,
        "sequence_accuracy": totals.get("correct_sequences", 0.0) / max(totals.get("sequences", 0.0), 1.0),
    }


def _sample(spec: RunSpec, model, logger: Logger) -> dict:
    """Greedy continuation of the first evaluation example, shown as the task's symbols or text.

    Embedded tasks: the prompt is the example up to its first answer, compared with that answer
    ("1 0 1 1 -> odd (expected odd)"). Corpora: the first half of the first document (at most half a
    row), compared with the document's actual continuation.
    """
    seq_len = spec.train.eval_seq_len or spec.train.seq_len
    batch = next(iter(make_eval_dataset(spec.data, seq_len=seq_len, batch_size=1, process_index=0, process_count=1)))
    inputs, targets = batch["inputs"][0], batch["targets"][0]
    seg, mask = batch["segment_ids"][0], batch["loss_mask"][0]
    n = spec.train.sample_tokens
    if spec.data.is_synthetic:
        scored = np.flatnonzero(mask > 0)
        end = int(scored[0]) + 1 if scored.size else int(np.sum(seg == seg[0]))
        expected = targets[scored].tolist() if scored.size else None
    else:
        end = max(1, min(int(np.sum(seg == seg[0])), seq_len) // 2)
        expected = targets[end - 1 : end - 1 + n].tolist()
    prompt = inputs[:end]
    with backends.axis_rules({**spec.mesh.rules, "batch": []}):  # one row: not split over the batch axes
        out = generate(model, [prompt.tolist()], n)
    tokens = np.asarray(out.tokens[0][: int(out.lengths[0])]).tolist()
    codec = codec_for(spec.data)
    text = codec.format(prompt, tokens, expected, max_prompt=24 if spec.data.is_synthetic else 256)
    logger.message(f"sample: {text}")
    return {"prompt": prompt.tolist(), "generated": tokens, "expected": expected, "text": text}
