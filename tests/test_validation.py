"""Bad input raises a ValueError naming the argument and the expected shape."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from xlstm_jax.ops import (
    MLSTMState,
    SLSTMState,
    mlstm_chunkwise,
    mlstm_parallel,
    mlstm_recurrent,
    mlstm_step,
    slstm_scan,
    slstm_step,
)

B, NH, S, DK, DV, DH = 2, 3, 5, 4, 6, 4


def _mlstm_args():
    z = lambda *shape: jnp.zeros(shape, jnp.float32)
    return dict(q=z(B, NH, S, DK), k=z(B, NH, S, DK), v=z(B, NH, S, DV), i=z(B, NH, S), f=z(B, NH, S))


SEQUENCE_FORMS = {
    "parallel": lambda a, **kw: mlstm_parallel(a["q"], a["k"], a["v"], a["i"], a["f"], **kw),
    "chunkwise": lambda a, **kw: mlstm_chunkwise(a["q"], a["k"], a["v"], a["i"], a["f"], **kw),
    "recurrent": lambda a, **kw: mlstm_recurrent(a["q"], a["k"], a["v"], a["i"], a["f"], **kw),
}

BAD_MLSTM = [
    # (argument, bad array, words the message must contain)
    ("q", np.zeros((B, NH, S), np.float32), ["q", "rank 4", "(B=2, NH=3, S=5, DHQK=4)"]),
    ("k", np.zeros((B, NH, S, DK + 1), np.float32), ["k", "DHQK=4", "from q"]),
    ("v", np.zeros((B + 1, NH, S, DV), np.float32), ["v", "B=2"]),
    ("i", np.zeros((B, NH + 1, S), np.float32), ["i", "NH=3"]),
    ("f", np.zeros((B, NH, S + 1), np.float32), ["f", "S=5"]),
    ("f", np.zeros((B, NH), np.float32), ["f", "rank 3"]),
    ("q", np.zeros((B, NH, S, DK), np.int32), ["q", "floating-point", "int32"]),
    ("i", np.zeros((B, NH, S), bool), ["i", "floating-point"]),
]


@pytest.mark.parametrize("form", sorted(SEQUENCE_FORMS))
@pytest.mark.parametrize("arg,bad,words", BAD_MLSTM, ids=lambda x: x if isinstance(x, str) else "")
def test_mlstm_bad_inputs(form, arg, bad, words):
    args = _mlstm_args()
    args[arg] = bad
    with pytest.raises(ValueError) as err:
        SEQUENCE_FORMS[form](args)
    for word in words:
        assert word in str(err.value), str(err.value)


@pytest.mark.parametrize("chunk_size", [0, -4, 2.5, True])
def test_mlstm_bad_chunk_size(chunk_size):
    with pytest.raises(ValueError, match=r"^chunk_size must be an integer >= 1, got "):
        SEQUENCE_FORMS["chunkwise"](_mlstm_args(), chunk_size=chunk_size)


def test_mlstm_bad_eps():
    with pytest.raises(ValueError, match=r"^eps must be a finite number >= 0.0, got -1.0"):
        SEQUENCE_FORMS["recurrent"](_mlstm_args(), eps=-1.0)


@pytest.mark.parametrize("form", ["chunkwise", "recurrent"])
@pytest.mark.parametrize(
    "state,words",
    [
        (MLSTMState(np.zeros((B, NH, DK, DV + 1)), np.zeros((B, NH, DK)), np.zeros((B, NH))), ["initial_state.c"]),
        (MLSTMState(np.zeros((B, NH, DK, DV)), np.zeros((B, NH, DK + 1)), np.zeros((B, NH))), ["initial_state.n"]),
        (MLSTMState(np.zeros((B, NH, DK, DV)), np.zeros((B, NH, DK)), np.zeros((B, NH, 1))), ["initial_state.m"]),
        ((np.zeros((B, NH, DK, DV)), np.zeros((B, NH, DK))), ["initial_state", "MLSTMState(c, n, m)"]),
    ],
)
def test_mlstm_bad_state(form, state, words):
    with pytest.raises(ValueError) as err:
        SEQUENCE_FORMS[form](_mlstm_args(), initial_state=state)
    for word in words:
        assert word in str(err.value), str(err.value)


def test_mlstm_step_bad_inputs():
    a = {k: v[:, :, 0] for k, v in _mlstm_args().items()}
    with pytest.raises(ValueError, match=r"i must have rank 2"):
        mlstm_step(a["q"], a["k"], a["v"], a["i"][..., None], a["f"], None)
    bad_state = MLSTMState(np.zeros((B, NH, DK, DV)), np.zeros((B, NH, DK)), np.zeros((B + 1, NH)))
    with pytest.raises(ValueError, match=r"state.m must have shape \(B=2, NH=3\)"):
        mlstm_step(a["q"], a["k"], a["v"], a["i"], a["f"], bad_state)


def _slstm_args():
    return dict(
        gates_x=np.zeros((B, S, 4, NH, DH), np.float32),
        recurrent_kernel=np.zeros((NH, DH, 4, DH), np.float32),
        bias=np.zeros((NH, 4, DH), np.float32),
    )


@pytest.mark.parametrize(
    "arg,bad,words",
    [
        ("gates_x", np.zeros((B, S, 4, NH * DH), np.float32), ["gates_x", "rank 5"]),
        ("gates_x", np.zeros((B, S, 3, NH, DH), np.float32), ["gates_x", "(B=2, S=5, 4, NH=3, DH=4)"]),
        ("recurrent_kernel", np.zeros((NH, DH, 4, DH + 1), np.float32), ["recurrent_kernel", "DH=4"]),
        ("recurrent_kernel", np.zeros((NH + 1, DH, 4, DH), np.float32), ["recurrent_kernel", "NH=3"]),
        ("bias", np.zeros((NH, 4 * DH), np.float32), ["bias", "rank 3"]),
        ("bias", np.zeros((NH, 4, DH), np.int64), ["bias", "floating-point"]),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_slstm_bad_inputs(arg, bad, words):
    args = _slstm_args()
    args[arg] = bad
    with pytest.raises(ValueError) as err:
        slstm_scan(args["gates_x"], args["recurrent_kernel"], args["bias"])
    for word in words:
        assert word in str(err.value), str(err.value)


def test_slstm_bad_state():
    a = _slstm_args()
    state = SLSTMState(*(np.zeros((B, NH, DH)),) * 3, np.zeros((B, NH, DH + 1)))
    with pytest.raises(ValueError, match=r"initial_state.m must have shape"):
        slstm_scan(a["gates_x"], a["recurrent_kernel"], a["bias"], initial_state=state)
    with pytest.raises(ValueError, match=r"state must be an SLSTMState"):
        slstm_step(a["gates_x"][:, 0], a["recurrent_kernel"], a["bias"], (np.zeros((B, NH, DH)),) * 2)


def test_slstm_bad_resets():
    a = _slstm_args()
    with pytest.raises(ValueError, match=r"resets must be a \(B=2, S=5\) bool array"):
        slstm_scan(a["gates_x"], a["recurrent_kernel"], a["bias"], resets=np.zeros((B, S + 1), bool))
    with pytest.raises(ValueError, match=r"resets must be a \(B=2, S=5\) bool array"):
        slstm_scan(a["gates_x"], a["recurrent_kernel"], a["bias"], resets=np.zeros((B, S), np.int32))
