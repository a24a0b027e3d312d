"""The runs of the paper reproduction: what one run is, the models, and its training loop.

A run trains one model on one embedded task (``xlstm_jax.train.data.synthetic``) with AdamW and
a warmup + cosine schedule, then measures sequence accuracy (every supervised position right) on
held-out examples. Formal languages train on lengths 3-40 and are scored on longer ones; MQAR
trains and is scored at one context length. One jitted step serves every run of the same model
shape (the learning rate is an argument), so a grid compiles once per model, vocabulary and length,
and evaluation reuses it at learning rate 0.
"""

from __future__ import annotations

import dataclasses
import math
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from transformer import CausalTransformer

from xlstm_jax.models.xlstm_lm import FeedForwardConfig, mLSTMLayerConfig, sLSTMLayerConfig, xLSTMLMConfig, xLSTMLMModel
from xlstm_jax.train.data.config import DataConfig
from xlstm_jax.train.data.packing import single_example_row
from xlstm_jax.train.data.synthetic import generate_example, task_vocab_size

FORMAL_TASKS = ("parity", "even_pairs", "modular_arithmetic", "cycle_navigation")
MODELS = ("xlstm10", "xlstm01", "xlstm11", "transformer")
MODEL_NAMES = {"xlstm10": "xLSTM[1:0]", "xlstm01": "xLSTM[0:1]", "xlstm11": "xLSTM[1:1]", "transformer": "Transformer"}
# Variants of the Transformer baseline for the longer runs only (the MQAR plateau): its number of heads.
TRANSFORMER_HEADS = {"transformer": 2, "transformer_h1": 1, "transformer_h4": 4, "transformer_conv": 2}
TRANSFORMER_CONV = {"transformer_conv": 4}  # kernel of the short causal conv in front of q and k
MODEL_NAMES |= {
    "transformer_h1": "Transformer, 1 head",
    "transformer_h4": "Transformer, 4 heads",
    "transformer_conv": "Transformer + short conv (q, k)",
}
EVAL_SEED = 10_000  # one held-out set per task, shared by every model and seed


def length_buckets(lo: int, hi: int) -> list[tuple[int, int]]:
    """The evaluation lengths lo..hi cut at powers of two: (41, 256) -> (41, 64), (65, 128), (129, 256)."""
    edges = [lo - 1, *(2**k for k in range(lo.bit_length(), hi.bit_length()) if lo <= 2**k < hi), hi]
    return [(a + 1, b) for a, b in zip(edges[:-1], edges[1:])]


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run. ``task`` is a formal-language kind or ``"mqar"``."""

    task: str
    model: str
    width: int
    lr: float
    seed: int
    steps: int
    batch_size: int
    eval_examples: int
    train_len: tuple[int, int] = (3, 40)  # formal: training lengths; mqar: (context, context)
    eval_len: tuple[int, int] = (41, 256)
    num_kv_pairs: int = 0  # mqar only
    mqar_vocab: int = 0  # mqar only
    model_vocab: int = 0  # the model's vocabulary if larger than the task's (one compile for several tasks)
    train_seq: int = 0  # training rows padded to this length (0: the longest training example)

    @property
    def experiment(self) -> str:
        return "mqar" if self.task == "mqar" else "formal"

    @property
    def key(self) -> str:
        task = f"mqar_c{self.train_len[1]}_p{self.num_kv_pairs}" if self.task == "mqar" else self.task
        return f"{task}/{self.model}/d{self.width}/lr{self.lr:g}/s{self.seed}/n{self.steps}"

    def data(self, split_seed: int, lengths: tuple[int, int]) -> DataConfig:
        extra = {"num_kv_pairs": self.num_kv_pairs, "mqar_vocab": self.mqar_vocab} if self.task == "mqar" else {}
        lo, hi = lengths
        return DataConfig(
            kind=self.task,
            seed=split_seed,
            train_min_len=lo,
            train_max_len=hi,
            eval_min_len=lo,
            eval_max_len=hi,
            **extra,
        )


def bucket_accuracies(right: np.ndarray, answers: np.ndarray, lengths: np.ndarray, eval_len) -> dict[str, float]:
    """Sequence accuracy per evaluation-length bucket (``length_buckets``): {"seq_acc_LO_HI": acc};
    empty buckets are left out."""
    out = {}
    for lo, hi in length_buckets(*eval_len):
        sel = (lengths >= lo) & (lengths <= hi)
        if sel.any():
            out[f"seq_acc_{lo}_{hi}"] = float(np.mean(right[sel] == answers[sel]))
    return out


def build_model(name: str, vocab_size: int, width: int, seed: int) -> nnx.Module:
    """xLSTM[a:b] with two blocks (one head, as the paper's formal-language configs) or the Transformer
    (``TRANSFORMER_HEADS[name]`` heads)."""
    rngs = nnx.Rngs(seed)
    if name in TRANSFORMER_HEADS:
        return CausalTransformer(
            vocab_size,
            width,
            num_blocks=2,
            num_heads=TRANSFORMER_HEADS[name],
            conv_kernel=TRANSFORMER_CONV.get(name, 0),
            rngs=rngs,
        )
    slstm_at = {"xlstm10": (), "xlstm01": (0, 1), "xlstm11": (1,)}
    if name not in slstm_at:
        raise ValueError(f"model must be one of {[*MODELS, *TRANSFORMER_HEADS]}, got {name!r}")
    config = xLSTMLMConfig(
        vocab_size=vocab_size,
        embedding_dim=width,
        num_blocks=2,
        slstm_at=slstm_at[name],
        mlstm=None if name == "xlstm01" else mLSTMLayerConfig(num_heads=1, conv1d_kernel_size=4, proj_factor=2.0),
        slstm=None if name == "xlstm10" else sLSTMLayerConfig(num_heads=1, conv1d_kernel_size=4),
        feedforward=FeedForwardConfig(proj_factor=1.3, act_fn="gelu"),
        backend="parallel",  # the quadratic form: fastest to run and to compile at these lengths (<= 256)
    )
    return xLSTMLMModel(config, rngs=rngs)


def _decay_mask(params):
    """Weight decay on matrices, not on the embedding, norms or biases."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x.ndim >= 2 and "embed" not in jax.tree_util.keystr(path), params
    )


# AdamW as (0.9, 0.99) Adam + decoupled decay 0.1, clipped at global norm 1; the step scales by -lr.
TX = optax.chain(
    optax.clip_by_global_norm(1.0), optax.scale_by_adam(b1=0.9, b2=0.99), optax.add_decayed_weights(0.1, _decay_mask)
)


def _loss_and_scores(graphdef, rest, params, batch):
    """Mean masked cross entropy; per row (B,) the supervised positions predicted right and their number."""
    logits = nnx.merge(graphdef, params, rest)(batch["inputs"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    loss = jnp.sum(ce * batch["loss_mask"]) / jnp.maximum(jnp.sum(batch["loss_mask"]), 1.0)
    supervised = batch["loss_mask"] > 0
    right = (jnp.argmax(logits, -1) == batch["targets"]) & supervised
    return loss, (jnp.sum(right, axis=-1, dtype=jnp.int32), jnp.sum(supervised, axis=-1, dtype=jnp.int32))


@partial(jax.jit, static_argnums=0)
def step(graphdef, rest, params, opt_state, batch, lr):
    """One AdamW step at ``lr``: -> (params, opt_state, loss, right (B,), answers (B,)).

    ``right`` / ``answers``: per row, the supervised positions predicted right (greedy, before the
    update) and the supervised positions. Evaluation calls it with ``lr = 0`` and drops the update,
    so one compiled function per shape serves training and evaluation (compiles dominate on a CPU).
    """
    (loss, (right, answers)), grads = jax.value_and_grad(_loss_and_scores, argnums=2, has_aux=True)(
        graphdef, rest, params, batch
    )
    updates, opt_state = TX.update(grads, opt_state, params)
    params = optax.apply_updates(params, jax.tree.map(lambda u: -lr * u, updates))
    return params, opt_state, loss, right, answers


def make_batch(cfg: DataConfig, split: str, indices, seq_len: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Rows of examples ``indices`` padded to ``seq_len`` (fields (B, S)) and the example lengths (B,)."""
    rows, lengths = [], []
    for i in indices:
        tokens, answer = generate_example(cfg, split, int(i))
        rows.append(single_example_row(tokens, answer, seq_len))
        lengths.append(len(tokens))
    fields = ("inputs", "targets", "loss_mask")
    return {k: np.stack([r[k] for r in rows]) for k in fields}, np.asarray(lengths)


def lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warmup over the first 10% of steps, then cosine to 0.1 x peak."""
    warmup = max(1, steps // 10)
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))


def accuracy(graphdef, rest, params, opt_state, cfg: DataConfig, n: int, seq_len: int, batch_size: int):
    """For the first ``n`` examples of ``cfg``'s eval split, each (n,): right answers, answers, lengths."""
    right, answers, lengths = [], [], []
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)  # the last batch runs full size (one compile) and is cut
        batch, lens = make_batch(cfg, "eval", idx, seq_len)
        *_, r, a = step(graphdef, rest, params, opt_state, batch, 0.0)
        right.append(np.asarray(r))
        answers.append(np.asarray(a))
        lengths.append(lens)
    return tuple(np.concatenate(x)[:n] for x in (right, answers, lengths))


def step_shapes(specs: list[RunSpec]) -> dict[tuple[str, int, int, int, int], DataConfig]:
    """(model, vocabulary, width, batch, row length) of every ``step`` compile ``specs`` need -> the data
    whose examples fill it (training rows and evaluation rows)."""
    shapes = {}
    for spec in specs:
        train_cfg, eval_cfg = spec.data(spec.seed, spec.train_len), spec.data(EVAL_SEED, spec.eval_len)
        vocab = max(task_vocab_size(train_cfg), spec.model_vocab)
        for cfg, seq_len in ((train_cfg, spec.train_seq or spec.train_len[1]), (eval_cfg, spec.eval_len[1])):
            shapes.setdefault((spec.model, vocab, spec.width, spec.batch_size, seq_len), cfg)
    return shapes


def precompile(specs: list[RunSpec], workers: int = 2) -> int:
    """Compile ``step`` for every shape of ``step_shapes(specs)``; returns the number compiled.

    The compiles run in ``workers`` threads (XLA compiles outside the GIL), so on an idle machine a
    grid's compiles take about 1 / workers of their serial time; the runs then find them in jit's
    cache (a compiled step serves every model instance of the same shape).
    """
    calls = []  # the models are built here, only the traces and compiles run in the threads
    for (name, vocab, width, batch_size, seq_len), cfg in step_shapes(specs).items():
        graphdef, params, rest = nnx.split(build_model(name, vocab, width, seed=0), nnx.Param, ...)
        batch, _ = make_batch(cfg, "train", np.arange(batch_size), seq_len)
        calls.append((graphdef, rest, params, TX.init(params), batch, 0.0))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(lambda args: jax.block_until_ready(step(*args)), calls))
    return len(calls)


def run(spec: RunSpec) -> dict:
    """Train and evaluate one run; returns its JSONL row (accuracies are fractions in [0, 1])."""
    t0 = time.perf_counter()
    train_cfg = spec.data(spec.seed, spec.train_len)
    vocab = max(task_vocab_size(train_cfg), spec.model_vocab)
    model = build_model(spec.model, vocab, spec.width, spec.seed)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    opt_state = TX.init(params)
    train_seq = spec.train_seq or spec.train_len[1]
    losses = []
    for i in range(spec.steps):
        batch, _ = make_batch(train_cfg, "train", np.arange(i * spec.batch_size, (i + 1) * spec.batch_size), train_seq)
        params, opt_state, loss, _, _ = step(graphdef, rest, params, opt_state, batch, lr_at(i, spec.steps, spec.lr))
        losses.append(loss)
    losses = np.asarray(jax.device_get(losses), np.float64)
    train_s = time.perf_counter() - t0
    evaluate = partial(accuracy, graphdef, rest, params, opt_state, n=spec.eval_examples, batch_size=spec.batch_size)
    right, answers, lengths = evaluate(spec.data(EVAL_SEED, spec.eval_len), seq_len=spec.eval_len[1])
    row = {
        "key": spec.key,
        "experiment": spec.experiment,
        **dataclasses.asdict(spec),
        "vocab": vocab,
        "params": n_params,
        "seq_acc": float(np.mean(right == answers)),  # every answer of the example right
        "query_acc": float(right.sum() / answers.sum()),  # share of answers right (MQAR: of queries)
        "final_loss": float(losses[-max(1, len(losses) // 10) :].mean()),
        "nonfinite_loss": bool(not np.all(np.isfinite(losses))),
    }
    if spec.task != "mqar":  # accuracy on the training lengths (held-out examples) and per long-length bucket
        # padded to the evaluation length: the same compiled function
        r_in, a_in, _ = evaluate(spec.data(EVAL_SEED, spec.train_len), seq_len=spec.eval_len[1])
        row["seq_acc_train_len"] = float(np.mean(r_in == a_in))
        row.update(bucket_accuracies(right, answers, lengths, spec.eval_len))
    row.update(
        train_s=round(train_s, 2),
        wall_s=round(time.perf_counter() - t0, 2),
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    return row
