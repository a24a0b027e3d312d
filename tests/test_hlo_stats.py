"""benchmarks/hlo_stats.py: matmul FLOPs and collective bytes of compiled HLO text, against exact counts.

The modules here are small and their counts known by hand: a hand-written module (a loop, a
batched matmul the way the TPU compiler writes it, async collectives) and two modules the TPU
compiler wrote on a 4-chip v5e topology (``fixtures/tpu_v5e_*.hlo.txt``; no ``libtpu`` is needed
to read them). A CPU-compiled scan checks the loop weighting against XLA's own cost analysis.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from hlo_stats import hlo_stats

FIXTURES = Path(__file__).parent / "fixtures"

# A loop of 6 steps, each: a (4, 32, 16) x (4, 16, 8) batched matmul written as a convolution whose
# window dimension is the batch (size 4 over an input dilated by 4, stride 3: one kernel position
# meets a real element per output position) inside a fusion, and an async all-gather of a bf16
# (16, 8) block. After the loop: an all-reduce of f32[8, 8] and a plain (8, 32) x (32, 8) dot.
HAND_WRITTEN = """HloModule jit_hand, is_scheduled=true

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b)
}

%fused_bmm (p0: bf16[4,32,16], p1: bf16[4,16,8]) -> f32[4,32,8] {
  %p0 = bf16[4,32,16]{2,1,0} parameter(0)
  %p1 = bf16[4,16,8]{2,1,0} parameter(1)
  ROOT %conv = f32[4,32,8]{2,1,0} convolution(%p0, %p1), window={size=4 stride=3 lhs_dilate=4}, dim_labels=0bf_0io->0bf
}

%body (state: (s32[], f32[4,32,8], bf16[16,4])) -> (s32[], f32[4,32,8], bf16[16,4]) {
  %state = (s32[], f32[4,32,8], bf16[16,4]) parameter(0)
  %i = s32[] get-tuple-element(%state), index=0
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  %shard = bf16[16,4]{1,0} get-tuple-element(%state), index=2
  %ag-start = (bf16[16,4], bf16[16,8]) all-gather-start(%shard), dimensions={1}
  %ag-done = bf16[16,8]{1,0} all-gather-done(%ag-start)
  %lhs = bf16[4,32,16]{2,1,0} constant({...})
  %rhs = bf16[4,16,8]{2,1,0} broadcast(%ag-done), dimensions={1,2}
  %bmm = f32[4,32,8]{2,1,0} fusion(%lhs, %rhs), kind=kOutput, calls=%fused_bmm
  ROOT %out = (s32[], f32[4,32,8], bf16[16,4]) tuple(%next, %bmm, %shard)
}

%cond (state.1: (s32[], f32[4,32,8], bf16[16,4])) -> pred[] {
  %state.1 = (s32[], f32[4,32,8], bf16[16,4]) parameter(0)
  %i.1 = s32[] get-tuple-element(%state.1), index=0
  %six = s32[] constant(6)
  ROOT %lt = pred[] compare(%i.1, %six), direction=LT
}

ENTRY %main (x: bf16[16,4], y: f32[8,32], z: f32[32,8]) -> f32[8,8] {
  %x = bf16[16,4]{1,0} parameter(0)
  %y = f32[8,32]{1,0} parameter(1)
  %z = f32[32,8]{1,0} parameter(2)
  %zero = s32[] constant(0)
  %acc = f32[4,32,8]{2,1,0} constant({...})
  %init = (s32[], f32[4,32,8], bf16[16,4]) tuple(%zero, %acc, %x)
  %loop = (s32[], f32[4,32,8], bf16[16,4]) while(%init), condition=%cond, body=%body
  %dot = f32[8,8]{1,0} dot(%y, %z), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %ar = f32[8,8]{1,0} all-reduce(%dot), replica_groups={}, to_apply=%add
}
"""


def test_hand_written_module_counts():
    stats = hlo_stats(HAND_WRITTEN)
    batched = 2 * 4 * 32 * 8 * 16  # not x4 for the window: the window dimension is the batch
    plain = 2 * 8 * 8 * 32
    assert stats["dot_flops"] == 6 * batched + plain
    assert stats["dot_flops_once"] == batched + plain
    assert stats["collective_bytes"] == {"all-gather": 6 * 16 * 4 * 2, "all-reduce": 8 * 8 * 4}
    assert stats["collective_bytes_once"] == {"all-gather": 16 * 4 * 2, "all-reduce": 8 * 8 * 4}
    assert stats["loop_iterations"] == 6 and stats["unknown_trip_counts"] == 0


def test_tpu_batched_matmuls_and_gradient_all_reduce():
    # jax.grad of tanh(einsum('bhqd,bhkd->bhqk', q @ w, k)).sum() with respect to the replicated
    # f32 (128, 128) w; q, k f32 (16, 4, 128, 128) batch-sharded over 4 chips. Per chip (b = 4):
    # forward q @ w and the score einsum, backward d(q @ w) and dw; one all-reduce of dw.
    stats = hlo_stats((FIXTURES / "tpu_v5e_batched_matmul_grad.hlo.txt").read_text())
    b, h, s, d = 4, 4, 128, 128
    assert stats["dot_flops"] == 2 * (2 * b * h * s * d * d + 2 * b * h * s * s * d)
    assert stats["collective_bytes"] == {"all-reduce": 128 * 128 * 4}


def test_tpu_scan_matmul_trip_count_and_all_gather():
    # A 10-step lax.scan of a (256, 512) x (512, 512) matmul on 4 v5e chips, the bf16 weight's
    # (512, 128) column blocks all-gathered in the loop. The TPU compiler drops known_trip_count:
    # the trip count comes from the loop condition (i < 10).
    stats = hlo_stats((FIXTURES / "tpu_v5e_scan_matmul.hlo.txt").read_text())
    assert stats["dot_flops"] == 10 * 2 * 256 * 512 * 512
    assert stats["loop_iterations"] == 10 and stats["unknown_trip_counts"] == 0
    assert stats["collective_bytes"]["all-gather"] == 10 * 512 * 128 * 2
    assert stats["collective_bytes"]["all-reduce"] == 4  # the final f32 sum


def test_cpu_scan_is_weighted_by_its_trip_count():
    def f(x, w):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=10)[0]

    compiled = jax.jit(f).lower(jnp.ones((64, 32)), jnp.ones((32, 32))).compile()
    stats = hlo_stats(compiled.as_text())
    one_step = 2 * 64 * 32 * 32
    assert compiled.cost_analysis()["flops"] == pytest.approx(one_step, rel=0.1)  # XLA counts the body once
    assert stats["dot_flops_once"] == one_step
    assert stats["dot_flops"] == 10 * one_step
    assert stats["loop_iterations"] == 10 and stats["unknown_trip_counts"] == 0


def test_rare_branches_weigh_nothing():
    """A ``lax.cond`` branch traced under ``rare_branch`` (taken only on exceptional inputs) is not
    counted; the usual branch is, whichever XLA calls true or false."""
    from xlstm_jax.ops import rare_branch

    def f(x, w):
        usual = lambda x: jnp.tanh(x @ w)  # noqa: E731
        return jax.lax.cond(jnp.isfinite(x).all(), usual, rare_branch(lambda x: x @ w @ w.T @ w), x)

    stats = hlo_stats(jax.jit(f).lower(jnp.ones((64, 32)), jnp.ones((32, 32))).compile().as_text())
    assert stats["dot_flops"] == 2 * 64 * 32 * 32
    assert stats["dot_flops_once"] == 4 * 2 * 64 * 32 * 32  # every computation once: both branches


def test_cpu_loop_free_counts_match_cost_analysis():
    compiled = jax.jit(lambda x, w: jnp.tanh(x @ w).sum()).lower(jnp.ones((64, 32)), jnp.ones((32, 16))).compile()
    stats, cost = hlo_stats(compiled.as_text()), compiled.cost_analysis()
    assert stats["dot_flops"] == 2 * 64 * 32 * 16
    assert stats["hbm_bytes"] == pytest.approx(cost["bytes accessed"], rel=0.05)


# A loop of 4 steps that reads step i of a stacked f32 (4, 16, 8) input (a dynamic-slice in a fusion
# nested in the loop's fusion) and writes step i of a stacked output in place (a fusion whose root
# is a dynamic-update-slice). Per step the fusion reads the 16 x 8 slice and the s32 index and writes
# one 16 x 8 slice; the loop's counter add reads two and writes one s32.
IN_PLACE = """HloModule jit_in_place, is_scheduled=true

%slice_fusion (s0: f32[4,16,8], s1: s32[]) -> f32[1,16,8] {
  %s0 = f32[4,16,8]{2,1,0} parameter(0)
  %s1 = s32[] parameter(1)
  %z = s32[] constant(0)
  ROOT %ds = f32[1,16,8]{2,1,0} dynamic-slice(%s0, %s1, %z, %z), dynamic_slice_sizes={1,16,8}
}

%step_fusion (p0: f32[4,16,8], p1: f32[4,16,8], p2: s32[]) -> f32[4,16,8] {
  %p0 = f32[4,16,8]{2,1,0} parameter(0)
  %p1 = f32[4,16,8]{2,1,0} parameter(1)
  %p2 = s32[] parameter(2)
  %x = f32[1,16,8]{2,1,0} fusion(%p1, %p2), kind=kLoop, calls=%slice_fusion
  %y = f32[1,16,8]{2,1,0} tanh(%x)
  %zero = s32[] constant(0)
  ROOT %dus = f32[4,16,8]{2,1,0} dynamic-update-slice(%p0, %y, %p2, %zero, %zero)
}

%body (state: (s32[], f32[4,16,8], f32[4,16,8])) -> (s32[], f32[4,16,8], f32[4,16,8]) {
  %state = (s32[], f32[4,16,8], f32[4,16,8]) parameter(0)
  %i = s32[] get-tuple-element(%state), index=0
  %out = f32[4,16,8]{2,1,0} get-tuple-element(%state), index=1
  %xs = f32[4,16,8]{2,1,0} get-tuple-element(%state), index=2
  %new = f32[4,16,8]{2,1,0} fusion(%out, %xs, %i), kind=kLoop, calls=%step_fusion
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %t = (s32[], f32[4,16,8], f32[4,16,8]) tuple(%next, %new, %xs)
}

%cond (state.1: (s32[], f32[4,16,8], f32[4,16,8])) -> pred[] {
  %state.1 = (s32[], f32[4,16,8], f32[4,16,8]) parameter(0)
  %i.1 = s32[] get-tuple-element(%state.1), index=0
  %four = s32[] constant(4)
  ROOT %lt = pred[] compare(%i.1, %four), direction=LT
}

ENTRY %main (xs: f32[4,16,8], out: f32[4,16,8]) -> f32[4,16,8] {
  %xs.1 = f32[4,16,8]{2,1,0} parameter(0)
  %out.1 = f32[4,16,8]{2,1,0} parameter(1)
  %zero.1 = s32[] constant(0)
  %init = (s32[], f32[4,16,8], f32[4,16,8]) tuple(%zero.1, %out.1, %xs.1)
  %loop = (s32[], f32[4,16,8], f32[4,16,8]) while(%init), condition=%cond, body=%body
  ROOT %result = f32[4,16,8]{2,1,0} get-tuple-element(%loop), index=1
}
"""


def test_loop_slices_are_read_and_written_in_place():
    stats = hlo_stats(IN_PLACE)
    slice_bytes, index_bytes = 16 * 8 * 4, 4
    per_step = (slice_bytes + index_bytes + slice_bytes) + 3 * index_bytes  # the step fusion, the counter add
    condition = 2 * index_bytes + 1  # compare(i, 4) -> pred, counted once per iteration
    assert stats["hbm_bytes"] == 4 * per_step + 4 * condition
