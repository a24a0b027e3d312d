"""Pure-JAX xLSTM cells: jit/vmap/grad-able functions with no Flax types.

mLSTM forms (same contract as the official ``mlstm_kernels``):
  ``mlstm_parallel``   quadratic, stabilized; reference for short sequences.
  ``mlstm_chunkwise``  linear in S, custom VJP with recomputation; the training form.
  ``mlstm_recurrent``  ``lax.scan`` of ``mlstm_step``; the slow twin.
  ``mlstm_step``       one token, for generation.
sLSTM:
  ``slstm_scan``       ``lax.scan`` of ``slstm_step`` over a sequence.
  ``slstm_step``       one token.

Context parallelism: ``mlstm_chunkwise`` and ``slstm_scan`` take ``context_axis``, the mesh axis a
sequence is split over inside ``jax.shard_map`` (``ops.context_parallel``, docs/design.md §Context
parallelism).

Transformations: every op works under ``jax.jit``, ``jax.vmap`` (over any leading axis)
and ``jax.grad`` / ``jax.vjp``. The settings ``chunk_size`` and ``eps`` are static:
``jax.jit(mlstm_chunkwise, static_argnames=("chunk_size", "eps"))`` or
``jax.jit(functools.partial(mlstm_chunkwise, chunk_size=64))``; a traced setting raises a
``TypeError`` that says this. ``mlstm_chunkwise`` and ``slstm_scan`` have hand-written
reverse-mode gradients only: ``jax.jvp`` / ``jax.jacfwd`` through them raise a ``TypeError``
naming the alternatives (``jax.jacrev``, or ``mlstm_recurrent`` / ``mlstm_parallel`` /
a scan of ``slstm_step``, which support forward mode). Inside an outer ``jax.jit`` that
error is JAX's own "can't apply forward-mode autodiff (jvp) to a custom_vjp function".

Non-finite inputs: a NaN or inf in k or v at step s reaches the outputs from s on and
none before, in every mLSTM form (as in the recurrent definition). ``mlstm_chunkwise`` handles them
in a ``lax.cond`` branch that runs only when they occur, traced under the name scope ``RARE_BRANCH``
(``rare_branch``), which FLOP counts (``xlstm_jax.train.flops``) leave out.
"""

from ._mlstm_chunkwise import mlstm_chunkwise
from ._mlstm_parallel import mlstm_parallel
from ._mlstm_recurrent import mlstm_recurrent, mlstm_step
from ._slstm import slstm_scan, slstm_step
from ._states import MLSTMState, SLSTMState
from ._transforms import RARE_BRANCH, rare_branch

__all__ = [
    "MLSTMState",
    "RARE_BRANCH",
    "SLSTMState",
    "mlstm_chunkwise",
    "mlstm_parallel",
    "mlstm_recurrent",
    "mlstm_step",
    "rare_branch",
    "slstm_scan",
    "slstm_step",
]
