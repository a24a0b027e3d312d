"""Regenerate the official-code parity fixtures.

Usage (needs torch, mlstm_kernels and xlstm; run from the repository root)::

    python tests/generate_reference.py

Writes ``tests/fixtures/official_mlstm.npz`` and ``tests/fixtures/official_slstm.npz``.
Every case stores its inputs as float32 values (the values the tests feed to JAX), the official
outputs and autograd gradients computed in float64 from those same values cast to float64
("f64", the truth), and the official float32 forward outputs ("f32", for context: how far the
official code itself is from the truth in float32; gradients are left out to keep the files small).

Key layout (flat, dot-separated):
  mLSTM: ``<case>.q|k|v|i|f``, ``<case>.c0|n0|m0`` (only with an initial state),
         ``<case>.dh|dc|dn`` (cotangents), ``<case>.forms`` (which forms were run),
         ``<case>.chunk_size``, ``<case>.<form>.<f64|f32>.h|c|n|m`` (no c/n/m for "parallel"),
         ``<case>.<form>.f64.grad.q|k|v|i|f|c0|n0|m0``; ``cases`` lists the case names.
  sLSTM: ``<case>.gates_x|recurrent_kernel|bias``, ``<case>.h0|c0|n0|m0`` (initial state, optional),
         ``<case>.dh|dh_last|dc|dn`` (cotangents), ``<case>.<f64|f32>.h|state_h|state_c|state_n|state_m``,
         ``<case>.f64.grad.gates_x|recurrent_kernel|bias|h0|c0|n0|m0``; ``cases``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from official_reference import mlstm_official, slstm_official

HERE = Path(__file__).resolve().parent

FIXTURES = HERE / "fixtures"
MLSTM_CHUNK_SIZE = 16


def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


# ----------------------------------------------------------------------------------------- mLSTM


def _mlstm_inputs(rng: np.random.Generator, B: int, NH: int, S: int, DHQK: int, DHV: int) -> dict:
    return {
        "q": _f32(rng.normal(size=(B, NH, S, DHQK))),
        "k": _f32(rng.normal(size=(B, NH, S, DHQK))),
        "v": _f32(rng.normal(size=(B, NH, S, DHV))),
        "i": _f32(rng.normal(size=(B, NH, S))),
        "f": _f32(rng.normal(size=(B, NH, S)) + 3.0),
    }


def _mlstm_state(rng: np.random.Generator, B: int, NH: int, DHQK: int, DHV: int) -> dict:
    return {
        "c0": _f32(rng.normal(size=(B, NH, DHQK, DHV))),
        "n0": _f32(rng.normal(size=(B, NH, DHQK))),
        "m0": _f32(rng.uniform(-1.0, 1.0, size=(B, NH))),
    }


def _extreme_gates(rng: np.random.Generator, B: int, NH: int, S: int) -> dict:
    """Gates in +-30 with runs of f=-30 (forget everything), runs of i=+30 and i spikes of +100."""
    i = rng.uniform(-30.0, 30.0, size=(B, NH, S))
    f = rng.uniform(-30.0, 30.0, size=(B, NH, S))
    f[:, 0, 8:16] = -30.0
    i[:, 0, 20:28] = 30.0
    f[:, 1, 30:40] = -30.0
    i[:, 1, 40:44] = 30.0
    for t in (5, 33, 50):
        i[:, 0, t] = 100.0
    for t in (12, 47):
        i[:, 1, t] = 100.0
    return {"i": _f32(i), "f": _f32(f)}


def mlstm_cases() -> dict[str, dict]:
    cases = {}

    rng = np.random.default_rng(1001)
    cases["rand"] = {**_mlstm_inputs(rng, 1, 2, 64, 16, 32), "forms": ("parallel", "chunkwise", "recurrent")}

    rng = np.random.default_rng(1002)
    cases["state"] = {
        **_mlstm_inputs(rng, 1, 2, 64, 16, 32),
        **_mlstm_state(rng, 1, 2, 16, 32),
        "forms": ("chunkwise", "recurrent"),
    }

    rng = np.random.default_rng(1003)
    case = _mlstm_inputs(rng, 1, 2, 64, 16, 32)
    case.update(_extreme_gates(rng, 1, 2, 64))
    cases["extreme"] = {**case, "forms": ("parallel", "chunkwise", "recurrent")}

    rng = np.random.default_rng(1004)
    cases["dims"] = {**_mlstm_inputs(rng, 2, 1, 32, 24, 8), "forms": ("parallel", "chunkwise", "recurrent")}

    for idx, case in enumerate(cases.values()):
        rng = np.random.default_rng(2000 + idx)
        B, NH, S, DHQK = case["q"].shape
        DHV = case["v"].shape[-1]
        case["dh"] = _f32(rng.normal(size=(B, NH, S, DHV)))
        case["dc"] = _f32(rng.normal(size=(B, NH, DHQK, DHV)))
        case["dn"] = _f32(rng.normal(size=(B, NH, DHQK)))
    return cases


def _run_mlstm_case(case: dict, form: str, dtype: type, grads: bool) -> dict[str, np.ndarray]:
    cast = lambda x: np.asarray(x, dtype=dtype)
    args = [cast(case[n]) for n in "qkvif"]
    state = None
    if "c0" in case:
        state = tuple(cast(case[n]) for n in ("c0", "n0", "m0"))
    cot = {"dh": cast(case["dh"])}
    if form != "parallel":
        cot.update(dc=cast(case["dc"]), dn=cast(case["dn"]))
    out = mlstm_official(
        form, *args, initial_state=state, chunk_size=MLSTM_CHUNK_SIZE, cotangents=cot if grads else None
    )
    res = {"h": out["h"]}
    if out["state"] is not None:
        res.update(zip(("c", "n", "m"), out["state"]))
    if grads:
        res.update({f"grad.{k}": g for k, g in out["grads"].items()})
    return res


def build_mlstm() -> dict[str, np.ndarray]:
    data: dict[str, np.ndarray] = {}
    cases = mlstm_cases()
    data["cases"] = np.array(list(cases))
    for name, case in cases.items():
        for key, val in case.items():
            if key == "forms":
                data[f"{name}.forms"] = np.array(val)
            else:
                data[f"{name}.{key}"] = val
        data[f"{name}.chunk_size"] = np.array(MLSTM_CHUNK_SIZE)
        for form in case["forms"]:
            for tag, dtype, grads in (("f64", np.float64, True), ("f32", np.float32, False)):
                for key, val in _run_mlstm_case(case, form, dtype, grads).items():
                    data[f"{name}.{form}.{tag}.{key}"] = val
    return data


# ----------------------------------------------------------------------------------------- sLSTM


def slstm_cases() -> dict[str, dict]:
    B, S, NH, DH = 2, 16, 2, 8
    cases = {}

    def base(rng: np.random.Generator, gate_scale: float, r_scale: float, b_scale: float) -> dict:
        return {
            "gates_x": _f32(gate_scale * rng.normal(size=(B, S, 4, NH, DH))),
            "recurrent_kernel": _f32(r_scale * rng.normal(size=(NH, DH, 4, DH))),
            "bias": _f32(b_scale * rng.normal(size=(NH, 4, DH))),
        }

    cases["rand"] = base(np.random.default_rng(3001), 1.0, 0.3, 1.0)

    rng = np.random.default_rng(3002)
    case = base(rng, 1.0, 0.3, 1.0)
    # n must be nonzero everywhere: the official cell's first-step rule tests all(n == 0) globally.
    case.update(
        h0=_f32(rng.normal(size=(B, NH, DH))),
        c0=_f32(rng.normal(size=(B, NH, DH))),
        n0=_f32(rng.uniform(0.5, 2.0, size=(B, NH, DH))),
        m0=_f32(rng.uniform(-1.0, 1.0, size=(B, NH, DH))),
    )
    cases["state"] = case

    rng = np.random.default_rng(3003)
    case = base(rng, 10.0, 1.0, 3.0)  # pre-activations of tens: saturated gates, i spikes
    gx = case["gates_x"]
    gx[:, 3:6, 1] = -30.0  # forget-gate pre-activation -30 for a few steps (all units)
    gx[:, 9, 0] = 40.0  # input spike
    case["gates_x"] = gx
    cases["large"] = case

    for idx, case in enumerate(cases.values()):
        rng = np.random.default_rng(4000 + idx)
        case["dh"] = _f32(rng.normal(size=(B, S, NH, DH)))
        case["dh_last"] = _f32(rng.normal(size=(B, NH, DH)))
        case["dc"] = _f32(rng.normal(size=(B, NH, DH)))
        case["dn"] = _f32(rng.normal(size=(B, NH, DH)))
    return cases


def _run_slstm_case(case: dict, dtype: type, grads: bool) -> dict[str, np.ndarray]:
    cast = lambda x: np.asarray(x, dtype=dtype)
    state = None
    if "h0" in case:
        state = tuple(cast(case[n]) for n in ("h0", "c0", "n0", "m0"))
    cot = {k: cast(case[k]) for k in ("dh", "dh_last", "dc", "dn")}
    out = slstm_official(
        cast(case["gates_x"]),
        cast(case["recurrent_kernel"]),
        cast(case["bias"]),
        initial_state=state,
        cotangents=cot if grads else None,
    )
    res = {"h": out["h"]}
    res.update({f"state_{n}": s for n, s in zip("hcnm", out["state"])})
    if grads:
        res.update({f"grad.{k}": g for k, g in out["grads"].items()})
    return res


def build_slstm() -> dict[str, np.ndarray]:
    data: dict[str, np.ndarray] = {}
    cases = slstm_cases()
    data["cases"] = np.array(list(cases))
    for name, case in cases.items():
        for key, val in case.items():
            data[f"{name}.{key}"] = val
        for tag, dtype, grads in (("f64", np.float64, True), ("f32", np.float32, False)):
            for key, val in _run_slstm_case(case, dtype, grads).items():
                data[f"{name}.{tag}.{key}"] = val
    return data


def main() -> None:
    import torch

    torch.set_num_threads(1)  # deterministic reductions, and fast enough for these sizes
    FIXTURES.mkdir(exist_ok=True)
    total = 0
    for fname, builder in (("official_mlstm.npz", build_mlstm), ("official_slstm.npz", build_slstm)):
        path = FIXTURES / fname
        np.savez_compressed(path, **builder())
        size = path.stat().st_size
        total += size
        print(f"wrote {path} ({size / 1e6:.3f} MB)")
    print(f"total {total / 1e6:.3f} MB")


if __name__ == "__main__":
    main()
