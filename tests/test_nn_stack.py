"""nn.run_stack: scan, loop and remat over both parameter layouts give what calling the blocks does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from xlstm_jax import nn

B, S, D, L = 2, 5, 8, 3


class ToyBlock(nnx.Module):
    """x + tanh(x W) + state, zeroed where a document starts; the state is the last position's sum."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.w = nnx.Param(0.3 * jax.random.normal(rngs.params(), (D, D)))

    def __call__(self, x, state=None, *, return_state=False, resets=None):
        shift = 0.0 if state is None else state[:, None, None]
        y = x + jnp.tanh(x @ self.w[...]) + shift
        if resets is not None:
            y = jnp.where(resets[..., None], 0.0, y)
        return y, (y[:, -1].sum(-1) if return_state else None)


@pytest.fixture(scope="module")
def case():
    blocks = [ToyBlock(rngs=nnx.Rngs(idx)) for idx in range(L)]
    graphdef = nnx.split(blocks[0])[0]
    stacked = nnx.merge(graphdef, jax.tree.map(lambda *a: jnp.stack(a), *(nnx.split(b)[1] for b in blocks)))
    x = jax.random.normal(jax.random.key(9), (B, S, D))
    states = tuple(jnp.full((B,), 0.1 * (idx + 1)) for idx in range(L))
    resets = jnp.zeros((B, S), bool).at[1, 2].set(True)
    return blocks, stacked, x, states, resets


def _reference(blocks, x, states, resets):
    outs, new_states = [], []
    for block, state in zip(blocks, states):
        x, state = block(x, state, return_state=True, resets=resets)
        outs.append(x)
        new_states.append(state)
    return x, new_states, outs


@pytest.mark.parametrize("layout", ["per_block", "stacked"])
@pytest.mark.parametrize("scan,remat_policy", [(False, None), (True, None), (False, "full"), (True, "dots")])
def test_run_stack_matches_calling_the_blocks(case, layout, scan, remat_policy):
    blocks, stacked, x, states, resets = case
    ref_x, ref_states, ref_outs = _reference(blocks, x, states, resets)
    y, new_states, outs = nn.run_stack(
        blocks if layout == "per_block" else stacked, x, states, resets=resets, return_state=True, scan=scan,
        remat_policy=remat_policy, collect=True,
    )  # fmt: skip
    # float32, |values| < 10: the scan body compiles apart from the loop; a few roundings (ulp ~1e-6)
    np.testing.assert_allclose(y, ref_x, rtol=0, atol=1e-5)
    assert len(new_states) == len(outs) == L
    for got, want in zip(new_states + outs, tuple(ref_states) + tuple(ref_outs)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert float(jnp.abs(y[1, 2]).max()) == 0.0  # the reset reached every block


def test_run_stack_without_states_or_collection(case):
    blocks, stacked, x, _, _ = case
    ref_x = _reference(blocks, x, [None] * L, None)[0]
    for layout in (blocks, stacked):
        y, new_states, outs = nn.run_stack(layout, x, scan=True)
        assert new_states is None and outs is None
        np.testing.assert_allclose(y, ref_x, rtol=0, atol=1e-5)


def test_run_stack_remat_gradients_match(case):
    blocks, stacked, x, states, _ = case
    params = nnx.split(stacked)

    def loss(p, x, remat_policy):
        y = nn.run_stack(nnx.merge(params[0], p), x, states, scan=True, remat_policy=remat_policy)[0]
        return jnp.sum(y**2)

    plain = jax.grad(loss, argnums=(0, 1))(params[1], x, None)
    rematted = jax.grad(loss, argnums=(0, 1))(params[1], x, "full")
    for a, b in zip(jax.tree.leaves(rematted), jax.tree.leaves(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-5)


def test_run_stack_names_a_wrong_number_of_states(case):
    blocks, _, x, states, _ = case
    with pytest.raises(ValueError, match=r"states must have one entry per block \(3\), got 2"):
        nn.run_stack(blocks, x, states[:2])
