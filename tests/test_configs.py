"""Every shipped config resolves, and the presets have the sizes their names promise."""

from __future__ import annotations

from pathlib import Path

import jax
import pytest
from flax import nnx

from xlstm_jax.train.config import MeshConfig, OptimConfig, RunConfig, build_dataclass, load_yaml
from xlstm_jax.train.data import DataConfig
from xlstm_jax.train.models import build_model, model_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
# Nominal sizes (the paper's and the 7B model card's), checked within 15%.
SIZES = {"125m": 125e6, "350m": 350e6, "760m": 760e6, "1300m": 1.3e9, "7b": 6.865e9}


def _count(model_cfg) -> int:
    abstract = nnx.eval_shape(lambda: build_model(model_cfg, 0))
    return sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_resolves(path):
    raw = load_yaml(path)
    build_dataclass(OptimConfig, raw.get("optim"), "optim.")
    run = build_dataclass(RunConfig, raw.get("train"), "train.")
    build_dataclass(MeshConfig, raw.get("mesh"), "mesh.")
    DataConfig.from_dict(raw.get("data") or {})
    if "model" not in raw:  # base.yaml: shared defaults only
        return
    cfg = model_config(raw["model"], vocab_size=raw["model"].get("vocab_size", 64), dtype=run.compute_dtype,
                       param_dtype=run.param_dtype, remat=run.remat)  # fmt: skip
    size = next((v for k, v in SIZES.items() if path.stem.endswith(k)), None)
    if size is not None:
        n = _count(cfg)
        assert abs(n - size) / size < 0.15, f"{path.name}: {n:,} parameters, nominal {size:,.0f}"
