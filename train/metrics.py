"""What a user sees: a progress bar or plain progress lines, JSONL metrics, TensorBoard events, MFU.

Progress: a ``tqdm`` bar (``tqdm.auto``: a widget in notebooks, text in terminals) with loss,
tokens/s, MFU and the ETA; plain lines when the output is not a terminal (logs, CI). Only process
0 writes; every other process gets a no-op logger.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from xlstm_jax._validation import check_choice

from .config import ConfigError

# Dense bfloat16 peak FLOP/s per device, for the MFU estimate (vendor figures).
_PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def device_peak_flops() -> tuple[float, str]:
    """Peak FLOP/s of one local device and where the figure comes from.

    Accelerators: the vendor's dense bf16 figure. CPU: a float32 matmul measured now
    (the whole host, since XLA's CPU client is one device using every core).
    """
    device = jax.local_devices()[0]
    for name, flops in _PEAK_FLOPS.items():
        if device.device_kind.startswith(name):
            return flops, f"{name} bf16 peak"
    if device.platform != "cpu":
        return float("nan"), f"unknown peak for {device.device_kind}"
    x = jnp.ones((1024, 1024), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    matmul(x).block_until_ready()
    start = time.perf_counter()
    for _ in range(5):
        matmul(x).block_until_ready()
    return 5 * 2 * 1024**3 / (time.perf_counter() - start), "measured 1024^2 float32 matmul"


class Logger:
    """Console progress, ``metrics.jsonl`` and TensorBoard events under ``out_dir``."""

    def __init__(
        self,
        out_dir: str | Path,
        total_steps: int,
        *,
        tensorboard: bool,
        enabled: bool,
        run_id: str | None = None,
        progress: str | bool | None = None,
    ):
        self.enabled, self.total, self.run_id = enabled, total_steps, run_id
        self.progress = progress_mode(progress)
        self.history: list[dict] = []  # every row written to metrics.jsonl by this logger
        self.start = time.perf_counter()
        self.bar = None
        if not enabled:
            return
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(out / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115 - closed in close()
        self.tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))

    def log(self, step: int, metrics: dict, *, kind: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if np.ndim(v) == 0 else np.asarray(v).tolist()) for k, v in metrics.items()}
        row = {"kind": kind, "step": step, "time": time.time(), "run_id": self.run_id, **clean}
        self.history.append(row)
        self.jsonl.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in clean.items():
                if isinstance(value, float) and math.isfinite(value):
                    self.tb.add_scalar(f"{kind}/{key}", value, step)
        if kind == "train":
            self._progress(step, clean)
        else:
            parts = "  ".join(f"{k} {v:.4g}" for k, v in clean.items() if isinstance(v, float))
            self.message(f"[{kind} @ step {step}] {parts}")

    def begin(self, step: int) -> None:
        """The loop starts at ``step`` (0, or the step a resume continues from)."""
        self.start, self.first_step = time.perf_counter(), step
        if self.enabled and self.progress == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=step, unit="step", dynamic_ncols=True, file=sys.stdout)

    def _progress(self, step: int, m: dict) -> None:
        if self.progress == "off":
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            postfix = {"loss": f"{m.get('loss', math.nan):.4f}", "tok/s": f"{m.get('tokens_per_s', math.nan):,.0f}",
                       "mfu": f"{m.get('mfu', math.nan):.1%}"}  # fmt: skip
            if m.get("skipped_steps"):
                postfix["skipped"] = int(m["skipped_steps"])
            self.bar.set_postfix(postfix, refresh=True)
            return
        done = step / max(self.total, 1)
        first = getattr(self, "first_step", 0)
        elapsed = time.perf_counter() - self.start
        eta = elapsed / (step - first) * (self.total - step) if step > first else float("nan")
        bar = "#" * int(20 * done) + "-" * (20 - int(20 * done))
        line = (
            f"[{bar}] step {step}/{self.total}  loss {m.get('loss', float('nan')):.4f}  "
            f"tok/s {m.get('tokens_per_s', float('nan')):,.0f}  lr {m.get('lr', float('nan')):.2e}  "
            f"gnorm {m.get('grad_norm', float('nan')):.3f}  mfu {m.get('mfu', float('nan')):.1%}  "
            f"eta {_fmt_time(eta)}"
        )
        if m.get("skipped_steps"):
            line += f"  skipped {int(m['skipped_steps'])}"
        print(line, flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if not self.enabled or self.jsonl.closed:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()


PROGRESS_MODES = ("bar", "lines", "off")


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None and hasattr(shell, "get_ipython") else None
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def progress_mode(progress: str | bool | None) -> str:
    """``None``/``"auto"``: a bar in terminals and notebooks, plain lines otherwise; ``True`` a bar,
    ``False`` nothing; or one of ``PROGRESS_MODES``."""
    if progress is None or progress == "auto":
        return "bar" if sys.stdout.isatty() or _in_notebook() else "lines"
    if isinstance(progress, bool):
        return "bar" if progress else "off"
    check_choice("progress", progress, (*PROGRESS_MODES, "auto"), error=ConfigError)
    return progress


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
