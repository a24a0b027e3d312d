"""Reproduce the xLSTM paper's formal-language and MQAR experiments at CPU scale, then report.

    python benchmarks/paper/reproduce.py                 # the full protocol (resumable), then the report
    python benchmarks/paper/reproduce.py --report-only   # tables, plots and README section from the JSONL
    python benchmarks/paper/reproduce.py --smoke --out /tmp/paper   # every code path, tiny sizes

Each finished run appends one JSON line to ``OUT/runs.jsonl``; runs whose key is already there are
skipped, so an interrupted protocol resumes where it stopped. Runs go in order of information:
parity and MQAR across models with seed 0 first (MQAR: the cheap settings first, each at every
width), then the other tasks, the second seed and the second learning rate. The compiles of the
runs to go happen first, two at a time. The report (``OUT/tables.md``, ``OUT/formal_languages.png``,
``OUT/mqar.png`` and the README section) is rewritten at least every minute and at the end.

``--smoke`` checks the code paths, not the numbers: it turns most XLA optimizations off, which
halves its compiles (the measured cost of a smoke run is compiling one step per model).
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
# One XLA thread per process: on a small, shared CPU the multi-threaded runtime spends its time
# waiting at barriers (measured: 1.7x faster steps, 1.8x faster compiles for these models).
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import jax  # noqa: E402
from experiments import FORMAL_TASKS, RunSpec, precompile, run  # noqa: E402
from report import load_rows, paste_section, write_report  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The grid. Formal runs use one model vocabulary (the largest task's) so tasks share compiles."""

    formal_tasks: tuple[str, ...]
    formal_models: tuple[str, ...]
    formal_width: int
    formal_lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    formal_steps: int
    formal_batch: int
    train_len: tuple[int, int]
    eval_len: tuple[int, int]
    eval_examples: int
    mqar_settings: tuple[tuple[int, int], ...]  # (context, kv pairs)
    mqar_models: tuple[str, ...]
    mqar_widths: tuple[int, ...]
    mqar_lr: float
    mqar_vocab: int
    mqar_steps: int
    mqar_batch: int
    mqar_eval_examples: int
    formal_vocab: int = 10  # modular arithmetic mod 5 (the largest task vocabulary)
    longer: tuple[tuple[str, str, float, int, int], ...] = ()  # (task, model, lr, steps, seed): longer training
    train_seq: int = 0  # formal training rows padded to this length (0: train_len[1])

    def _formal(self, task: str, model: str, lr: float, seed: int, steps: int | None = None) -> RunSpec:
        return RunSpec(
            task=task,
            model=model,
            width=self.formal_width,
            lr=lr,
            seed=seed,
            steps=steps or self.formal_steps,
            batch_size=self.formal_batch,
            eval_examples=self.eval_examples,
            train_len=self.train_len,
            eval_len=self.eval_len,
            model_vocab=self.formal_vocab,
            train_seq=self.train_seq,
        )

    def _mqar(
        self,
        context: int,
        pairs: int,
        model: str,
        width: int,
        lr: float | None = None,
        steps: int | None = None,
        seed: int | None = None,
    ):
        return RunSpec(
            task="mqar",
            model=model,
            width=width,
            lr=lr or self.mqar_lr,
            seed=self.seeds[0] if seed is None else seed,
            steps=steps or self.mqar_steps,
            batch_size=self.mqar_batch,
            eval_examples=self.mqar_eval_examples,
            train_len=(context, context),
            eval_len=(context, context),
            num_kv_pairs=pairs,
            mqar_vocab=self.mqar_vocab,
        )

    def longer_runs(self) -> list[RunSpec]:
        """The investigation: a few runs trained longer than the grid (MQAR tasks named ``mqar_c{context}_p{pairs}``,
        at the largest MQAR width)."""
        out = []
        for task, model, lr, steps, seed in self.longer:
            if task.startswith("mqar_c"):
                context, pairs = (int(v) for v in task.removeprefix("mqar_c").split("_p"))
                out.append(self._mqar(context, pairs, model, max(self.mqar_widths), lr, steps, seed))
            else:
                out.append(self._formal(task, model, lr, seed, steps))
        return out

    def runs(self) -> list[RunSpec]:
        """Every run, most informative first."""

        formal = self._formal

        mqar = self._mqar

        first_lr, first_seed = self.formal_lrs[0], self.seeds[0]
        order = [formal(t, m, first_lr, first_seed) for t in self.formal_tasks[:1] for m in self.formal_models]
        order += [  # the cheap settings first, each at every width (the widest first)
            mqar(c, p, m, w)
            for c, p in self.mqar_settings
            for w in sorted(self.mqar_widths, reverse=True)
            for m in self.mqar_models
        ]
        order += [formal(t, m, first_lr, first_seed) for t in self.formal_tasks[1:] for m in self.formal_models]
        order += [formal(t, m, first_lr, s) for s in self.seeds for t in self.formal_tasks for m in self.formal_models]
        order += [  # the other lrs task by task, every seed, so that each finished task has complete cells
            formal(t, m, lr, s)
            for lr in self.formal_lrs[1:]
            for t in self.formal_tasks
            for s in self.seeds
            for m in self.formal_models
        ]
        seen, unique = set(), []
        for spec in order:
            if spec.key not in seen:
                seen.add(spec.key)
                unique.append(spec)
        return unique

    def describe(self) -> str:
        """The protocol in words, for the README section."""
        c = ", ".join(f"({c}, {p})" for c, p in self.mqar_settings)
        return (
            f"**Protocol.** Two-block models of width {self.formal_width}: xLSTM[1:0] (two mLSTM blocks), "
            "xLSTM[0:1] (two sLSTM blocks), xLSTM[1:1] (mLSTM then sLSTM), one head each, and a causal "
            "Transformer (pre-LN, 2 heads, rotary positions, MLP x4; `benchmarks/paper/transformer.py`). "
            f"Formal languages ({', '.join(t.replace('_', ' ') for t in self.formal_tasks)}; modulus 5, cycle 5): "
            f"train on lengths {self.train_len[0]}-{self.train_len[1]} for {self.formal_steps} steps of batch "
            f"{self.formal_batch}, AdamW (0.9, 0.99), weight decay 0.1, clip 1, 10% warmup then cosine to 0.1 x lr, "
            f"lr in {{{', '.join(f'{lr:g}' for lr in self.formal_lrs)}}}, seeds {{{', '.join(map(str, self.seeds))}}}; "
            f"sequence accuracy on {self.eval_examples} held-out examples of lengths "
            f"{self.eval_len[0]}-{self.eval_len[1]} (one fixed set for all models), the lr selected per task and "
            f"model by held-out accuracy on the training lengths. MQAR: (context, key-value pairs) in {{{c}}}, "
            f"vocabulary {self.mqar_vocab}, widths {{{', '.join(map(str, self.mqar_widths))}}}, "
            f"{self.mqar_steps} steps of batch {self.mqar_batch}, lr {self.mqar_lr:g}, seed {self.seeds[0]}; "
            f"accuracy = share of the queries of {self.mqar_eval_examples} held-out examples answered right."
        )


FULL = Protocol(
    formal_tasks=("parity", "even_pairs", "modular_arithmetic", "cycle_navigation"),
    formal_models=("xlstm01", "xlstm11", "xlstm10", "transformer"),
    formal_width=64,
    formal_lrs=(3e-3, 1e-2),
    seeds=(0, 1),
    formal_steps=250,
    formal_batch=32,
    train_len=(3, 40),
    eval_len=(41, 256),
    eval_examples=128,
    mqar_settings=((64, 4), (128, 8), (256, 16)),
    mqar_models=("xlstm11", "xlstm10", "transformer"),
    mqar_widths=(32, 64),
    mqar_lr=3e-3,
    mqar_vocab=128,
    mqar_steps=300,
    mqar_batch=32,
    mqar_eval_examples=256,
    longer=(
        ("parity", "xlstm01", 3e-3, 2000, 0),
        ("parity", "xlstm10", 3e-3, 2000, 0),
        ("mqar_c64_p4", "xlstm10", 3e-3, 1200, 0),
        ("parity", "xlstm11", 3e-3, 2000, 0),
        ("parity", "transformer", 3e-3, 2000, 0),
        ("mqar_c64_p4", "transformer", 3e-3, 1200, 0),
        ("mqar_c64_p4", "transformer", 1e-2, 1200, 0),  # is the Transformer's plateau its learning rate?
        ("mqar_c64_p4", "transformer", 1e-3, 1200, 0),
        ("parity", "xlstm01", 3e-3, 2000, 1),  # does sLSTM solve parity at another seed?
        ("parity", "xlstm11", 3e-3, 4000, 0),  # does xLSTM[1:1] (77% on the training lengths at 2,000) finish?
        ("mqar_c64_p4", "transformer", 3e-3, 4800, 0),  # does the Transformer leave its plateau at all?
        ("mqar_c128_p8", "xlstm11", 3e-3, 1200, 0),  # the next setting, trained as long as (64, 4) needed
        ("mqar_c64_p4", "transformer_h4", 3e-3, 2400, 0),  # the plateau, fix 1: more heads (head size 16)
        ("mqar_c64_p4", "transformer_h1", 3e-3, 2400, 0),  # fix 2: one head of size 64 (Zoology's attention)
        ("mqar_c64_p4", "transformer_conv", 3e-3, 1200, 0),  # fix 3: the short causal conv the xLSTM blocks have
    ),
)

SMOKE = Protocol(
    formal_tasks=FORMAL_TASKS,
    formal_models=("xlstm01", "xlstm11", "xlstm10", "transformer"),
    formal_width=16,
    formal_lrs=(3e-3,),
    seeds=(0,),
    formal_steps=2,
    formal_batch=4,
    train_len=(3, 12),
    eval_len=(13, 24),
    train_seq=24,  # = the evaluation length and the MQAR context: one compile per model
    eval_examples=7,  # not a multiple of the batch: the last evaluation batch is cut
    mqar_settings=((24, 2),),
    mqar_models=("xlstm11", "xlstm10", "transformer"),
    mqar_widths=(16,),
    mqar_lr=3e-3,
    mqar_vocab=10,
    mqar_steps=2,
    mqar_batch=4,
    mqar_eval_examples=7,
    longer=(("parity", "xlstm01", 3e-3, 3, 0), ("mqar_c24_p2", "xlstm10", 3e-3, 3, 1)),
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, every code path, under a minute")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder (default: %(default)s)")
    parser.add_argument("--report-only", action="store_true", help="only regenerate the report from OUT/runs.jsonl")
    parser.add_argument("--max-runs", type=int, default=None, help="stop after this many new runs")
    parser.add_argument(
        "--only",
        choices=("formal", "mqar", "longer"),
        default=None,
        help="run one part: the formal grid, MQAR or the longer runs (processes can share OUT)",
    )
    parser.add_argument("--match", default="", help="only the runs whose key contains this text")
    args = parser.parse_args(argv)
    # Compiles dominate short runs on a CPU: keep them across processes (resumes, the smoke test).
    cache = os.environ.get("XLSTM_PAPER_JIT_CACHE", str(Path.home() / ".cache" / "xlstm_jax_paper_jit"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    if args.smoke:
        jax.config.update("jax_disable_most_optimizations", True)
    protocol = SMOKE if args.smoke else FULL
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "runs.jsonl"
    readme = HERE / "README_section.md" if out.resolve() == (HERE / "results").resolve() else out / "README_section.md"
    command = "python benchmarks/paper/reproduce.py" + (" --smoke" if args.smoke else "")

    def report():
        keys = [spec.key for spec in protocol.runs()]
        longer = [spec.key for spec in protocol.longer_runs()]
        write_report(load_rows(jsonl), out, readme, protocol.describe(), command + " [--report-only]", keys, longer)
        if readme == HERE / "README_section.md":  # the committed results: the repository README shows them
            paste_section(HERE.parents[1] / "README.md", readme.read_text())

    if args.report_only:
        report()
        return
    running = out / f"RUNNING.{os.getpid()}"
    running.write_text(f"{os.getpid()}\n")
    try:
        done = {row["key"] for row in load_rows(jsonl)}
        parts = {
            "formal": [s for s in protocol.runs() if s.experiment == "formal"],
            "mqar": [s for s in protocol.runs() if s.experiment == "mqar"],
            "longer": protocol.longer_runs(),
        }
        specs = protocol.runs() + protocol.longer_runs() if args.only is None else parts[args.only]
        todo = [s for s in specs if s.key not in done and args.match in s.key][: args.max_runs]
        start = time.perf_counter()
        print(f"{len(done)} runs done, {len(todo)} to go on {jax.devices()[0].platform}", flush=True)
        if todo:
            compiled = precompile(todo)
            print(f"{compiled} step functions compiled in {time.perf_counter() - start:.0f} s", flush=True)
        reported = time.perf_counter()
        for n, spec in enumerate(todo, 1):
            row = run(spec)
            with jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")
            elapsed = time.perf_counter() - start
            print(
                f"[{n}/{len(todo)} {elapsed / 60:.1f} min] {spec.key}: sequence acc {row['seq_acc']:.3f}"
                + (f" query acc {row['query_acc']:.3f}" if spec.experiment == "mqar" else "")
                + (f" (train lengths {row['seq_acc_train_len']:.3f})" if "seq_acc_train_len" in row else "")
                + f" loss {row['final_loss']:.3f} {row['wall_s']:.0f} s",
                flush=True,
            )
            if time.perf_counter() - reported > 60:
                report()
                reported = time.perf_counter()
        report()
    finally:
        running.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
