"""Context parallelism in the trainer (the ``context`` mesh axis) and in generation.

Config checks run here; the runs use one subprocess with 8 fake CPU devices (the device count
is fixed when JAX starts).
"""

from __future__ import annotations

import pytest

from xlstm_jax.train.config import ConfigError, MeshConfig, build_dataclass
from xlstm_jax.train.mesh import row_blocks
from xlstm_jax.train.trainer import resolve

TINY = {
    "model": {"arch": "xlstm_lm", "embedding_dim": 16, "num_blocks": 1, "slstm_at": [], "chunk_size": 4},
    "data": {"kind": "parity", "train_max_len": 16, "eval_min_len": 3, "eval_max_len": 16},
    "train": {"steps": 4, "global_batch_size": 8, "seq_len": 16},
}


@pytest.mark.parametrize(
    "values,message",
    [
        ({"context": 0}, r"mesh.context must be an integer >= 1 or -1 \(all devices left over\), got 0"),
        ({"context": 2.5}, r"mesh.context must be an integer >= -1, got 2.5"),
        ({"context": -1, "data": -1}, r"at most one mesh axis may be -1"),
        ({"rules": {"length": ["ctx"]}}, r"mesh.rules.length: unknown mesh axis .ctx.; use data, fsdp, context"),
        (
            {"context": 4, "rules": {"batch": ["data"], "length": []}},
            r"mesh.rules.length must include 'context' when mesh.context=4",
        ),
    ],
)
def test_bad_mesh_context(values, message):
    with pytest.raises(ConfigError, match=message):
        build_dataclass(MeshConfig, values, "mesh.")


def test_default_rules_split_the_sequence_over_context():
    cfg = MeshConfig(context=4)
    assert cfg.rules["length"] == ["context"] and cfg.rules["batch"] == ["data", "fsdp"]


@pytest.mark.parametrize(
    "train,message",
    [
        ({"seq_len": 30}, r"train.seq_len=30 must be divisible by mesh.context=4"),
        ({"seq_len": 32, "eval_seq_len": 42}, r"train.eval_seq_len=42 must be divisible by mesh.context=4"),
    ],
)
def test_sequence_lengths_must_split_evenly_over_context(train, message):
    raw = {**TINY, "train": {**TINY["train"], **train}, "mesh": {"context": 4}}
    with pytest.raises(ConfigError, match=message):
        resolve(raw)


def test_processes_sharing_rows_load_the_same_block():
    """(process, first row, end row) per device, as ``mesh.process_rows`` reads them off a sharding."""
    # 2 processes x 4 devices, (data=2, context=4): each process holds its own 4 of 8 rows.
    layout = [(d // 4, 4 * (d // 4), 4 * (d // 4) + 4) for d in range(8)]
    assert [row_blocks(layout, p) for p in (0, 1)] == [(0, 2), (1, 2)]
    # (data=1, context=8) across both processes: both hold all rows, so both load the whole batch.
    layout = [(d // 4, 0, 8) for d in range(8)]
    assert [row_blocks(layout, p) for p in (0, 1)] == [(0, 1), (0, 1)]
    # 4 processes, (data=2, context=4) with the context axis across processes 0-1 and 2-3.
    layout = [(d // 2, 4 * (d // 4), 4 * (d // 4) + 4) for d in range(8)]
    assert [row_blocks(layout, p) for p in range(4)] == [(0, 2), (0, 2), (1, 2), (1, 2)]
    with pytest.raises(ConfigError, match="overlapping or unequal blocks of batch rows"):
        row_blocks([(0, 0, 4), (0, 6, 8), (1, 4, 6)], 0)
