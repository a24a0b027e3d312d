"""The public API: names, the lazy trainer import, deprecated aliases, and the documented list."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from operator import itemgetter
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import xlstm_jax
from xlstm_jax.models.xlstm_large._layers import soft_cap

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_every_public_name_resolves_and_is_documented():
    documented = set(re.findall(r"^- `xlstm_jax\.([A-Za-z_]\w*)`", API_DOC.read_text(), flags=re.M))
    eager = [name for name in xlstm_jax.__all__ if name not in ("fit", "load_run")]
    for name in eager:
        assert getattr(xlstm_jax, name) is not None, name
    assert documented == set(xlstm_jax.__all__), documented ^ set(xlstm_jax.__all__)


def test_one_naming_convention_for_both_architectures():
    from xlstm_jax.models import xlstm_large, xlstm_lm

    for package in (xlstm_lm, xlstm_large):
        assert {"mLSTMLayer", "mLSTMBlock"} <= set(package.__all__), package.__name__
        assert not [name for name in package.__all__ if name.startswith(("MLSTM", "SLSTM"))], package.__name__
    assert xlstm_jax.mLSTMBlock is xlstm_lm.mLSTMBlock and xlstm_jax.xlstm_large.mLSTMBlock is xlstm_large.mLSTMBlock


@pytest.mark.parametrize("old, new", [("MLSTMLayerConfig", "mLSTMLayerConfig"), ("SLSTMBlockState", "sLSTMBlockState")])
def test_old_names_are_deprecated_aliases(old, new):
    from xlstm_jax.models import xlstm_lm

    with pytest.warns(DeprecationWarning, match=f"xlstm_lm.{old} is deprecated; use .*{new}"):
        assert getattr(xlstm_lm, old) is getattr(xlstm_lm, new)
    with pytest.raises(AttributeError, match="NoSuchLayer"):
        xlstm_lm.NoSuchLayer  # noqa: B018


def test_importing_the_library_does_not_import_the_trainer():
    code = "import sys, xlstm_jax; print(sorted(m for m in sys.modules if m.startswith('xlstm_jax.train')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", ["fit", "load_run"])
def test_trainer_entry_points_resolve_lazily(name):
    """``xlstm_jax.fit`` / ``load_run`` are ``xlstm_jax.train``'s, or an AttributeError that says where
    they are expected (while the trainer API does not define them)."""
    train = importlib.import_module("xlstm_jax.train")
    if hasattr(train, name):
        assert getattr(xlstm_jax, name) is getattr(train, name)
    else:
        with pytest.raises(AttributeError, match=f"xlstm_jax.{name} is provided by xlstm_jax.train"):
            getattr(xlstm_jax, name)
    with pytest.raises(AttributeError, match="has no attribute 'not_a_name'"):
        xlstm_jax.not_a_name  # noqa: B018


# --- layers and blocks on their own ----------------------------------------------------------


def _perturbed(model, seed: int = 0):
    """``model`` with every parameter moved off its init (zero gates, unit norms) by N(0, 0.1)."""
    params = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [p + 0.1 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
    nnx.update(model, jax.tree.unflatten(tree, noisy))
    return model


def _adopt(block, params):
    """``block`` with the given parameters (a block of a model, or a slice of stacked ones)."""
    nnx.update(block, params)
    return block


def test_neurips_blocks_alone_equal_the_blocks_inside_the_model():
    """Blocks built from their own small configs, given a model's parameters, compose to the model."""
    cfg = xlstm_jax.xLSTMLMConfig(
        vocab_size=48, embedding_dim=32, num_blocks=3, slstm_at=(1,), chunk_size=4,
        mlstm=xlstm_jax.mLSTMLayerConfig(num_heads=2), slstm=xlstm_jax.sLSTMLayerConfig(num_heads=2),
    )  # fmt: skip
    model = _perturbed(xlstm_jax.xLSTMLMModel(cfg, rngs=nnx.Rngs(0)))
    ids = jax.random.randint(jax.random.key(1), (2, 7), 0, 48)
    own = {
        "m": lambda: xlstm_jax.mLSTMBlock(
            xlstm_jax.mLSTMLayerConfig(embedding_dim=32, num_heads=2, num_blocks=3, chunk_size=4), rngs=nnx.Rngs(5)
        ),
        "s": lambda: xlstm_jax.sLSTMBlock(
            xlstm_jax.sLSTMLayerConfig(embedding_dim=32, num_heads=2, num_blocks=3),
            xlstm_jax.FeedForwardConfig(),
            rngs=nnx.Rngs(5),
        ),
    }
    x = model.token_embedding(ids).astype(jnp.float32)
    out = model.forward(ids, output_hidden_states=True)
    for j, (kind, block) in enumerate(zip(cfg.block_types, model.blocks)):
        np.testing.assert_array_equal(x, out.hidden_states[j], err_msg=f"input of block {j}")
        alone = _adopt(own[kind](), nnx.state(block, nnx.Param))
        x, state = alone(x)
        assert state is None
    np.testing.assert_array_equal(x, out.hidden_states[-1])
    logits = model.lm_head(model.post_blocks_norm(x)).astype(jnp.float32)
    np.testing.assert_array_equal(logits, model(ids))
    np.testing.assert_array_equal(logits, out.logits)


def test_xlstm_large_block_alone_equals_the_blocks_inside_the_model():
    cfg = xlstm_jax.xLSTMLargeConfig(
        embedding_dim=32, num_heads=2, num_blocks=2, vocab_size=48, chunk_size=4, scan_blocks=False
    )
    model = _perturbed(xlstm_jax.xLSTMLarge(cfg, rngs=nnx.Rngs(0)))
    ids = jax.random.randint(jax.random.key(1), (2, 7), 0, 48)
    block_cfg = xlstm_jax.xlstm_large.mLSTMBlockConfig(embedding_dim=32, num_heads=2, num_blocks=2, chunk_size=4)
    assert block_cfg == cfg.block
    stacked = nnx.state(model.blocks, nnx.Param)
    x = model.embedding(ids)
    for j in range(cfg.num_blocks):
        alone = _adopt(
            xlstm_jax.xlstm_large.mLSTMBlock(block_cfg, rngs=nnx.Rngs(5)), jax.tree.map(itemgetter(j), stacked)
        )
        x, state = alone(x)
        assert state is None
    logits = soft_cap(model.lm_head(model.out_norm(x)).astype(jnp.float32), cfg.output_logit_soft_cap)
    np.testing.assert_array_equal(logits, model(ids))


def test_layers_on_their_own_need_a_width_and_refuse_conflicts():
    with pytest.raises(ValueError, match="mlstm.embedding_dim must be set for a layer or block built on its own"):
        xlstm_jax.mLSTMLayer(xlstm_jax.mLSTMLayerConfig(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="mlstm.bias=True differs from xLSTMLMConfig's bias=False"):
        xlstm_jax.xLSTMLMConfig(vocab_size=8, mlstm=xlstm_jax.mLSTMLayerConfig(bias=True))
    with pytest.raises(
        ValueError, match="feedforward.embedding_dim=16 differs from sLSTMLayerConfig's embedding_dim=32"
    ):
        xlstm_jax.sLSTMBlock(
            xlstm_jax.sLSTMLayerConfig(embedding_dim=32),
            xlstm_jax.FeedForwardConfig(embedding_dim=16),
            rngs=nnx.Rngs(0),
        )
    with pytest.raises(ValueError, match="slstm.num_heads=3 must divide embedding_dim=32"):
        xlstm_jax.sLSTMLayerConfig(embedding_dim=32, num_heads=3)


# --- the typed output, embeddings in, the backbone --------------------------------------------


@pytest.fixture(scope="module")
def models():
    """A NeurIPS model (an sLSTM block between two mLSTM blocks) and an xLSTM-7B one, off their init."""
    lm = xlstm_jax.xLSTMLMConfig(
        vocab_size=48, embedding_dim=32, num_blocks=3, slstm_at=(1,), chunk_size=4, tie_weights=True,
        mlstm=xlstm_jax.mLSTMLayerConfig(num_heads=2), slstm=xlstm_jax.sLSTMLayerConfig(num_heads=2),
    )  # fmt: skip
    large = xlstm_jax.xLSTMLargeConfig(embedding_dim=32, num_heads=2, num_blocks=3, vocab_size=48, chunk_size=4)
    return {
        "xlstm_lm": _perturbed(xlstm_jax.xLSTMLMModel(lm, rngs=nnx.Rngs(0))),
        "xlstm_large": _perturbed(xlstm_jax.xLSTMLarge(large, rngs=nnx.Rngs(0))),
    }


IDS = np.array([[3, 1, 4, 1, 5, 9, 2], [6, 5, 3, 5, 8, 9, 7]])


def _embed(model, ids):
    return (model.token_embedding if isinstance(model, xlstm_jax.xLSTMLMModel) else model.embedding)(ids)


def _final_norm(model):
    return model.post_blocks_norm if isinstance(model, xlstm_jax.xLSTMLMModel) else model.out_norm


@pytest.mark.parametrize("arch", ["xlstm_lm", "xlstm_large"])
def test_forward_returns_one_typed_output(models, arch):
    """``forward`` under jit: logits as ``model(ids)``, the state as ``return_state=True``, the hidden
    states (embedding first, last block's output before the final norm), and the backbone's features."""
    model = models[arch]
    graphdef, params = nnx.split(model)
    call = jax.jit(lambda p, ids: nnx.merge(graphdef, p)(ids, return_state=True))
    forward = jax.jit(lambda p, ids: nnx.merge(graphdef, p).forward(ids, return_state=True, output_hidden_states=True))
    backbone = jax.jit(lambda p, ids: nnx.merge(graphdef, p).backbone(ids))
    logits, state = call(params, IDS)
    out = forward(params, IDS)
    assert isinstance(out, xlstm_jax.xLSTMOutput)
    chex.assert_shape(out.logits, (2, 7, 48))
    chex.assert_trees_all_equal(out.logits, logits)
    chex.assert_trees_all_equal(out.state, state)
    assert len(out.hidden_states) == model.config.num_blocks + 1
    chex.assert_trees_all_equal(out.hidden_states[0], _embed(model, IDS).astype(out.hidden_states[0].dtype))
    # The final norm applied eagerly here and fused under jit there: its length-D mean of squares and
    # rsqrt may round differently, by up to (D + 2) u relative to each output, twice.
    rounding = 2 * (model.config.embedding_dim + 2) * float(np.finfo(np.float32).eps) / 2
    normed = _final_norm(model)(out.hidden_states[-1])
    chex.assert_trees_all_close(normed, out.last_hidden_state, rtol=rounding, atol=0)
    features = backbone(params, IDS)
    assert features.logits is None and features.state is None and features.hidden_states is None
    # Two separately compiled programs: equal up to how each one's machine code rounds (with the test
    # run's LLVM -O0, conftest.py, they differ by up to 5e-7 for the NeurIPS LM; a wrong tensor, e.g.
    # the pre-norm features or another block's output, differs by O(1)).
    chex.assert_trees_all_close(features.last_hidden_state, out.last_hidden_state, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["xlstm_lm", "xlstm_large"])
def test_inputs_embeds_replace_the_token_embedding(models, arch):
    model = models[arch]
    embeds = _embed(model, IDS)
    np.testing.assert_array_equal(model(inputs_embeds=embeds), model(IDS))
    with pytest.raises(ValueError, match="exactly one of ids"):
        model(IDS, inputs_embeds=embeds)
    with pytest.raises(
        ValueError, match=r"inputs_embeds must be a float array of shape \(B, S, 32\), got .* \(2, 7, 16\)"
    ):
        model(inputs_embeds=embeds[..., :16])


# --- ids checks -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["xlstm_lm", "xlstm_large"])
@pytest.mark.parametrize(
    "ids, match",
    [
        ([[1, 2, 48]], r"ids must be token ids in \[0, 48\) \(vocab_size=48\), got 48 at position \(0, 2\)"),
        ([[1, -1, 3]], r"ids must be token ids in \[0, 48\) \(vocab_size=48\), got -1 at position \(0, 1\)"),
        (
            np.zeros((1, 0), np.int32),
            r"ids must be an integer array of shape \(B, S\) with B >= 1 and S >= 1, got shape \(1, 0\)",
        ),
        (np.zeros((0, 3), np.int32), r"with B >= 1 and S >= 1, got shape \(0, 3\)"),
        ([[1.0, 2.0]], r"ids must be an integer array of shape \(B, S\), got float"),
    ],
)
def test_bad_ids_are_refused_in_eager_calls(models, arch, ids, match):
    with pytest.raises(ValueError, match=match):
        models[arch](ids)


@pytest.mark.parametrize("arch", ["xlstm_lm", "xlstm_large"])
def test_checked_mode_refuses_bad_ids_under_jit(models, arch):
    """Under jit the ids are traced: unchecked by default (the documented contract: NaN logits for
    ids >= vocab_size), checked with ``check_ids=True`` inside ``xlstm_jax.checked``."""
    graphdef, params = nnx.split(models[arch])
    bad = IDS.copy()
    bad[1, 3] = 48
    plain = jax.jit(lambda p, ids: nnx.merge(graphdef, p)(ids))
    assert np.isnan(np.asarray(plain(params, bad))[1, 3:]).all()
    checked = xlstm_jax.checked(jax.jit(lambda p, ids: nnx.merge(graphdef, p)(ids, check_ids=True)))
    np.testing.assert_array_equal(checked(params, IDS), plain(params, IDS))
    with pytest.raises(ValueError, match=r"ids must be token ids in \[0, 48\) \(vocab_size=48\), got 48"):
        checked(params, bad)
    with pytest.raises(ValueError, match="not functionalized"):  # check_ids=True without xlstm_jax.checked
        jax.jit(lambda p, ids: nnx.merge(graphdef, p)(ids, check_ids=True))(params, IDS)
