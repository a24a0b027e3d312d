"""Tables, plots and the README section from the JSONL of finished runs.

Formal languages: per (task, model) the learning rate is chosen by the mean held-out accuracy on
the *training* lengths (not on the evaluation lengths it is scored on); the cell is the mean ±
std over seeds of the sequence accuracy on the long evaluation lengths at that learning rate.
MQAR: accuracy is the share of held-out queries answered right (as Zoology and the paper), per
(context, pairs, model, width) at the best learning rate.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
from experiments import FORMAL_TASKS, MODEL_NAMES, MODELS

PUBLISHED = """\
Published reference (same protocol at full scale, 100k steps, 5 seeds; sequence accuracy in %):

| model | parity | cycle navigation | modular arithmetic | even pairs |
|---|---|---|---|---|
| sLSTM (xLSTM[0:1]) | 100.0 ± 0.0 | 32.5 | 27.7 | 100.0 |
| xLSTM[1:1] | 100.0 ± 0.0 | 53.5 ± 5.6 | 29.3 ± 1.6 | 99.0 ± 1.9 |
| mLSTM (xLSTM[1:0]) | 53.0 ± 2.1 | 52.4 ± 10.5 | 28.8 ± 3.1 | 99.9 ± 0.1 |
| Transformer | 52.2 ± 0.4 | - | - | - |
"""


def load_rows(path: Path) -> list[dict]:
    """The JSONL rows; a later row with the same key replaces an earlier one."""
    rows = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["key"]] = row
    return list(rows.values())


def load_side_by_side(path: Path) -> list[dict]:
    """official_side_by_side.py rows; a later row of the same arm, steps, seed and lr replaces an earlier one."""
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[(row["impl"], row["steps"], row["seed"], row["lr"])] = row
    return list(rows.values())


def _pct(values) -> str:
    values = np.asarray(values, np.float64) * 100
    if len(values) == 1:
        return f"{values[0]:.1f} (n=1)"
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f} (n={len(values)})"


def _best_lr(runs: list[dict], select: str) -> list[dict]:
    """The runs (one per seed) of the learning rate with the best mean ``select``."""
    by_lr = defaultdict(list)
    for r in runs:
        by_lr[r["lr"]].append(r)
    return max(by_lr.values(), key=lambda rs: (np.mean([r[select] for r in rs]), len(rs)))


def formal_cells(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """(task, model) -> {"long", "train_len", "lr", "runs"} at the selected learning rate."""
    groups = defaultdict(list)
    for r in rows:
        if r["experiment"] == "formal":
            groups[(r["task"], r["model"])].append(r)
    cells = {}
    for key, runs in groups.items():
        best = _best_lr(runs, "seq_acc_train_len")
        cells[key] = {
            "long": [r["seq_acc"] for r in best],
            "train_len": [r["seq_acc_train_len"] for r in best],
            "lr": best[0]["lr"],
            "runs": best,
        }
    return cells


def mqar_cells(rows: list[dict]) -> dict[tuple[int, int, str, int], dict]:
    """(context, pairs, model, width) -> {"acc", "lr"} at the best learning rate."""
    groups = defaultdict(list)
    for r in rows:
        if r["experiment"] == "mqar":
            groups[(r["train_len"][1], r["num_kv_pairs"], r["model"], r["width"])].append(r)
    cells = {}
    for key, runs in groups.items():
        best = _best_lr(runs, "query_acc")
        cells[key] = {"acc": [r["query_acc"] for r in best], "lr": best[0]["lr"]}
    return cells


def formal_table(cells, field: str) -> str:
    tasks = [t for t in FORMAL_TASKS if any(k[0] == t for k in cells)]
    lines = ["| model | " + " | ".join(t.replace("_", " ") for t in tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for m in MODELS:
        if not any(k[1] == m for k in cells):
            continue
        row = [_pct(cells[(t, m)][field]) + f" @ {cells[(t, m)]['lr']:g}" if (t, m) in cells else "-" for t in tasks]
        lines.append(f"| {MODEL_NAMES[m]} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def bucket_table(rows: list[dict], cells) -> str:
    """Accuracy per evaluation-length bucket at the selected learning rate (mean over seeds)."""
    buckets = sorted({k for r in rows for k in r if k.startswith("seq_acc_") and k != "seq_acc_train_len"})
    buckets.sort(key=lambda k: int(k.split("_")[2]))
    head = ["train lengths", *[k.removeprefix("seq_acc_").replace("_", "-") for k in buckets]]
    lines = ["| task | model | " + " | ".join(head) + " |", "|---" * (len(head) + 2) + "|"]
    for t in FORMAL_TASKS:
        for m in MODELS:
            if (t, m) not in cells:
                continue
            runs = cells[(t, m)]["runs"]
            vals = [np.mean([r["seq_acc_train_len"] for r in runs])]
            vals += [np.mean([r.get(k, np.nan) for r in runs]) for k in buckets]
            lines.append(
                f"| {t.replace('_', ' ')} | {MODEL_NAMES[m]} | " + " | ".join(f"{100 * v:.1f}" for v in vals) + " |"
            )
    return "\n".join(lines)


def longer_table(rows: list[dict]) -> str:
    """Formal runs: accuracy on the training lengths and per evaluation bucket; MQAR runs: query accuracy."""
    buckets = sorted(
        {k for r in rows for k in r if k.startswith("seq_acc_") and k[8].isdigit()}, key=lambda k: int(k.split("_")[2])
    )
    head = [
        "steps x batch",
        "lr",
        "seed",
        "train lengths / MQAR queries",
        *[k.removeprefix("seq_acc_").replace("_", "-") for k in buckets],
    ]
    lines = ["| task | model | " + " | ".join(head) + " |", "|---" * (len(head) + 2) + "|"]
    for r in rows:
        if r["experiment"] == "mqar":
            task = f"MQAR {r['train_len'][1]}, {r['num_kv_pairs']} (d={r['width']})"
            accs = [f"{100 * r['query_acc']:.1f}", *["-" for _ in buckets]]
        else:
            task = r["task"].replace("_", " ")
            accs = [f"{100 * r[k]:.1f}" if k in r else "-" for k in ("seq_acc_train_len", *buckets)]
        cells = [f"{r['steps']} x {r['batch_size']}", f"{r['lr']:g}", str(r["seed"]), *accs]
        lines.append(f"| {task} | {MODEL_NAMES[r['model']]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SIDE_BY_SIDE = "official_side_by_side.jsonl"  # written by official_side_by_side.py
LOSS_AT = (20, 100, 250, 500, 1000, 1500, 2000, 3000, 4000)  # training-loss columns (mean of the 20 steps up to)


def side_by_side_table(rows: list[dict]) -> str:
    """official_side_by_side.py rows: per arm the training loss along the run, the step at which the
    two arms' losses first differ by more than 1e-3, and the held-out accuracies."""
    buckets = sorted(
        {k for r in rows for k in r if k.startswith("seq_acc_") and k[8].isdigit()}, key=lambda k: int(k.split("_")[2])
    )
    steps = [n for n in LOSS_AT if n <= max(r["steps"] for r in rows)]
    head = [
        "arm",
        "steps",
        *[f"loss @{n}" for n in steps],
        "arms apart (>1e-3) at step",
        "train lengths",
        *[k.removeprefix("seq_acc_").replace("_", "-") for k in buckets],
        "wall s",
    ]
    by_run = defaultdict(dict)
    for r in rows:
        by_run[(r["steps"], r["seed"], r["lr"])][r["impl"]] = r
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for run in sorted(by_run):
        arms = by_run[run]
        apart = "-"
        if len(arms) == 2:
            diff = np.abs(np.subtract(arms["official"]["losses"], arms["ours"]["losses"]))
            apart = str(int(np.argmax(diff > 1e-3)) + 1) if (diff > 1e-3).any() else "never"
        for impl in ("official", "ours"):
            if impl not in arms:
                continue
            r = arms[impl]
            losses = [f"{np.mean(r['losses'][n - 20 : n]):.3f}" if n <= r["steps"] else "-" for n in steps]
            accs = [f"{100 * r[k]:.1f}" if k in r else "-" for k in ("seq_acc_train_len", *buckets)]
            name = "official PyTorch" if impl == "official" else "this project"
            lines.append(
                f"| {name} | {r['steps']} | " + " | ".join([*losses, apart, *accs, f"{r['wall_s']:.0f}"]) + " |"
            )
    return "\n".join(lines)


def mqar_table(cells) -> str:
    settings = sorted({(c, p) for c, p, _, _ in cells})
    columns = sorted({(m, w) for _, _, m, w in cells}, key=lambda mw: (MODELS.index(mw[0]), mw[1]))
    lines = [
        "| context, pairs | " + " | ".join(f"{MODEL_NAMES[m]} d={w}" for m, w in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for c, p in settings:
        row = [_pct(cells[(c, p, m, w)]["acc"]) if (c, p, m, w) in cells else "-" for m, w in columns]
        lines.append(f"| {c}, {p} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_formal(cells, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in FORMAL_TASKS if any(k[0] == t for k in cells)]
    models = [m for m in MODELS if any(k[1] == m for k in cells)]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / max(len(models), 1)
    for j, m in enumerate(models):
        means = [100 * np.mean(cells[(t, m)]["long"]) if (t, m) in cells else np.nan for t in tasks]
        stds = [100 * np.std(cells[(t, m)]["long"]) if (t, m) in cells else 0 for t in tasks]
        ax.bar(np.arange(len(tasks)) + j * width, means, width, yerr=stds, label=MODEL_NAMES[m], capsize=2)
    ax.set_xticks(np.arange(len(tasks)) + width * (len(models) - 1) / 2, [t.replace("_", " ") for t in tasks])
    ax.set_ylabel("sequence accuracy (%), long lengths")
    ax.set_ylim(0, 100)
    ax.axhline(50, color="gray", lw=0.5, ls="--")
    ax.legend(fontsize=7, ncol=len(models))
    fig.tight_layout()
    tmp = path.with_name(f".{os.getpid()}.{path.name}")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
    plt.close(fig)


def plot_mqar(cells, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({(c, p) for c, p, _, _ in cells})
    fig, axes = plt.subplots(1, max(len(settings), 1), figsize=(3.2 * max(len(settings), 1), 3), squeeze=False)
    for ax, (c, p) in zip(axes[0], settings):
        for m in MODELS:
            widths = sorted(w for cc, pp, mm, w in cells if (cc, pp, mm) == (c, p, m))
            if widths:
                acc = [100 * np.mean(cells[(c, p, m, w)]["acc"]) for w in widths]
                ax.plot(widths, acc, marker="o", label=MODEL_NAMES[m])
        ax.set_title(f"context {c}, {p} pairs", fontsize=9)
        ax.set_xlabel("model width")
        ax.set_ylim(-2, 102)
    axes[0][0].set_ylabel("held-out accuracy (%)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{os.getpid()}.{path.name}")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
    plt.close(fig)


def write_report(
    rows: list[dict], out: Path, readme: Path, protocol_text: str, command: str, keys=None, longer_keys=()
) -> None:
    """tables.md, formal_languages.png and mqar.png in ``out``; the README section at ``readme``.

    ``keys``: only rows of these run keys count (rows of an earlier protocol stay in the JSONL);
    rows of ``longer_keys`` (formal runs trained longer) get a table of their own.
    """
    longer = [r for r in rows if r["key"] in set(longer_keys)]
    finished = {r["key"] for r in rows}
    missing = [k for k in [*(keys or []), *longer_keys] if k not in finished]
    if keys is not None:
        rows = [r for r in rows if r["key"] in set(keys)]
    out.mkdir(parents=True, exist_ok=True)
    formal, mqar = formal_cells(rows), mqar_cells(rows)
    wall = sum(r["wall_s"] for r in rows)
    tables = "\n\n".join(
        [
            "### Formal languages: sequence accuracy (%) on the long evaluation lengths, mean ± std over seeds "
            "@ the learning rate selected on the training lengths",
            formal_table(formal, "long") if formal else "(no runs yet)",
            "### Formal languages: held-out sequence accuracy (%) on the training lengths and per evaluation length",
            bucket_table(rows, formal) if formal else "(no runs yet)",
            "### MQAR: held-out accuracy (%) of the queries",
            mqar_table(mqar) if mqar else "(no runs yet)",
            "### Longer training: held-out accuracy (%) on the training lengths (MQAR: of the queries) and "
            "per evaluation length",
            longer_table(longer) if longer else "(no runs yet)",
            *(
                [
                    "### xLSTM[1:1] on parity beside the official PyTorch model (same weights, batches, optimizer; "
                    "`official_side_by_side.py`): training loss and held-out sequence accuracy (%)",
                    side_by_side_table(load_side_by_side(out / SIDE_BY_SIDE)),
                ]
                if (out / SIDE_BY_SIDE).exists()
                else []
            ),
            f"{len(rows) + len(longer)} runs, {(wall + sum(r['wall_s'] for r in longer)) / 60:.1f} min of run wall "
            "time in total."
            + (f" Not finished (absent from the tables): {', '.join(f'`{k}`' for k in missing)}." if missing else ""),
        ]
    )
    _write(out / "tables.md", tables + "\n")
    if formal:
        plot_formal(formal, out / "formal_languages.png")
    if mqar:
        plot_mqar(mqar, out / "mqar.png")
    discussion = Path(__file__).with_name("discussion.md")
    parts = ["## Paper results", protocol_text, f"Regenerate: `{command}`", tables, PUBLISHED]
    if discussion.exists():
        parts.append(discussion.read_text().strip())
    _write(readme, "\n\n".join(p.strip() for p in parts) + "\n")


MARKERS = ("<!-- paper-results:start -->", "<!-- paper-results:end -->")


def paste_section(readme: Path, section: str) -> None:
    """Replace the text between the paper-results markers of ``readme`` by ``section``."""
    text = readme.read_text()
    start, end = text.find(MARKERS[0]), text.find(MARKERS[1])
    if start < 0 or end < start:
        raise ValueError(f"{readme} must hold the lines {MARKERS[0]} and then {MARKERS[1]}")
    _write(readme, text[: start + len(MARKERS[0])] + "\n" + section.strip() + "\n" + text[end:])


def _write(path: Path, text: str) -> None:
    """Write through a temporary file and a rename (two run processes may report at once)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
