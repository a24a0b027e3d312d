"""Official ``xlstm.xlstm_large`` reference runs for the xLSTM-7B parity tests.

The cases, their weights and inputs, the official model (torch imported lazily) and its runs;
``tests/generate_xlstm_large_fixtures.py`` writes ``tests/fixtures/xlstm_large_<case>.npz``, one
file per case in ``CASES``:
  ``arch``          JSON of the architecture fields of the official ``xLSTMLargeConfig``
  ``w.<name>``      the official state_dict (float16 storage of values exactly representable in
                    float16, so float32 loads them exactly), in the case's weight mode
  ``ids``           (B, S) tokens; ``logits`` (B, S, V) float32 official logits
  ``state.<i>.c|n|m`` the official final state of block i (m as (B, NH))
  ``ids2``, ``logits2``, ``state2.<i>.*`` (cases with ``continue_len``): the official logits of a
                    continuation fed with the state returned for ``ids``, and the state after it.

Weights are the xLSTM-7B init recipe perturbed by noise on every tensor (so zero-initialized
tensors matter), with per-case changes (``CASES[...]["weights"]``).
The official model runs in float32 on CPU with the native kernels in inference mode (any S).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"

OFFICIAL_RUNTIME = dict(
    chunkwise_kernel="chunkwise--native_autograd",
    sequence_kernel="native_sequence__native",
    step_kernel="native",
    mode="inference",
    return_last_states=True,
    autocast_kernel_dtype="float32",
    inference_state_dtype="float32",
)

# S is never a multiple of chunk_size.
CASES = {
    "single": dict(
        arch=dict(embedding_dim=32, num_heads=2, num_blocks=2, vocab_size=64, chunk_size=8),
        batch=2,
        seq_len=13,
        continue_len=6,
        weights=dict(noise=0.1, igate_bias="normal"),
    ),
    "fused_bias": dict(
        arch=dict(
            embedding_dim=32, num_heads=4, num_blocks=2, vocab_size=64, use_bias=True, weight_mode="fused", chunk_size=4
        ),
        batch=2,
        seq_len=11,
        continue_len=0,
        weights=dict(noise=0.1, igate_bias="recipe"),
    ),
    "no_out_norm_capped": dict(
        arch=dict(
            embedding_dim=48,
            num_heads=2,
            num_blocks=3,
            vocab_size=80,
            add_out_norm=False,
            qk_dim_factor=0.25,
            v_dim_factor=0.5,
            ffn_proj_factor=1.5,
            ffn_round_up_to_multiple_of=16,
            gate_soft_cap=4.0,
            output_logit_soft_cap=5.0,
            chunk_size=16,
        ),
        batch=1,
        seq_len=19,
        continue_len=5,
        weights=dict(noise=0.1, igate_bias="normal", gate_weight_std=1.5),
    ),
}


def _small(dim: int) -> float:
    return float(np.sqrt(2.0 / (5.0 * dim)))


def _wang(dim: int, num_blocks: int) -> float:
    return 2.0 / num_blocks / float(np.sqrt(dim))


def perturbed_weights(
    shapes: dict[str, tuple[int, ...]],
    arch: dict,
    seed: int,
    *,
    noise: float = 0.1,
    igate_bias: str = "recipe",
    gate_weight_std: float | None = None,
) -> dict[str, np.ndarray]:
    """The 7B init recipe for single-mode state_dict names, plus N(0, noise) on every tensor.

    Args:
      igate_bias: "recipe" (-10, the 7B init) or "normal" (N(0, 1): input gates open).
      gate_weight_std: if set, i/f gate weights are N(0, std) (drives the gate soft-cap).
    Values are rounded to float16 (and stored as float32): fixtures keep them exactly at half size.
    """
    rng = np.random.default_rng(seed)
    d, num_blocks, nh = arch["embedding_dim"], arch["num_blocks"], arch["num_heads"]
    out = {}
    for name, shape in shapes.items():
        if name.endswith("igate_preact.bias"):
            base = np.full(shape, -10.0) if igate_bias == "recipe" else rng.normal(size=shape)
        elif name.endswith("fgate_preact.bias"):
            base = np.linspace(3.0, 6.0, nh)
        elif re.search(r"[if]gate_preact\.weight$", name) and gate_weight_std is not None:
            base = gate_weight_std * rng.normal(size=shape) / np.sqrt(d)
        elif name.endswith("gate_preact.weight"):
            base = np.zeros(shape)
        elif "norm" in name and name.endswith(".weight"):
            base = np.ones(shape)
        elif name.endswith(".bias"):
            base = np.zeros(shape)
        elif "proj_down" in name or "out_proj" in name:
            base = _wang(d, num_blocks) * rng.normal(size=shape)
        else:
            base = _small(d) * rng.normal(size=shape)
        out[name] = (base + noise * rng.normal(size=shape)).astype(np.float16).astype(np.float32)
    return out


def fuse_weights(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Single -> fused names and layout (as ``xlstm.xlstm_large.utils.convert_single_weights_to_fused_weights``)."""
    out = dict(state_dict)
    groups = [
        ("mlstm_layer.", ("q", "k", "v", "ogate_preact"), "qkv_opreact"),
        ("mlstm_layer.", ("igate_preact", "fgate_preact"), "ifgate_preact"),
        ("ffn.", ("proj_up_gate", "proj_up"), "proj_up_gate_z"),
    ]
    blocks = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"backbone\.blocks\.(\d+)\.", k))})
    for b in blocks:
        for sub, parts, fused in groups:
            for leaf in ("weight", "bias"):
                names = [f"backbone.blocks.{b}.{sub}{p}.{leaf}" for p in parts]
                if names[0] in out:
                    out[f"backbone.blocks.{b}.{sub}{fused}.{leaf}"] = np.concatenate([out.pop(n) for n in names], 0)
    return out


def official_model(arch: dict, state_dict: dict[str, np.ndarray]):
    """The official torch ``xLSTMLarge`` (float32, CPU, native kernels) with ``state_dict`` loaded."""
    import torch
    from xlstm.xlstm_large.model import xLSTMLarge, xLSTMLargeConfig

    model = xLSTMLarge(xLSTMLargeConfig(**arch, **OFFICIAL_RUNTIME)).float().eval()
    model.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in state_dict.items()})
    return model


def official_state_shapes(arch: dict) -> dict[str, tuple[int, ...]]:
    """Single-mode state_dict names and shapes of the official model for ``arch``."""
    from xlstm.xlstm_large.model import xLSTMLarge, xLSTMLargeConfig

    model = xLSTMLarge(xLSTMLargeConfig(**{**arch, "weight_mode": "single"}, **OFFICIAL_RUNTIME))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def run_official(model, ids: np.ndarray, state: tuple | None = None):
    """ids (B, S) -> (logits (B, S, V), state: per block (c, n, m (B, NH))) as numpy float32."""
    import torch

    torch_state = None
    if state is not None:
        torch_state = {
            i: (torch.tensor(c), torch.tensor(n), torch.tensor(m)[..., None]) for i, (c, n, m) in enumerate(state)
        }
    with torch.no_grad():
        logits, new_state = model(torch.from_numpy(np.asarray(ids, np.int64)), torch_state)
    out_state = tuple(
        (new_state[i][0].numpy().copy(), new_state[i][1].numpy().copy(), new_state[i][2][..., 0].numpy().copy())
        for i in range(len(new_state))
    )
    return logits.numpy().copy(), out_state


def case_inputs(name: str, seed: int = 0) -> dict:
    """Weights (in the case's weight mode) and token ids for ``CASES[name]``."""
    case = CASES[name]
    arch = case["arch"]
    weights = perturbed_weights(official_state_shapes(arch), arch, seed, **case["weights"])
    if arch.get("weight_mode") == "fused":
        weights = fuse_weights(weights)
    rng = np.random.default_rng(seed + 1000)
    ids = rng.integers(0, arch["vocab_size"], size=(case["batch"], case["seq_len"]))
    ids2 = rng.integers(0, arch["vocab_size"], size=(case["batch"], case["continue_len"]))
    return dict(arch=arch, weights=weights, ids=ids, ids2=ids2)


def load_fixture(name: str) -> dict:
    z = np.load(FIXTURES / f"xlstm_large_{name}.npz")
    out = {k: z[k] for k in z.files if not k.startswith("w.")}
    out["arch"] = json.loads(str(z["arch"]))
    out["weights"] = {k[2:]: z[k].astype(np.float32) for k in z.files if k.startswith("w.")}
    return out
