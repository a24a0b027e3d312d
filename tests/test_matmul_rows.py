"""``nn.matmul_rows``: a matmul over the last axis as one 2-D dot over the merged leading axes, when
merging them moves no data between devices (``backends.leading_axes_merge_locally``).

Why: XLA:CPU computes the weight gradient of a dot that contracts two axes (B and S) by writing the
output gradient transposed, fused with its producers into a strided copy (``benchmarks/RESULTS.md``,
session 27: 36 ms of a 580 ms training step). The 2-D dot reads it in place.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from xlstm_jax import backends
from xlstm_jax.nn import Linear, matmul_rows, normal


@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 3, 4, 7), (5, 7), (7,)])
def test_values_and_gradients_equal_the_dot(shape):
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x, w = jax.random.normal(kx, shape), jax.random.normal(kw, (7, 6))
    g = jax.random.normal(kg, (*shape[:-1], 6))
    truth = np.einsum("...i,io->...o", np.float64(x), np.float64(w))
    np.testing.assert_allclose(matmul_rows(x, w), truth, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(matmul_rows(x, w), jnp.dot(x, w), rtol=1e-6, atol=1e-6)
    ours = jax.vjp(matmul_rows, x, w)[1](g)
    ref = jax.vjp(jnp.dot, x, w)[1](g)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def _grad_hlo(matmul) -> str:
    """The compiled CPU program of a weight gradient whose output gradient is a sum of five arrays
    (the residual stream's contributions)."""
    b, s, i, o = 4, 32, 48, 32

    def loss(w, h, parts):
        return sum(jnp.sum(jnp.sin(matmul(h, w)) * p) for p in parts)

    args = (jnp.ones((i, o)), jnp.ones((b, s, i)), [jnp.ones((b, s, o))] * 5)
    return jax.jit(jax.grad(loss)).lower(*args).compile().as_text()


def _transposes(hlo: str) -> list[str]:
    return re.findall(r"= f32\[[\d,]+\]\{[\d,]+\} transpose\(", hlo)


def test_the_weight_gradient_reads_the_output_gradient_in_place_on_cpu():
    if jax.default_backend() != "cpu":
        pytest.skip("a property of XLA:CPU's compiled program")
    assert _transposes(_grad_hlo(jnp.dot)), "the 3-D dot's gradient no longer transposes: this test checks nothing"
    assert _transposes(_grad_hlo(matmul_rows)) == []


def _merges(mesh: AbstractMesh, rules=None, sharding=None) -> list[bool]:
    seen = []

    def f(x):
        seen.append(backends.leading_axes_merge_locally(x))
        return x

    x = jax.ShapeDtypeStruct((4, 8, 16), jnp.float32, sharding=sharding)
    with jax.sharding.use_abstract_mesh(mesh), backends.axis_rules(rules or {}):
        jax.jit(f).trace(x)
    return seen


def test_merging_stays_on_each_device():
    auto = AbstractMesh((2, 4), ("data", "ctx"), axis_types=(AxisType.Auto,) * 2)
    assert _merges(auto) == [True]  # the batch split over data: rows stay with their device
    assert _merges(auto, {"batch": "data", "length": "ctx"}) == [False]  # the sequence split over ctx
    one = AbstractMesh((2, 1), ("data", "ctx"), axis_types=(AxisType.Auto,) * 2)
    assert _merges(one, {"length": "ctx"}) == [True]  # an axis of size 1 splits nothing
    explicit = AbstractMesh((2, 4), ("data", "ctx"), axis_types=(AxisType.Explicit,) * 2)
    assert _merges(explicit, sharding=NamedSharding(explicit, P("data", None, None))) == [True]
    assert _merges(explicit, sharding=NamedSharding(explicit, P("data", "ctx", None))) == [False]


def test_linear_keeps_the_3d_dot_when_the_sequence_is_split():
    layer = Linear(16, 8, use_bias=False, kernel_init=normal(0.1), names=(None, None), rngs=nnx.Rngs(0))
    mesh = AbstractMesh((2, 4), ("data", "ctx"), axis_types=(AxisType.Auto,) * 2)
    x = jax.ShapeDtypeStruct((4, 8, 16), jnp.float32)

    def dots(rules):
        with jax.sharding.use_abstract_mesh(mesh), backends.axis_rules(rules):
            jaxpr = jax.make_jaxpr(lambda x: layer(x))(x)  # a new function: no trace cached under other rules
        return [e.invars[0].aval.shape for e in jaxpr.eqns if e.primitive.name == "dot_general"]

    assert dots({}) == [(32, 16)]
    assert dots({"length": "ctx"}) == [(4, 8, 16)]
