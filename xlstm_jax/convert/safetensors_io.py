"""Minimal streaming reader and writer of the safetensors format, numpy only.

Format: an 8-byte little-endian header length N, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the
raw little-endian tensor bytes (offsets relative to the end of the header). Written here
rather than through ``safetensors.numpy`` because that cannot return bfloat16 and needs a
whole shard in memory to write one; this reads and writes one tensor at a time, with
bfloat16 as ``ml_dtypes.bfloat16``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping

import ml_dtypes
import numpy as np

from xlstm_jax._validation import CheckpointError

DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("bool"),
}
CODES = {v: k for k, v in DTYPES.items()}


class SafetensorsFile:
    """Header of one ``.safetensors`` file; ``read`` loads one tensor (one allocation)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        expected = "a safetensors file (8-byte header length, JSON header, tensor data)"
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{self.path} is {size} bytes, too short for a header: expected {expected}")
            n = int.from_bytes(head, "little")
            if n > size - 8:
                raise CheckpointError(
                    f"{self.path} declares a {n}-byte header but holds {size} bytes: the file is cut or not "
                    f"safetensors; expected {expected}"
                )
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{self.path}: the header is not JSON ({e}); expected {expected}") from e
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: the header is a JSON {type(header).__name__}; expected {expected}")
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        self.header: dict[str, dict] = header
        for key, info in header.items():
            _check_entry(self.path, key, info, size - self.data_start)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v["shape"]) for k, v in self.header.items()}

    def read(self, key: str) -> np.ndarray:
        info = self.header[key]
        dtype, shape = DTYPES[info["dtype"]], tuple(info["shape"])
        begin, end = info["data_offsets"]
        nbytes = end - begin  # checked against the shape when the header was read
        buf = np.empty(nbytes, np.uint8)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            if f.readinto(buf) != nbytes:
                raise CheckpointError(f"{self.path}: truncated data for tensor {key!r}")
        return buf.view(dtype).reshape(shape)


def _check_entry(path: str, key: str, info, data_bytes: int) -> None:
    """One header entry: a known dtype, a shape of ints >= 0, offsets inside the data that fit the shape."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise CheckpointError(f"{path}: tensor {key!r} must have dtype, shape and data_offsets, got {info!r}")
    if info["dtype"] not in DTYPES:
        raise CheckpointError(f"{path}: tensor {key!r} has dtype {info['dtype']!r}; supported: {list(DTYPES)}")
    shape, offsets = info["shape"], info["data_offsets"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise CheckpointError(f"{path}: tensor {key!r} must have a shape of integers >= 0, got {shape!r}")
    ok = isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
    if not ok or not 0 <= offsets[0] <= offsets[1] <= data_bytes:
        raise CheckpointError(
            f"{path}: tensor {key!r} must have data_offsets [begin, end] within the {data_bytes} data bytes, "
            f"got {offsets!r} (a cut file?)"
        )
    nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[info["dtype"]].itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise CheckpointError(
            f"{path}: tensor {key!r} spans {offsets[1] - offsets[0]} bytes, expected {nbytes} "
            f"for {info['dtype']} {tuple(shape)}"
        )


TensorSpec = tuple[str, Callable[[], np.ndarray], tuple[int, ...], np.dtype]


def write(path: str | os.PathLike, tensors: Iterable[TensorSpec], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``(name, fetch, shape, dtype)`` tensors, calling each ``fetch`` only when its bytes are written."""
    tensors = list(tensors)
    header: dict[str, dict] = {"__metadata__": dict(metadata or {})}
    offset = 0
    for name, _, shape, dtype in tensors:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {
            "dtype": CODES[np.dtype(dtype)],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, fetch, shape, dtype in tensors:
            x = np.ascontiguousarray(fetch(), dtype=dtype)
            if x.shape != tuple(shape):
                raise ValueError(f"tensor {name!r} has shape {x.shape}, declared {tuple(shape)}")
            f.write(x.reshape(-1).view(np.uint8).data)
            del x
