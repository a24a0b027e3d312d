"""What a TPU compile gets that a CPU run does not (``benchmarks/RESULTS.md``, "The training step's hot
spots in the compiled TPU program"): the headwise q/k/v blocks as block-diagonal dots
(``nn.layers.blockwise``, chosen per lowering platform) and the chunkwise cell's chunk length for
``chunk_size="auto"`` (``backends.chunk_size_for``). On a CPU both stay what they were."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xlstm_jax import backends
from xlstm_jax.nn import layers

SHAPES = [  # (B, H, S, J, DI, DO): heads_major's layout, __call__'s (H = S = 1), groups that do not divide
    (2, 4, 16, 96, 4, 4),
    (3, 1, 1, 12, 4, 4),
    (2, 2, 8, 6, 8, 8),
    (2, 2, 8, 5, 4, 4),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_tiled_blocks_are_the_elementwise_blocks(shape):
    b, h, s, j, di, do = shape
    kx, kw, ky = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (b, h, s, j, di))
    w = jax.random.normal(kw, (h, j, do, di))
    dy = jax.random.normal(ky, (b, h, s, j, do))
    np.testing.assert_allclose(layers._tiled_apply(x, w[:, None]), layers._blockwise_apply(x, w[:, None]), atol=1e-5)
    np.testing.assert_allclose(layers._tiled_dw(dy, x), layers._blockwise_dw(dy, x), rtol=1e-5, atol=1e-4)
    # bfloat16 in, float32 accumulation of the same products: the same bfloat16 result
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    np.testing.assert_array_equal(layers._tiled_apply(xb, wb[:, None]), layers._blockwise_apply(xb, wb[:, None]))
    dyb = dy.astype(jnp.bfloat16)
    dw_b = layers._blockwise_dw(dyb, xb)
    assert dw_b.dtype == jnp.float32  # accumulated in float32, cast to the weight's dtype by the caller
    np.testing.assert_allclose(dw_b, layers._tiled_dw(dyb, xb), rtol=1e-5, atol=1e-4)


def _blockwise_grad_hlo(platform: str) -> str:
    f = jax.jit(lambda x, w: jax.grad(lambda x, w: (layers.blockwise(x, w) ** 2).sum(), argnums=(0, 1))(x, w))
    x, w = jnp.ones((2, 4, 16, 96, 4)), jnp.ones((4, 96, 4, 4))
    return f.trace(x, w).lower(lowering_platforms=(platform,)).as_text()


def test_blockwise_is_elementwise_on_cpu_and_dots_on_tpu():
    # CPU: no dot (forward and dx elementwise, dw a sum of products); TPU: forward, dx and dw are dots.
    assert _blockwise_grad_hlo("cpu").count("stablehlo.dot_general") == 0
    assert _blockwise_grad_hlo("tpu").count("stablehlo.dot_general") == 3


def test_auto_chunk_size_per_platform():
    assert backends.chunk_size_for("auto", "cpu") == 64 == backends.DEFAULT_CHUNK_SIZE
    assert backends.chunk_size_for("auto", "gpu") == 64
    assert backends.chunk_size_for("auto", "tpu") == 256
    assert backends.chunk_size_for(128, "tpu") == 128  # a number is kept on every platform
    assert backends.target_platform() == jax.default_backend() == "cpu"
    assert backends.chunk_size_for("auto") == 64


def test_auto_chunk_size_is_64_on_cpu_bit_for_bit():
    from xlstm_jax.train.models import build_model, model_config

    section = dict(arch="xlstm_lm", embedding_dim=32, num_blocks=2, slstm_at=[], mlstm=dict(num_heads=2))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 200), 0, 64)
    outs = []
    for chunk in ("auto", 64):
        cfg = model_config({**section, "chunk_size": chunk}, vocab_size=64, dtype="float32", param_dtype="float32",
                           remat=False)  # fmt: skip
        assert cfg.chunk_size == chunk
        outs.append(np.asarray(build_model(cfg, 0)(tokens)))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_auto_chunk_size_is_validated():
    from xlstm_jax.train.models import model_config

    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1 or 'auto', got 'big'"):
        model_config({"arch": "xlstm_lm", "chunk_size": "big"}, vocab_size=64, dtype="float32", param_dtype="float32",
                     remat=False)  # fmt: skip


def test_tpu_mesh_traces_for_tpu():
    # An ahead-of-time compile for a TPU topology on this CPU host (benchmarks/pod_compile_report.py)
    # traces under a mesh of TPU devices: "auto" is the TPU's chunk there.
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("libtpu is not installed: no TPU topology")
    from jax.experimental import topologies

    devices = topologies.get_topology_desc(topology_name="v5p:2x2x1", platform="tpu").devices
    mesh = jax.make_mesh((4,), ("data",), devices=devices, axis_types=(jax.sharding.AxisType.Auto,))
    seen = []

    def f(x):
        seen.append((backends.target_platform(), backends.chunk_size_for("auto")))
        return x

    with jax.set_mesh(mesh):
        jax.jit(f).trace(jax.ShapeDtypeStruct((4,), jnp.float32))
    assert seen == [("tpu", 256)]
