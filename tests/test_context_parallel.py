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

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = """
import numpy as np, jax, jax.numpy as jnp
from jax.sharding import AxisType, PartitionSpec as P
from helpers import assert_close, cast, mlstm_inputs, slstm_inputs, slstm_state
from xlstm_jax import ops
assert jax.device_count() == 8, jax.devices()
rng = np.random.default_rng(0)


def check_grads(ref, sharded, args, name):
    # h, c, n, m and every gradient within 1e-5 * max|ref| (float32).
    out_ref, out = ref(*args), jax.jit(sharded)(*args)
    for idx, (a, b) in enumerate(zip(jax.tree.leaves(out), jax.tree.leaves(out_ref))):
        assert_close(a, b, 1e-5, f"{name} output {idx}")
    w = jnp.asarray(rng.normal(size=out_ref[0].shape), jnp.float32)
    def loss(fn):
        def value(*a):
            h, state = fn(*a)
            return jnp.sum(h * w) + sum(jnp.sum(jnp.sin(x)) for x in state)
        return value
    g_ref = jax.grad(loss(ref), argnums=tuple(range(len(args))))(*args)
    g = jax.jit(jax.grad(loss(sharded), argnums=tuple(range(len(args)))))(*args)
    for idx, (a, b) in enumerate(zip(jax.tree.leaves(g), jax.tree.leaves(g_ref))):
        assert_close(a, b, 1e-5, f"{name} gradient {idx}")


for devices, s_loc, vma in ((4, 6, True), (8, 5, False)):
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

    for nh in (devices, 3):  # heads divisible by the axis (all_to_all), and not (gathered sequence)
        g, r, b = cast(slstm_inputs(nh, b=2, s=s, nh=nh, dh=4), jnp.float32)
        st = cast(slstm_state(nh, b=2, nh=nh, dh=4), jnp.float32)
        resets = np.zeros((2, s), bool)
        resets[0, [s_loc, s_loc + 2]] = True
        resets[1, 1] = True
        ref = lambda g, r, b, st: ops.slstm_scan(g, r, b, initial_state=st, resets=resets)
        run = jax.shard_map(
            lambda g, r, b, st, res: ops.slstm_scan(g, r, b, initial_state=st, resets=res, context_axis="ctx"),
            mesh=mesh, in_specs=(P("data", "ctx"), P(), P(), P("data"), P("data", "ctx")),
            out_specs=(P("data", "ctx"), P("data")), check_vma=False)  # see the test's docstring
        check_grads(ref, lambda g, r, b, st: run(g, r, b, st, jnp.asarray(resets)), (g, r, b, st),
                    f"sLSTM context={devices} heads={nh}")
print("CONTEXT-OK")
"""


def _run(script: str) -> None:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0 and "CONTEXT-OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_cells_with_the_sequence_split_reproduce_the_unsharded_cells():
    """mLSTM chunkwise (context 4 with check_vma, context 8 without; an initial state; resets on a
    shard's first token and inside shards) and sLSTM scan (heads split by all_to_all, and 3 heads that
    do not split: gathered sequence; check_vma=False, as the dispatch runs it: slstm_scan's custom
    backward predates varying-type checks and fails them on a batch-split mesh with or without context
    parallelism): h, the final state and the gradients of every input and of the
    initial state within 1e-5 * max|ref| of the unsharded call, on a (data, ctx) mesh of 8 devices."""
    _run(_SCRIPT)
