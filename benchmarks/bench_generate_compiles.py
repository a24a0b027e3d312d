"""Compiles and first-token latency of ``xlstm_jax.generate`` over 10 varied interactive calls,
before and after the shape buckets and traced sampling settings.

Run from the repository root (prints one JSON object; ``--out`` also writes it)::

    nice -n 10 python benchmarks/bench_generate_compiles.py --out benchmarks/results_generate_compiles_cpu.json

Model: ``xLSTMLarge`` with D=64, 2 blocks, 2 heads, vocab 256, chunk 16, random init, float32
(small: the point is the number of compiles and their cost, not the model's speed).

The 10 calls: one prompt each of lengths 5, 9, 12, 3, 14, 7, 11, 6, 13, 8 tokens and
max_new_tokens 8, 12, 5, 16, 9, 7, 14, 10, 6, 11; greedy for the first call, then sampling with
temperature / top_k / top_p changing on every call (0.7/20/0.9, 1.0/None/None, 0.9/5/None,
...), ``rng`` fixed.

* ``before``: ``xlstm_jax/generation.py`` as of commit ``--before`` (default ``60f83d4``, the
  last one before the buckets), loaded from ``git show`` into a private module: one compiled
  program per (prompt length, new tokens, temperature, top_k, top_p).
* ``after``: the working tree's ``xlstm_jax.generate``.

Per call: ``compiles`` (XLA backend compiles during the call, counted with
``jax.monitoring``: the decode programs and any small eager op that compiles), ``call_s`` (wall
time of the whole call, results on the host) and ``first_token_s`` (wall time until the first
generated token is on the host: for ``before`` the whole call, as it returns all tokens at
once; for ``after`` the first chunk of ``xlstm_jax.generation.stream(chunk_size=1)``, a
separate call with the same arguments made before the ``generate`` call, so its compiles are
counted in ``first_token_compiles``). Totals at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

ROOT = Path(__file__).resolve().parents[1]
PROMPT_LENGTHS = (5, 9, 12, 3, 14, 7, 11, 6, 13, 8)
NEW_TOKENS = (8, 12, 5, 16, 9, 7, 14, 10, 6, 11)
SETTINGS = (
    dict(temperature=0.0),
    dict(temperature=0.7, top_k=20, top_p=0.9),
    dict(temperature=1.0),
    dict(temperature=0.9, top_k=5),
    dict(temperature=0.8, top_p=0.8),
    dict(temperature=1.2, top_k=40, top_p=0.95),
    dict(temperature=0.6, top_k=10),
    dict(temperature=1.1, top_p=0.7),
    dict(temperature=0.5, top_k=3, top_p=0.99),
    dict(temperature=0.95),
)

_compiles = [0]


def _count(name: str, *_args, **_kwargs) -> None:
    if name == "/jax/core/compile/backend_compile_duration":
        _compiles[0] += 1


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def old_generate(ref: str):
    source = git("show", f"{ref}:xlstm_jax/generation.py")
    path = Path(tempfile.mkdtemp()) / "old_generation.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_generation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate


def model():
    from xlstm_jax.models.xlstm_large import xLSTMLarge, xLSTMLargeConfig

    cfg = xLSTMLargeConfig(embedding_dim=64, num_heads=2, num_blocks=2, vocab_size=256, chunk_size=16)
    return xLSTMLarge(cfg, rngs=nnx.Rngs(0))


def timed(fn, *args, **kwargs):
    before = _compiles[0]
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    jax.block_until_ready(out)
    return out, time.perf_counter() - t0, _compiles[0] - before


def first_chunk(stream, *args, **kwargs):
    return next(iter(stream(*args, chunk_size=1, **kwargs)))


def run(name: str, m, generate, stream=None) -> dict:
    rng = np.random.default_rng(0)
    calls = []
    for n, new, settings in zip(PROMPT_LENGTHS, NEW_TOKENS, SETTINGS):
        prompt = [rng.integers(0, 256, n).tolist()]
        kwargs = dict(settings, rng=jax.random.key(1))
        row = dict(prompt_length=n, max_new_tokens=new, **settings)
        if stream is not None:
            _, row["first_token_s"], row["first_token_compiles"] = timed(first_chunk, stream, m, prompt, new, **kwargs)
        _, row["call_s"], row["compiles"] = timed(generate, m, prompt, new, **kwargs)
        if stream is None:
            row["first_token_s"] = row["call_s"]
        calls.append(row)
        print(name, json.dumps(row), file=sys.stderr)
    total = {k: sum(c.get(k, 0) for c in calls) for k in ("compiles", "first_token_compiles")}
    return dict(
        calls=calls,
        total_compiles=total["compiles"] + total["first_token_compiles"],
        generate_compiles=total["compiles"],
        median_first_token_s=float(np.median([c["first_token_s"] for c in calls])),
        median_call_s=float(np.median([c["call_s"] for c in calls])),
        total_call_s=float(sum(c["call_s"] for c in calls)),
    )


def one_side(side: str, before_ref: str) -> dict:
    """``before`` or ``after``, in this process (``main`` runs each in a fresh one, so that
    neither reuses the other's compiled programs)."""
    jax.monitoring.register_event_duration_secs_listener(_count)
    m = model()
    if side == "before":
        return run(side, m, old_generate(before_ref))
    from xlstm_jax.generation import generate, stream

    return run(side, m, generate, stream)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="60f83d4", help="commit whose xlstm_jax/generation.py is 'before'")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--side", choices=("before", "after"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(one_side(args.side, args.before)))
        return

    def side(name):
        cmd = [sys.executable, __file__, "--side", name, "--before", args.before]
        return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)

    result = dict(
        benchmark="generate_compiles",
        before_ref=args.before,
        commit=git("rev-parse", "--short", "HEAD"),
        jax=jax.__version__,
        backend=jax.default_backend(),
        machine=platform.machine(),
        before=side("before"),
        after=side("after"),
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
