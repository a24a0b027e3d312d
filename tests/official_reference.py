"""Run the official PyTorch xLSTM code on numpy inputs (test helper).

The official packages (``torch``, ``mlstm_kernels``, ``xlstm``) are imported lazily inside the
functions, so this module imports without them. Every function takes numpy arrays in the layouts of
``xlstm_jax.ops`` and returns numpy arrays: the forward outputs, and, when cotangents are given, the
gradients of ``sum(output * cotangent)`` computed by torch autograd (never by the ``custbw``
kernels, whose backward treats the normalizer as a constant). float64 inputs run the official code
in torch.float64; float32 inputs run it in torch.float32.

mLSTM kernels used (mlstm_kernels 2.0.6):
  * ``"parallel"``:  ``parallel--native_stablef_autograd`` (no initial state, no final state).
  * ``"chunkwise"``: ``chunkwise--native_autograd`` (initial state, ``return_last_states=True``;
    needs ``S % chunk_size == 0``).
  * ``"recurrent"``: a python loop over ``mlstm_kernels.torch.recurrent.native_step``'s step kernel
    with ``dtype_state`` equal to the input dtype.

sLSTM: ``xlstm.blocks.slstm.cell.sLSTMCell`` with ``backend="vanilla"`` (pure torch).
"""

from __future__ import annotations

from typing import Any

import numpy as np

MLSTM_FORMS = ("parallel", "chunkwise", "recurrent")


def _torch_dtype(torch: Any, x: np.ndarray) -> Any:
    if x.dtype == np.float64:
        return torch.float64
    if x.dtype == np.float32:
        return torch.float32
    raise TypeError(f"inputs must be float32 or float64 numpy arrays, got dtype {x.dtype}")


def _leaf(torch: Any, x: np.ndarray, dtype: Any) -> Any:
    return torch.tensor(np.asarray(x), dtype=dtype).requires_grad_(True)


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _vjp(torch: Any, pairs: list[tuple[Any, Any]], leaves: dict[str, Any]) -> dict[str, np.ndarray]:
    """Gradients of sum(out * cot) over ``pairs`` with respect to ``leaves`` (zeros when unused)."""
    loss = sum((out * torch.as_tensor(np.asarray(cot), dtype=out.dtype)).sum() for out, cot in pairs)
    names = list(leaves)
    grads = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
    return {
        n: (np.zeros(tuple(leaves[n].shape), dtype=_np(leaves[n]).dtype) if g is None else _np(g))
        for n, g in zip(names, grads)
    }


def mlstm_official(
    form: str,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    i: np.ndarray,
    f: np.ndarray,
    *,
    initial_state: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    chunk_size: int = 16,
    eps: float = 1e-6,
    cotangents: dict[str, np.ndarray] | None = None,
    dh: np.ndarray | None = None,
) -> dict[str, Any]:
    """Official mLSTM on numpy inputs.

    Args:
      form: "parallel", "chunkwise" or "recurrent" (see module docstring for the kernels).
      q, k: (B, NH, S, DHQK); v: (B, NH, S, DHV); i, f: (B, NH, S) gate pre-activations.
      initial_state: (c (B,NH,DHQK,DHV), n (B,NH,DHQK), m (B,NH)); zeros when None. Not allowed
        for "parallel".
      chunk_size: chunk length of the chunkwise kernel (S must be a multiple of it).
      cotangents: optional {"dh": (B,NH,S,DHV), "dc", "dn", "dm"}; dc/dn/dm (final-state
        cotangents, m as (B,NH)) are optional and only meaningful for chunkwise/recurrent.
      dh: shorthand for ``cotangents={"dh": dh}``.

    Returns:
      {"h": (B,NH,S,DHV), "state": (c, n, m (B,NH)) or None for "parallel",
       "grads": {"q","k","v","i","f"[, "c0","n0","m0"]} (only when cotangents are given)}.
      For chunkwise/recurrent the initial-state gradients are always returned (a zero initial
      state is passed explicitly when ``initial_state`` is None; the kernels do the same).
    """
    import torch

    if form not in MLSTM_FORMS:
        raise ValueError(f"form must be one of {MLSTM_FORMS}, got {form!r}")
    if dh is not None:
        if cotangents is not None:
            raise ValueError("pass either dh or cotangents, not both")
        cotangents = {"dh": dh}

    dtype = _torch_dtype(torch, np.asarray(q))
    B, NH, S, DHQK = q.shape
    DHV = v.shape[-1]
    leaves = {
        "q": _leaf(torch, q, dtype),
        "k": _leaf(torch, k, dtype),
        "v": _leaf(torch, v, dtype),
        "i": _leaf(torch, i, dtype),
        "f": _leaf(torch, f, dtype),
    }
    tq, tk, tv, ti, tf = (leaves[n] for n in "qkvif")

    state = None
    if form == "parallel":
        if initial_state is not None:
            raise ValueError("the official parallel kernel takes no initial state")
        from mlstm_kernels.torch import get_mlstm_kernel

        kernel = get_mlstm_kernel("parallel--native_stablef_autograd")
        h = kernel(tq, tk, tv, ti, tf, eps=eps)
    else:
        if initial_state is None:
            initial_state = (
                np.zeros((B, NH, DHQK, DHV), q.dtype),
                np.zeros((B, NH, DHQK), q.dtype),
                np.zeros((B, NH), q.dtype),
            )
        c0, n0, m0 = initial_state
        leaves["c0"] = _leaf(torch, c0, dtype)
        leaves["n0"] = _leaf(torch, n0, dtype)
        leaves["m0"] = _leaf(torch, m0, dtype)
        m0_t = leaves["m0"][..., None]  # torch kernels use m of shape (B, NH, 1)
        if form == "chunkwise":
            if S % chunk_size:
                raise ValueError(
                    f"official chunkwise kernel needs S % chunk_size == 0, got S={S}, chunk_size={chunk_size}"
                )
            from mlstm_kernels.torch import get_mlstm_kernel

            kernel = get_mlstm_kernel("chunkwise--native_autograd")
            h, (c, n, m) = kernel(
                tq,
                tk,
                tv,
                ti,
                tf,
                c_initial=leaves["c0"],
                n_initial=leaves["n0"],
                m_initial=m0_t,
                return_last_states=True,
                eps=eps,
                chunk_size=chunk_size,
            )
        else:
            from mlstm_kernels.torch.recurrent.native_step import mlstm_recurrent_step__native

            c, n, m = leaves["c0"], leaves["n0"], m0_t
            hs = []
            for t in range(S):
                h_t, (c, n, m) = mlstm_recurrent_step__native(
                    tq[:, :, t],
                    tk[:, :, t],
                    tv[:, :, t],
                    ti[:, :, t, None],
                    tf[:, :, t, None],
                    c,
                    n,
                    m,
                    eps=eps,
                    dtype_state=dtype,
                )
                hs.append(h_t)
            h = torch.stack(hs, dim=2)
        m = m.reshape(B, NH)
        state = (c, n, m)

    out: dict[str, Any] = {
        "h": _np(h),
        "state": None if state is None else tuple(_np(s) for s in state),
    }
    if cotangents is not None:
        unknown = set(cotangents) - {"dh", "dc", "dn", "dm"}
        if unknown:
            raise ValueError(f"unknown cotangent keys {sorted(unknown)}; accepted: dh, dc, dn, dm")
        pairs = [(h, cotangents["dh"])]
        for key, idx in (("dc", 0), ("dn", 1), ("dm", 2)):
            if cotangents.get(key) is not None:
                if state is None:
                    raise ValueError(f"cotangent {key} given but form {form!r} returns no state")
                pairs.append((state[idx], cotangents[key]))
        out["grads"] = _vjp(torch, pairs, leaves)
    return out


def _make_slstm_cell(NH: int, DH: int, dtype: Any) -> Any:
    from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig

    # The config's dtype literals stop at float32; the vanilla backend never reads them
    # (its parameters are created in torch's default dtype and it computes in the dtype of
    # its inputs and parameters), so the cell is cast to ``dtype`` after construction.
    config = sLSTMCellConfig(
        hidden_size=NH * DH,
        num_heads=NH,
        backend="vanilla",
        function="slstm",
        dtype="float32",
        input_shape="BSGNH",
        output_shape="BNSH",
    )
    cell = sLSTMCell(config)
    return cell.to(dtype)


def slstm_official(
    gates_x: np.ndarray,
    recurrent_kernel: np.ndarray,
    bias: np.ndarray,
    *,
    initial_state: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    cotangents: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Official sLSTM cell (xlstm, ``backend="vanilla"``) on numpy inputs.

    Contract (the one of ``xlstm_jax.ops.slstm_scan``):
      gates_x (B, S, 4, NH, DH): input-side pre-activations, gate order i, f, z, o.
      recurrent_kernel (NH, DH_in, 4, DH_out), bias (NH, 4, DH):
        raw[b,g,h,o] = gates_x[b,t,g,h,o] + sum_d h_prev[b,h,d] R[h,d,g,o] + bias[h,g,o].
      initial_state: (h, c, n, m) each (B, NH, DH); zeros when None. The official cell picks its
        "first step" rule (m = i_raw) when n == 0 for the **whole** state tensor, so use either a
        zero state or one whose n is nonzero everywhere.
      cotangents: optional {"dh": (B,S,NH,DH), "dh_last", "dc", "dn", "dm": (B,NH,DH)}, the last
        four being cotangents of the final state.

    Mapping into the official cell: R and bias are the cell's "external" layouts
    (``cell.recurrent_kernel`` / ``cell.bias``), written through the cell's own ``ParameterProxy``
    (vanilla internals: R_int = ext.permute(0,2,3,1).reshape(NH, 4*DH, DH); b_int gate-major =
    ext.permute(1,0,2).reshape(-1)); their gradients are mapped back with the cell's int2ext.
    Wx is gates_x.reshape(B, S, 4*NH*DH) (gate-major, then head-major). The official state is
    (4, B, NH*DH) ordered [y, c, n, m].

    Returns:
      {"h": (B,S,NH,DH), "state": (h, c, n, m) each (B,NH,DH),
       "grads": {"gates_x","recurrent_kernel","bias","h0","c0","n0","m0"} when cotangents given}.
    """
    import torch

    dtype = _torch_dtype(torch, np.asarray(gates_x))
    B, S, G, NH, DH = gates_x.shape
    if G != 4:
        raise ValueError(f"gates_x must have 4 gates on axis 2, got shape {gates_x.shape}")
    if recurrent_kernel.shape != (NH, DH, 4, DH):
        raise ValueError(f"recurrent_kernel must be {(NH, DH, 4, DH)}, got {recurrent_kernel.shape}")
    if bias.shape != (NH, 4, DH):
        raise ValueError(f"bias must be {(NH, 4, DH)}, got {bias.shape}")
    H = NH * DH

    cell = _make_slstm_cell(NH, DH, dtype)
    with torch.no_grad():
        cell.recurrent_kernel[...] = torch.as_tensor(np.asarray(recurrent_kernel), dtype=dtype)
        cell.bias[...] = torch.as_tensor(np.asarray(bias), dtype=dtype)
    # sanity: the proxy reads back what was written
    assert np.array_equal(
        _np(cell.recurrent_kernel[...]), np.asarray(recurrent_kernel, _np(cell._recurrent_kernel_).dtype)
    )
    assert np.array_equal(_np(cell.bias[...]), np.asarray(bias, _np(cell._bias_).dtype))

    if initial_state is None:
        z = np.zeros((B, NH, DH), gates_x.dtype)
        initial_state = (z, z, z, z)
    leaves = {"gates_x": _leaf(torch, gates_x, dtype)}
    for name, s in zip(("h0", "c0", "n0", "m0"), initial_state):
        leaves[name] = _leaf(torch, s, dtype)
    x = leaves["gates_x"].reshape(B, S, 4 * H)
    state0 = torch.stack([leaves[n].reshape(B, H) for n in ("h0", "c0", "n0", "m0")], dim=0)

    y, state = cell(x, state0)  # y: (B, NH, S, DH) ("BNSH"); state: (4, B, H)
    h = y.permute(0, 2, 1, 3)
    final = tuple(state[j].reshape(B, NH, DH) for j in range(4))

    out: dict[str, Any] = {"h": _np(h), "state": tuple(_np(s) for s in final)}
    if cotangents is not None:
        unknown = set(cotangents) - {"dh", "dh_last", "dc", "dn", "dm"}
        if unknown:
            raise ValueError(f"unknown cotangent keys {sorted(unknown)}; accepted: dh, dh_last, dc, dn, dm")
        pairs = [(h, cotangents["dh"])]
        for key, idx in (("dh_last", 0), ("dc", 1), ("dn", 2), ("dm", 3)):
            if cotangents.get(key) is not None:
                pairs.append((final[idx], cotangents[key]))
        param_leaves = dict(leaves)
        param_leaves["_R_int"] = cell._recurrent_kernel_
        param_leaves["_b_int"] = cell._bias_
        grads = _vjp(torch, pairs, param_leaves)
        grads["recurrent_kernel"] = _np(cell._recurrent_kernel_int2ext(torch.as_tensor(grads.pop("_R_int"))))
        grads["bias"] = _np(cell._bias_int2ext(torch.as_tensor(grads.pop("_b_int"))))
        out["grads"] = grads
    return out
