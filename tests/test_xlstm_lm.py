"""The NeurIPS xLSTM language model (``xlstm_jax.models.xlstm_lm``) and its torch conversion.

Parity with the official PyTorch ``xlstm.xLSTMLMModel`` (float32, CPU, vanilla sLSTM,
perturbed weights, S = 19 with chunk size 8): every logit within
``1e-4 * max(1, |ref|)``, against committed fixtures (no torch needed) and live when
torch and xlstm import. The other checks use the same converted models, so that all
parameters are away from their init, and a jitted forward so that each config
compiles once.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from functools import cache, partial

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import OFFICIAL_PACKAGES, assert_close, require_official
from xlstm_jax.backends import MLSTM_XLA_FORMS
from xlstm_jax.convert import from_torch_xlstm_lm, to_torch_xlstm_lm_state_dict
from xlstm_jax.models.xlstm_lm import (
    FeedForwardConfig,
    mLSTMLayerConfig,
    sLSTMLayerConfig,
    xLSTMLMConfig,
    xLSTMLMModel,
)
from xlstm_jax.models.xlstm_lm._slstm_layer import slstm_bias_init
from xlstm_lm_cases import CASES, load_fixture, official_case, official_model

CHUNK = 8  # S = 19 is not a multiple: three chunks, the last one padded
PARITY = 1e-4
STATE_TOL = 1e-4  # relative to max|logits|
BF16_TOL = 5e-2  # bf16 compute with f32 params vs f32, relative to max|logits| (measured 2.7e-2)


@partial(jax.jit, static_argnames=("graphdef", "return_state"))
def _apply(graphdef, params, ids, state, return_state: bool = True):
    return nnx.merge(graphdef, params)(ids, state=state, return_state=return_state)


def run(model: xLSTMLMModel, ids, state=None, *, return_state: bool = True):
    """Jitted ``model(ids, state=state, return_state=...)``; compiles once per config and shape."""
    graphdef, params = nnx.split(model)
    return _apply(graphdef, params, jnp.asarray(ids), state, return_state=return_state)


def logits_of(model, ids) -> np.ndarray:
    if model.config.backend == "parallel":  # takes no state and returns none
        return np.asarray(run(model, ids, return_state=False))
    return np.asarray(run(model, ids)[0])  # shares the compiled function with run()


def assert_parity(ours, ref, name: str) -> float:
    """Elementwise |ours - ref| <= 1e-4 max(1, |ref|); returns the worst ratio err / max(1, |ref|)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != {ref.shape}"
    ratio = np.abs(ours - ref) / np.maximum(1.0, np.abs(ref))
    worst = float(ratio.max())
    assert np.all(np.isfinite(ours)) and worst <= PARITY, f"{name}: worst err/max(1,|ref|) = {worst:.2e} > {PARITY}"
    return worst


@cache
def fixture(name: str) -> dict:
    return load_fixture(name)


@cache
def converted(name: str, **overrides) -> xLSTMLMModel:
    """Our model from the committed fixture of ``name`` (chunk size 8 unless overridden)."""
    case = fixture(name)
    return from_torch_xlstm_lm(case["config"], case["state_dict"], **{"chunk_size": CHUNK, **overrides})


# --- parity with the official model ---------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_fixture_parity(name):
    case = fixture(name)
    assert_parity(logits_of(converted(name), case["ids"]), case["logits"], name)


@pytest.mark.parametrize("name", list(CASES))
def test_live_parity(name):
    require_official()
    case = official_case(name, seed=1)
    model = from_torch_xlstm_lm(case["config"], case["state_dict"], chunk_size=CHUNK)
    assert_parity(logits_of(model, case["ids"]), case["logits"], name)


def _to_cuda_layout(case: dict) -> dict[str, np.ndarray]:
    """The vanilla state dict of ``case`` with its sLSTM cell tensors in the CUDA layout
    (docs/design.md §Checkpoints, through the external layout ext (NH, DH, 4, DH) / (NH, 4, DH))."""
    nh = case["config"]["slstm_block"]["slstm"]["num_heads"]
    dh = case["config"]["embedding_dim"] // nh
    out = dict(case["state_dict"])
    for key, value in case["state_dict"].items():
        if key.endswith("._recurrent_kernel_"):  # vanilla = ext.permute(0, 2, 3, 1); cuda = ext.reshape
            out[key] = value.reshape(nh, 4, dh, dh).transpose(0, 3, 1, 2).reshape(nh, dh, 4 * dh)
        elif key.endswith("._bias_"):  # vanilla = ext.permute(1, 0, 2) (gate-major); cuda = ext (head-major)
            out[key] = value.reshape(4, nh, dh).transpose(1, 0, 2).reshape(-1)
    return out


def test_cuda_layout_matches_official_classes():
    """``_to_cuda_layout`` is what the official vanilla and CUDA cells do to their tensors."""
    require_official()
    import torch
    from xlstm.blocks.slstm.cell import sLSTMCell_cuda, sLSTMCell_vanilla, sLSTMCellConfig

    case = fixture("slstm_mid_bias")
    slstm = case["config"]["slstm_block"]["slstm"]
    cell_cfg = sLSTMCellConfig(hidden_size=case["config"]["embedding_dim"], num_heads=slstm["num_heads"])
    vanilla, cuda = sLSTMCell_vanilla(cell_cfg), sLSTMCell_cuda(cell_cfg, skip_backend_init=True)
    ours = _to_cuda_layout(case)
    for key, value in case["state_dict"].items():
        t = torch.from_numpy(value)
        if key.endswith("._recurrent_kernel_"):
            np.testing.assert_array_equal(
                ours[key], cuda._recurrent_kernel_ext2int(vanilla._recurrent_kernel_int2ext(t))
            )
        elif key.endswith("._bias_"):
            np.testing.assert_array_equal(ours[key], cuda._bias_ext2int(vanilla._bias_int2ext(t)))


def test_cuda_layout():
    """A CUDA-backend checkpoint (same bias shape, other order) converts to the same logits,
    chosen by the config's backend or by ``slstm_layout``; the wrong layout is refused."""
    name = "slstm_mid_bias"
    case = fixture(name)
    cuda_sd = _to_cuda_layout(case)
    bias_key = next(k for k in cuda_sd if k.endswith("._bias_"))
    assert cuda_sd[bias_key].shape == case["state_dict"][bias_key].shape
    assert not np.array_equal(cuda_sd[bias_key], case["state_dict"][bias_key])
    cuda_config = {**case["config"], "slstm_block": {**case["config"]["slstm_block"]}}
    cuda_config["slstm_block"]["slstm"] = {**cuda_config["slstm_block"]["slstm"], "backend": "cuda"}
    for model in (
        from_torch_xlstm_lm(cuda_config, cuda_sd, chunk_size=CHUNK),
        from_torch_xlstm_lm(case["config"], cuda_sd, slstm_layout="cuda", chunk_size=CHUNK),
    ):
        assert_parity(logits_of(model, case["ids"]), case["logits"], f"{name} (cuda layout)")
    with pytest.raises(ValueError, match="_recurrent_kernel_"):
        from_torch_xlstm_lm(cuda_config, case["state_dict"])
    sd = to_torch_xlstm_lm_state_dict(converted(name), slstm_layout="cuda")
    for key, value in cuda_sd.items():
        np.testing.assert_array_equal(sd[key], value, err_msg=key)


@pytest.mark.parametrize("name", ["slstm_first_tied", "slstm_mid_bias"])
def test_state_dict_round_trip(name):
    """to_torch(from_torch(sd)) == sd, and the official model loads it (strict) with the same logits."""
    case = fixture(name)
    sd = to_torch_xlstm_lm_state_dict(converted(name))
    assert sd.keys() == case["state_dict"].keys()
    for key, value in case["state_dict"].items():
        np.testing.assert_array_equal(sd[key], value, err_msg=key)
    if all(importlib.util.find_spec(m) for m in OFFICIAL_PACKAGES):
        import torch

        model, _ = official_model(name, seed=5)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
        with torch.no_grad():
            ref = model(torch.from_numpy(case["ids"]).long()).numpy()
        assert_parity(logits_of(converted(name), case["ids"]), ref, name)


def test_conversion_reports_every_problem():
    case = fixture("slstm_mid_bias")
    sd = dict(case["state_dict"])
    del sd["xlstm_block_stack.blocks.0.xlstm.proj_up.weight"]
    del sd["token_embedding.weight"]
    sd["xlstm_block_stack.blocks.0.xlstm.extra"] = np.zeros(3, np.float32)
    sd["xlstm_block_stack.blocks.1.xlstm.zgate.weight"] = np.zeros((4, 8, 9), np.float32)
    with pytest.raises(ValueError) as info:
        from_torch_xlstm_lm(case["config"], sd)
    text = str(info.value)
    for needle in (
        "missing: xlstm_block_stack.blocks.0.xlstm.proj_up.weight",
        "missing: token_embedding.weight",
        "unexpected: xlstm_block_stack.blocks.0.xlstm.extra",
        "shape mismatch: xlstm_block_stack.blocks.1.xlstm.zgate.weight is (4, 8, 9), expected (4, 8, 8)",
    ):
        assert needle in text, text
    with pytest.raises(ValueError, match="slstm_layout='cpu'"):
        from_torch_xlstm_lm(case["config"], case["state_dict"], slstm_layout="cpu")


def test_tied_head_must_match_embedding():
    case = fixture("slstm_first_tied")
    sd = dict(case["state_dict"], **{"lm_head.weight": case["state_dict"]["lm_head.weight"] + 1})
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        from_torch_xlstm_lm(case["config"], sd)
    sd.pop("lm_head.weight")  # a tied checkpoint without the duplicate key is fine
    from_torch_xlstm_lm(case["config"], sd)


@pytest.mark.parametrize("name", ["mlstm_only", "slstm_first_tied"])
def test_official_step_states(name):
    """The official ``step()`` token by token gives our logits, and its states map to ours:
    mLSTM c, n are sqrt(DH) times ours (the NeurIPS cell scales k, mlstm_kernels scales q), m is
    the same; the sLSTM (4, B, D) state is our (h, c, n, m); conv buffers keep one row more."""
    require_official()
    import torch

    case = fixture(name)
    model, _ = official_model(name)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in case["state_dict"].items()})
    ids = case["ids"]
    state, ref = None, []
    with torch.no_grad():
        for t in range(ids.shape[1]):
            logits, state = model.step(torch.from_numpy(ids[:, t : t + 1]).long(), state)
            ref.append(logits.numpy())
    logits, ours = run(converted(name), ids)
    assert_parity(logits, np.concatenate(ref, axis=1), f"{name} official step")
    cfg = converted(name).config
    for idx, (kind, block_state) in enumerate(zip(cfg.block_types, ours)):
        theirs = state[f"block_{idx}"]
        assert_close(block_state.conv, theirs["conv_state"][0].numpy()[:, 1:], 1e-6, f"conv[{idx}]")
        if kind == "m":
            dh = cfg.mlstm.inner_dim(cfg.embedding_dim) // cfg.mlstm.num_heads
            c, n, m = (x.numpy() for x in theirs["mlstm_state"])
            expected = (np.sqrt(dh) * c, np.sqrt(dh) * n[..., 0], m[..., 0, 0])
        else:
            expected = theirs["slstm_state"].numpy().reshape(4, *block_state.cell.h.shape)
        for field, a, b in zip(block_state.cell._fields, block_state.cell, expected):
            assert_close(a, b, 1e-5, f"{field}[{idx}]")


# --- the model API ----------------------------------------------------------------------------


def zero_state(model, batch: int):
    """The state after no tokens (zeros), with the structure ``run`` returns; nothing is compiled."""
    shapes = jax.eval_shape(partial(run, model, jnp.zeros((batch, 1), jnp.int32)))[1]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _step_through(model, ids, state):
    out = []
    for t in range(ids.shape[1]):
        logits, state = run(model, ids[:, t : t + 1], state)
        out.append(logits)
    return np.concatenate(out, axis=1), state


@pytest.mark.parametrize("name", ["slstm_mid_bias", "slstm_023_noconv"])
def test_token_by_token_equals_sequence(name):
    """Steps from a zero state == the whole sequence, logits and final state (sLSTM conv on and off)."""
    case = fixture(name)
    model = converted(name)
    full, full_state = run(model, case["ids"])
    steps, step_state = _step_through(model, case["ids"], zero_state(model, len(case["ids"])))
    assert_close(steps, full, STATE_TOL, f"{name} token by token")
    for a, b in zip(jax.tree.leaves(step_state), jax.tree.leaves(full_state)):
        assert_close(a, b, 1e-4, f"{name} final state")


def test_prefill_then_continue():
    """Prefill a prefix (state=None), then continue token by token, or with one multi-token call."""
    name = "slstm_mid_bias"
    case = fixture(name)
    model = converted(name)
    full, _ = run(model, case["ids"])
    head, state = run(model, case["ids"][:, :11])
    steps, _ = _step_through(model, case["ids"][:, 11:], state)
    assert_close(np.concatenate([head, steps], axis=1), full, STATE_TOL, "prefill + steps")
    tail, _ = run(model, case["ids"][:, 11:], state)
    assert_close(np.concatenate([head, tail], axis=1), full, STATE_TOL, "prefill + chunk")


def test_backends_agree():
    name = "slstm_mid_bias"
    case = fixture(name)
    ref = logits_of(converted(name), case["ids"])
    for backend in ("auto", "xla", *MLSTM_XLA_FORMS):  # on CPU "auto" is the C++ kernel, "xla" chunkwise
        assert_close(logits_of(converted(name, backend=backend), case["ids"]), ref, 1e-5, backend)


@pytest.mark.parametrize(
    "name,flags",
    [
        ("slstm_023_noconv", dict(scan_blocks=True, remat=True)),  # runs [s], [m], [s, s]
        ("mlstm_only", dict(scan_blocks=True)),  # one run [m, m]
        ("slstm_mid_bias", dict(remat=True)),
    ],
)
def test_scan_and_remat_match_loop(name, flags):
    """Same parameters, same logits and states; a scanned model also continues from a state."""
    case = fixture(name)
    ref, ref_state = run(converted(name), case["ids"])
    logits, state = run(converted(name, **flags), case["ids"])
    assert_close(logits, ref, 1e-6, f"{name} {flags}")
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
        assert_close(a, b, 1e-6, f"{name} {flags} state")
    if flags.get("scan_blocks") and name == "slstm_023_noconv":
        next_logits, _ = run(converted(name, **flags), case["ids"][:, :1], state)
        ref_next, _ = run(converted(name), case["ids"][:, :1], ref_state)
        assert_close(next_logits, ref_next, 1e-6, f"{name} {flags} continued")


@pytest.mark.slow
def test_scan_remat_gradients_match_loop():
    name = "slstm_023_noconv"
    ids = jnp.asarray(fixture(name)["ids"])

    def grads(model):
        graphdef, params = nnx.split(model)
        loss = lambda p: jnp.mean(jnp.square(nnx.merge(graphdef, p)(ids)))
        return jax.jit(jax.grad(loss))(params)

    ref = grads(converted(name))
    for a, b in zip(jax.tree.leaves(grads(converted(name, scan_blocks=True, remat=True))), jax.tree.leaves(ref)):
        assert_close(a, b, 1e-5, "grad")


def test_bfloat16_compute():
    """bf16 matmuls with f32 params run, stay close to f32, and keep gates/states in f32."""
    name = "slstm_mid_bias"
    case = fixture(name)
    ref = logits_of(converted(name), case["ids"])
    logits, state = run(converted(name, dtype="bfloat16"), case["ids"])
    assert logits.dtype == jnp.float32
    err = assert_close(logits, ref, BF16_TOL, "bf16 logits")
    assert err > 0  # it really computed in bf16
    for block_state in state:
        assert all(x.dtype == jnp.float32 for x in block_state.cell), type(block_state).__name__


def test_param_dtype():
    model = converted("mlstm_only", param_dtype="bfloat16")
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_any_length():
    name = "mlstm_only"
    model = converted(name)
    ids = np.arange(3 * 70).reshape(3, 70) % 64  # longer than the official context_length (32)
    logits = logits_of(model, ids)
    assert logits.shape == (3, 70, 64) and np.all(np.isfinite(logits))
    assert_close(logits[:, :19], logits_of(model, ids[:, :19]), 1e-5, "causal prefix")


def test_call_validation():
    model = converted("slstm_first_tied")
    ids = fixture("slstm_first_tied")["ids"]
    with pytest.raises(ValueError, match="ids must be an integer array"):
        model(ids.astype(np.float32))
    with pytest.raises(ValueError, match="ids must be an integer array"):
        model(ids[0])
    _, state = run(model, ids)
    with pytest.raises(ValueError, match="one entry per block"):
        model(ids[:, :1], state=state[:1])
    bad = (state[0]._replace(conv=state[0].conv[:, 1:]), state[1])
    with pytest.raises(ValueError, match=r"state\[0\].conv must have shape"):
        model(ids[:, :1], state=bad)


# --- config -----------------------------------------------------------------------------------


def _cfg(**kw) -> xLSTMLMConfig:
    base = dict(vocab_size=64, embedding_dim=32, num_blocks=3, slstm=sLSTMLayerConfig(num_heads=2), slstm_at=(1,))
    return xLSTMLMConfig(**{**base, **kw})


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(vocab_size=0), "vocab_size must be an integer >= 1, got 0"),
        (dict(embedding_dim=30, slstm=sLSTMLayerConfig(num_heads=4)), "slstm.num_heads=4 must divide embedding_dim=30"),
        (dict(mlstm=mLSTMLayerConfig(num_heads=3)), "mlstm.num_heads=3 must divide the mLSTM inner dim 64"),
        (dict(mlstm=mLSTMLayerConfig(qkv_proj_blocksize=5)), "mlstm.qkv_proj_blocksize=5 must divide"),
        (dict(slstm=sLSTMLayerConfig(num_heads=3)), "slstm.num_heads=3 must divide embedding_dim=32"),
        (dict(slstm_at=(3,)), "outside 0..2"),
        (dict(slstm_at=(1, 1)), "lists a block twice"),
        (dict(slstm_at="some"), "must be 'all' or a sequence"),
        (dict(slstm=None), "places sLSTM blocks, but slstm=None"),
        (dict(mlstm=None), "leaves mLSTM blocks, but mlstm=None"),
        (
            dict(backend="flash"),
            "backend must be one of 'auto', 'xla', 'chunkwise', 'parallel', 'recurrent'",
        ),
        (dict(chunk_size=0), "chunk_size must be an integer >= 1 or 'auto', got 0"),
        (dict(dtype="int8"), "dtype must be one of 'float32', 'bfloat16', 'float16', 'float64', got 'int8'"),
        (
            dict(param_dtype="float8"),
            "param_dtype must be one of 'float32', 'bfloat16', 'float16', 'float64', got 'float8'",
        ),
        (dict(scan_blocks=1), "scan_blocks must be True or False, got 1"),
        (dict(feedforward=dict()), "feedforward must be a FeedForwardConfig or None"),
        (dict(embedding_dim=4, slstm=sLSTMLayerConfig(num_heads=4)), "needs a head dim >= 2"),
    ],
)
def test_config_errors(kw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _cfg(**kw)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: mLSTMLayerConfig(conv1d_kernel_size=0), "mlstm.conv1d_kernel_size must be an integer >= 1, got 0"),
        (lambda: mLSTMLayerConfig(proj_factor=0), "mlstm.proj_factor must be a finite number > 0, got 0"),
        (
            lambda: sLSTMLayerConfig(bias_init="ones"),
            "slstm.bias_init must be one of 'powerlaw_blockdependent', 'small_init', 'standard', 'zeros', got 'ones'",
        ),
        (
            lambda: sLSTMLayerConfig(recurrent_weight_init="x"),
            "slstm.recurrent_weight_init must be one of 'zeros', 'standard', got 'x'",
        ),
        (lambda: mLSTMLayerConfig(proj_factor=float("inf")), "mlstm.proj_factor must be a finite number > 0, got inf"),
        (lambda: mLSTMLayerConfig(proj_factor=float("nan")), "mlstm.proj_factor must be a finite number > 0, got nan"),
        (lambda: FeedForwardConfig(proj_factor=float("inf")), "feedforward.proj_factor must be a finite number > 0"),
        (lambda: mLSTMLayerConfig(embedding_dim=0), "mlstm.embedding_dim must be an integer >= 1, got 0"),
        (lambda: sLSTMLayerConfig(backend="cuda"), "slstm.backend must be one of"),
        (
            lambda: FeedForwardConfig(act_fn="tanh"),
            "feedforward.act_fn must be one of 'gelu', 'relu', 'relu^2', 'sigmoid', 'swish', 'selu', got 'tanh'",
        ),
    ],
)
def test_sub_config_errors(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_config_defaults_and_slstm_all():
    cfg = xLSTMLMConfig(vocab_size=10, num_blocks=2, slstm=sLSTMLayerConfig(), slstm_at="all", dtype=jnp.bfloat16)
    assert cfg.slstm_at == (0, 1) and cfg.block_types == ("s", "s") and cfg.dtype == "bfloat16"
    assert hash(cfg) == hash(dataclasses.replace(cfg))  # static, hashable
    assert cfg.mlstm.inner_dim(128) == 256 and cfg.feedforward.hidden_dim(128) == 192


def test_from_dict_matches_official_fields():
    cfg = xLSTMLMConfig.from_dict(fixture("slstm_mid_bias")["config"], backend="recurrent")
    assert cfg == xLSTMLMConfig(
        vocab_size=80,
        embedding_dim=32,
        num_blocks=3,
        mlstm=mLSTMLayerConfig(num_heads=2, conv1d_kernel_size=3, qkv_proj_blocksize=8),
        slstm=sLSTMLayerConfig(num_heads=4, bias_init="small_init", recurrent_weight_init="standard"),
        feedforward=FeedForwardConfig(bias=True, proj_factor=1.6),
        slstm_at=(1,),
        bias=True,
        backend="recurrent",
    )
    only_s = xLSTMLMConfig.from_dict(fixture("slstm_only_noffn")["config"])
    assert only_s.mlstm is None and only_s.slstm_at == (0, 1) and only_s.feedforward is None


def test_from_dict_rejects_unknown_and_unsupported():
    d = fixture("slstm_mid_bias")["config"]
    bad = {**d, "foo": 1, "mlstm_block": {**d["mlstm_block"], "bar": 2}}
    with pytest.raises(ValueError, match=r"unknown keys .*\['foo', 'mlstm_block.bar'\]"):
        xLSTMLMConfig.from_dict(bad)
    with pytest.raises(ValueError, match="dropout=0.1 is not supported"):
        xLSTMLMConfig.from_dict({**d, "dropout": 0.1})
    slstm = {**d["slstm_block"]["slstm"], "gradient_recurrent_clipval": 1.0}
    with pytest.raises(ValueError, match="slstm_block.slstm.gradient_recurrent_clipval=1.0"):
        xLSTMLMConfig.from_dict({**d, "slstm_block": {**d["slstm_block"], "slstm": slstm}})
    with pytest.raises(ValueError, match="vocab_size is missing"):
        xLSTMLMConfig.from_dict({k: v for k, v in d.items() if k != "vocab_size"})


# --- parameters: init, logical names, Linen ---------------------------------------------------

_NAMES = {"vocab", "embed", "heads", "mlp", None}


def _params(model) -> dict[str, jax.Array]:
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {".".join(map(str, path)): var for path, var in flat}


def test_every_param_has_logical_names():
    cfg = _cfg(bias=True, feedforward=FeedForwardConfig(bias=True))
    model = nnx.eval_shape(lambda: xLSTMLMModel(cfg, rngs=nnx.Rngs(0)))
    for path, var in _params(model).items():
        names = var.get_metadata()["out_sharding"]
        assert len(names) == len(var.shape) and set(names) <= _NAMES, (path, names, var.shape)


# A medium model for the init statistics (enough samples per tensor; 64 mLSTM heads for the igate bias).
_INIT_CASE = dict(
    stack=dict(num_blocks=4, slstm_at=[1, 2], embedding_dim=256, vocab_size=256),
    mlstm=dict(num_heads=64),
    slstm=dict(num_heads=4),
    feedforward=dict(),
)
_INIT_CONFIG = xLSTMLMConfig(
    vocab_size=256,
    embedding_dim=256,
    num_blocks=4,
    slstm_at=(1, 2),
    mlstm=mLSTMLayerConfig(num_heads=64),
    slstm=sLSTMLayerConfig(num_heads=4),
)


@cache
def _init_params() -> dict[str, nnx.Param]:
    return _params(xLSTMLMModel(_INIT_CONFIG, rngs=nnx.Rngs(0)))


def _expected_std(path: str, d: int, nb: int, k: int) -> float | None:
    """The official init's std for the random parameters (None for the deterministic ones)."""
    small, wang, conv = (2 / (5 * d)) ** 0.5, 2 / nb / d**0.5, 1 / (3 * k) ** 0.5
    if "norm" in path or "learnable_skip" in path or path.endswith(("recurrent_kernel", "xlstm.bias")):
        return None
    if path.endswith(("igate.kernel", "fgate.kernel", "fgate.bias")):
        return None
    if path.endswith("igate.bias"):
        return 0.1
    if "conv1d" in path:
        return conv  # PyTorch's Conv1d default U(+-1/sqrt(K))
    if "proj_down" in path:
        return wang
    return small  # proj_up, q/k/v, sLSTM gates, FFN proj_up, embedding, lm_head


def test_init_matches_official():
    """Deterministic inits equal the official ones; random ones have the official std (ours and theirs)."""
    require_official()
    import torch
    from xlstm import xLSTMLMModel as TorchModel

    from xlstm_lm_cases import official_config

    config = official_config(_INIT_CASE)
    assert xLSTMLMConfig.from_dict(dataclasses.asdict(config)) == _INIT_CONFIG
    torch.manual_seed(0)
    official = TorchModel(config)
    official.reset_parameters()  # the official LM does not call it itself (embedding, lm_head)
    theirs = _params(from_torch_xlstm_lm(dataclasses.asdict(config), official.state_dict()))  # torch tensors
    ours = _init_params()
    assert ours.keys() == theirs.keys()
    for path, var in ours.items():
        a, b = np.asarray(var[...]), np.asarray(theirs[path][...])
        std = _expected_std(path, _INIT_CONFIG.embedding_dim, _INIT_CONFIG.num_blocks, k=4)
        if std is None:
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=path)
        else:
            tol = 4 / np.sqrt(2 * a.size) + 0.02  # ~4 standard errors of a std estimate
            for name, x in (("ours", a), ("official", b)):
                assert abs(x.std() / std - 1) < tol, f"{path} {name}: std {x.std():.4g} vs {std:.4g}"
                assert abs(x.mean()) < 4 * std / np.sqrt(x.size) + 1e-3, f"{path} {name}: mean {x.mean():.3g}"


def test_init_constants():
    """The deterministic inits by formula (no torch needed)."""
    p = _init_params()
    nh, dh = 4, 64
    for idx in (0, 3):
        np.testing.assert_allclose(p[f"blocks.{idx}.xlstm.fgate.bias"][...], np.linspace(3, 6, 64), rtol=1e-6)
        assert not np.any(p[f"blocks.{idx}.xlstm.igate.kernel"][...])
        assert not np.any(p[f"blocks.{idx}.xlstm.fgate.kernel"][...])
        np.testing.assert_array_equal(p[f"blocks.{idx}.xlstm.learnable_skip"][...], 1.0)
    for idx in (1, 2):
        ratio = idx / 3  # block_idx / (num_blocks - 1)
        forget = -(-5 + 12 * (np.arange(dh) / (dh - 1)) ** (0.3 + 1.3 * ratio))
        bias = np.asarray(p[f"blocks.{idx}.xlstm.bias"][...])
        np.testing.assert_allclose(bias[:, 1], np.broadcast_to(forget, (nh, dh)), rtol=1e-6, atol=1e-6)
        assert not np.any(bias[:, [0, 2, 3]]) and not np.any(p[f"blocks.{idx}.xlstm.recurrent_kernel"][...])
    norms = [path for path in p if "norm" in path]
    assert len(norms) == 4 + 2 + 2 + 2 + 1  # block norms, ffn norms, outnorms, group norms, post norm
    for path in norms:
        assert not np.any(p[path][...]), path


def test_slstm_bias_init_options():
    key, shape = jax.random.key(0), (2, 4, 16)
    small = slstm_bias_init("small_init", 2, 16, 32, block_idx=0, num_blocks=1)(key, shape, jnp.float32)
    np.testing.assert_allclose(small[:, 1], np.broadcast_to(np.linspace(3, 6, 16), (2, 16)), rtol=1e-6)
    assert not np.any(small[:, [0, 2, 3]])
    single = slstm_bias_init("powerlaw_blockdependent", 2, 16, 32, block_idx=0, num_blocks=1)(key, shape, jnp.float32)
    np.testing.assert_allclose(single[0, 1], -(-5 + 12 * (np.arange(16) / 15) ** 0.3), rtol=1e-6, atol=1e-6)
    assert not np.any(slstm_bias_init("zeros", 2, 16, 32, 0, 1)(key, shape, jnp.float32))
    standard = np.asarray(slstm_bias_init("standard", 2, 16, 32, 0, 1)(key, shape, jnp.float32))
    assert 0.8 * 32**-0.5 < np.abs(standard).max() <= 32**-0.5


def test_linen_adapter():
    """``nnx.bridge.to_linen`` init/apply gives the NNX model's logits with the same params."""
    name = "slstm_only_noffn"
    cfg = converted(name).config
    ids = jnp.asarray(fixture(name)["ids"])
    module = nnx.bridge.to_linen(xLSTMLMModel, cfg)
    variables = jax.jit(module.init)(jax.random.key(0), ids)
    specs = linen.get_partition_spec(variables)["params"]
    assert tuple(specs["token_embedding"]["embedding"]) == ("vocab", "embed")
    logits = jax.jit(module.apply)(variables, ids)
    abstract = nnx.eval_shape(lambda: xLSTMLMModel(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, linen.meta.unbox(variables["params"]))
    model = nnx.merge(graphdef, state)
    assert_close(logits, run(model, ids)[0], 1e-6, "linen vs nnx")
