"""Context parallelism (docs/design.md §Context parallelism): the sequence split in order over a mesh
axis inside ``jax.shard_map`` reproduces the unsharded cells, forward and every gradient.

One subprocess with 8 fake CPU devices runs all cases (the device count is fixed when JAX starts).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import xla_flags

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = """
import numpy as np, jax, jax.numpy as jnp
from jax.sharding import AxisType, PartitionSpec as P
from helpers import assert_close, cast, mlstm_inputs, slstm_inputs, slstm_state
from xlstm_jax import ops
import os
assert jax.device_count() == 8, jax.devices()
FULL = os.environ.get("CONTEXT_FULL") == "1"  # the slow test: context 8, heads that do not split, kernels
rng = np.random.default_rng(0)


def check_grads(ref, sharded, args, name):
    # h, c, n, m and every gradient within 1e-5 * max|ref| (float32). The references are jitted too: one
    # compile each instead of one per primitive.
    out_ref, out = jax.jit(ref)(*args), jax.jit(sharded)(*args)
    for idx, (a, b) in enumerate(zip(jax.tree.leaves(out), jax.tree.leaves(out_ref))):
        assert_close(a, b, 1e-5, f"{name} output {idx}")
    w = jnp.asarray(rng.normal(size=out_ref[0].shape), jnp.float32)
    def loss(fn):
        def value(*a):
            h, state = fn(*a)
            return jnp.sum(h * w) + sum(jnp.sum(jnp.sin(x)) for x in state)
        return value
    g_ref = jax.jit(jax.grad(loss(ref), argnums=tuple(range(len(args)))))(*args)
    g = jax.jit(jax.grad(loss(sharded), argnums=tuple(range(len(args)))))(*args)
    for idx, (a, b) in enumerate(zip(jax.tree.leaves(g), jax.tree.leaves(g_ref))):
        assert_close(a, b, 1e-5, f"{name} gradient {idx}")


# Every op inside a user's shard_map with JAX's default check_vma=True and only the batch split (no
# context axis): a zero initial state and replicated weights are invariant while the data vary, which
# a scan carry and a custom backward must not trip over.
mesh = jax.make_mesh((2, 4), ("data", "ctx"), axis_types=(AxisType.Auto,) * 2)
q, k, v, i, f = cast(mlstm_inputs(11, b=2, nh=2, s=8, dhqk=4, dhv=4), jnp.float32)
g, r, b = cast(slstm_inputs(12, b=2, s=8, nh=2, dh=4), jnp.float32)
for name, op, args, specs in (
    ("mlstm_chunkwise", lambda q, k, v, i, f: ops.mlstm_chunkwise(q, k, v, i, f, chunk_size=4), (q, k, v, i, f),
     (P("data"),) * 5),
    ("mlstm_recurrent", ops.mlstm_recurrent, (q, k, v, i, f), (P("data"),) * 5),
    ("slstm_scan", ops.slstm_scan, (g, r, b), (P("data"), P(), P())),
):
    run = jax.shard_map(op, mesh=mesh, in_specs=specs, out_specs=(P("data"), P("data")), check_vma=True)
    check_grads(op, run, args, f"{name} under check_vma=True")


for devices, s_loc, vma in ((4, 6, True), (8, 5, False))[: 2 if FULL else 1]:
    mesh = jax.make_mesh((8 // devices, devices), ("data", "ctx"), axis_types=(AxisType.Auto,) * 2)
    s = devices * s_loc
    q, k, v, i, f = cast(mlstm_inputs(devices, b=2, nh=2, s=s, dhqk=8, dhv=12), jnp.float32)
    # Resets: on a shard's first token, inside a shard, and two in one shard.
    f = f.at[0, :, s_loc].set(-jnp.inf).at[1, :, s_loc + 2].set(-jnp.inf).at[:, 1, [1, 3]].set(-jnp.inf)
    state = ops.MLSTMState(*(jnp.asarray(rng.normal(size=shape), jnp.float32)
                             for shape in ((2, 2, 8, 12), (2, 2, 8), (2, 2))))
    seq, rep = P("data", None, "ctx"), P("data")
    ref = lambda q, k, v, i, f, st: ops.mlstm_chunkwise(q, k, v, i, f, chunk_size=4, initial_state=st)
    sharded = jax.shard_map(
        lambda q, k, v, i, f, st: ops.mlstm_chunkwise(q, k, v, i, f, chunk_size=4, initial_state=st,
                                                      context_axis="ctx"),
        mesh=mesh, in_specs=(seq,) * 5 + (rep,), out_specs=(seq, rep), check_vma=vma)
    check_grads(ref, sharded, (q, k, v, i, f, state), f"mLSTM context={devices}")

    for nh in (devices, 3)[: 2 if FULL else 1]:  # heads divisible by the axis (all_to_all), and not (gathered sequence)
        g, r, b = cast(slstm_inputs(nh, b=2, s=s, nh=nh, dh=4), jnp.float32)
        st = cast(slstm_state(nh, b=2, nh=nh, dh=4), jnp.float32)
        resets = np.zeros((2, s), bool)
        resets[0, [s_loc, s_loc + 2]] = True
        resets[1, 1] = True
        ref = lambda g, r, b, st: ops.slstm_scan(g, r, b, initial_state=st, resets=resets)
        run = jax.shard_map(
            lambda g, r, b, st, res: ops.slstm_scan(g, r, b, initial_state=st, resets=res, context_axis="ctx"),
            mesh=mesh, in_specs=(P("data", "ctx"), P(), P(), P("data"), P("data", "ctx")),
            out_specs=(P("data", "ctx"), P("data")), check_vma=vma)
        check_grads(ref, lambda g, r, b, st: run(g, r, b, st, jnp.asarray(resets)), (g, r, b, st),
                    f"sLSTM context={devices} heads={nh}")
    # Causal conv: the previous shard's last K - 1 inputs by ppermute; resets inside, at and just before
    # a shard boundary; an initial state for the first shard.
    from flax import nnx
    from xlstm_jax import nn as xnn
    conv = xnn.CausalConv1d(3, 4, init=lambda key, shape, dtype: jax.random.normal(key, shape, dtype),
                            rngs=nnx.Rngs(0))
    x = jnp.asarray(rng.normal(size=(2, s, 3)), jnp.float32)
    conv_state = jnp.asarray(rng.normal(size=(2, 3, 3)), jnp.float32)
    resets = np.zeros((2, s), bool)
    resets[0, [s_loc - 1, 2 * s_loc]] = True
    resets[1, s_loc + 1] = True
    ref = conv(x, conv_state, jnp.asarray(resets))
    out = jax.jit(jax.shard_map(lambda x, st, res: conv(x, st, res, context_axis="ctx"), mesh=mesh,
                                in_specs=(P("data", "ctx"), P("data"), P("data", "ctx")),
                                out_specs=(P("data", "ctx"), P("data")), check_vma=vma))(x, conv_state, resets)
    for a, b in zip(out, ref):
        assert_close(a, b, 1e-6, f"conv context={devices}")
# The dispatch point: axis rule ``length`` -> ctx splits the sequence for every backend (the XLA
# forms and a Pallas kernel, in interpret mode here), under the mesh's Auto axes as the trainer runs.
from xlstm_jax import backends
mesh = jax.make_mesh((2, 4), ("data", "ctx"), axis_types=(AxisType.Auto,) * 2)
q, k, v, i, f = cast(mlstm_inputs(7, b=2, nh=2, s=32, dhqk=16, dhv=16), jnp.float32)
f = f.at[0, :, 8].set(-jnp.inf).at[1, :, 13].set(-jnp.inf)
g, r, b = cast(slstm_inputs(8, b=2, s=32, nh=4, dh=16), jnp.float32)
resets = jnp.zeros((2, 32), bool).at[0, 8].set(True).at[1, 13].set(True)
ref_m = jax.jit(lambda *a: ops.mlstm_chunkwise(*a, chunk_size=8))(q, k, v, i, f)
ref_s = jax.jit(lambda *a: ops.slstm_scan(*a, resets=resets))(g, r, b)
mloss = lambda name: lambda q, i: jnp.sum(jnp.sin(backends.mlstm(q, k, v, i, f, backend=name, chunk_size=8)))
sloss = lambda name: lambda g, r: jnp.sum(jnp.sin(backends.slstm(g, r, b, backend=name, resets=resets)[0]))
ref_dm = jax.jit(jax.grad(mloss("chunkwise"), argnums=(0, 1)))(q, i)
ref_ds = jax.jit(jax.grad(sloss("scan"), argnums=(0, 1)))(g, r)
with jax.set_mesh(mesh), backends.axis_rules({"batch": "data", "length": "ctx"}):
    for name in ("chunkwise", "parallel", "pallas_tpu") if FULL else ("chunkwise",):
        fn = jax.jit(lambda *a: backends.mlstm(*a, backend=name, chunk_size=8, return_state=True))
        assert "all-gather" in fn.lower(q, k, v, i, f).compile().as_text(), name
        h, st = fn(q, k, v, i, f)
        assert_close(h, ref_m[0], 1e-5, f"dispatch {name} h")
        for a, b_ in zip(st, ref_m[1]):
            assert_close(a, b_, 1e-5, f"dispatch {name} state")
        for a, b_ in zip(jax.jit(jax.grad(mloss(name), argnums=(0, 1)))(q, i), ref_dm):
            assert_close(a, b_, 1e-5, f"dispatch {name} gradient")
    for name in ("scan", "pallas_gpu") if FULL else ("scan",):
        h, st = jax.jit(lambda *a: backends.slstm(*a, backend=name, resets=resets))(g, r, b)
        assert_close(h, ref_s[0], 1e-5, f"dispatch {name} h")
        for a, b_ in zip(st, ref_s[1]):
            assert_close(a, b_, 1e-5, f"dispatch {name} state")
        for a, b_ in zip(jax.jit(jax.grad(sloss(name), argnums=(0, 1)))(g, r), ref_ds):
            assert_close(a, b_, 1e-5, f"dispatch {name} gradient")
print("CONTEXT-OK")
"""


def _run(script: str, full: bool) -> None:
    env = {**os.environ, "XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=8"), "JAX_PLATFORMS": "cpu"}
    env["CONTEXT_FULL"] = "1" if full else "0"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0 and "CONTEXT-OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_cells_with_the_sequence_split_reproduce_the_unsharded_cells():
    """On a (data=2, ctx=4) mesh of 8 fake devices: ``mlstm_chunkwise`` (check_vma=True; an initial
    state; resets on a shard's first token and inside shards), ``slstm_scan`` (heads split by
    all_to_all; resets), the causal conv halo (resets next to shard boundaries, an initial state) and
    the dispatch point (``backends.mlstm`` / ``slstm`` with axis rule ``length`` -> ctx, XLA forms):
    h, the final state and the gradients of every input and of the initial state within
    1e-5 * max|ref| of the unsharded call. The ops run under ``check_vma=True`` (JAX's default) here and
    with ``check_vma=False`` in the slow test's context-8 case."""
    _run(_SCRIPT, full=False)


@pytest.mark.slow
def test_context_8_heads_that_do_not_split_and_the_kernels():
    """The above plus: context 8 (data=1, check_vma=False), 3 sLSTM heads over 4 devices (every
    device gathers the sequence), and the dispatch of the parallel form and the Pallas kernels
    (interpret mode): the states-only pass and combine, then the kernel from that initial state."""
    _run(_SCRIPT, full=True)


_MODEL = """
import jax, jax.numpy as jnp
from flax import nnx
from jax.sharding import AxisType
from helpers import assert_close, perturbed
from xlstm_jax import backends
from xlstm_jax.models.xlstm_lm import mLSTMLayerConfig, sLSTMLayerConfig, xLSTMLMConfig, xLSTMLMModel
from xlstm_jax.models.xlstm_large import xLSTMLarge, xLSTMLargeConfig
lm = xLSTMLMModel(xLSTMLMConfig(vocab_size=50, embedding_dim=32, num_blocks=2, slstm_at=(1,), chunk_size=4,
                                mlstm=mLSTMLayerConfig(num_heads=2), slstm=sLSTMLayerConfig(num_heads=4)),
                  rngs=nnx.Rngs(0))
large = xLSTMLarge(xLSTMLargeConfig(embedding_dim=32, num_heads=2, num_blocks=2, vocab_size=50, chunk_size=4),
                   rngs=nnx.Rngs(0))
ids = jax.random.randint(jax.random.key(2), (2, 32), 0, 50)
# Documents: starting inside shards (13, 19) and on a shard boundary (8).
seg = jnp.zeros((2, 32), jnp.int32).at[0, 8:].set(1).at[0, 13:].set(2).at[1, 19:].set(1)
for name, model in (("xLSTMLMModel", lm), ("xLSTMLarge", large)):
    graphdef, params = nnx.split(perturbed(model, seed=1))
    def loss(params):
        logits = nnx.merge(graphdef, params)(ids, segment_ids=seg)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits
    (ref_loss, ref_logits), ref_grads = jax.value_and_grad(loss, has_aux=True)(params)
    for shape in ((2, 4), (1, 8)):
        mesh = jax.make_mesh(shape, ("data", "ctx"), axis_types=(AxisType.Auto,) * 2)
        with jax.set_mesh(mesh), backends.axis_rules({"batch": "data", "length": "ctx"}):
            (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        assert_close(logits, ref_logits, 1e-5, f"{name} logits {shape}")
        assert_close(value, ref_loss, 1e-5, f"{name} loss {shape}")
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
            assert_close(a, b, 1e-5, f"{name} gradient {shape}")
print("CONTEXT-OK")
"""


@pytest.mark.slow
def test_models_with_the_sequence_split_reproduce_one_device():
    """xLSTMLMModel (mLSTM with causal conv, sLSTM) and xLSTMLarge, packed documents starting inside
    shards and on a shard boundary, under ``jax.jit`` on (data=2, ctx=4) and (ctx=8) meshes with axis rule ``length``
    -> ctx: logits, loss and every parameter gradient within 1e-5 of the one-device run (the cells
    go through the dispatch point's context path; XLA partitions the rest, conv halo included)."""
    _run(_MODEL, full=False)
