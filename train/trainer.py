"""The training loop: sharded init or resume, jitted steps, evaluation, checkpoints, sample.

``run(config_dict)`` trains from a resolved config (see ``train.config``) and returns
a summary. Everything that varies between a laptop and a pod is in the config:
the mesh shape, the logical-axis rules, the batch, and the distributed setup done
by ``train.cli`` before this runs.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xlstm_jax.generation import generate

from .checkpoint import Checkpointer
from .config import ConfigError, MeshConfig, OptimConfig, RunConfig, build_dataclass, to_json
from .data import DataConfig, make_eval_dataset, make_train_dataset, vocab_size
from .mesh import batch_sharding, make_mesh, replicated, state_shardings
from .metrics import Logger, device_peak_flops, step_flops
from .models import build_model, config_to_dict, model_config
from .optim import make_optimizer, schedule
from .step import TrainState, make_eval_step, make_train_step

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
    model = model_config(
        raw.get("model") or {},
        vocab_size=vocab_size(data),
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
    return RunSpec(model, data, optim, run, mesh, export_hf, raw)


def _num_params(params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def _global_batch(local: dict, sharding) -> dict:
    """Per-process numpy rows -> global arrays laid out on the mesh."""
    n = jax.process_count()
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v), (v.shape[0] * n, *v.shape[1:]))
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
    """SIGTERM / SIGINT request a checkpoint and a clean exit after the current step."""

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signal = signum

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run(raw: dict) -> dict:
    spec = resolve(raw)
    t, out_dir = spec.train, Path(spec.train.out_dir)
    is_main = jax.process_index() == 0
    logger = Logger(out_dir, t.steps, tensorboard=t.tensorboard, enabled=is_main)
    mesh = make_mesh(spec.mesh)
    rules = spec.mesh.rules
    # Parameters are created sharded: an abstract model gives their shapes and
    # logical names (outside the mesh context, where flax would read the logical
    # names as mesh axes), and the init is jitted straight into those shardings.
    abstract = nnx.eval_shape(lambda: build_model(spec.model, t.seed))
    graphdef, abstract_params, rest = nnx.split(abstract, nnx.Param, ...)
    param_shardings = state_shardings(abstract_params, mesh, rules)

    with jax.set_mesh(mesh):
        init = lambda: nnx.split(build_model(spec.model, t.seed), nnx.Param, ...)[1:]
        params = jax.jit(lambda: init()[0], out_shardings=param_shardings)()
        if jax.tree.leaves(rest):  # non-parameter variables (none in the xLSTM models today)
            rest = init()[1]
        tx = make_optimizer(spec.optim, t.steps, params)
        opt_state = tx.init(params)  # eagerly, so the moments inherit the parameters' shardings
        state = TrainState(jnp.zeros((), jnp.int32), params, opt_state)
        state_sharding = jax.tree.map(lambda x: x.sharding, state)
        state = jax.device_put(state, state_sharding)
        n_params = _num_params(params)
        logger.message(
            f"model {config_to_dict(spec.model)['arch']}: {n_params:,} parameters; mesh {dict(mesh.shape)} on "
            f"{jax.device_count()} {jax.devices()[0].platform} devices, {jax.process_count()} process(es)"
        )

        data_iter = iter(
            make_train_dataset(
                spec.data,
                seq_len=t.seq_len,
                global_batch_size=t.global_batch_size,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
            )
        )
        ckpt = Checkpointer(out_dir / "checkpoints", keep=t.keep_checkpoints)
        start = 0
        abstract_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        restored = ckpt.restore_latest(abstract_state, data_iter)
        if restored is not None:
            start, state, _ = restored
            logger.message(f"resumed from {ckpt.directory} at step {start}")

        bsh = batch_sharding(mesh, rules)
        train_step = jax.jit(
            make_train_step(graphdef, rest, tx, spec.optim.grad_accum_steps),
            in_shardings=(state_sharding, bsh),
            out_shardings=(state_sharding, replicated(mesh)),
            donate_argnums=(0,),
        )
        eval_step = jax.jit(make_eval_step(graphdef, rest), in_shardings=(state_sharding.params, bsh))
        lr_at = schedule(spec.optim, t.steps)
        peak, peak_source = device_peak_flops()
        flops = math.nan
        meta = {"config": spec.raw, "resolved_model": config_to_dict(spec.model), "params": n_params}
        stop = _StopFlag()
        step, last_metrics = start, None
        end = t.steps if t.stop_after_steps is None else min(t.steps, start + t.stop_after_steps)
        timer = _StepTimer()
        try:
            while step < end:
                batch = _global_batch(next(data_iter), bsh)
                if math.isnan(flops):
                    flops = step_flops(train_step.lower(state, batch).compile())
                    timer.restart()  # the compile is not a training step
                state, metrics = train_step(state, batch)
                step += 1
                timer.count()
                if step % t.log_every == 0 or step == t.steps:
                    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    per_step = timer.per_step()
                    m.update(
                        lr=float(lr_at(step - 1)),
                        tokens_per_s=t.global_batch_size * t.seq_len / per_step,
                        mfu=flops / per_step / (peak * jax.device_count()),
                    )
                    logger.log(step, m)
                    last_metrics = m
                    timer.restart()
                if t.eval_every and step % t.eval_every == 0 and step < t.steps:
                    logger.log(step, evaluate(spec, eval_step, state.params, bsh), kind="eval")
                    timer.restart()
                if t.checkpoint_every and step % t.checkpoint_every == 0:
                    ckpt.save(step, state, data_iter, meta)
                    timer.restart()
                if stop.signal is not None:
                    logger.message(f"signal {stop.signal}: saving a checkpoint at step {step} and exiting")
                    ckpt.save(step, state, data_iter, meta, force=True)
                    ckpt.close()
                    return {"step": step, "stopped_by_signal": stop.signal}
            if step not in ckpt.steps():
                ckpt.save(step, state, data_iter, meta, force=True)
            ckpt.wait()
            if step < t.steps:
                logger.message(f"stopped after {step - start} steps this run (train.stop_after_steps); resume to go on")
                ckpt.close()
                logger.close()
                return {"step": step, "stopped_after_steps": step - start}
        finally:
            stop.restore()

        final_eval = evaluate(spec, eval_step, state.params, bsh)
        logger.log(step, final_eval, kind="eval")
        model = nnx.merge(graphdef, state.params, rest)
        sample = _sample(spec, model, logger) if t.sample_tokens else None
        if spec.export_hf:
            from xlstm_jax.convert import save_pretrained

            if is_main:
                save_pretrained(model, spec.export_hf)
            logger.message(f"exported the model in the Hugging Face format to {spec.export_hf}")
        ckpt.close()
        logger.message(f"peak FLOP/s for MFU: {peak_source}; checkpoints in {ckpt.directory}")
        logger.close()
        return {
            "step": step,
            "params": n_params,
            "train": last_metrics,
            "eval": final_eval,
            "sample": sample,
            "config": to_json(spec.raw),
        }


def evaluate(spec: RunSpec, eval_step, params, bsh) -> dict:
    """Loss and perplexity, token and sequence accuracy over ``train.eval_batches`` batches."""
    per_process = max(1, spec.train.global_batch_size // jax.process_count())
    batches = make_eval_dataset(
        spec.data,
        seq_len=spec.train.eval_seq_len or spec.train.seq_len,
        batch_size=per_process,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    totals: dict[str, float] = {}
    for n, local in enumerate(batches):
        if n >= spec.train.eval_batches:
            break
        out = jax.device_get(eval_step(params, _global_batch(local, bsh)))
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
    """Greedy continuation of the first evaluation example's prompt."""
    seq_len = spec.train.eval_seq_len or spec.train.seq_len
    batch = next(iter(make_eval_dataset(spec.data, seq_len=seq_len, batch_size=1, process_index=0, process_count=1)))
    seg, mask = batch["segment_ids"][0], batch["loss_mask"][0]
    scored = np.flatnonzero(mask > 0)
    end = int(scored[0]) + 1 if scored.size else int(np.sum(seg == seg[0]))
    prompt = batch["inputs"][0][:end]
    out = generate(model, [prompt.tolist()], spec.train.sample_tokens)
    tokens = np.asarray(out.tokens[0][: int(out.lengths[0])]).tolist()
    expected = batch["targets"][0][scored].tolist() if scored.size else None
    shown = prompt.tolist() if prompt.size <= 24 else [*prompt[:10].tolist(), "...", *prompt[-10:].tolist()]
    logger.message(f"sample: prompt {shown} -> {tokens}" + (f" (expected {expected})" if expected else ""))
    return {"prompt": prompt.tolist(), "generated": tokens, "expected": expected}
