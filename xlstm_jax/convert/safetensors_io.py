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
        with open(self.path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        self.header: dict[str, dict] = header
        for key, info in header.items():
            if info["dtype"] not in DTYPES:
                raise ValueError(f"{self.path}: tensor {key!r} has dtype {info['dtype']}; supported: {list(DTYPES)}")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v["shape"]) for k, v in self.header.items()}

    def read(self, key: str) -> np.ndarray:
        info = self.header[key]
        dtype, shape = DTYPES[info["dtype"]], tuple(info["shape"])
        begin, end = info["data_offsets"]
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if end - begin != nbytes:
            raise ValueError(f"{self.path}: tensor {key!r} spans {end - begin} bytes, expected {nbytes}")
        buf = np.empty(nbytes, np.uint8)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            if f.readinto(buf) != nbytes:
                raise ValueError(f"{self.path}: truncated data for tensor {key!r}")
        return buf.view(dtype).reshape(shape)


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
