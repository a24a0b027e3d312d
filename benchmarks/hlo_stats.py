"""Counts in a compiled XLA module's HLO text, with each loop body weighted by its trip count.

``compiled.cost_analysis()`` counts the body of a ``while`` loop once, whatever its trip count (a
``lax.scan`` over 10 steps reports the FLOPs of one step), and so do its bytes. A training step
is full of loops: the sLSTM recurrence over every token, the chunkwise mLSTM's scans, scanned
blocks, gradient accumulation. ``hlo_stats`` reads the optimized HLO text (``compiled.as_text()``)
and weights every computation by how often it runs: a ``while`` body by its
``known_trip_count`` (1 when the compiler does not know it: reported in ``unknown_trip_counts``),
fusions, calls and conditional branches by their caller's weight, except a branch traced under
``xlstm_jax.ops.rare_branch`` (taken only on exceptional inputs: the chunkwise mLSTM's
guarded pass for a non-finite state), which weighs 0.

It counts, per device (the text is one SPMD partition):
  ``collective_bytes``: operand bytes of all-gather, reduce-scatter, all-reduce, all-to-all and
    collective-permute (their async ``-start`` forms included), by kind.
  ``dot_flops``: 2 x the multiply-adds of every ``dot`` and ``convolution`` (the matrix-unit work;
    the TPU compiler writes matmuls as convolutions, batched ones with the batch as window
    dimensions, of which only the kernel positions that meet a real input element count).
  ``hbm_bytes``: operand and output bytes of every instruction outside fusions (a fusion reads its
    operands from and writes its output to HBM; what happens inside it stays on chip), the way
    XLA's cost analysis counts bytes accessed. Slices are in place: a ``dynamic-slice`` reads
    its slice, a ``dynamic-update-slice`` writes its update (also as a fusion's parameter or root,
    the way a loop reads step t of a stacked sequence and writes step t of its output), not the
    whole buffer once per loop iteration.
  ``loop_iterations``: sequential ``while`` iterations, weighted (the latency a roofline ignores).
Each count also comes unweighted (``*_once``: every computation once, as ``cost_analysis`` counts).
"""

from __future__ import annotations

import collections
import math
import re

import numpy as np

_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}  # fmt: skip
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128|f8e\w+)\[([\d,]*)\]")
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s+(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_CALLEES = re.compile(r"\b(body|condition|calls|to_apply|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_RARE = re.compile(r'op_name="[^"]*\brare_branch\b')  # xlstm_jax.ops.RARE_BRANCH in the name scope
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_NO_TRAFFIC = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "while", "conditional", "call",
               "after-all", "partition-id", "replica-id", "iota", "opt-barrier", "async-update"}  # fmt: skip


def shape_bytes(type_text: str) -> float:
    """Bytes of an HLO type (``f32[8,128]{1,0}``, or a tuple of them)."""
    return sum(_DTYPE_BYTES.get(dtype, 1) * _elements(dims) for dtype, dims in _SHAPE.findall(type_text))  # f8*: 1


def _elements(dims: str) -> int:
    return math.prod(int(x) for x in dims.split(",") if x)


def _split_type(rest: str) -> tuple[str, str, str]:
    """``'f32[2]{0} add(%a, %b), x=y'`` -> (type, opcode, the text after the opcode)."""
    if rest.startswith("("):  # a tuple type: up to its balancing parenthesis
        depth = 0
        end = len(rest)
        for n, ch in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0:
                end = n + 1
                break
        type_text, tail = rest[:end], rest[end:].lstrip()
    else:
        type_text, _, tail = rest.partition(" ")
    opcode, _, after = tail.partition("(")
    return type_text, opcode.strip(), after


def _operands(after: str) -> list[str]:
    depth, end = 1, len(after)
    for n, ch in enumerate(after):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            end = n
            break
    return re.findall(r"%([\w.\-]+)", after[:end])


def _parse(text: str):
    """computations: name -> list of (name, type, opcode, operands, attributes); the entry's name."""
    computations, roots, entry, current = {}, {}, None, None
    for line in text.splitlines():
        head = _COMPUTATION.match(line) if not line[:1].isspace() else None
        if head:
            current = head.group(2)
            computations[current] = []
            if head.group(1):
                entry = current
            continue
        inst = _INSTRUCTION.match(line)
        if inst and current is not None:
            type_text, opcode, after = _split_type(inst.group(3))
            computations[current].append((inst.group(2), type_text, opcode, _operands(after), after))
            if inst.group(1):
                roots[current] = computations[current][-1]
    return computations, roots, entry


def _trip_count(attrs: str, condition, constants) -> int | None:
    """A while loop's trip count: the compiler's ``known_trip_count``, else read from a condition
    ``i < N`` (or ``N > i``) with a constant N, counting from 0 as JAX's loops do."""
    known = _TRIP.search(attrs)
    if known:
        return int(known.group(1))
    if condition is None or condition[2] != "compare" or len(condition[3]) != 2:
        return None
    direction = re.search(r"direction=(\w+)", condition[4])
    bound = {"LT": condition[3][1], "GT": condition[3][0]}.get(direction.group(1) if direction else "")
    return constants.get(bound)


def _rare(instructions) -> bool:
    """Whether a branch computation was traced under ``rare_branch`` (its ops carry the scope)."""
    return any(_RARE.search(inst[4]) for inst in instructions)


def _weights(computations, roots, entry):
    """How often each computation runs per step (and each while loop's trip count), and which
    computations are fusion bodies."""
    constants = {
        inst[0]: int(m.group(1))
        for instructions in computations.values()
        for inst in instructions
        if inst[2] == "constant" and (m := re.match(r"(-?\d+)\)", inst[4]))
    }
    edges = collections.defaultdict(list)  # caller -> [(callee, factor)]
    inside_fusion, unknown, trips = set(), 0, {}
    for name, instructions in computations.items():
        for inst_name, _, opcode, _, attrs in instructions:
            if opcode == "while":
                condition = re.search(r"condition=%?([\w.\-]+)", attrs)
                trip = _trip_count(attrs, roots.get(condition.group(1)) if condition else None, constants)
                unknown += trip is None
                trips[inst_name] = trip or 1
            for kind, callee in _CALLEES.findall(attrs):
                if kind == "to_apply":
                    inside_fusion.add(callee)  # scalar reducers: nothing to count inside
                    continue
                factor = 1
                if kind in ("body", "condition") and opcode == "while":
                    factor = trips[inst_name]
                if kind in ("true_computation", "false_computation") and _rare(computations.get(callee, ())):
                    factor = 0
                if opcode != "while" and opcode != "call" and opcode != "conditional":
                    inside_fusion.add(callee)  # fusion / async bodies: traffic counted at the caller
                edges[name].append((callee, factor))
            for group in _BRANCHES.findall(attrs):
                branches = [b.strip().lstrip("%") for b in group.split(",") if b.strip()]
                edges[name].extend((b, 0 if _rare(computations.get(b, ())) else 1) for b in branches)
    indegree = collections.Counter(c for callees in edges.values() for c, _ in callees)
    weight = collections.Counter({entry: 1})
    ready = [c for c in computations if indegree[c] == 0]
    while ready:
        name = ready.pop()
        for callee, factor in edges.get(name, ()):
            weight[callee] += weight[name] * factor
            indegree[callee] -= 1
            if indegree[callee] == 0:
                ready.append(callee)
    return weight, inside_fusion, unknown, trips


def _matmul_flops(type_text: str, opcode: str, operand_types: list[str], attrs: str) -> float:
    """2 x the multiply-adds of a ``dot`` or a ``convolution``."""
    out = sum(_elements(d) for _, d in _SHAPE.findall(type_text))
    shapes = [_SHAPE.search(t) for t in operand_types[:2]]
    if len(shapes) < 2 or not all(shapes):
        return 0.0
    lhs, rhs = ([int(x) for x in m.group(2).split(",") if x] for m in shapes)
    if opcode == "dot":
        contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", attrs)
        return 2.0 * out * math.prod(lhs[int(i)] for i in contracting.group(1).split(",") if i) if contracting else 0.0
    outs = [int(x) for x in _SHAPE.search(type_text).group(2).split(",") if x]
    return 2.0 * _convolution_macs(lhs, rhs, outs, attrs)


def _window(attrs: str, rank: int) -> dict:
    """A convolution's ``window={size=2x4 stride=1x3 pad=0_0x1_1 lhs_dilate=2x4 rhs_dilate=1x1}``,
    each field a list over the spatial dimensions (XLA's defaults where a field is absent)."""
    text = re.search(r"window=\{([^}]*)\}", attrs)
    fields = dict(item.split("=", 1) for item in text.group(1).split()) if text else {}
    window = {key: [int(x) for x in fields[key].split("x")] if key in fields else [default] * rank
              for key, default in (("size", 1), ("stride", 1), ("lhs_dilate", 1), ("rhs_dilate", 1))}  # fmt: skip
    pads = fields.get("pad")
    window["pad_low"] = [int(p.split("_")[0]) for p in pads.split("x")] if pads else [0] * rank
    return window


def _convolution_macs(lhs: list[int], rhs: list[int], out: list[int], attrs: str) -> int:
    """Multiply-adds of an XLA ``convolution``: per output batch element and feature, the kernel's
    input features times the (output position, kernel position) pairs that meet a real input
    element, per spatial dimension. The TPU compiler writes batched matmuls as convolutions whose
    window dimensions are the batch dimensions (a window of size k over an input dilated by k: one
    of the k kernel positions meets a real element), so counting every kernel position would
    multiply their FLOPs by the batch size."""
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", attrs)
    if not labels or [len(x) for x in labels.groups()] != [len(lhs), len(rhs), len(out)]:
        return 0
    lhs_labels, rhs_labels, out_labels = labels.groups()
    spatial = sorted(c for c in out_labels if c.isdigit())
    window = _window(attrs, len(spatial))
    macs = math.prod(size for label, size in zip(out_labels, out) if label in "bf") * rhs[rhs_labels.index("i")]
    for n, dim in enumerate(spatial):
        macs *= _window_pairs(
            out[out_labels.index(dim)], lhs[lhs_labels.index(dim)], window["size"][n], window["stride"][n],
            window["pad_low"][n], window["lhs_dilate"][n], window["rhs_dilate"][n],
        )  # fmt: skip
    return macs


def _window_pairs(outputs: int, inputs: int, size: int, stride: int, pad_low: int, lhs_dilate: int, rhs_dilate: int):
    """(output position, kernel position) pairs of one spatial dimension whose input position is a
    real element: in range of the ``lhs_dilate``-dilated input and not one of its holes."""
    small, large = sorted((outputs, size))
    other = np.arange(large)
    pairs = 0
    for k in range(small):
        o, w = (k, other) if outputs == small else (other, k)
        position = o * stride + w * rhs_dilate - pad_low
        pairs += int(
            np.count_nonzero((position >= 0) & (position <= (inputs - 1) * lhs_dilate) & (position % lhs_dilate == 0))
        )
    return pairs


def _traffic(type_text: str, opcode: str, operands: list[str], attrs: str, types: dict, computations, roots) -> float:
    """HBM bytes an instruction outside fusions reads and writes (slices in place)."""
    if opcode == "dynamic-slice":
        return 2 * shape_bytes(type_text)
    if opcode == "dynamic-update-slice":
        return 2 * shape_bytes(types.get(operands[1], ""))
    callee = re.search(r"calls=%?([\w.\-]+)", attrs) if opcode == "fusion" else None
    if callee is None or callee.group(1) not in computations:
        return shape_bytes(type_text) + sum(shape_bytes(types.get(o, "")) for o in operands)
    body = _Body(computations, callee.group(1))
    read = sum(body.read(n, shape_bytes(types.get(o, ""))) for n, o in enumerate(operands))
    return read + body.written(roots.get(callee.group(1)), roots)


class _Body:
    """A fusion's computation: what it reads of each parameter, what its root writes (in place)."""

    def __init__(self, computations: dict, name: str):
        self.computations = computations
        body = computations[name]
        self.by_name = {inst[0]: inst for inst in body}
        self.params = {
            int(m.group(1)): inst[0] for inst in body if inst[2] == "parameter" and (m := re.match(r"(\d+)", inst[4]))
        }
        self.users = {}
        for inst in body:
            for position, operand in enumerate(inst[3]):
                self.users.setdefault(operand, []).append((inst, position))

    def read(self, index: int, full: float) -> float:
        """Bytes read of parameter ``index`` (``full`` bytes): only the slices when every use is a
        ``dynamic-slice`` of it or a ``dynamic-update-slice`` into it (through nested fusions)."""
        uses, total = self.users.get(self.params.get(index), []), 0.0
        for inst, position in uses:
            callee = re.search(r"calls=%?([\w.\-]+)", inst[4]) if inst[2] == "fusion" else None
            if inst[2] == "dynamic-slice" and position == 0:
                total += shape_bytes(inst[1])
            elif inst[2] == "dynamic-update-slice" and position == 0:
                continue
            elif callee and callee.group(1) in self.computations:
                total += _Body(self.computations, callee.group(1)).read(position, full)
            else:
                return full
        return min(total, full) if uses else full

    def written(self, root, roots) -> float:
        """Bytes the instruction ``root`` writes: a ``dynamic-update-slice`` its update, a tuple its
        elements, a nested fusion what its root writes."""
        if root is None:
            return 0.0
        if root[2] == "tuple":
            return sum(self.written(self.by_name.get(o), roots) for o in root[3])
        if root[2] == "dynamic-update-slice" and root[3][1] in self.by_name:
            return shape_bytes(self.by_name[root[3][1]][1])
        callee = re.search(r"calls=%?([\w.\-]+)", root[4]) if root[2] == "fusion" else None
        if callee and callee.group(1) in self.computations:
            return _Body(self.computations, callee.group(1)).written(roots.get(callee.group(1)), roots)
        return shape_bytes(root[1])


def instruction_bytes(text: str) -> dict[str, float]:
    """Bytes each instruction outside fusions reads and writes per call of the module (``hbm_bytes``
    by instruction name: its traffic times how often its computation runs)."""
    computations, roots, entry = _parse(text)
    types = {inst[0]: inst[1] for instructions in computations.values() for inst in instructions}
    weight, inside_fusion, _, _ = _weights(computations, roots, entry)
    return {
        inst[0]: weight.get(name, 0) * moved for name, inst, moved in _moves(computations, roots, types, inside_fusion)
    }


def _moves(computations, roots, types, inside_fusion):
    """(computation, instruction, bytes per run) of every instruction that moves data (``hbm_bytes``)."""
    for name, instructions in computations.items():
        for inst in instructions:
            opcode = inst[2]
            if name not in inside_fusion and opcode not in _NO_TRAFFIC and not opcode.endswith("-done"):
                yield name, inst, _traffic(inst[1], opcode, inst[3], inst[4], types, computations, roots)


def hlo_stats(text: str) -> dict:
    """The counts of the module docstring from ``compiled.as_text()``."""
    computations, roots, entry = _parse(text)
    types = {inst[0]: inst[1] for instructions in computations.values() for inst in instructions}
    weight, inside_fusion, unknown, trips = _weights(computations, roots, entry)
    out = {"collective_bytes": collections.Counter(), "collective_bytes_once": collections.Counter(),
           "dot_flops": 0.0, "dot_flops_once": 0.0, "hbm_bytes": 0.0, "hbm_bytes_once": 0.0,
           "loop_iterations": 0, "unknown_trip_counts": unknown}  # fmt: skip
    for name, instructions in computations.items():
        w = weight.get(name, 0)
        for inst_name, type_text, opcode, operands, attrs in instructions:
            base = opcode.removesuffix("-start")
            if base in COLLECTIVES and not opcode.endswith("-done"):
                moved = sum(shape_bytes(types.get(o, "")) for o in operands)
                out["collective_bytes"][base] += w * moved
                out["collective_bytes_once"][base] += moved
            elif opcode in ("dot", "convolution"):
                flops = _matmul_flops(type_text, opcode, [types.get(o, "") for o in operands], attrs)
                out["dot_flops"] += w * flops
                out["dot_flops_once"] += flops
            elif opcode == "while":
                out["loop_iterations"] += w * trips[inst_name]
    for name, _, moved in _moves(computations, roots, types, inside_fusion):
        out["hbm_bytes"] += weight.get(name, 0) * moved
        out["hbm_bytes_once"] += moved
    out["collective_bytes"] = dict(out["collective_bytes"])
    out["collective_bytes_once"] = dict(out["collective_bytes_once"])
    return out
