"""MFU's FLOP count is per device: XLA's cost analysis of an SPMD program reports one partition.

The trainer divides ``step_flops`` by one device's peak; dividing by the peak of every device (as it
once did) made MFU ``device_count`` times too low on a multi-device run.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers import xla_flags

REPO = Path(__file__).resolve().parents[1]

_PROGRAM = """
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from xlstm_jax.train.metrics import step_flops

mesh = jax.make_mesh((4,), ("data",))
x = jax.ShapeDtypeStruct((256, 128), jnp.float32, sharding=NamedSharding(mesh, P("data", None)))
w = jax.ShapeDtypeStruct((128, 64), jnp.float32, sharding=NamedSharding(mesh, P(None, None)))
one = step_flops(jax.jit(lambda a, b: a @ b).lower(x, w).compile())
print("FLOPS", one, 2 * 256 * 128 * 64)
"""


def test_step_flops_are_one_devices_share():
    env = {**os.environ, "XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=4"), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_PROGRAM)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, total = (float(v) for v in proc.stdout.split("FLOPS")[1].split())
    assert one == total / 4, (one, total)
