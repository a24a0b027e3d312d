"""What a chunkwise mLSTM kernel shares with the XLA form, so that it is the same function.

* ``chunkwise_with(core, q, k, v, i, f, ...)``: ``mlstm_chunkwise`` with the pass over padded chunks
  replaced by ``core`` (input checks, padding and the guard against a non-finite k or v stay);
* ``Residuals``: the XLA form's residuals, for a kernel whose forward writes the same ones (the CPU
  kernel, ``pallas_kernels/mlstm/cpu.py``);
* ``reverse_mode_only`` and ``FORWARD_MODE_ALTERNATIVES``: the XLA form's advice in place of JAX's
  error when forward-mode autodiff meets a kernel's ``custom_vjp``.
"""

from __future__ import annotations

from ._chunkwise_fwd import Residuals
from ._mlstm_chunkwise import _FORWARD_MODE_ALTERNATIVES as FORWARD_MODE_ALTERNATIVES
from ._mlstm_chunkwise import chunkwise_with
from ._transforms import reverse_mode_only

__all__ = ["FORWARD_MODE_ALTERNATIVES", "Residuals", "chunkwise_with", "reverse_mode_only"]
