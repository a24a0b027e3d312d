"""Pure-JAX xLSTM cells: jit/vmap/grad-able functions with no Flax types.

mLSTM forms (same contract as the official ``mlstm_kernels``):
  ``mlstm_parallel``   quadratic, stabilized; reference for short sequences.
  ``mlstm_chunkwise``  linear in S, custom VJP with recomputation; the training form.
  ``mlstm_recurrent``  ``lax.scan`` of ``mlstm_step``; the slow twin.
  ``mlstm_step``       one token, for generation.
sLSTM:
  ``slstm_scan``       ``lax.scan`` of ``slstm_step`` over a sequence.
  ``slstm_step``       one token.
"""

from ._mlstm_chunkwise import mlstm_chunkwise
from ._mlstm_parallel import mlstm_parallel
from ._mlstm_recurrent import mlstm_recurrent, mlstm_step
from ._slstm import slstm_scan, slstm_step
from ._states import MLSTMState, SLSTMState

__all__ = [
    "MLSTMState",
    "SLSTMState",
    "mlstm_chunkwise",
    "mlstm_parallel",
    "mlstm_recurrent",
    "mlstm_step",
    "slstm_scan",
    "slstm_step",
]
