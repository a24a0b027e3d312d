"""benchmarks/dot_bound.py: the dots it reads from compiled CPU programs, and how often each runs.

Its bound is only as good as these counts: every dot of the program, each weighted by its loop's
trip count, a ``conditional`` by the branch whose dots cost least. Checked on small programs whose
counts are known by hand, and on the chunkwise mLSTM forward against its analytic FLOP count.
"""

from __future__ import annotations

import dot_bound
import jax
import jax.numpy as jnp
import pytest
from bench_ops import flops_chunkwise_fwd

from xlstm_jax import ops


def _dots(fn, *args):
    dots, graph, odd = dot_bound.program_dots(jax.jit(fn).lower(*args).compile().as_text())
    return {d["key"]: d for d in dots}, graph, odd


def _per_call(graph, seconds, per_byte=0.0):
    return dot_bound.per_call(graph, {**seconds, dot_bound.OTHER_BYTES: per_byte})


def test_loop_dots_are_weighted_by_the_trip_count():
    def f(x, w, y):
        x = jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=7)[0]
        return x @ y  # once, after the loop

    dots, graph, odd = _dots(f, jnp.ones((64, 32)), jnp.ones((32, 32)), jnp.ones((32, 8)))
    runs = _per_call(graph, dict.fromkeys(dots, 1.0))
    assert odd == 0
    by_flop = sorted((d["flop"], runs[k]) for k, d in dots.items())
    assert by_flop == [(2 * 64 * 32 * 8, 1), (2 * 64 * 32 * 32, 7)]


def test_other_instructions_count_their_bytes():
    x = jnp.ones((256, 128))
    _, graph, _ = _dots(lambda x: jnp.tanh(x) * 2.0, x)  # one fusion: reads x, writes its output
    assert _per_call(graph, {})[dot_bound.OTHER_BYTES] == 2 * x.nbytes

    def scan(c, xs):  # per step: a slice of xs read, a row of the output written in place
        return jax.lax.scan(lambda c, x: (c * x, jnp.exp(c)), c, xs)

    xs = jnp.ones((9, 64))
    dots, graph, _ = _dots(scan, jnp.ones(64), xs)
    assert not dots
    row = 64 * 4
    # 9 steps of at least: read the step's row of xs and the carry, write the carry and the output row
    assert _per_call(graph, {})[dot_bound.OTHER_BYTES] >= 9 * 4 * row
    assert _per_call(graph, {})[dot_bound.OTHER_BYTES] < 9 * xs.nbytes  # not the whole buffer per step


def test_a_conditional_counts_its_cheapest_branch():
    def f(p, a, b):
        small = lambda a, b: (a[:, :8] @ b[:8, :]).sum()
        large = lambda a, b: (a @ b).sum()
        return jax.lax.cond(p, small, large, a, b)

    dots, graph, _ = _dots(f, jnp.bool_(True), jnp.ones((64, 256)), jnp.ones((256, 64)))
    assert sorted(d["flop"] for d in dots.values()) == [2 * 64 * 8 * 64, 2 * 64 * 256 * 64]
    flop = {k: d["flop"] for k, d in dots.items()}
    runs = _per_call(graph, flop)  # time proportional to FLOPs: the small branch is cheaper
    assert {flop[k]: n for k, n in runs.items() if n and k in flop} == {2 * 64 * 8 * 64: 1}
    runs = _per_call(graph, {k: 1.0 / f for k, f in flop.items()})  # and the other way round
    assert {flop[k]: n for k, n in runs.items() if n and k in flop} == {2 * 64 * 256 * 64: 1}


def test_batched_dot_flops_and_dimension_numbers():
    def f(a, b):  # (B, M, K) x (B, N, K) -> (B, M, N), contracting the minor axes
        return jnp.einsum("bmk,bnk->bmn", a, b)

    dots, graph, _ = _dots(f, jnp.ones((3, 16, 24)), jnp.ones((3, 8, 24)))
    (d,) = dots.values()
    assert d["flop"] == 2 * 3 * 16 * 8 * 24
    assert _per_call(graph, {d["key"]: 1.0})[d["key"]] == 1
    (lc, rc, lb, rb) = d["numbers"]
    assert [d["lhs"][i] for i in lc] == [d["rhs"][i] for i in rc] == [24]
    assert [d["lhs"][i] for i in lb] == [d["rhs"][i] for i in rb] == [3]


def test_chunkwise_forward_dots_are_its_analytic_flops():
    # the benchmark's head size: at DH=16, XLA:CPU writes some of the matrix-vector products as reductions
    b, nh, s, d, chunk = 1, 1, 256, 64, 64
    x = jnp.ones((b, nh, s, d))
    g = jnp.ones((b, nh, s))
    fn = lambda q, k, v, i, f: ops.mlstm_chunkwise(q, k, v, i, f, chunk_size=chunk)[0]
    dots, graph, _ = _dots(fn, x, x, x, g, g)
    runs = _per_call(graph, dict.fromkeys(dots, 1.0))
    # every product of the analytic count is a dot here, the normalizer's q.n and row sums included
    assert sum(dots[k]["flop"] * runs[k] for k in dots) == flops_chunkwise_fwd(b, nh, s, d, d, chunk)


@pytest.mark.parametrize("with_dot", [True, False])
def test_timing_loop_computes_the_product(with_dot):
    dot = lambda a, b: a @ b
    a, b = jnp.full((4, 8), 0.5), jnp.full((8, 2), 2.0)
    out = jax.jit(dot_bound._loop(dot, 3, with_dot))(a, b, jnp.zeros((4, 2)))
    assert jnp.array_equal(out, jnp.full((4, 2), 8.0) if with_dot else jnp.zeros((4, 2)))
