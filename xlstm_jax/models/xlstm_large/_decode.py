"""The decode form of ``xLSTMLarge``: the same function, parameters laid out for one token per call.

At batch 1 a decode step is a chain of matrix-vector products, so its time is the time to read
every weight once. The training layout reads more than that on XLA's CPU backend: a ``lax.scan``
over the stacked blocks copies each block's weights out of the stack (a dynamic slice per matrix,
every step) before the product reads the copy, and the six q/k/v/o/i/f and two FFN up-projections
are separate products of the same normed input. ``xLSTMLargeDecoder`` holds

* one module per block (its own arrays, no slicing in the step; the blocks run as an unrolled
  loop, ``scan_blocks=False``), and
* each block in weight_mode "fused": q/k/v/o in one kernel (``qkv_opreact``), the i/f gates in
  another (``ifgate_preact``, kept apart: gates compute in float32 whatever the compute dtype),
  the SwiGLU up-projections in a third (``proj_up_gate_z``).

``decode_form(model)`` builds it from a model's parameters: a copy (the memory of the parameters
once more, for as long as it is held); the model's own parameters and checkpoints are unchanged.
Logits agree with the model's to float rounding (the fused products sum in another order).
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from ._layers import fuse_block_params, mLSTMBlock
from ._model import xLSTMLarge


class xLSTMLargeDecoder(xLSTMLarge):  # noqa: N801 (the official naming)
    """``xLSTMLarge`` whose blocks are a list of ``num_blocks`` fused modules (see the module doc).

    Its config is the model's with ``weight_mode="fused"``, ``scan_blocks=False``, ``remat=False``.
    Build it with ``model.decode_form()``; it runs any input the model runs.
    """

    def _init_blocks(self, rngs: nnx.Rngs) -> nnx.List:
        return nnx.List([mLSTMBlock(self.config.block, rngs=rngs) for _ in range(self.config.num_blocks)])

    def decode_form(self) -> xLSTMLargeDecoder:
        """Itself: already laid out for decoding."""
        return self


def decode_form(model: xLSTMLarge, *, fuse: bool = True) -> xLSTMLargeDecoder:
    """An ``xLSTMLargeDecoder`` holding ``model``'s parameters: sliced per block, fused (new arrays).

    ``fuse=False`` keeps the model's weight_mode (only the per-block slicing; for measurements).
    Works eagerly and under ``jax.jit`` (where the copy is made once per call, before any loop).
    """
    mode = "fused" if fuse else model.config.weight_mode
    config = dataclasses.replace(model.config, weight_mode=mode, scan_blocks=False, remat=False)
    # jax.eval_shape, not nnx.eval_shape: that one would turn the logical names into shardings of the current mesh
    graphdef, state = nnx.split(jax.eval_shape(lambda: xLSTMLargeDecoder(config, rngs=nnx.Rngs(0))))
    params = nnx.to_pure_dict(nnx.state(model))
    stacked = params.pop("blocks")
    convert = fuse_block_params if model.config.weight_mode != mode else dict
    params["blocks"] = {
        idx: convert(jax.tree.map(lambda w, idx=idx: w[idx], stacked)) for idx in range(config.num_blocks)
    }
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)
