"""The NeurIPS xLSTM language model, xLSTM[a:b] (official ``xlstm_lm_model.py``, ``xlstm_block_stack.py``).

    ids (B, S) -> token_embedding -> blocks -> post_blocks_norm -> lm_head -> logits (B, S, V) float32
    mLSTM block:  x = x + mLSTMLayer(LN(x))
    sLSTM block:  x = x + sLSTMLayer(LN(x));  x = x + GatedFFN(LN(x))   (FFN optional)

LayerNorms are the official "residual weight" kind (scale 1 + w, w stored as 0,
eps 1e-5, no bias). The residual stream is float32 (float64 for a float64 model);
the layers compute in ``config.dtype``.

State: a tuple with one entry per block, ``mLSTMBlockState`` or ``sLSTMBlockState``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from xlstm_jax import nn, ops

from .._inputs import check_embeds, one_input
from .._inputs import check_ids as check_ids_in
from .._output import xLSTMOutput
from ._config import FeedForwardConfig, inherit, mLSTMLayerConfig, required_width, sLSTMLayerConfig, xLSTMLMConfig
from ._feedforward import GatedFeedForward
from ._mlstm_layer import mLSTMBlockState, mLSTMLayer
from ._slstm_layer import sLSTMBlockState, sLSTMLayer

BlockState = mLSTMBlockState | sLSTMBlockState


def _norm(config: mLSTMLayerConfig | sLSTMLayerConfig) -> nn.LayerNorm:
    return nn.LayerNorm(
        required_width(config, "mlstm" if isinstance(config, mLSTMLayerConfig) else "slstm"),
        eps=1e-5,
        residual_weight=True,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
    )


class mLSTMBlock(nnx.Module):  # noqa: N801 (the official name)
    """x + mLSTMLayer(LayerNorm(x)); ``mLSTMBlock(mLSTMLayerConfig(embedding_dim=D, ...), rngs=...)``."""

    def __init__(self, config: mLSTMLayerConfig, *, rngs: nnx.Rngs):
        self.xlstm_norm = _norm(config)
        self.xlstm = mLSTMLayer(config, rngs=rngs)

    def __call__(
        self, x: jax.Array, state: mLSTMBlockState | None = None, *, return_state: bool = False, resets=None
    ) -> tuple[jax.Array, mLSTMBlockState | None]:
        """x (B, S, D) residual stream -> (x, new state if ``return_state`` else None)."""
        y, state = self.xlstm(self.xlstm_norm(x), state, return_state=return_state, resets=resets)
        return x + y.astype(x.dtype), state


class sLSTMBlock(nnx.Module):  # noqa: N801 (the official name)
    """x + sLSTMLayer(LayerNorm(x)), then + GatedFeedForward(LayerNorm(.)) unless ``feedforward`` is None.

    On its own: ``sLSTMBlock(sLSTMLayerConfig(embedding_dim=D, ...), FeedForwardConfig(...), rngs=...)``;
    the FFN takes its width, depth and dtypes from the sLSTM config. ``block_idx`` only shapes the
    ``powerlaw_blockdependent`` bias init.
    """

    def __init__(
        self,
        config: sLSTMLayerConfig,
        feedforward: FeedForwardConfig | None = FeedForwardConfig(),  # noqa: B008 (frozen)
        *,
        block_idx: int = 0,
        rngs: nnx.Rngs,
    ):
        self.xlstm_norm = _norm(config)
        self.xlstm = sLSTMLayer(config, block_idx=block_idx, rngs=rngs)
        if feedforward is not None:
            wide = dict(embedding_dim=required_width(config, "slstm"), num_blocks=config.num_blocks)
            feedforward = inherit(
                feedforward, "feedforward", "sLSTMLayerConfig", **wide, dtype=config.dtype,
                param_dtype=config.param_dtype,
            )  # fmt: skip
            self.ffn_norm = _norm(config)
            self.ffn = GatedFeedForward(feedforward, rngs=rngs)
        else:
            self.ffn_norm = self.ffn = None

    def __call__(
        self, x: jax.Array, state: sLSTMBlockState | None = None, *, return_state: bool = False, resets=None
    ) -> tuple[jax.Array, sLSTMBlockState | None]:
        """x (B, S, D) residual stream -> (x, new state if ``return_state`` else None)."""
        y, state = self.xlstm(self.xlstm_norm(x), state, return_state=return_state, resets=resets)
        x = x + y.astype(x.dtype)
        if self.ffn is not None:
            x = x + self.ffn(self.ffn_norm(x)).astype(x.dtype)
        return x, state


class xLSTMLMModel(nnx.Module):  # noqa: N801 (the official name)
    """xLSTM[a:b] language model; ``model(ids, state=None, return_state=False)``.

    Example::

        cfg = xLSTMLMConfig(vocab_size=64, embedding_dim=64, num_blocks=3, slstm=sLSTMLayerConfig(), slstm_at=[1])
        model = xLSTMLMModel(cfg, rngs=nnx.Rngs(0))
        logits, state = model(ids, return_state=True)          # prefill
        logits, state = model(next_ids, state=state, return_state=True)   # continue
    """

    def __init__(self, config: xLSTMLMConfig, *, rngs: nnx.Rngs):
        self.config = config
        d, dtype, pdtype = config.embedding_dim, config.compute_dtype, config.parameter_dtype
        self.token_embedding = nn.Embed(
            config.vocab_size, d, init=nn.small_init(d), dtype=dtype, param_dtype=pdtype, rngs=rngs
        )
        if "s" in config.block_types:
            slstm = config.slstm_config()
            feedforward = None if config.feedforward is None else config.feedforward_config()
        self.blocks = nnx.List(
            [
                sLSTMBlock(slstm, feedforward, block_idx=idx, rngs=rngs)
                if kind == "s"
                else mLSTMBlock(config.mlstm_config(), rngs=rngs)
                for idx, kind in enumerate(config.block_types)
            ]
        )
        self.post_blocks_norm = _norm(config) if config.add_post_blocks_norm else None
        if config.tie_weights:
            self.lm_head = None
        else:
            self.lm_head = nn.Linear(
                d,
                config.vocab_size,
                use_bias=False,
                kernel_init=nn.small_init(d),
                names=("embed", "vocab"),
                dtype=dtype,
                param_dtype=pdtype,
                rngs=rngs,
            )

    def __call__(
        self,
        ids: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        state: Sequence[BlockState] | None = None,
        return_state: bool = False,
        segment_ids: jax.Array | None = None,
        check_ids: bool = False,
    ) -> jax.Array | tuple[jax.Array, tuple[BlockState, ...]]:
        """ids (B, S) int -> logits (B, S, V) float32, or ``(logits, state)`` if ``return_state``.

        ``state`` (from an earlier call with ``return_state=True``) continues the
        sequence; S = 1 with a state is one generation step. ``segment_ids`` (B, S) int
        marks packed documents (training rows): every recurrent state (mLSTM memory,
        sLSTM cell, conv windows) restarts where the id changes, so no information
        passes between documents. See ``forward`` for ``inputs_embeds`` and ``check_ids``.
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
        state: Sequence[BlockState] | None = None,
        return_state: bool = False,
        segment_ids: jax.Array | None = None,
        output_hidden_states: bool = False,
        check_ids: bool = False,
        compute_logits: bool = True,
    ) -> xLSTMOutput:
        """The model on ids (B, S) or on ``inputs_embeds`` (B, S, D) in place of the token embedding.

        Returns an ``xLSTMOutput``: logits (unless ``compute_logits=False``), the last hidden state,
        the state if ``return_state``, every block's input if ``output_hidden_states``. Concrete ids
        are checked against ``vocab_size``; traced ids only with ``check_ids=True`` inside a function
        wrapped by ``xlstm_jax.checked``.
        """
        one_input(ids, inputs_embeds)
        if ids is not None:
            ids = check_ids_in(ids, self.config.vocab_size, traced=check_ids)
            x = self.token_embedding(ids)
        else:
            x = check_embeds(inputs_embeds, self.config.embedding_dim)
        shape = x.shape[:2]
        if state is not None:
            state = self._check_state(state, shape[0])
        resets = nn.document_starts(segment_ids, shape)
        x = x.astype(jnp.promote_types(jnp.float32, x.dtype))  # float32 residual stream
        x, new_state, hidden = self._run_blocks(x, state, return_state, resets, output_hidden_states)
        if self.post_blocks_norm is not None:
            x = self.post_blocks_norm(x)
        logits = None
        if compute_logits:
            logits = self.token_embedding.attend(x) if self.lm_head is None else self.lm_head(x)
            logits = logits.astype(jnp.promote_types(jnp.float32, logits.dtype))
        return xLSTMOutput(logits=logits, last_hidden_state=x, state=new_state, hidden_states=hidden)

    def backbone(self, ids: jax.Array | None = None, **kwargs) -> xLSTMOutput:
        """``forward`` without the head: ``backbone(ids).last_hidden_state`` (B, S, D) are the features."""
        return self.forward(ids, **kwargs, compute_logits=False)

    def _runs(self) -> list[tuple[int, int]]:
        """[start, stop) ranges of consecutive blocks of the same type (one ``lax.scan`` each)."""
        types, runs, start = self.config.block_types, [], 0
        for j in range(1, len(types) + 1):
            if j == len(types) or types[j] != types[start]:
                runs.append((start, j))
                start = j
        return runs

    def _run_blocks(self, x, state, return_state: bool, resets, collect: bool = False):
        """x (B, S, D) through every block, one ``nn.run_stack`` per run of equal kinds.

        Returns x, the new states (one per block) or None, and, if ``collect``, every block's
        input and the last block's output."""
        c, new_states, hidden = self.config, [], [x]
        for start, stop in self._runs():
            x, run_states, outputs = nn.run_stack(
                list(self.blocks[start:stop]), x, None if state is None else state[start:stop], resets=resets,
                return_state=return_state, scan=c.scan_blocks, remat_policy=c.remat_policy if c.remat else None,
                collect=collect,
            )  # fmt: skip
            new_states += run_states or ()
            hidden += outputs or ()
        return x, (tuple(new_states) if return_state else None), (tuple(hidden) if collect else None)

    def _check_state(self, state, batch: int) -> tuple[BlockState, ...]:
        """Accept any (cell, conv) tuples of the right structure; name the block on a bad shape."""
        if not isinstance(state, (tuple, list)) or len(state) != self.config.num_blocks:
            raise ValueError(
                f"state must be a tuple with one entry per block ({self.config.num_blocks}), got {type(state).__name__}"
                + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else "")
            )
        checked = []
        for idx, (kind, block_state, block) in enumerate(zip(self.config.block_types, state, self.blocks)):
            if not isinstance(block_state, tuple) or len(block_state) != 2:
                raise ValueError(f"state[{idx}] must be a (cell, conv) pair, got {type(block_state).__name__}")
            cell, conv = block_state
            fields = 3 if kind == "m" else 4
            if not isinstance(cell, tuple) or len(cell) != fields:
                raise ValueError(f"state[{idx}].cell must be a tuple of {fields} arrays, got {type(cell).__name__}")
            if kind == "m":
                block_state = mLSTMBlockState(ops.MLSTMState(*cell), conv)
                channels, taps = block.xlstm.conv1d.kernel.shape[1], block.xlstm.conv1d.kernel_size - 1
            else:
                block_state = sLSTMBlockState(ops.SLSTMState(*cell), conv)
                conv1d = block.xlstm.conv1d
                channels, taps = self.config.embedding_dim, 0 if conv1d is None else conv1d.kernel_size - 1
            expected = (batch, taps, channels)
            if tuple(jnp.shape(conv)) != expected:
                raise ValueError(f"state[{idx}].conv must have shape {expected}, got {tuple(jnp.shape(conv))}")
            checked.append(block_state)
        return tuple(checked)
