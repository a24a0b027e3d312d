"""MFU's FLOP count (``train.flops.program_flops``, ``train.step.model_flops``): every matmul as often
as it runs, remat's recomputation left out; the trainer divides it by the number of devices.

The bug this reproduces: the trainer took XLA's cost analysis, which counts a loop body once, so a model
with ``scan_blocks: true`` (every pretraining preset) was reported with a fraction of its FLOPs (the 125M
preset's step on an H200: 1.19e12 instead of 3.74e13, MFU 0.16% instead of 5.0%). Before that, MFU
divided by every device's peak instead of one's (``device_count`` times too low).
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from xlstm_jax.ops import mlstm_chunkwise, rare_branch
from xlstm_jax.ops._mlstm_chunkwise import _run
from xlstm_jax.train.config import load_config
from xlstm_jax.train.flops import program_flops
from xlstm_jax.train.models import build_model, model_config
from xlstm_jax.train.step import model_flops


def _flops(fn, *args) -> float:
    return program_flops(jax.jit(fn).trace(*args).jaxpr)


def test_loops_count_every_iteration_and_grad_three_matmuls():
    w, xs = jnp.ones((8, 8)), jnp.ones((7, 4, 8))
    run = lambda w, xs: jax.lax.scan(lambda c, x: (c @ w + x, None), xs[0], xs)[0]
    assert _flops(run, w, xs) == 7 * 2 * 4 * 8 * 8
    assert _flops(jax.grad(lambda w: run(w, xs).sum()), w) == 3 * 7 * 2 * 4 * 8 * 8  # fwd, d carry, d w
    branches = lambda p, x: jax.lax.cond(p, lambda x: x @ x @ x, lambda x: x, x)
    assert _flops(branches, True, jnp.ones((4, 4))) == 2 * 2 * 4**3  # the dearer branch


def test_rare_branches_are_left_out():
    """A cond branch marked ``rare_branch`` (taken only on exceptional inputs) is not counted: the
    chunkwise mLSTM, whose guarded pass is such a branch, counts as one pass, forward and gradient."""
    rare = lambda p, x: jax.lax.cond(p, rare_branch(lambda x: x @ x @ x), lambda x: x @ x, x)
    assert _flops(rare, True, jnp.ones((4, 4))) == 2 * 4**3  # the usual branch, though the rare one costs more
    q, k, v = (jax.random.normal(jax.random.key(j), (1, 2, 40, 8)) for j in range(3))
    i, f = jax.random.normal(jax.random.key(3), (2, 1, 2, 40))
    state = (jnp.zeros((1, 2, 8, 8)), jnp.zeros((1, 2, 8)), jnp.zeros((1, 2)))
    once = partial(_run, chunk_size=16, eps=1e-6, guard=True)  # one guarded pass, no cond
    chunkwise = lambda *a: mlstm_chunkwise(*a, chunk_size=16)[0]
    assert _flops(chunkwise, q, k, v, i, f) == _flops(lambda *a: once(*a, *state)[0], q, k, v, i, f) > 0
    grad = lambda fn: jax.grad(lambda *a: jnp.sum(fn(*a) ** 2), argnums=(0, 1, 2))
    assert _flops(grad(chunkwise), q, k, v, i, f) == _flops(grad(lambda *a: once(*a, *state)[0]), q, k, v, i, f)


def test_convolutions_count_their_window():
    x, k = jnp.ones((2, 10, 6)), jnp.ones((3, 1, 6))  # depthwise causal conv: (B, S, C), window 3
    conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1,), [(2, 0)], dimension_numbers=("NWC", "WIO", "NWC"),
                                                     feature_group_count=6)  # fmt: skip
    assert _flops(conv, x, k) == 2 * (2 * 10 * 6) * 3


def test_shard_map_bodies_count_once_per_device():
    mesh = jax.make_mesh((1,), ("x",))
    x = jax.device_put(jnp.ones((4, 3)), NamedSharding(mesh, P("x")))
    mapped = jax.shard_map(lambda a: a @ a.T, mesh=mesh, in_specs=P("x"), out_specs=P("x"))
    assert _flops(mapped, x) == 2 * 4 * 4 * 3  # one device's (4, 3) block, on the mesh's one device


def _small_model(scan_blocks: bool, remat: bool = False):
    """(graphdef, params, rest, batch) of a small xLSTM[7:1] (8 blocks, a run of 6 mLSTM blocks)."""
    overrides = ["model.embedding_dim=64", "model.num_blocks=8", "model.slstm_at=[1]", "model.vocab_size=128",
                 f"model.scan_blocks={str(scan_blocks).lower()}", "model.chunk_size=16"]  # fmt: skip
    cfg = load_config("pretrain_xlstm71_125m", overrides)
    mc = model_config(cfg["model"], vocab_size=128, dtype="float32", param_dtype="float32", remat=remat)
    graphdef, params, rest = nnx.split(build_model(mc, 0), nnx.Param, ...)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 128, (2, 64)), jnp.int32)
    batch = {"inputs": tokens, "targets": tokens, "loss_mask": jnp.ones((2, 64)), "segment_ids": jnp.ones_like(tokens)}
    return graphdef, params, rest, batch


def _grad_flops(graphdef, params, rest, batch) -> tuple[float, float]:
    """(matmul FLOPs of the gradient program, XLA's cost-analysis FLOPs of the same)."""
    grad = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(batch["inputs"]).astype(jnp.float32)))
    traced = jax.jit(grad).trace(params)
    cost = traced.lower().compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return program_flops(traced.jaxpr), float(cost["flops"])


def test_scanned_blocks_are_counted_in_full():
    scanned, xla_scanned = _grad_flops(*_small_model(True))
    unscanned, _ = _grad_flops(*_small_model(False))
    assert scanned == unscanned  # the same matmuls whether the blocks are a loop or not
    assert xla_scanned < 0.6 * scanned, (xla_scanned, scanned)  # what the trainer reported before


def test_model_flops_leave_out_remat_recomputation():
    plain, remat = _small_model(True), _small_model(True, remat=True)
    assert model_flops(*_rest_last(plain)) == model_flops(*_rest_last(remat))
    assert _grad_flops(*remat)[0] > _grad_flops(*plain)[0]  # what remat executes beyond the model's FLOPs
    forward = jax.jit(lambda p: nnx.merge(plain[0], p, plain[2])(plain[3]["inputs"])).trace(plain[1])
    assert model_flops(*_rest_last(plain)) >= 3 * program_flops(forward.jaxpr)  # the loss adds no matmul


def _rest_last(model):
    graphdef, params, rest, batch = model
    return graphdef, rest, params, batch
