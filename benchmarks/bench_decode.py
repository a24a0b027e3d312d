"""Benchmark text generation with xLSTM-large: ours (JAX) against the official step loop and HF ``generate``.

Run from the repository root::

    python benchmarks/bench_decode.py            # full run (about 5-10 minutes on an idle 2-core CPU)
    python benchmarks/bench_decode.py --quick    # smoke test: small sizes, 1 rep, short idle waits
                                                 # (its numbers are noise: one short (N, 2N) pair)
    python benchmarks/bench_decode.py --reps 7

Model: xLSTM-large (the xLSTM-7B architecture) with D=256, 4 blocks, 4 heads, vocab 1024,
official defaults otherwise (qk_dim_factor 0.5, v_dim_factor 1, SwiGLU 2.667, chunk 64, soft
caps 15 / 30), float32. The SAME weights in all three implementations: the 7B init recipe plus
N(0, 0.1) noise on every tensor, input-gate biases N(0, 1) (``perturbed_weights`` of
``tests/xlstm_large_cases.py``, seed 0), loaded into

* ``ours``: ``xlstm_jax.models.xlstm_large.xLSTMLarge`` via
  ``xlstm_jax.convert.from_torch_xlstm_large`` (chunkwise prefill, ``scan_blocks``), driven by
  ``xlstm_jax.generate`` (greedy): prefill + the whole decode loop in one jitted
  ``lax.while_loop``, compiled once per (batch, prompt length, new tokens); the loop runs the
  model's decode form (``model.decode_form()``: per-block fused weights, copied once per call).
* ``official_step_loop``: the official torch ``xlstm.xlstm_large.model.xLSTMLarge`` on CPU with
  the native kernels (chunkwise--native_autograd / native_sequence__native / native step,
  mode="inference", return_last_states=True, autocast_kernel_dtype="float32"), driven by its own
  ``model.generate`` (``xlstm/xlstm_large/generate.py``: greedy, one forward of the whole prompt,
  then one token per forward, under ``torch.no_grad``).
* ``hf_generate``: ``transformers.xLSTMForCausalLM.from_pretrained`` of the checkpoint that
  ``xlstm_jax.save_pretrained`` wrote for our model, ``generate(do_sample=False,
  max_new_tokens=N, min_new_tokens=N, eos_token_id=None)`` under ``torch.no_grad``.

torch runs with ``torch.set_num_threads(<cores>)`` (2 here); XLA uses its own pool of the same
size. Everything runs in one process.

Method
------
Decode (``mode="decode"``): every implementation is timed generating ``N`` and ``2N`` new tokens
after the same prompt, and the time of ``N`` decode steps is ``t(2N) - t(N)``: the prefill,
the Python/launch overhead of one call, the output copy and the first sampled token are the
same in both calls and cancel. The two lengths are timed alternately (``--reps`` pairs, the
order swapped every pair) and ``median_s`` is the MEDIAN OF THE PAIRED DIFFERENCES;
``median_s_n`` / ``median_s_2n`` are the medians of the two call lengths on their own, and
``median_s_diff_of_medians`` is their difference (a cross-check). Then ``per_token_ms =
median_s / N`` (time of one decode step, i.e. one new token for every row of the batch) and
``tokens_per_s = batch * N / median_s`` (tokens generated per second over the whole batch).
Lengths: ``--n-torch`` (128) for the two torch loops, ``--n-ours`` (1024) for ours (ours is
much faster per step; the larger ``N`` keeps the difference well above the timer and launch
noise; every call stays around a second or less). The speedup / batch comparisons use a short
prompt (``--prompt-len``, 64), so the torch calls are dominated by decoding. ``ours`` is also
timed after a 1024-token and an 8192-token prompt at batch 1 (``--long-prompts``) with
``--n-long`` (2048) new tokens: there the prefill is part of both calls and only cancels in the
difference, so a longer ``N`` keeps the difference large compared with the prefill's
run-to-run jitter. The ratio of these two per-token times is the 8k/1k target (a recurrent
model's decode step should not depend on the prompt length).

Prefill (``mode="prefill"``, batch 1, prompt 1024 and 8192): one forward over the prompt
returning the logits of every position and the final recurrent state: ours
``jax.jit(lambda params, ids: nnx.merge(graphdef, params)(ids, return_state=True))`` compiled
ahead of time (``compile_s`` = trace + lower + compile); official ``model(ids)`` (which returns
the state as ``return_last_states=True``); HF ``model(ids, use_cache=True)``.
``tokens_per_s = batch * prompt_len / median_s``. The torch 8192-token prefill is measured
ONCE (after the 1024 case warmed it up); ours with ``--reps`` calls.

``compile_s`` for ours' decode rows: time of the first ``generate`` call (trace + compile + one
run) minus the median of the later calls of the same length, for the ``N`` call
(``compile_s_2n``: the ``2N`` call). Torch has no compile step (``compile_s`` null).

Timing hygiene (docs/design.md §Benchmarks; helpers in ``_timing.py``): before every
case the script waits until the machine's busy fraction is below ``--busy-threshold``
(``cpu_busy_before``, 0..1 of all cores, in the last 0.5 s window), measures the CPU used by
OTHER processes during the timed calls (``cpu_other_during``), and re-runs a contaminated case
up to ``--retries`` times, keeping the cleanest attempt; ``contaminated`` flags rows where even
that was above ``--contam-threshold`` or the idle wait timed out (``was_idle``).

Correctness (``bench="check"``, in the same run): greedy tokens of ours vs official vs HF for a
short prompt (batch 2, 13 tokens -- not a multiple of the chunk size -- and 32 new tokens),
``identical`` true/false and the first mismatch (row, position, tokens) if not, plus the
max |logit difference| of the prompt forward. The tokens of the batch-8 decode timing runs are
compared the same way (``check_decode_runs``; greedy decoding of nearly tied logits can
legitimately flip after many steps, so this one is informative).

Summary lines (``bench="summary"``): ``decode_speedup_vs_official`` at batch 1 and 8 (ours
tokens/s / official tokens/s measured in this run, target >= 20; also the ratio vs HF, at
batch 1 the ratio to the 124 tokens/s quoted for the official loop when the target was set, and
``ours_weight_stream_gb_per_s`` = float32 bytes of the parameters a decode step reads (all but
the embedding table) / ours' per-step time, i.e. the rate at which one step streams the weights),
``decode_per_token_ratio_8k_vs_1k`` (ours per-token time after the 8192-token prompt / after
the 1024-token prompt, target within 10%: ``|ratio - 1| <= 0.10``), ``prefill_tokens_per_s``
(per impl and prompt length, ours / official and ours / HF), and ``hygiene``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
for _p in (str(_HERE), str(_ROOT), str(_ROOT / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402

import _timing as T  # noqa: E402

THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
ARCH = dict(embedding_dim=256, num_heads=4, num_blocks=4, vocab_size=1024)
WEIGHT_SEED = 0
DECODE_TARGET = 20.0
PER_TOKEN_TOL = 0.10
ISSUE_OFFICIAL_TOKENS_PER_S = 124.0  # the official step loop's speed quoted when the target was set (batch 1)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def first_mismatch(a: np.ndarray, b: np.ndarray) -> dict | None:
    """None if equal, else the first (row, position) where two (B, N) token arrays differ."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return {"shape_a": list(a.shape), "shape_b": list(b.shape)}
    diff = np.argwhere(a != b)
    if diff.size == 0:
        return None
    # earliest position over all rows
    r, t = min(diff.tolist(), key=lambda rt: (rt[1], rt[0]))
    return {
        "row": int(r),
        "pos": int(t),
        "a": int(a[r, t]),
        "b": int(b[r, t]),
        "rows_differing": int(len(set(diff[:, 0].tolist()))),
    }


# --------------------------------------------------------------------------- #
# models
# --------------------------------------------------------------------------- #
def build_models(tmpdir: str):
    """(official torch model, ours, HF model) with the same weights."""
    from transformers import xLSTMForCausalLM

    from xlstm_jax.convert import from_torch_xlstm_large, save_pretrained
    from xlstm_large_cases import official_model, official_state_shapes, perturbed_weights

    weights = perturbed_weights(official_state_shapes(ARCH), ARCH, WEIGHT_SEED, noise=0.1, igate_bias="normal")
    official = official_model(ARCH, weights)  # float32, eval, native kernels, inference mode
    state_dict = {k: v.detach().clone() for k, v in official.state_dict().items()}
    ours = from_torch_xlstm_large(official.config, state_dict)
    save_pretrained(ours, tmpdir)
    hf = xLSTMForCausalLM.from_pretrained(tmpdir).float().eval()
    n_params = int(sum(int(np.prod(v.shape)) for v in weights.values()))
    return official, ours, hf, n_params


# --------------------------------------------------------------------------- #
# runner
# --------------------------------------------------------------------------- #
class Runner:
    def __init__(self, args):
        self.args = args
        self.rows: list[dict] = []
        self.n_params = None

    def emit(self, row):
        self.rows.append(row)
        T.emit(row)

    def wait_idle(self):
        a = self.args
        return T.wait_for_idle_cpu(threshold=a.busy_threshold, max_wait_s=a.max_idle_wait)

    def base(self, impl, mode, batch, prompt_len, new_tokens):
        return {
            "bench": mode,
            "impl": impl,
            "mode": mode,
            "batch": batch,
            "prompt_len": prompt_len,
            "new_tokens": new_tokens,
        }

    def error(self, base, text):
        row = dict(base)
        row.update({"error": text[-2000:], "median_s": None, "tokens_per_s": None, "per_token_ms": None})
        self.emit(row)
        log(f"  ERROR {base['impl']} {base['mode']} B={base['batch']} P={base['prompt_len']}:\n{text}")

    def _hygiene(self, idle, other):
        return T.hygiene_fields(idle, other, self.args.contam_threshold)

    def _attempts(self, measure, est_s):
        """Idle-wait + ``measure()`` under a CpuMonitor, re-run while contaminated (cleanest kept).

        ``est_s``: rough duration of one attempt (no re-runs above ``--no-retry-above-s``)."""
        a = self.args
        return T.measure_clean(measure, a, lambda _: est_s() > a.no_retry_above_s, log=log)

    # --------------------------------------------------------------- decode
    def decode_case(self, impl, batch, prompt, n, call, block=None, first_call_timed=False):
        """Time ``call(n)`` and ``call(2n)`` alternately; decode time of n steps = paired difference.

        ``call(k)`` returns (B, k) generated tokens (as numpy after ``block``). Returns
        (row, tokens of the last 2n call) or (None, None) on error.
        """
        a = self.args
        base = self.base(impl, "decode", batch, prompt.shape[1], n)
        block = block or (lambda x: x)
        compile_s = {}
        try:
            # warm-up: for ours this compiles both lengths (first_call_s includes compile + one run)
            first = {}
            for k in (n, 2 * n):
                self.wait_idle()
                t0 = time.perf_counter()
                block(call(k))
                first[k] = time.perf_counter() - t0
            last_tokens = {}

            def measure():
                tn, t2n, diffs = [], [], []
                for r in range(a.reps):
                    order = (n, 2 * n) if r % 2 == 0 else (2 * n, n)
                    t = {}
                    for k in order:
                        t0 = time.perf_counter()
                        out = block(call(k))
                        t[k] = time.perf_counter() - t0
                        last_tokens[k] = out
                    tn.append(t[n])
                    t2n.append(t[2 * n])
                    diffs.append(t[2 * n] - t[n])
                return {"tn": tn, "t2n": t2n, "diffs": diffs}

            res, idle, other, attempts = self._attempts(measure, lambda: 3 * first[2 * n] * a.reps)
        except Exception:
            self.error(base, traceback.format_exc())
            return None, None
        med = statistics.median(res["diffs"])
        med_n, med_2n = statistics.median(res["tn"]), statistics.median(res["t2n"])
        if first_call_timed:
            compile_s = {"compile_s": first[n] - med_n, "compile_s_2n": first[2 * n] - med_2n}
        else:
            compile_s = {"compile_s": None, "compile_s_2n": None}
        row = dict(base)
        row.update(
            {
                "method": "paired t(2N)-t(N), median over pairs",
                "median_s": med,
                "tokens_per_s": batch * n / med if med > 0 else None,
                "per_token_ms": med / n * 1e3 if med > 0 else None,
                **compile_s,
                "first_call_s_n": first[n],
                "first_call_s_2n": first[2 * n],
                "median_s_n": med_n,
                "median_s_2n": med_2n,
                "median_s_diff_of_medians": med_2n - med_n,
                "min_diff_s": min(res["diffs"]),
                "max_diff_s": max(res["diffs"]),
                "diffs_s": res["diffs"],
                "reps": len(res["diffs"]),
                "attempts": attempts,
                **self._hygiene(idle, other),
                "threads": THREADS,
            }
        )
        self.emit(row)
        log(
            f"  decode  {impl:20s} B={batch} P={prompt.shape[1]:<5} N={n:<4} "
            f"{row['tokens_per_s'] or float('nan'):9.1f} tok/s "
            f"{row['per_token_ms'] or float('nan'):8.3f} ms/step  (t(N) {med_n:.3f} s, t(2N) {med_2n:.3f} s)  "
            f"busy_before {idle['cpu_busy_before']:.2f} other {other if other is None else round(other, 2)}"
        )
        return row, last_tokens.get(2 * n)

    # -------------------------------------------------------------- prefill
    def prefill_case(self, impl, batch, prompt_len, call, reps, warmup, block=None, compile_s=None):
        base = self.base(impl, "prefill", batch, prompt_len, 0)
        block = block or (lambda x: x)
        first_s = None
        try:
            if warmup:
                self.wait_idle()
                t0 = time.perf_counter()
                block(call())
                first_s = time.perf_counter() - t0

            def measure():
                return T.median_time(call, warmup=0, reps=reps, block=block, max_reps=reps)

            est = first_s if first_s is not None else 60.0
            tm, idle, other, attempts = self._attempts(measure, lambda: est * reps)
        except Exception:
            self.error(base, traceback.format_exc())
            return None
        med = tm["median_s"]
        row = dict(base)
        row.update(
            {
                "method": "one forward over the prompt (all logits + final state)",
                "median_s": med,
                "min_s": tm["min_s"],
                "tokens_per_s": batch * prompt_len / med,
                "per_token_ms": med / (batch * prompt_len) * 1e3,
                "compile_s": compile_s,
                "first_call_s": first_s,
                "times_s": tm["times_s"],
                "reps": tm["reps"],
                "attempts": attempts,
                **self._hygiene(idle, other),
                "threads": THREADS,
            }
        )
        self.emit(row)
        log(
            f"  prefill {impl:20s} B={batch} P={prompt_len:<5} {row['tokens_per_s']:10.1f} tok/s  median {med:.3f} s  "
            f"busy_before {idle['cpu_busy_before']:.2f} other {other if other is None else round(other, 2)}"
        )
        return row

    # ------------------------------------------------------------------ run
    def run(self):
        import jax
        import jax.numpy as jnp
        import torch
        from flax import nnx

        from xlstm_jax import generate

        a = self.args
        tmp = tempfile.TemporaryDirectory(prefix="bench_decode_hf_")
        t0 = time.perf_counter()
        official, ours, hf, n_params = build_models(tmp.name)
        self.n_params = n_params
        log(f"models built in {time.perf_counter() - t0:.1f} s ({n_params / 1e6:.2f} M parameters)")
        V = ARCH["vocab_size"]
        rng = np.random.default_rng(1234)

        # -------- callables
        def ours_gen(prompt):
            ids = jnp.asarray(prompt, jnp.int32)
            return lambda k: generate(ours, ids, k).tokens

        def ours_block(x):
            return np.asarray(jax.block_until_ready(x))

        def official_gen(prompt):
            ids = torch.from_numpy(np.asarray(prompt, np.int64))

            def call(k):
                with torch.no_grad():
                    tokens, _ = official.generate(ids, max_length=k)
                return tokens.numpy()

            return call

        def hf_gen(prompt):
            ids = torch.from_numpy(np.asarray(prompt, np.int64))
            P = ids.shape[1]

            def call(k):
                with torch.no_grad():
                    out = hf.generate(
                        ids,
                        attention_mask=torch.ones_like(ids),
                        max_new_tokens=k,
                        min_new_tokens=k,
                        do_sample=False,
                        pad_token_id=None,
                        eos_token_id=None,
                    )
                return out[:, P:].numpy()

            return call

        # -------- correctness: short prompt, all three
        self.check(ours, official, hf, ours_gen, ours_block, official_gen, hf_gen, torch, rng)

        # -------- decode: three-way comparison after a short prompt, batch 1 and 8
        tokens_b8 = {}
        for batch in a.batches:
            prompt = rng.integers(0, V, size=(batch, a.prompt_len))
            for impl, mk, n, blk, timed in (
                ("ours", ours_gen, a.n_ours, ours_block, True),
                ("official_step_loop", official_gen, a.n_torch, None, False),
                ("hf_generate", hf_gen, a.n_torch, None, False),
            ):
                if impl == "hf_generate" and a.skip_hf:
                    continue
                log(f"[decode] {impl} B={batch} P={a.prompt_len}")
                _, toks = self.decode_case(impl, batch, prompt, n, mk(prompt), blk, first_call_timed=timed)
                if batch == max(a.batches) and toks is not None:
                    tokens_b8[impl] = toks
        if tokens_b8:
            row = {"bench": "check", "metric": "check_decode_runs", "batch": max(a.batches), "prompt_len": a.prompt_len}
            ref = tokens_b8.get("ours")
            m = a.n_torch
            for impl in ("official_step_loop", "hf_generate"):
                if ref is not None and impl in tokens_b8:
                    mm = first_mismatch(ref[:, :m], tokens_b8[impl][:, :m])
                    row[f"ours_vs_{impl}_identical"] = mm is None
                    row[f"ours_vs_{impl}_first_mismatch"] = mm
            row["compared_tokens"] = m
            self.emit(row)

        # -------- decode after long prompts (ours, batch 1)
        for P in a.long_prompts:
            prompt = rng.integers(0, V, size=(1, P))
            log(f"[decode] ours B=1 P={P}")
            self.decode_case("ours", 1, prompt, a.n_long, ours_gen(prompt), ours_block, first_call_timed=True)

        # -------- prefill, batch 1
        graphdef, params = nnx.split(ours)
        prefill_fn = jax.jit(lambda params, ids: nnx.merge(graphdef, params)(ids, return_state=True))
        for i, P in enumerate(a.long_prompts):
            prompt = rng.integers(0, V, size=(1, P))
            ids_j = jnp.asarray(prompt, jnp.int32)
            log(f"[prefill] P={P}")
            t0 = time.perf_counter()
            compiled = prefill_fn.lower(params, ids_j).compile()
            comp_s = time.perf_counter() - t0
            self.prefill_case(
                "ours",
                1,
                P,
                lambda c=compiled, i=ids_j: c(params, i),
                a.reps,
                warmup=True,
                block=jax.block_until_ready,
                compile_s=comp_s,
            )
            ids_t = torch.from_numpy(np.asarray(prompt, np.int64))
            # torch: the shortest prompt warms up and gets --reps calls; longer ones are measured once
            last = i == len(a.long_prompts) - 1 and len(a.long_prompts) > 1
            reps_t, warm_t = (1, False) if last else (max(1, min(a.reps, 3)), True)

            def off_call(ids=ids_t):
                with torch.no_grad():
                    return official(ids)

            self.prefill_case("official_step_loop", 1, P, off_call, reps_t, warmup=warm_t)
            if not a.skip_hf:

                def hf_call(ids=ids_t):
                    with torch.no_grad():
                        return hf(ids, use_cache=True)

                self.prefill_case("hf_generate", 1, P, hf_call, reps_t, warmup=warm_t)
        tmp.cleanup()

    # ------------------------------------------------------------------ check
    def check(self, ours, official, hf, ours_gen, ours_block, official_gen, hf_gen, torch, rng):
        a = self.args
        B, P, N = 2, 13, 32
        prompt = rng.integers(0, ARCH["vocab_size"], size=(B, P))
        row = {"bench": "check", "metric": "greedy_tokens_short_prompt", "batch": B, "prompt_len": P, "new_tokens": N}
        try:
            toks = {"ours": ours_block(ours_gen(prompt)(N)), "official_step_loop": official_gen(prompt)(N)}
            if not a.skip_hf:
                toks["hf_generate"] = hf_gen(prompt)(N)
            for impl in ("official_step_loop", "hf_generate"):
                if impl in toks:
                    mm = first_mismatch(toks["ours"], toks[impl])
                    row[f"ours_vs_{impl}_identical"] = mm is None
                    row[f"ours_vs_{impl}_first_mismatch"] = mm
            if "hf_generate" in toks:
                mm = first_mismatch(toks["official_step_loop"], toks["hf_generate"])
                row["official_vs_hf_identical"] = mm is None
                row["official_vs_hf_first_mismatch"] = mm
            row["identical_all"] = all(v for k, v in row.items() if k.endswith("_identical"))
            row["tokens_ours_row0"] = toks["ours"][0].tolist()
            # logits of the prompt forward
            logits_ours = np.asarray(ours(np.asarray(prompt, np.int32), return_state=True)[0])
            with torch.no_grad():
                ids_t = torch.from_numpy(np.asarray(prompt, np.int64))
                logits_off = official(ids_t)[0].numpy()
                row["logits_max_abs_ref"] = float(np.max(np.abs(logits_off)))
                row["logits_max_abs_diff_ours_vs_official"] = float(np.max(np.abs(logits_ours - logits_off)))
                if not a.skip_hf:
                    logits_hf = hf(ids_t, use_cache=False).logits.numpy()
                    row["logits_max_abs_diff_ours_vs_hf"] = float(np.max(np.abs(logits_ours - logits_hf)))
        except Exception:
            row["error"] = traceback.format_exc()[-2000:]
        self.emit(row)
        log(
            f"[check] greedy tokens identical (ours/official/HF): {row.get('identical_all')}; "
            f"logit diff vs official {row.get('logits_max_abs_diff_ours_vs_official')}"
        )

    # ---------------------------------------------------------------- summary
    def summary(self):
        a = self.args
        ok = [r for r in self.rows if r.get("median_s") is not None and r.get("bench") in ("decode", "prefill")]

        def find(impl, mode, batch, P):
            for r in ok:
                if (r["impl"], r["mode"], r["batch"], r["prompt_len"]) == (impl, mode, batch, P):
                    return r
            return None

        out = []
        # parameters read per decode step: all but the embedding table (one row per token is gathered)
        step_bytes = 4 * (self.n_params - ARCH["vocab_size"] * ARCH["embedding_dim"]) if self.n_params else None
        for batch in a.batches:
            ours = find("ours", "decode", batch, a.prompt_len)
            off = find("official_step_loop", "decode", batch, a.prompt_len)
            hf = find("hf_generate", "decode", batch, a.prompt_len)
            v = (
                ours["tokens_per_s"] / off["tokens_per_s"]
                if (ours and off and ours["tokens_per_s"] and off["tokens_per_s"])
                else None
            )
            out.append(
                {
                    "bench": "summary",
                    "metric": "decode_speedup_vs_official",
                    "batch": batch,
                    "prompt_len": a.prompt_len,
                    "value": v,
                    "target": DECODE_TARGET,
                    "met": (v >= DECODE_TARGET) if v is not None else None,
                    "ours_tokens_per_s": ours and ours["tokens_per_s"],
                    "official_tokens_per_s": off and off["tokens_per_s"],
                    "hf_tokens_per_s": hf and hf["tokens_per_s"],
                    "speedup_vs_hf": (ours["tokens_per_s"] / hf["tokens_per_s"])
                    if (ours and hf and ours["tokens_per_s"] and hf["tokens_per_s"])
                    else None,
                    "contaminated_inputs": any(bool(r and r.get("contaminated")) for r in (ours, off, hf)),
                    "ours_vs_issue_quoted_official_124_tok_s": (ours["tokens_per_s"] / ISSUE_OFFICIAL_TOKENS_PER_S)
                    if (ours and ours["tokens_per_s"] and batch == 1)
                    else None,
                    "weight_bytes_per_step": step_bytes,
                    "ours_weight_stream_gb_per_s": (step_bytes / (ours["per_token_ms"] * 1e-3) / 1e9)
                    if (ours and ours["per_token_ms"] and step_bytes)
                    else None,
                }
            )
        if len(a.long_prompts) >= 2:
            p1, p2 = a.long_prompts[0], a.long_prompts[-1]
            r1, r2 = find("ours", "decode", 1, p1), find("ours", "decode", 1, p2)
            v = (
                r2["per_token_ms"] / r1["per_token_ms"]
                if (r1 and r2 and r1["per_token_ms"] and r2["per_token_ms"])
                else None
            )
            out.append(
                {
                    "bench": "summary",
                    "metric": "decode_per_token_ratio_long_vs_short_prompt",
                    "prompt_lens": [p1, p2],
                    "per_token_ms": {str(p1): r1 and r1["per_token_ms"], str(p2): r2 and r2["per_token_ms"]},
                    "value": v,
                    "target": f"|ratio - 1| <= {PER_TOKEN_TOL}",
                    "met": (abs(v - 1) <= PER_TOKEN_TOL) if v is not None else None,
                    "contaminated_inputs": any(bool(r and r.get("contaminated")) for r in (r1, r2)),
                }
            )
        for P in a.long_prompts:
            rs = {impl: find(impl, "prefill", 1, P) for impl in ("ours", "official_step_loop", "hf_generate")}
            tps = {k: (r["tokens_per_s"] if r else None) for k, r in rs.items()}
            out.append(
                {
                    "bench": "summary",
                    "metric": "prefill_tokens_per_s",
                    "batch": 1,
                    "prompt_len": P,
                    "tokens_per_s": tps,
                    "ours_vs_official": (tps["ours"] / tps["official_step_loop"])
                    if (tps["ours"] and tps["official_step_loop"])
                    else None,
                    "ours_vs_hf": (tps["ours"] / tps["hf_generate"]) if (tps["ours"] and tps["hf_generate"]) else None,
                    "contaminated_inputs": any(bool(r and r.get("contaminated")) for r in rs.values()),
                }
            )
        cont = [f"{r['impl']}/{r['mode']}/B={r['batch']}/P={r['prompt_len']}" for r in ok if r.get("contaminated")]
        errs = [f"{r.get('impl')}/{r.get('mode', r.get('metric'))}" for r in self.rows if r.get("error")]
        out.append(T.hygiene_summary(cont, errs, a))
        for r in out:
            self.emit(r)


# --------------------------------------------------------------------------- #
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke test: small sizes, 1 rep, short idle waits")
    p.add_argument("--reps", type=int, default=None, help="timed (N, 2N) pairs / prefill calls per case (default 5)")
    p.add_argument("--n-ours", type=int, default=None, help="N for ours after the short prompt (default 1024)")
    p.add_argument("--n-long", type=int, default=None, help="N for ours after the long prompts (default 2048)")
    p.add_argument("--n-torch", type=int, default=None, help="N for the torch loops (default 128)")
    p.add_argument("--prompt-len", type=int, default=None, help="prompt of the batch 1/8 comparison (default 64)")
    p.add_argument(
        "--long-prompts", default=None, help="comma list: prompts for ours' decode and all prefills (default 1024,8192)"
    )
    p.add_argument("--batches", default="1,8", help="batch sizes of the decode comparison (default 1,8)")
    p.add_argument("--skip-hf", action="store_true", help="leave out the Hugging Face baseline")
    T.add_hygiene_args(p, idle_wait=60.0, quick_idle_wait=10.0, no_retry_above_s=20.0)
    a = p.parse_args(argv)
    if a.reps is None:
        a.reps = 1 if a.quick else 5
    if a.n_ours is None:
        a.n_ours = 64 if a.quick else 1024
    if a.n_long is None:
        a.n_long = 128 if a.quick else 2048
    if a.n_torch is None:
        a.n_torch = 8 if a.quick else 128
    if a.prompt_len is None:
        a.prompt_len = 16 if a.quick else 64
    if a.long_prompts is None:
        a.long_prompts = "64,256" if a.quick else "1024,8192"
    a.long_prompts = [int(x) for x in a.long_prompts.split(",") if x.strip()]
    a.batches = [int(x) for x in a.batches.split(",") if x.strip()]
    T.fill_hygiene_defaults(a)
    return a


def main(argv=None):
    a = parse_args(argv)
    import jax
    import torch
    import transformers
    import xlstm

    torch.set_num_threads(THREADS)
    cpu = T.cpu_model()
    T.emit(
        {
            "bench": "env",
            "argv": sys.argv[1:],
            "jax": jax.__version__,
            "jax_backend": jax.default_backend(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "transformers": transformers.__version__,
            "xlstm": getattr(xlstm, "__version__", None),
            "cores": THREADS,
            "cpu": cpu,
            "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
            "arch": ARCH,
            "weights": f"perturbed_weights(seed={WEIGHT_SEED}, noise=0.1, igate_bias=normal)",
            "reps": a.reps,
            "n_ours": a.n_ours,
            "n_long": a.n_long,
            "n_torch": a.n_torch,
            "prompt_len": a.prompt_len,
            "long_prompts": a.long_prompts,
            "batches": a.batches,
            "decode_method": "time generate() with N and 2N new tokens on the same prompt; "
            "decode time of N steps = median over alternating pairs of t(2N) - t(N)",
        }
    )
    t0 = time.perf_counter()
    r = Runner(a)
    r.run()
    r.summary()
    log(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
