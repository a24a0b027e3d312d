"""The matmul FLOPs of a traced program, for MFU: every ``dot_general`` and convolution in its jaxpr,
loops counted as many times as they run.

XLA's cost analysis (``compiled.cost_analysis()``) counts a loop body once, so a model whose blocks
run as a ``lax.scan`` (``scan_blocks: true``, every pretraining preset) or whose cell walks chunks or
tokens in a loop was reported with a fraction of its FLOPs: 1.19e12 for the 125M preset's step at
B=16, S=2048, whose model FLOPs are 3.74e13 (benchmarks/RESULTS.md, "The kernels on an H200").
Here a ``scan`` body counts ``length`` times, a ``pallas_call`` kernel body once per program of its
grid, a ``shard_map`` body once per device it runs on, a ``cond`` as its most expensive branch that is
not marked as taken only on exceptional inputs (``xlstm_jax.ops.rare_branch``: the
chunkwise mLSTM's guarded pass for a non-finite final state, which would otherwise count the cell
twice). Not
counted: elementwise work (MFU's convention counts matmuls); loops whose trip count is not static
(``while_loop``, a kernel's loop up to a computed bound) count once.

Usage: ``program_flops(jax.jit(fn).trace(*args).jaxpr)``; the count is of the whole (global) program,
so one device's share under SPMD is that divided by the number of devices. The trainer's MFU counts the
forward pass this way (``step.model_flops``), which leaves remat's recomputation out.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from xlstm_jax.ops import RARE_BRANCH


def _sub_jaxprs(value: Any) -> Iterator[Any]:
    """The jaxprs inside an equation parameter (a jaxpr, a closed jaxpr, or a sequence of them)."""
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        yield value.jaxpr
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def _dot(eqn) -> float:
    (contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)


def _conv(eqn) -> float:
    """2 x outputs x (input features per group x kernel window) per output."""
    rhs = eqn.invars[1].aval.shape
    out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) / out_features


def _grid_size(eqn) -> int:
    grid = getattr(eqn.params.get("grid_mapping"), "grid", ())
    return math.prod(g for g in grid if isinstance(g, int))


def _shard_count(eqn) -> int:
    """How many devices run a ``shard_map`` body (its jaxpr has one device's shapes)."""
    mesh = eqn.params["mesh"]
    axes = eqn.params.get("newly_manual_axes") or eqn.params.get("manual_axes") or mesh.axis_names
    return math.prod(dict(mesh.shape)[a] for a in axes)


def _rare(jaxpr) -> bool:
    """Whether a cond branch was traced under ``rare_branch`` (its equations carry the scope)."""
    return any(str(e.source_info.name_stack).split("/")[0] == RARE_BRANCH for e in jaxpr.eqns)


def jaxpr_flops(jaxpr) -> float:
    """Matmul FLOPs of one run of ``jaxpr`` (a ``Jaxpr``; see the module docstring)."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot(eqn)
        elif name == "conv_general_dilated":
            total += _conv(eqn)
        elif name == "cond":
            branches = list(_sub_jaxprs(eqn.params["branches"]))
            usual = [b for b in branches if not _rare(b)] or branches
            total += max((jaxpr_flops(b) for b in usual), default=0.0)
        else:
            inner = sum(jaxpr_flops(j) for v in eqn.params.values() for j in _sub_jaxprs(v))
            if name == "scan":
                inner *= eqn.params["length"]
            elif name == "pallas_call":
                inner *= _grid_size(eqn)
            elif name == "shard_map":
                inner *= _shard_count(eqn)
            total += inner
    return total


def program_flops(closed_jaxpr) -> float:
    """Matmul FLOPs of a traced program (``jax.jit(f).trace(...).jaxpr``, a ``ClosedJaxpr``)."""
    return jaxpr_flops(closed_jaxpr.jaxpr if hasattr(closed_jaxpr, "jaxpr") else closed_jaxpr)
