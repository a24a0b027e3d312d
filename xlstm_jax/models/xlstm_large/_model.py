"""xLSTM-7B language model (official ``xlstm.xlstm_large.xLSTMLarge``, HF ``xLSTMForCausalLM``).

embedding -> num_blocks x mLSTMBlock -> RMSNorm (``add_out_norm``) -> lm_head -> soft-cap.

The blocks' parameters are stacked along a leading block axis (logical name None),
built with ``nnx.vmap``; ``nn.run_stack`` runs them (``scan_blocks``: one ``jax.lax.scan``,
compile time constant in depth, else an unrolled loop over slices of the same parameters;
``remat`` wraps each block in ``jax.checkpoint``). For decoding, ``decode_form()`` copies them into
one fused module per block (``_decode.py``), which ``xlstm_jax.generate`` runs token by token.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from xlstm_jax import nn, ops
from xlstm_jax.nn import Embed, Linear, small_init

from .._inputs import check_embeds, one_input
from .._inputs import check_ids as check_ids_in
from .._output import xLSTMOutput
from ._config import xLSTMLargeConfig
from ._layers import mLSTMBlock, rms_norm, soft_cap

State = tuple[ops.MLSTMState, ...]


def _stacked_blocks(config: xLSTMLargeConfig, rngs: nnx.Rngs) -> mLSTMBlock:
    """One ``mLSTMBlock`` whose parameters carry a leading (num_blocks,) axis."""

    @nnx.split_rngs(splits=config.num_blocks)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: None})
    def make(rngs: nnx.Rngs) -> mLSTMBlock:
        return mLSTMBlock(config.block, rngs=rngs)

    return make(rngs)


class xLSTMLarge(nnx.Module):
    """ids (B, S) int -> logits (B, S, V) float32 [, state].

    Attributes (parameter paths, as the official state_dict names):
      embedding.embedding (V, D); blocks.<block params> with a leading (num_blocks,) axis;
      out_norm (if ``add_out_norm``); lm_head.kernel (D, V).
    """

    def __init__(self, config: xLSTMLargeConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        dtype, param_dtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        d = c.embedding_dim
        self.embedding = Embed(c.vocab_size, d, init=small_init(d), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.blocks = self._init_blocks(rngs)
        self.out_norm = rms_norm(c) if c.add_out_norm else None
        self.lm_head = Linear(
            d,
            c.vocab_size,
            use_bias=False,
            kernel_init=small_init(d),
            names=("embed", "vocab"),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def _init_blocks(self, rngs: nnx.Rngs) -> nnx.Module:
        """The blocks: one module with stacked parameters (``xLSTMLargeDecoder``: a list)."""
        return _stacked_blocks(self.config, rngs)

    def decode_form(self) -> xLSTMLarge:
        """This model laid out for decoding one token per call: an ``xLSTMLargeDecoder`` (same
        function, new arrays: a copy of the parameters). ``xlstm_jax.generate`` decodes with it."""
        from ._decode import decode_form

        return decode_form(self)

    def init_state(self, batch_size: int) -> State:
        """Zero recurrent state: per block ``MLSTMState`` c (B, NH, DHQK, DHV), n (B, NH, DHQK), m (B, NH)."""
        c = self.config
        zero = ops.MLSTMState.zeros(batch_size, c.num_heads, c.qk_head_dim, c.v_head_dim)
        return (zero,) * c.num_blocks

    def __call__(
        self,
        ids: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        state: Sequence | None = None,
        return_state: bool = False,
        segment_ids: jax.Array | None = None,
        check_ids: bool = False,
    ) -> jax.Array | tuple[jax.Array, State]:
        """Logits for ``ids`` (B, S), continuing from ``state`` (one ``MLSTMState`` per block) if given.

        ``segment_ids`` (B, S) int marks packed documents (training rows): the mLSTM memory
        restarts where the id changes (forget gate exactly 0 there), so no information
        passes between documents. See ``forward`` for ``inputs_embeds`` and ``check_ids``.

        Returns:
          logits (B, S, V) float32, or ``(logits, state)`` if ``return_state``.
        """
        out = self.forward(
            ids, inputs_embeds=inputs_embeds, state=state, return_state=return_state, segment_ids=segment_ids,
            check_ids=check_ids,
        )  # fmt: skip
        return (out.logits, out.state) if return_state else out.logits

    def forward(
        self,
        ids: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        state: Sequence | None = None,
        return_state: bool = False,
        segment_ids: jax.Array | None = None,
        output_hidden_states: bool = False,
        check_ids: bool = False,
        compute_logits: bool = True,
    ) -> xLSTMOutput:
        """The model on ids (B, S) or on ``inputs_embeds`` (B, S, D) in place of the token embedding.

        Returns an ``xLSTMOutput``: soft-capped logits (unless ``compute_logits=False``), the last
        hidden state (after ``out_norm``), the state if ``return_state``, every block's input if
        ``output_hidden_states``. Concrete ids are checked against ``vocab_size``; traced ids only
        with ``check_ids=True`` inside a function wrapped by ``xlstm_jax.checked``.
        """
        c = self.config
        one_input(ids, inputs_embeds)
        if ids is not None:
            x = self.embedding(check_ids_in(ids, c.vocab_size, traced=check_ids))
        else:
            x = check_embeds(inputs_embeds, c.embedding_dim).astype(jnp.dtype(c.dtype))
        if state is not None:
            state = self._check_state(state)
        resets = nn.document_starts(segment_ids, x.shape[:2])
        stateful = state is not None or return_state
        x, state, hidden = self._run_blocks(x, state, resets, stateful=stateful, collect=output_hidden_states)
        if self.out_norm is not None:
            x = self.out_norm(x)
        logits = None
        if compute_logits:
            logits = soft_cap(self.lm_head(x).astype(jnp.float32), c.output_logit_soft_cap)
        return xLSTMOutput(
            logits=logits, last_hidden_state=x, state=state if return_state else None, hidden_states=hidden
        )

    def backbone(self, ids: jax.Array | None = None, **kwargs) -> xLSTMOutput:
        """``forward`` without the head: ``backbone(ids).last_hidden_state`` (B, S, D) are the features."""
        return self.forward(ids, **kwargs, compute_logits=False)

    def _check_state(self, state: Sequence) -> State:
        n = self.config.num_blocks
        if not isinstance(state, Sequence) or len(state) != n or any(len(s) != 3 for s in state):
            raise ValueError(f"state must be a tuple of num_blocks={n} MLSTMState(c, n, m) entries")
        return tuple(ops.MLSTMState(*s) for s in state)

    def _run_blocks(
        self, x: jax.Array, state: State | None, resets: jax.Array | None, *, stateful: bool, collect: bool = False
    ) -> tuple[jax.Array, State | None, tuple[jax.Array, ...] | None]:
        """x (B, S, D) through the stacked blocks (``nn.run_stack``). Returns x, the new states (if
        ``stateful``) and, if ``collect``, every block's input and the last block's output."""
        c = self.config
        blocks = list(self.blocks) if isinstance(self.blocks, nnx.List) else self.blocks
        y, state, outputs = nn.run_stack(
            blocks, x, state, resets=resets, return_state=stateful, scan=c.scan_blocks,
            remat_policy=c.remat_policy if c.remat else None, collect=collect,
        )  # fmt: skip
        return y, state, ((x, *outputs) if collect else None)
