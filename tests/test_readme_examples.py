"""Every fenced ```python block of README.md runs.

The blocks run in order, each in a fresh namespace holding the inputs a reader would have
(below). Sizes are made small by textual substitutions, applied only where the text occurs:

=============================  ======================================  ===========================
README text                    replaced by                             why
=============================  ======================================  ===========================
``vocab_size=50304``           ``vocab_size=64``                       CPU test sizes
``embedding_dim=768``          ``embedding_dim=32``
``num_blocks=24``              ``num_blocks=4``
``slstm_at=(3, 20)``           ``slstm_at=(3,)``                       (block 20 no longer exists)
``"train.steps=20", ...``      4 steps of a 1-block, 16-wide model     the training run compiles
                               with batch 8 and 16 eval examples       in seconds
``"path/to/xLSTM-7b"``         a folder ``save_pretrained`` wrote      a tiny xLSTM-7B-architecture
``"out/"``                     a temporary folder                      checkpoint, no download
``"runs/readme"``               a temporary folder                      a training run
=============================  ======================================  ===========================

Inputs provided to every block (what the prose says the reader has):
  * ``q, k, v, i, f`` (B=1, NH=2, S=8, DHQK=DHV=4), ``q_t, k_t, v_t, i_t, f_t`` one step,
    ``gates_x, recurrent_kernel, bias`` for the sLSTM (NH=2, DH=4);
  * ``ids`` (2, 8), ``next_ids`` (2, 1), ``seg`` (2, 8) token and segment ids below 64;
  * ``official_cfg``, ``official_model``, ``official_large_cfg``, ``state_dict``: stand-ins with
    the official interfaces (a dataclass for ``dataclasses.asdict``, ``.state_dict()``) holding
    the committed official fixtures (``tests/fixtures/xlstm_lm_mlstm_only.npz``,
    ``xlstm_large_single.npz``), so no torch is needed;
  * ``model``: a tiny ``xLSTMLarge`` (vocab 64) for blocks that use one without building it.
A block that needs anything else fails: update this test together with the README.
"""

from __future__ import annotations

import dataclasses
import re
import types
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from xlstm_large_cases import load_fixture as load_large_fixture
from xlstm_lm_cases import load_fixture as load_lm_fixture

README = Path(__file__).resolve().parents[1] / "README.md"
SUBSTITUTIONS = {
    "vocab_size=50304": "vocab_size=64",
    "embedding_dim=768": "embedding_dim=32",
    "num_blocks=24": "num_blocks=4",
    "slstm_at=(3, 20)": "slstm_at=(3,)",
    '"train.steps=20", "train.eval_every=20"': '"train.steps=4", "train.eval_every=4", "model.embedding_dim=16", '
    '"model.num_blocks=1", "model.slstm_at=[]", "model.mlstm.qkv_proj_blocksize=4", "train.global_batch_size=8", '
    '"data.num_eval_examples=16", "train.eval_batches=1"',
}


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def _stand_in_config(d: dict):
    """A dataclass instance whose ``dataclasses.asdict`` is ``d``."""
    cls = dataclasses.make_dataclass("OfficialConfig", list(d))
    return cls(**d)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:

    import xlstm_jax
    from xlstm_jax.models.xlstm_large import xLSTMLarge, xLSTMLargeConfig

    rng = np.random.default_rng(0)
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    lm, large = load_lm_fixture("mlstm_only"), load_large_fixture("single")
    model = xLSTMLarge(
        xLSTMLargeConfig(embedding_dim=32, num_heads=2, num_blocks=2, vocab_size=64, chunk_size=4),
        rngs=nnx.Rngs(0),
    )
    checkpoint = tmp_path_factory.mktemp("xLSTM-7b")
    xlstm_jax.save_pretrained(model, checkpoint)
    return dict(
        q=normal(1, 2, 8, 4), k=normal(1, 2, 8, 4), v=normal(1, 2, 8, 4), i=normal(1, 2, 8), f=normal(1, 2, 8),
        q_t=normal(1, 2, 4), k_t=normal(1, 2, 4), v_t=normal(1, 2, 4), i_t=normal(1, 2), f_t=normal(1, 2),
        gates_x=normal(1, 8, 4, 2, 4), recurrent_kernel=0.1 * normal(2, 4, 4, 4), bias=normal(2, 4, 4),
        ids=rng.integers(0, 64, (2, 8)), next_ids=rng.integers(0, 64, (2, 1)),
        seg=np.repeat(np.array([[0] * 5 + [1] * 3]), 2, axis=0),
        official_cfg=_stand_in_config(lm["config"]),
        official_model=types.SimpleNamespace(state_dict=lambda: lm["state_dict"]),
        official_large_cfg=_stand_in_config(large["arch"]),
        state_dict=large["weights"],
        model=model,
        _paths={'"path/to/xLSTM-7b"': repr(str(checkpoint)), '"out/"': repr(str(tmp_path_factory.mktemp("out"))),
                '"runs/readme"': repr(str(tmp_path_factory.mktemp("runs") / "readme"))},
    )  # fmt: skip


BLOCKS = python_blocks(README.read_text())


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 4, "README.md lost its Python examples (or the fence format changed)"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, inputs):
    code = BLOCKS[index]
    for old, new in {**SUBSTITUTIONS, **inputs["_paths"]}.items():
        code = code.replace(old, new)
    namespace = {k: v for k, v in inputs.items() if not k.startswith("_")}
    exec(compile(code, f"README.md python block {index}", "exec"), namespace)  # noqa: S102
