"""Benchmark one full training step (forward + loss + backward + clip + AdamW) of the NeurIPS xLSTM LM:
the trainer's own jitted step (JAX) against the official PyTorch ``xlstm.xLSTMLMModel``.

Run from the repository root::

    python benchmarks/bench_train.py             # full run (about 1.5-3 minutes on an idle 2-core CPU)
    python benchmarks/bench_train.py --quick     # smoke test: 1 timed step per case, short idle waits
    python benchmarks/bench_train.py --reps 9

Model (the target's config): xLSTM[3:1], D=256, 4 blocks [mLSTM, sLSTM, mLSTM, mLSTM], vocab 1024,
B=8, S=256, float32.

* mLSTM blocks: num_heads 4, conv1d_kernel_size 4, qkv_proj_blocksize 4, proj_factor 2.0
  (inner dim 512, 4 heads of 128).
* sLSTM block: num_heads 4, conv1d_kernel_size 4, bias_init "powerlaw_blockdependent",
  recurrent_weight_init "zeros"; gated FFN proj_factor 1.3 (up dim 384), gelu.
* no biases, untied head, post-blocks norm (official defaults); context_length 256.

Implementations (all in ONE process, on the same CPU):

* ``ours`` (``backend`` chunkwise with chunk_size 64, and parallel): exactly the trainer's path
  (``train/trainer.py`` ``run``): the model config from ``train.models.model_config(section,
  vocab_size=1024, dtype="float32", param_dtype="float32", remat=False)`` (the same function
  ``train.trainer.resolve`` calls), an abstract model -> ``train.mesh.state_shardings`` on a
  single-device (data=1, fsdp=1, tensor=1) mesh made by ``train.mesh.make_mesh``, the optimizer
  from ``train.optim.make_optimizer`` (AdamW lr 1e-3, betas (0.9, 0.95), eps 1e-8, weight decay
  0.1 on matrices named kernel/weight except the embedding, global-norm clip 1.0, wrapped in
  ``apply_if_finite``), ``train.step.TrainState`` and ``train.step.make_train_step`` (accum 1),
  jitted with the trainer's in/out shardings and ``donate_argnums=(0,)``, inside
  ``jax.set_mesh(mesh)``. The LR schedule is ``constant`` with no warmup (the trainer's default
  cosine schedule with a 100-step warmup would give lr = 0 on the first step; the compute is
  the same, but the parity check of the second step needs the same lr as torch). The batch is
  the trainer's dict {inputs, targets (B,S) int32, loss_mask (B,S) float32 ones, segment_ids
  (B,S) int32 ones}: the model sees ``segment_ids`` (its document-reset machinery runs, as in
  real training). The parameters are the official model's initial weights converted by
  ``xlstm_jax.convert.from_torch_xlstm_lm`` and placed with the trainer's shardings (the
  converted model's config must equal the trainer's, checked).
* ``official``: ``xlstm.xLSTMLMModel`` (xlstm 2.0.6, vanilla sLSTM) with ``reset_parameters()``
  (seed 0), ``model.train()``; its mLSTM cell always runs ``parallel_stabilized_simple`` (the
  native torch parallel form; ``mLSTMCell.__init__`` hard-codes ``backend_fn`` -- the xlstm_lm
  mLSTM layer has NO config option for another form). One step = ``optimizer.zero_grad()`` +
  forward + ``F.cross_entropy`` (mean over B*S) + ``backward()`` +
  ``clip_grad_norm_(params, 1.0)`` + ``optimizer.step()``, with ``torch.optim.AdamW(lr=1e-3,
  betas=(0.9, 0.95), eps=1e-8)`` and two parameter groups from the official
  ``model._create_weight_decay_optim_groups()`` (weight_decay 0.1 / 0.0), torch defaults
  otherwise (on CPU: the for-loop implementation). ``torch.set_num_threads(<cores>)`` (2).
* ``official_chunkwise_patched`` (unless ``--no-official-chunkwise``): the same official model
  and step, but every ``mLSTMCell.backend_fn`` replaced by ``functools.partial(
  xlstm.blocks.mlstm.backends.chunkwise_simple, chunk_size=64)``, the chunkwise function that
  ships in the official ``backends.py`` but is not used by the model. NOT an official option;
  reported because the target asks for the official chunkwise form if there is one.

Method: ours is compiled ahead of time (``jit(...).lower(state, batch).compile()``; ``compile_s``
= trace + lower + compile). Every implementation runs two untimed steps from the SAME weights on
the same batch first (the parity check, below), then ``--warmup`` untimed steps and ``--reps``
timed steps (each blocked on: ``jax.block_until_ready`` of the new state and metrics; torch CPU
is synchronous). ``median_s`` is the median step time; ``tokens_per_s = B*S / median_s``.
torch has no compile step (``compile_s`` null); ``first_step_s`` is each impl's first step.

Timing hygiene (docs/design.md §Benchmarks; helpers in ``_timing.py``): before every
case the script waits until the machine's busy fraction is below ``--busy-threshold``
(``cpu_busy_before``, 0..1 of all cores, in the last 0.5 s window), measures the CPU used by OTHER
processes during the timed steps (``cpu_other_during``), and re-runs a contaminated case up to
``--retries`` times, keeping the cleanest attempt; ``contaminated`` flags rows where even that was
above ``--contam-threshold`` or the idle wait timed out (``was_idle``).

Peak memory: ours ``peak_mem_bytes`` = XLA's buffer assignment of the compiled step (temp +
arguments + outputs - aliased; the donated state is aliased); torch ``peak_mem_bytes`` =
growth of the process peak RSS (VmHWM after resetting it) during one warm step plus the bytes of
the model parameters, the two AdamW moments and the gradients, which exist before the step
(``rss_peak_bytes`` for ours is the same RSS growth measure, a cross-check).

Correctness (``bench="check"``, in the same run, per implementation vs ``official``): the loss of
step 1 (same initial weights, same batch), the gradient global norm of step 1 (before clipping;
ours: the step's ``grad_norm`` metric, torch: the return value of ``clip_grad_norm_``) and the
loss of step 2 (after one clipped AdamW update on each side, so it also checks the optimizer);
relative differences. ``forward_backward_ok``: step-1 loss and gradient norm within
``--check-rtol`` (1e-4; expected around 1e-6); ``optimizer_step_ok``: step-2 loss within it.
``weight_decay_mask_ok``: the number of parameter elements that get weight decay is the same on
both sides (ours: ``train.optim.decay_mask`` of the trainer's parameter state; official: its
``_create_weight_decay_optim_groups``). ``ok`` = all three. Diagnostics: the step-2 loss of the
official step with weight decay 0 (``loss2_official_weight_decay_0``, two extra official steps
from the same weights), and ``decay_elements_if_mask_read_param_names``: the count that
``decay_mask``'s documented rule gives when applied to the parameter names (``decay_mask``
reads ``path[-1]``, which on the trainer's ``nnx.State`` of ``nnx.Param`` is the ``.value``
attribute key for every leaf with flax 0.12, so as of this writing it selects no parameter).

Summary (``bench="summary"``): per ours backend, ``tokens_per_s`` / official tokens/s measured in
this run (target >= 4), / the patched official chunkwise, and / the 957 tokens/s quoted for the target
for the official code; plus ``hygiene``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
import traceback

import numpy as np

import _timing as T

THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
D, NUM_BLOCKS, SLSTM_AT, VOCAB = 256, 4, (1,), 1024
MLSTM = dict(num_heads=4, conv1d_kernel_size=4, qkv_proj_blocksize=4, proj_factor=2.0)
SLSTM = dict(num_heads=4, conv1d_kernel_size=4, bias_init="powerlaw_blockdependent")
FFN = dict(proj_factor=1.3, act_fn="gelu")
CHUNK = 64
OPTIM = dict(lr=1e-3, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0)
SPEEDUP_TARGET = 4.0
ISSUE_OFFICIAL_TOKENS_PER_S = 957.0  # the official code's training speed quoted for the target
WEIGHT_SEED, DATA_SEED = 0, 1234


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


# --------------------------------------------------------------------------- #
# official (torch)
# --------------------------------------------------------------------------- #
def official_config(seq_len: int):
    from xlstm import (
        FeedForwardConfig,
        mLSTMBlockConfig,
        mLSTMLayerConfig,
        sLSTMBlockConfig,
        sLSTMLayerConfig,
        xLSTMLMModelConfig,
    )

    return xLSTMLMModelConfig(
        mlstm_block=mLSTMBlockConfig(mlstm=mLSTMLayerConfig(**MLSTM)),
        slstm_block=sLSTMBlockConfig(
            slstm=sLSTMLayerConfig(backend="vanilla", **SLSTM), feedforward=FeedForwardConfig(**FFN)
        ),
        context_length=seq_len,
        num_blocks=NUM_BLOCKS,
        embedding_dim=D,
        slstm_at=list(SLSTM_AT),
        vocab_size=VOCAB,
    )


class TorchTrainer:
    """The official model + AdamW; ``step(x, y)`` = one full training step, returns (loss, grad_norm)."""

    def __init__(self, model, torch, weight_decay: float = OPTIM["weight_decay"]):
        import torch.nn.functional as F

        self.torch, self.F, self.model = torch, F, model.train()
        decay, no_decay = model._create_weight_decay_optim_groups()
        self.decay_elements = int(sum(p.numel() for p in decay))
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(
            [{"params": list(decay), "weight_decay": weight_decay}, {"params": list(no_decay), "weight_decay": 0.0}],
            lr=OPTIM["lr"],
            betas=(OPTIM["b1"], OPTIM["b2"]),
            eps=OPTIM["eps"],
        )

    def step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = self.F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        norm = self.torch.nn.utils.clip_grad_norm_(self.params, OPTIM["grad_clip"])
        self.opt.step()
        return loss.detach(), norm

    def resident_bytes(self) -> int:
        """Parameters + gradients + the two AdamW moments (all exist before a warm step)."""
        return 4 * sum(p.numel() * p.element_size() for p in self.params)


def patch_chunkwise(model, chunk_size: int) -> int:
    """Replace every official mLSTM cell's parallel form by the (unused) official ``chunkwise_simple``."""
    from xlstm.blocks.mlstm.backends import chunkwise_simple
    from xlstm.blocks.mlstm.cell import mLSTMCell

    n = 0
    for mod in model.modules():
        if isinstance(mod, mLSTMCell):
            mod.backend_fn = functools.partial(chunkwise_simple, chunk_size=chunk_size)
            n += 1
    return n


# --------------------------------------------------------------------------- #
# ours (the trainer's step)
# --------------------------------------------------------------------------- #
def model_section(backend: str) -> dict:
    return {
        "arch": "xlstm_lm",
        "embedding_dim": D,
        "num_blocks": NUM_BLOCKS,
        "slstm_at": list(SLSTM_AT),
        "mlstm": dict(MLSTM),
        "slstm": dict(SLSTM),
        "feedforward": dict(FFN),
        "backend": backend,
        "chunk_size": CHUNK,
    }


def intended_decay_elements(params, optim_cfg) -> int:
    """Elements that ``train.optim.decay_mask``'s documented rule selects, applied to the parameter
    NAME (the last path key that is not the ``.value`` attribute of an ``nnx.Param``)."""
    import jax

    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        while keys and keys[-1] == "value":
            keys.pop()
        name = keys[-1] if keys else ""
        if name == "embedding":
            decay = optim_cfg.decay_embeddings
        elif np.ndim(leaf) < 2:
            decay = optim_cfg.decay_norms_and_biases and name in ("kernel", "weight", "bias")
        else:
            decay = name in ("kernel", "weight")
        total += int(np.prod(leaf.shape)) if decay else 0
    return total


class JaxTrainer:
    """The trainer's jitted step (train/trainer.py ``run``) on a single-device mesh, with given weights."""

    def __init__(self, backend: str, official_cfg_dict: dict, state_dict: dict, batch_np: dict, steps: int):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from xlstm_jax.convert import from_torch_xlstm_lm
        from xlstm_jax.train.config import MeshConfig, OptimConfig
        from xlstm_jax.train.mesh import batch_sharding, make_mesh, replicated, state_shardings
        from xlstm_jax.train.models import build_model, model_config
        from xlstm_jax.train.optim import decay_mask, make_optimizer
        from xlstm_jax.train.step import TrainState, make_train_step

        self.jax = jax
        cfg = model_config(
            model_section(backend), vocab_size=VOCAB, dtype="float32", param_dtype="float32", remat=False
        )
        mesh_cfg = MeshConfig(data=1, fsdp=1, tensor=1)
        mesh = make_mesh(mesh_cfg, jax.devices()[:1])
        rules = mesh_cfg.rules
        abstract = nnx.eval_shape(lambda: build_model(cfg, 0))
        graphdef, abstract_params, rest = nnx.split(abstract, nnx.Param, ...)
        param_shardings = state_shardings(abstract_params, mesh, rules)

        # the official weights, through the converter; its config must be the trainer's
        converted = from_torch_xlstm_lm(official_cfg_dict, state_dict, backend=backend, chunk_size=CHUNK)
        self.config_equal = converted.config == cfg
        if not self.config_equal:
            diff = {
                f.name: (getattr(converted.config, f.name), getattr(cfg, f.name))
                for f in dataclasses.fields(cfg)
                if getattr(converted.config, f.name) != getattr(cfg, f.name)
            }
            raise RuntimeError(f"converted config differs from the trainer's: {diff}")
        _, conv_params, _ = nnx.split(converted, nnx.Param, ...)
        same_tree = jax.tree.structure(conv_params) == jax.tree.structure(abstract_params) and all(
            a.shape == b.shape and a.dtype == b.dtype
            for a, b in zip(jax.tree.leaves(conv_params), jax.tree.leaves(abstract_params))
        )
        if not same_tree:
            raise RuntimeError("the converted parameters do not have the trainer's parameter tree")

        optim_cfg = OptimConfig(schedule="constant", warmup_steps=0, **OPTIM)
        with jax.set_mesh(mesh):
            params = jax.device_put(conv_params, param_shardings)
            tx = make_optimizer(optim_cfg, steps, params)
            opt_state = tx.init(params)
            state = TrainState(jnp.zeros((), jnp.int32), params, opt_state)
            state_sharding = jax.tree.map(lambda x: x.sharding, state)
            state = jax.device_put(state, state_sharding)
            bsh = batch_sharding(mesh, rules)
            self.batch = {k: jax.device_put(np.asarray(v), bsh) for k, v in batch_np.items()}
            train_step = jax.jit(
                make_train_step(graphdef, rest, tx, optim_cfg.grad_accum_steps),
                in_shardings=(state_sharding, bsh),
                out_shardings=(state_sharding, replicated(mesh)),
                donate_argnums=(0,),
            )
            t0 = time.perf_counter()
            self.compiled = train_step.lower(state, self.batch).compile()
            self.compile_s = time.perf_counter() - t0
        self.mesh = mesh
        self.state = state
        mask = decay_mask(params, optim_cfg)
        self.decay_elements = int(
            sum(int(np.prod(p.shape)) for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m)
        )
        self.decay_elements_name_rule = intended_decay_elements(params, optim_cfg)
        self.n_params = int(sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)))
        self.mem = T.jax_compiled_memory(self.compiled)

    def step(self):
        self.state, metrics = self.compiled(self.state, self.batch)
        return self.jax.block_until_ready((self.state, metrics))[1]

    def metrics(self):
        m = self.step()
        return float(m["loss"]), float(m["grad_norm"])


# --------------------------------------------------------------------------- #
# runner
# --------------------------------------------------------------------------- #
class Runner:
    def __init__(self, args):
        self.args = args
        self.rows: list[dict] = []
        self.checks: dict[str, dict] = {}

    def emit(self, row):
        self.rows.append(row)
        T.emit(row)

    def wait_idle(self):
        a = self.args
        return T.wait_for_idle_cpu(threshold=a.busy_threshold, max_wait_s=a.max_idle_wait)

    def _attempts(self, measure, est_s):
        """Idle-wait + ``measure()`` under a CpuMonitor, re-run while contaminated (cleanest kept).

        ``est_s``: rough duration of one attempt (no re-runs above ``--no-retry-above-s``)."""
        a = self.args
        return T.measure_clean(measure, a, lambda _: est_s > a.no_retry_above_s, log=log)

    def _hygiene(self, idle, other):
        return T.hygiene_fields(idle, other, self.args.contam_threshold)

    def base(self, impl, backend, extra=None):
        a = self.args
        row = {
            "bench": "train_step",
            "impl": impl,
            "backend": backend,
            "B": a.batch,
            "S": a.seq_len,
            "dtype": "float32",
        }
        row.update(extra or {})
        return row

    def case(self, base, step_fn, first_s, compile_s, mem_fields, note=None):
        """Time ``step_fn()`` (one blocked training step); emit the row."""
        a = self.args
        try:

            def measure():
                return T.median_time(step_fn, warmup=a.warmup, reps=a.reps, block=lambda x: x, max_reps=a.reps)

            tm, idle, other, attempts = self._attempts(measure, first_s * (a.reps + a.warmup))
            mem = mem_fields()
        except Exception:
            row = dict(base)
            row.update({"error": traceback.format_exc()[-2000:], "median_s": None, "tokens_per_s": None})
            self.emit(row)
            log(f"  ERROR {base['impl']} {base['backend']}:\n{row['error']}")
            return None
        med = tm["median_s"]
        row = dict(base)
        row.update(
            {
                "median_s": med,
                "min_s": tm["min_s"],
                "max_s": tm["max_s"],
                "tokens_per_s": a.batch * a.seq_len / med,
                "compile_s": compile_s,
                "first_step_s": first_s,
                "times_s": tm["times_s"],
                "reps": tm["reps"],
                "warmup_steps": a.warmup,
                "attempts": attempts,
                **self._hygiene(idle, other),
                **mem,
                "threads": THREADS,
            }
        )
        if note:
            row["note"] = note
        self.emit(row)
        log(
            f"  {base['impl']:27s} {base['backend']:28s} {row['tokens_per_s']:9.1f} tok/s  median {med:.3f} s  "
            f"busy_before {idle['cpu_busy_before']:.2f} other {other if other is None else round(other, 2)}"
        )
        return row

    # ------------------------------------------------------------------ run
    def run(self):
        import copy

        import torch
        from xlstm import xLSTMLMModel

        a = self.args
        B, S = a.batch, a.seq_len
        rng = np.random.default_rng(DATA_SEED)
        inputs = rng.integers(0, VOCAB, size=(B, S)).astype(np.int32)
        targets = rng.integers(0, VOCAB, size=(B, S)).astype(np.int32)
        batch_np = {
            "inputs": inputs,
            "targets": targets,
            "loss_mask": np.ones((B, S), np.float32),
            "segment_ids": np.ones((B, S), np.int32),
        }
        x_t, y_t = torch.from_numpy(inputs.astype(np.int64)), torch.from_numpy(targets.astype(np.int64))

        cfg = official_config(S)
        torch.manual_seed(WEIGHT_SEED)
        base_model = xLSTMLMModel(cfg)
        base_model.reset_parameters()
        cfg_dict = dataclasses.asdict(cfg)
        state_dict = {k: v.detach().clone() for k, v in base_model.state_dict().items()}
        n_params = int(sum(p.numel() for p in base_model.parameters()))
        log(f"official model: {n_params / 1e6:.3f} M parameters")

        # -------- official torch models (fresh copies of the same weights), two parity steps each
        torch_impls = [("official", "parallel_stabilized_simple (official default)", False)]
        if not a.no_official_chunkwise:
            torch_impls.append(("official_chunkwise_patched", f"chunkwise_simple(chunk_size={CHUNK}) patched in", True))
        torch_rows = {}
        for impl, backend, patched in torch_impls:
            model = copy.deepcopy(base_model)
            note = None
            if patched:
                n = patch_chunkwise(model, CHUNK)
                note = f"not an official option: mLSTMCell.backend_fn of {n} cells replaced by chunkwise_simple"
            tr = TorchTrainer(model, torch)
            log(f"[{impl}] parity steps")
            try:
                self.wait_idle()
                t0 = time.perf_counter()
                loss1, norm1 = tr.step(x_t, y_t)
                first_s = time.perf_counter() - t0
                loss2, _ = tr.step(x_t, y_t)
                self.checks[impl] = {
                    "loss1": float(loss1),
                    "grad_norm1": float(norm1),
                    "loss2": float(loss2),
                    "decay_elements": tr.decay_elements,
                }
            except Exception:
                self.checks[impl] = {"error": traceback.format_exc()[-2000:]}
                log(self.checks[impl]["error"])
                continue

            def mem_fields(tr=tr):
                rss = T.rss_peak_delta(lambda: tr.step(x_t, y_t), lambda x: x)
                return {
                    "peak_mem_bytes": (rss + tr.resident_bytes()) if rss is not None else None,
                    "peak_mem_method": "rss_peak_growth_during_one_step + params/grads/adam moments",
                    "rss_peak_bytes": rss,
                }

            torch_rows[impl] = self.case(
                self.base(impl, backend, {"slstm_backend": "vanilla", "optimizer": "torch.optim.AdamW (foreach=None)"}),
                lambda tr=tr: tr.step(x_t, y_t),
                first_s,
                None,
                mem_fields,
                note,
            )
            del tr, model

        # -------- reference for the optimizer check: the official step with weight decay 0 (two steps)
        log("[official, weight_decay=0] parity steps (reference for ours' step-2 loss)")
        try:
            tr = TorchTrainer(copy.deepcopy(base_model), torch, weight_decay=0.0)
            loss1, norm1 = tr.step(x_t, y_t)
            loss2, _ = tr.step(x_t, y_t)
            self.wd0_loss2 = float(loss2)
            del tr
        except Exception:
            self.wd0_loss2 = None
            log(traceback.format_exc())

        # -------- ours: the trainer's jitted step, per backend
        for backend in a.backends:
            impl = f"ours_{backend}"
            log(f"[ours {backend}] convert + compile")
            try:
                self.wait_idle()
                jt = JaxTrainer(backend, cfg_dict, state_dict, batch_np, steps=1000)
                t0 = time.perf_counter()
                loss1, norm1 = jt.metrics()
                first_s = time.perf_counter() - t0
                loss2, _ = jt.metrics()
                self.checks[impl] = {
                    "loss1": loss1,
                    "grad_norm1": norm1,
                    "loss2": loss2,
                    "decay_elements": jt.decay_elements,
                    "decay_elements_name_rule": jt.decay_elements_name_rule,
                    "config_equal_to_trainer": jt.config_equal,
                }
            except Exception:
                self.checks[impl] = {"error": traceback.format_exc()[-2000:]}
                log(self.checks[impl]["error"])
                continue
            log(f"  compiled in {jt.compile_s:.1f} s")

            def mem_fields(jt=jt):
                rss = T.rss_peak_delta(jt.step, lambda x: x)
                return {
                    "peak_mem_bytes": jt.mem["total"] if jt.mem else None,
                    "peak_mem_method": "jax_compiled_memory_bytes(temp+arg+out-alias)",
                    "jax_compiled_memory": jt.mem,
                    "rss_peak_bytes": rss,
                }

            self.case(
                self.base(
                    "ours",
                    backend,
                    {"chunk_size": CHUNK if backend == "chunkwise" else None, "slstm_backend": "scan", "mesh": "1x1x1"},
                ),
                jt.step,
                first_s,
                jt.compile_s,
                mem_fields,
            )
            del jt
        self.check_rows(n_params)

    # ------------------------------------------------------------------ check
    def check_rows(self, n_params):
        a = self.args
        ref = self.checks.get("official", {})
        for impl, c in self.checks.items():
            if impl == "official":
                continue
            row = {"bench": "check", "impl": impl, "vs": "official", "B": a.batch, "S": a.seq_len}
            if "error" in c or "error" in ref:
                row["error"] = c.get("error") or ref.get("error")
                self.emit(row)
                continue
            row.update(
                {
                    "loss1": c["loss1"],
                    "loss1_official": ref["loss1"],
                    "loss1_rel_diff": rel(c["loss1"], ref["loss1"]),
                    "grad_norm1": c["grad_norm1"],
                    "grad_norm1_official": ref["grad_norm1"],
                    "grad_norm1_rel_diff": rel(c["grad_norm1"], ref["grad_norm1"]),
                    "loss2": c["loss2"],
                    "loss2_official": ref["loss2"],
                    "loss2_rel_diff": rel(c["loss2"], ref["loss2"]),
                    "decay_elements": c["decay_elements"],
                    "decay_elements_official": ref["decay_elements"],
                    "params": n_params,
                }
            )
            wd0 = getattr(self, "wd0_loss2", None)
            row["loss2_official_weight_decay_0"] = wd0
            row["loss2_rel_diff_vs_official_weight_decay_0"] = rel(c["loss2"], wd0) if wd0 is not None else None
            if "decay_elements_name_rule" in c:
                row["decay_elements_if_mask_read_param_names"] = c["decay_elements_name_rule"]
            if "config_equal_to_trainer" in c:
                row["converted_config_equal_to_trainer_config"] = c["config_equal_to_trainer"]
            row["rtol"] = a.check_rtol
            row["forward_backward_ok"] = bool(max(row["loss1_rel_diff"], row["grad_norm1_rel_diff"]) <= a.check_rtol)
            row["optimizer_step_ok"] = bool(row["loss2_rel_diff"] <= a.check_rtol)
            row["weight_decay_mask_ok"] = row["decay_elements"] == row["decay_elements_official"]
            row["ok"] = row["forward_backward_ok"] and row["optimizer_step_ok"] and row["weight_decay_mask_ok"]
            self.emit(row)
            log(
                f"[check] {impl}: loss1 rel {row['loss1_rel_diff']:.2e}, "
                f"grad_norm rel {row['grad_norm1_rel_diff']:.2e}, loss2 rel {row['loss2_rel_diff']:.2e} "
                f"(vs official with wd=0: "
                f"{row['loss2_rel_diff_vs_official_weight_decay_0']}), decay elements {row['decay_elements']} vs "
                f"{row['decay_elements_official']}: ok={row['ok']}"
            )

    # ---------------------------------------------------------------- summary
    def summary(self):
        a = self.args
        ok = [r for r in self.rows if r.get("bench") == "train_step" and r.get("tokens_per_s")]

        def find(impl, backend=None):
            for r in ok:
                if r["impl"] == impl and (backend is None or r["backend"] == backend):
                    return r
            return None

        off = find("official")
        offc = find("official_chunkwise_patched")
        out = []
        for backend in a.backends:
            ours = find("ours", backend)
            v = ours["tokens_per_s"] / off["tokens_per_s"] if (ours and off) else None
            out.append(
                {
                    "bench": "summary",
                    "metric": "train_step_speedup_vs_official",
                    "backend": backend,
                    "B": a.batch,
                    "S": a.seq_len,
                    "value": v,
                    "target": SPEEDUP_TARGET,
                    "met": (v >= SPEEDUP_TARGET) if v is not None else None,
                    "ours_tokens_per_s": ours and ours["tokens_per_s"],
                    "official_tokens_per_s": off and off["tokens_per_s"],
                    "official_chunkwise_patched_tokens_per_s": offc and offc["tokens_per_s"],
                    "speedup_vs_official_chunkwise_patched": (ours["tokens_per_s"] / offc["tokens_per_s"])
                    if (ours and offc)
                    else None,
                    "ours_vs_issue_quoted_official_957_tok_s": (ours["tokens_per_s"] / ISSUE_OFFICIAL_TOKENS_PER_S)
                    if ours
                    else None,
                    "met_vs_issue_quoted": (ours["tokens_per_s"] / ISSUE_OFFICIAL_TOKENS_PER_S >= SPEEDUP_TARGET)
                    if ours
                    else None,
                    "check_ok": self._check_ok(f"ours_{backend}"),
                    "contaminated_inputs": any(bool(r and r.get("contaminated")) for r in (ours, off)),
                }
            )
        cont = [f"{r['impl']}/{r['backend']}" for r in ok if r.get("contaminated")]
        errs = [f"{r.get('impl')}/{r.get('backend', r.get('bench'))}" for r in self.rows if r.get("error")]
        out.append(T.hygiene_summary(cont, errs, a))
        for r in out:
            self.emit(r)

    def _check_ok(self, impl):
        for r in self.rows:
            if r.get("bench") == "check" and r.get("impl") == impl:
                return r.get("ok")
        return None


# --------------------------------------------------------------------------- #
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke test: 1 timed step per case, short idle waits")
    p.add_argument("--reps", type=int, default=None, help="timed steps per case (default 7; quick 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps before the timed ones (default 1)")
    p.add_argument("--batch", type=int, default=8, help="B (default 8, the target's)")
    p.add_argument("--seq-len", type=int, default=256, help="S (default 256, the target's; also context_length)")
    p.add_argument("--backends", default="chunkwise,parallel", help="ours' mLSTM backends (comma list)")
    p.add_argument("--no-official-chunkwise", action="store_true", help="skip the patched official chunkwise row")
    p.add_argument("--check-rtol", type=float, default=1e-4, help="relative tolerance of the parity check")
    T.add_hygiene_args(p, idle_wait=60.0, quick_idle_wait=10.0, no_retry_above_s=40.0)
    a = p.parse_args(argv)
    if a.reps is None:
        a.reps = 1 if a.quick else 7
    if a.warmup is None:
        a.warmup = 1
    T.fill_hygiene_defaults(a)
    a.backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    if a.seq_len % CHUNK and "chunkwise" in a.backends:
        log(f"note: S={a.seq_len} is not a multiple of the chunk size {CHUNK} (padded by the chunkwise form)")
    return a


def main(argv=None):
    a = parse_args(argv)
    import jax
    import torch
    import xlstm

    torch.set_num_threads(THREADS)
    cpu = T.cpu_model()
    T.emit(
        {
            "bench": "env",
            "argv": sys.argv[1:],
            "jax": jax.__version__,
            "jax_backend": jax.default_backend(),
            "jax_devices": jax.device_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "xlstm": getattr(xlstm, "__version__", None),
            "cores": THREADS,
            "cpu": cpu,
            "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
            "model": {
                "embedding_dim": D,
                "num_blocks": NUM_BLOCKS,
                "slstm_at": list(SLSTM_AT),
                "vocab_size": VOCAB,
                "mlstm": MLSTM,
                "slstm": SLSTM,
                "feedforward": FFN,
                "chunk_size": CHUNK,
            },
            "optim": {**OPTIM, "schedule": "constant", "warmup_steps": 0},
            "B": a.batch,
            "S": a.seq_len,
            "reps": a.reps,
            "warmup": a.warmup,
        }
    )
    t0 = time.perf_counter()
    r = Runner(a)
    r.run()
    r.summary()
    log(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
