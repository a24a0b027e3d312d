"""The typed output of both language models' ``forward`` and ``backbone``."""

from __future__ import annotations

from typing import Any

import jax
from flax import struct


@struct.dataclass
class xLSTMOutput:  # noqa: N801 (the models' naming)
    """What ``model.forward`` and ``model.backbone`` return; a pytree (returnable from ``jax.jit``).

    Attributes:
      logits: (B, S, V) float32; None from ``backbone``.
      last_hidden_state: (B, S, D), the features the head reads (after the final norm, if any).
      state: the recurrent state after the last token (``return_state=True``), else None.
      hidden_states: with ``output_hidden_states=True``, ``num_blocks + 1`` residual streams (B, S, D):
        the input of each block, then the output of the last block (before the final norm); else None.
    """

    logits: jax.Array | None = None
    last_hidden_state: jax.Array | None = None
    state: Any = None
    hidden_states: tuple[jax.Array, ...] | None = None
