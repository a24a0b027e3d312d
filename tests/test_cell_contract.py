"""The contract every registered cell implementation keeps (``xlstm_jax.backends.IMPLEMENTATIONS``).

Each implementation runs through the registry's own ``run`` and ``choose_blocks`` (Pallas kernels in
interpret mode on a CPU, the C++ CPU kernel compiled) and is compared with the slow twin of its cell:
``ops.mlstm_recurrent`` (a ``lax.scan`` of ``mlstm_step``, autodiff for the gradients) and
``ops.slstm_scan``. The contract: ``run(...) -> (h, state)`` with h in the inputs' dtype and the
state in float32; h, the final state and every gradient (inputs and initial state) equal the twin's;
no initial state means zeros; kernels choose their blocks with their module's ``choose_blocks``, XLA
forms have none. The kernels' own files (``test_pallas_*.py``, ``test_cpu_kernel.py``) test tiles,
dtypes and edge cases in depth.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_close, cast, mlstm_inputs, mlstm_state, slstm_inputs, slstm_state
from xlstm_jax import backends, ops

FWD_TOL, GRAD_TOL = 1e-4, 1e-3
MLSTM = dict(b=1, nh=2, s=21, dhqk=16, dhv=32)  # S = 21: two chunks of 16, the last one padded
SLSTM = dict(b=2, s=7, nh=2, dh=16)
CHUNK = 16
IMPLS = sorted(backends.IMPLEMENTATIONS.values(), key=lambda impl: (impl.cell, impl.name))


def _id(impl):
    return f"{impl.cell}-{impl.name}"


def _interpret(impl):
    if impl.platform is None:
        return False
    if impl.platform != "cpu" and not impl.interpret_on_cpu and jax.default_backend() == "cpu":
        pytest.skip(f"{impl.name} has no interpret mode: it runs on a {impl.platform.upper()} only")
    return backends.interpret_flag(impl)


def _blocks(impl, interpret):
    if impl.choose_blocks is None:
        return None
    if impl.cell == "mlstm":
        return impl.choose_blocks(MLSTM["dhqk"], MLSTM["dhv"], CHUNK, interpret=interpret)
    return impl.choose_blocks(SLSTM["b"], SLSTM["s"], SLSTM["dh"], has_resets=True, interpret=interpret)


def _case(cell):
    """(args, initial state, keyword arguments of run, output cotangents), float32."""
    rng = np.random.default_rng(5)
    if cell == "mlstm":
        args = cast(mlstm_inputs(41, **MLSTM), jnp.float32)
        state = cast(mlstm_state(42, **{k: MLSTM[k] for k in ("b", "nh", "dhqk", "dhv")}), jnp.float32)
        kwargs = dict(chunk_size=CHUNK, eps=1e-6)
        h_shape = (MLSTM["b"], MLSTM["nh"], MLSTM["s"], MLSTM["dhv"])
    else:
        args = cast(slstm_inputs(43, **SLSTM), jnp.float32)
        state = cast(slstm_state(44, **{k: SLSTM[k] for k in ("b", "nh", "dh")}), jnp.float32)
        kwargs = dict(resets=jnp.zeros((SLSTM["b"], SLSTM["s"]), bool).at[1, 3].set(True))
        h_shape = (SLSTM["b"], SLSTM["s"], SLSTM["nh"], SLSTM["dh"])
    cot = (
        jnp.asarray(rng.normal(size=h_shape), jnp.float32),
        type(state)(*(jnp.asarray(rng.normal(size=x.shape), jnp.float32) for x in state)),
    )
    return args, state, kwargs, cot


def _twin(cell):
    if cell == "mlstm":
        return lambda q, k, v, i, f, *, initial_state, chunk_size, eps: ops.mlstm_recurrent(
            q, k, v, i, f, initial_state=initial_state, eps=eps
        )
    return ops.slstm_scan


def _value_and_vjp(fn, args, state, cot):
    out, pullback = jax.vjp(lambda a, s: fn(*a, initial_state=s), args, state)
    return out, pullback(cot)


@pytest.mark.parametrize("impl", IMPLS, ids=_id)
def test_h_state_and_gradients_match_the_slow_twin(impl):
    args, state, kwargs, cot = _case(impl.cell)
    interpret = _interpret(impl)
    if impl.name == "parallel":  # the one stateless form: (h, None), and an initial state is refused
        h, final = jax.jit(partial(impl.run, initial_state=None, **kwargs))(*args)
        assert final is None
        ref_h, _ = _twin(impl.cell)(*args, initial_state=None, **kwargs)
        assert_close(h, ref_h, FWD_TOL, "parallel h")
        with pytest.raises(ValueError, match="takes no initial_state"):
            impl.run(*args, initial_state=state, **kwargs)
        return
    run = partial(impl.run, blocks=_blocks(impl, interpret), interpret=interpret, **kwargs)
    (h, final), (d_args, d_state) = jax.jit(partial(_value_and_vjp, run))(args, state, cot)
    (ref_h, ref_final), (ref_args, ref_state) = _value_and_vjp(partial(_twin(impl.cell), **kwargs), args, state, cot)
    assert isinstance(final, type(state)) and h.dtype == args[0].dtype == jnp.float32
    assert_close(h, ref_h, FWD_TOL, f"{impl.name} h")
    for name, x, ref in zip(final._fields, final, ref_final):
        assert x.dtype == jnp.float32
        assert_close(x, ref, FWD_TOL, f"{impl.name} final {name}")
    for index, (g, ref) in enumerate(zip(d_args, ref_args)):
        assert_close(g, ref, GRAD_TOL, f"{impl.name} d args[{index}]")
    for name, g, ref in zip(final._fields, d_state, ref_state):
        # sLSTM: the initial m only scales a state that a first step (n == 0) or a reset discards.
        floor = 1.0 if impl.cell == "slstm" and name == "m" else 1e-30
        assert_close(g, ref, GRAD_TOL, f"{impl.name} d initial {name}", floor=floor)


@pytest.mark.parametrize("impl", [impl for impl in IMPLS if impl.name != "parallel"], ids=_id)
def test_zero_initial_state_by_default(impl):
    """Without an initial state, h and the final state equal the twin's from zeros."""
    args, state, kwargs, _ = _case(impl.cell)
    interpret = _interpret(impl)
    run = jax.jit(partial(impl.run, blocks=_blocks(impl, interpret), interpret=interpret, **kwargs))
    h, final = run(*args, initial_state=None)
    zeros = type(state)(*(jnp.zeros_like(x) for x in state))
    ref_h, ref_final = _twin(impl.cell)(*args, initial_state=zeros, **kwargs)
    assert_close(h, ref_h, FWD_TOL, f"{impl.name} h")
    for name, x, ref in zip(final._fields, final, ref_final):
        assert_close(x, ref, FWD_TOL, f"{impl.name} final {name}")


@pytest.mark.parametrize("impl", IMPLS, ids=_id)
def test_registry_entry(impl):
    """XLA forms run anywhere and choose no blocks; kernels name their platform and choose blocks (the
    C++ CPU kernel has no tiles: its ``choose_blocks`` only checks that it builds here)."""
    assert impl.cell in ("mlstm", "slstm") and impl.platform in (None, "tpu", "gpu", "cpu")
    assert backends.implementation(impl.cell, impl.name) is impl
    if impl.platform is None:
        assert impl.choose_blocks is None
    elif impl.platform == "cpu":
        assert impl.choose_blocks is not None and not impl.interpret_on_cpu and _blocks(impl, False) is None
    elif impl.interpret_on_cpu:
        assert impl.choose_blocks is not None and _blocks(impl, True) is not None
    names = backends.MLSTM_BACKENDS if impl.cell == "mlstm" else backends.SLSTM_BACKENDS
    assert impl.name in names
