"""What a chunkwise mLSTM kernel shares with the XLA form, so that it is the same function.

* ``chunkwise_with(core, q, k, v, i, f, ...)``: ``mlstm_chunkwise`` with the pass over padded chunks
  replaced by ``core`` (input checks, padding and the guard against a non-finite k or v stay);
* ``Residuals`` and ``backward``: the analytic backward of the XLA form, for a kernel that writes
  the same residuals (the CPU kernel, ``pallas_kernels/mlstm/cpu.py``);
* ``reverse_mode_only``: the XLA form's advice in place of JAX's error when forward-mode autodiff
  meets a kernel's ``custom_vjp``.
"""

from __future__ import annotations

from ._chunkwise_bwd import backward
from ._chunkwise_fwd import Residuals
from ._mlstm_chunkwise import chunkwise_with
from ._transforms import reverse_mode_only

__all__ = ["Residuals", "backward", "chunkwise_with", "reverse_mode_only"]
