"""xLSTM[1:1] on parity, this project's model beside the official PyTorch ``xlstm.xLSTMLMModel``.

    python benchmarks/paper/official_side_by_side.py --steps 500 --impl official   # one arm per process
    python benchmarks/paper/official_side_by_side.py --steps 500 --impl ours

Both arms are the grid's xLSTM[1:1] run ``parity/xlstm11/d64/lr0.003/s{seed}``: two blocks (mLSTM
then sLSTM with its GELU feed-forward), width 64, one head, vocabulary 10, and they share
everything a training outcome depends on:

* the initial weights: the official model's ``reset_parameters()`` under ``torch.manual_seed(seed)``,
  converted into ours by ``xlstm_jax.convert.torch_xlstm_lm`` (so the two start as one function);
* the batches: ``experiments.make_batch`` of the run's data seed, the same rows in the same order;
* the optimizer and schedule of ``experiments``: clip at global norm 1, Adam (0.9, 0.99, eps 1e-8),
  decoupled weight decay 0.1 on the parameters ``experiments`` decays (matrices, and the sLSTM gate
  bias, which is a (heads, 4, head dim) array in this project), warmup + cosine ``lr_at``;
* the evaluation: sequence accuracy on the grid's held-out sets (the training lengths and 41-256).

The official arm runs the vanilla (PyTorch loop) sLSTM on the CPU in float32, single-threaded; ours
runs ``experiments.step``, the grid's jitted step. Each arm appends one JSON line (its per-step
training losses included) to ``results/official_side_by_side.jsonl``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import numpy as np  # noqa: E402
from experiments import (  # noqa: E402
    EVAL_SEED,
    RunSpec,
    accuracy,
    bucket_accuracies,
    build_model,
    lr_at,
    make_batch,
    step,
)

WIDTH, VOCAB, TRAIN_SEQ = 64, 10, 40  # the grid's formal-language width, model vocabulary and training row length


def spec_for(steps: int, seed: int, lr: float, batch_size: int, eval_examples: int) -> RunSpec:
    """The grid's xLSTM[1:1] parity run at ``steps``."""
    return RunSpec(
        task="parity",
        model="xlstm11",
        width=WIDTH,
        lr=lr,
        seed=seed,
        steps=steps,
        batch_size=batch_size,
        eval_examples=eval_examples,
        model_vocab=VOCAB,
    )


def official_model(seed: int):
    """(official xLSTM[1:1] after ``reset_parameters()`` under ``torch.manual_seed(seed)``, its config)."""
    import torch
    from xlstm import (
        FeedForwardConfig,
        mLSTMBlockConfig,
        mLSTMLayerConfig,
        sLSTMBlockConfig,
        sLSTMLayerConfig,
        xLSTMLMModel,
        xLSTMLMModelConfig,
    )

    config = xLSTMLMModelConfig(
        vocab_size=VOCAB,
        embedding_dim=WIDTH,
        num_blocks=2,
        slstm_at=[1],
        context_length=256,  # the longest evaluation example
        mlstm_block=mLSTMBlockConfig(mlstm=mLSTMLayerConfig(num_heads=1, conv1d_kernel_size=4, proj_factor=2.0)),
        slstm_block=sLSTMBlockConfig(
            slstm=sLSTMLayerConfig(backend="vanilla", num_heads=1, conv1d_kernel_size=4),
            feedforward=FeedForwardConfig(proj_factor=1.3, act_fn="gelu"),
        ),
    )
    torch.manual_seed(seed)
    model = xLSTMLMModel(config)
    model.reset_parameters()
    return model, config


def _decayed(name: str, param) -> bool:
    """The official parameters ``experiments`` decays: matrices but the embedding, and the sLSTM bias
    (stored flat here, as (heads, 4, head dim) in this project)."""
    return (param.ndim >= 2 and name != "token_embedding.weight") or name.endswith("slstm_cell._bias_")


def train_official(model, spec: RunSpec, log_every: int) -> list[float]:
    """The grid's loop in PyTorch; returns the training loss of every step."""
    import torch

    decay = [p for n, p in model.named_parameters() if _decayed(n, p)]
    rest = [p for n, p in model.named_parameters() if not _decayed(n, p)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], betas=(0.9, 0.99), eps=1e-8
    )
    cfg = spec.data(spec.seed, spec.train_len)
    model.train()
    losses, t0 = [], time.perf_counter()
    for i in range(spec.steps):
        batch, _ = make_batch(cfg, "train", np.arange(i * spec.batch_size, (i + 1) * spec.batch_size), TRAIN_SEQ)
        logits = model(torch.from_numpy(batch["inputs"]).long())
        ce = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), torch.from_numpy(batch["targets"]).long().flatten(), reduction="none"
        )
        mask = torch.from_numpy(batch["loss_mask"]).float().flatten()
        loss = (ce * mask).sum() / mask.sum().clamp(min=1.0)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in opt.param_groups:
            group["lr"] = lr_at(i, spec.steps, spec.lr)
        opt.step()
        losses.append(loss.item())
        if log_every and (i + 1) % log_every == 0:
            print(
                f"official step {i + 1}: loss {np.mean(losses[-log_every:]):.4f} {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
    return losses


def eval_official(model, cfg, n: int, batch_size: int, seq_len: int):
    """(right (n,), answers (n,), lengths (n,)) as ``experiments.accuracy``."""
    import torch

    model.eval()
    right, answers, lengths = [], [], []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch, lens = make_batch(cfg, "eval", np.arange(start, min(n, start + batch_size)), seq_len)
            pred = model(torch.from_numpy(batch["inputs"]).long()).argmax(-1).numpy()
            supervised = batch["loss_mask"] > 0
            right.append(((pred == batch["targets"]) & supervised).sum(-1))
            answers.append(supervised.sum(-1))
            lengths.append(lens)
    return tuple(np.concatenate(x) for x in (right, answers, lengths))


def side(impl: str, spec: RunSpec, log_every: int) -> dict:
    """Train and evaluate one arm; its JSONL row."""
    import jax
    import torch
    from flax import nnx

    from xlstm_jax.convert.torch_xlstm_lm import from_torch_xlstm_lm

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    torch_model, config = official_model(spec.seed)
    ours = from_torch_xlstm_lm(dataclasses.asdict(config), torch_model.state_dict(), backend="parallel")
    grid = build_model(spec.model, VOCAB, WIDTH, spec.seed).config
    if ours.config != grid:  # the converted model must be the grid's architecture
        raise ValueError(f"converted config differs from the grid's:\n{ours.config}\n{grid}")
    train_cfg = spec.data(spec.seed, spec.train_len)
    if impl == "official":
        losses = train_official(torch_model, spec, log_every)
        train_s = time.perf_counter() - t0
        evaluate = lambda cfg: eval_official(torch_model, cfg, spec.eval_examples, spec.batch_size, spec.eval_len[1])  # noqa: E731
    else:
        from experiments import TX

        graphdef, params, rest = nnx.split(ours, nnx.Param, ...)
        opt_state, losses = TX.init(params), []
        for i in range(spec.steps):
            idx = np.arange(i * spec.batch_size, (i + 1) * spec.batch_size)
            batch, _ = make_batch(train_cfg, "train", idx, TRAIN_SEQ)
            lr = lr_at(i, spec.steps, spec.lr)
            params, opt_state, loss, _, _ = step(graphdef, rest, params, opt_state, batch, lr)
            losses.append(loss)
            if log_every and (i + 1) % log_every == 0:
                recent = np.mean(jax.device_get(losses[-log_every:]))
                print(f"ours step {i + 1}: loss {recent:.4f} {time.perf_counter() - t0:.0f} s", flush=True)
        losses = [float(x) for x in jax.device_get(losses)]
        train_s = time.perf_counter() - t0

        def evaluate(cfg):
            n, b = spec.eval_examples, spec.batch_size
            return accuracy(graphdef, rest, params, opt_state, cfg, n=n, seq_len=spec.eval_len[1], batch_size=b)

    right, answers, lengths = evaluate(spec.data(EVAL_SEED, spec.eval_len))
    r_in, a_in, _ = evaluate(spec.data(EVAL_SEED, spec.train_len))
    row = {
        "impl": impl,
        "key": spec.key,
        "steps": spec.steps,
        "lr": spec.lr,
        "seed": spec.seed,
        "init": f"official reset_parameters, torch.manual_seed({spec.seed})",
        "seq_acc": float(np.mean(right == answers)),
        "seq_acc_train_len": float(np.mean(r_in == a_in)),
        "final_loss": float(np.mean(losses[-max(1, len(losses) // 10) :])),
    }
    row.update(bucket_accuracies(right, answers, lengths, spec.eval_len))
    row.update(
        train_s=round(train_s, 1),
        wall_s=round(time.perf_counter() - t0, 1),
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        losses=[round(x, 6) for x in losses],
    )
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", choices=("official", "ours"), required=True)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-examples", type=int, default=128)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "official_side_by_side.jsonl")
    args = parser.parse_args(argv)
    spec = spec_for(args.steps, args.seed, args.lr, args.batch_size, args.eval_examples)
    row = side(args.impl, spec, args.log_every)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    summary = {k: v for k, v in row.items() if k != "losses"}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
