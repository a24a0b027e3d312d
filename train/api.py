"""The Python training API: ``fit`` trains and returns a ``TrainResult``; ``load_run`` reloads a
run folder for sampling.

    from xlstm_jax.train import fit, load_run

    result = fit("quickstart", ["train.steps=200", "train.out_dir=runs/demo"])
    result.history.table(["step", "loss", "tokens_per_s"])  # plain text table
    run = load_run("runs/demo")                              # model, config, codec
    print(run.codec.format(prompt, generated))               # e.g. "1 0 1 -> even"
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import optax
from flax import nnx

from .config import ConfigError, load_config
from .data.codec import Codec, codec_for
from .step import TrainState
from .trainer import RunSpec, resolve, train


class History(list):
    """The rows a run logged (train and eval), each a dict with ``kind``, ``step``, ``run_id`` and
    the metrics; a plain list with helpers."""

    def of(self, kind: str) -> History:
        """The rows of one kind: ``"train"`` or ``"eval"``."""
        return History(r for r in self if r.get("kind") == kind)

    def column(self, key: str, kind: str = "train") -> list:
        """The values of ``key`` over the rows of ``kind`` that have it."""
        return [r[key] for r in self.of(kind) if key in r]

    def table(self, keys: Sequence[str] = ("step", "loss", "grad_norm", "tokens_per_s"), kind: str = "train") -> str:
        """A fixed-width text table of ``keys`` over the rows of ``kind``."""
        rows = [[_cell(r.get(k)) for k in keys] for r in self.of(kind)]
        widths = [max([len(k), *(len(row[i]) for row in rows)]) for i, k in enumerate(keys)]
        lines = ["  ".join(k.rjust(w) for k, w in zip(keys, widths))]
        lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
        return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return "" if value is None else str(value)


@dataclasses.dataclass
class TrainResult:
    """What ``fit`` returns.

    ``model``: the trained NNX model; ``state``: the final ``TrainState`` (step, params, optimizer
    state); ``history``: the rows this call logged; ``eval``: the final evaluation metrics (None
    when the run stopped early or trained on a user's iterator); ``summary``: what the CLI prints.
    """

    model: nnx.Module
    state: TrainState
    history: History
    out_dir: Path
    run_id: str
    step: int
    eval: dict | None
    summary: dict


def _spec(config, overrides, out_dir) -> RunSpec:
    if isinstance(config, RunSpec):
        config = config.raw
    raw = load_config(config, overrides)
    if out_dir is not None:
        raw.setdefault("train", {})["out_dir"] = str(out_dir)
    return resolve(raw)


def fit(
    config: str | Path | Mapping | RunSpec,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    *,
    model: nnx.Module | None = None,
    optimizer: optax.GradientTransformation | None = None,
    data: Iterable[dict] | None = None,
    out_dir: str | Path | None = None,
    resume: str = "auto",
    progress: str | bool | None = None,
) -> TrainResult:
    """Trains a run and returns its ``TrainResult``.

    ``config``: a preset name (``"quickstart"``), a YAML path, a config mapping or a ``RunSpec``;
    ``overrides``: dotted ``key=value`` strings or a mapping (``{"train.steps": 100}``).
    ``model`` (an NNX module), ``optimizer`` (an optax transformation) and ``data`` (an iterable of
    this process's batches: dicts of ``inputs``, ``targets`` and optionally ``loss_mask``,
    ``segment_ids``, each (b, S) with b = global batch / the number of row blocks,
    ``train.mesh.process_rows``: one block per process, except that processes spanned by a ``context``
    or ``tensor`` axis hold the same rows and must yield the same block) replace the config's model,
    optim and data sections; a user's data has no saved position and no held-out split, so its runs
    are not evaluated.
    ``out_dir`` replaces ``train.out_dir``. ``resume``: ``"auto"`` continues from the run folder's
    newest checkpoint when there is one, ``"never"`` refuses a folder that has checkpoints,
    ``"must"`` refuses one that has none; a checkpoint of a different model, data or optimizer
    config is always refused with the keys that differ. ``progress``: ``None`` (a bar in terminals
    and notebooks, plain lines otherwise), ``"bar"``, ``"lines"`` or ``"off"``.
    """
    spec = _spec(config, overrides, out_dir)
    summary, session = train(spec, model=model, optimizer=optimizer, data=data, resume=resume, progress=progress)
    return TrainResult(
        model=nnx.merge(session.graphdef, session.state.params, session.rest),
        state=session.state,
        history=History(session.logger.history),
        out_dir=Path(spec.train.out_dir),
        run_id=summary["run_id"],
        step=session.step,
        eval=summary.get("eval"),
        summary=summary,
    )


@dataclasses.dataclass
class LoadedRun:
    """What ``load_run`` returns: the model with a checkpoint's parameters, the run's config,
    the codec that turns ids into the task's symbols or text, and the checkpoint step."""

    model: nnx.Module
    config: RunSpec
    codec: Codec
    step: int
    out_dir: Path


def load_run(out_dir: str | Path, step: int | None = None, *, mesh: jax.sharding.Mesh | None = None) -> LoadedRun:
    """The model of a run folder at checkpoint ``step`` (default: the newest usable one), its config
    and codec. Parameters are laid out on ``mesh`` (default: all devices, data-parallel), whatever
    mesh the run trained on."""
    from .checkpoint import Checkpointer
    from .config import MeshConfig
    from .mesh import make_mesh, state_shardings
    from .models import build_model

    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    if not ckpt_dir.is_dir():
        raise ConfigError(f"out_dir {out_dir} holds no checkpoints folder: is it a run folder?")
    with Checkpointer(ckpt_dir, keep=1 << 30, async_save=False, read_only=True) as ckpt:
        steps = ckpt.steps()
        if not steps:
            raise ConfigError(f"out_dir {out_dir} has no checkpoint")
        if step is not None and step not in steps:
            raise ConfigError(f"step must be one of the checkpoints {steps}, got {step!r}")
        meta = ckpt.read_meta(step if step is not None else steps[-1])
        if meta.get("resolved_model", {}).get("arch") == "custom":
            raise ConfigError(f"{out_dir} trained a user's model ({meta['resolved_model'].get('class')}); "
                              "restore it with orbax into that model")  # fmt: skip
        spec = resolve(meta["config"])
        mesh = mesh if mesh is not None else make_mesh(MeshConfig())
        abstract = nnx.eval_shape(lambda: build_model(spec.model, spec.train.seed))
        graphdef, abstract_params, rest = nnx.split(abstract, nnx.Param, ...)
        shardings = state_shardings(abstract_params, mesh, spec.mesh.rules)
        target = jax.tree.map(
            lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract_params, shardings
        )
        found, params = ckpt.restore_params(target, step)
    model = nnx.merge(graphdef, params, rest)
    return LoadedRun(model=model, config=spec, codec=codec_for(spec.data), step=found, out_dir=out_dir)


__all__ = ["History", "LoadedRun", "TrainResult", "fit", "load_run"]
