"""Build and load the project's C++ CPU kernels, XLA FFI custom calls, on first use.

A kernel's source (``*.cc`` beside its Python module, with the ``*.h`` headers there) is compiled
once per machine with the C++ compiler found here (``$CXX``, else ``g++``, ``c++`` or ``clang++``)
against the XLA FFI headers that jaxlib ships (``jax.ffi.include_dir()``), for this CPU
(``-march=native``), and cached in ``$XLSTM_JAX_CACHE`` (default ``$XDG_CACHE_HOME/xlstm_jax/native``
or ``~/.cache/xlstm_jax/native``). The cache key covers the source and the headers beside it, the
compiler and its version, the flags, the jaxlib version and the CPU's feature flags, so a changed
source, toolchain or machine builds anew. Writes are atomic (a temporary file, then ``os.replace``),
so concurrent processes (pytest workers) never load a half-written library.

Without a compiler, or when the build fails, ``load`` raises ``NativeBuildError`` with the
compiler's message; the backends (``xlstm_jax.backends``) then run the XLA form and log why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import jax
import jaxlib

FLAGS = ("-O3", "-march=native", "-std=gnu++17", "-ffp-contract=fast", "-shared", "-fPIC")
_LOCK = threading.Lock()
_REGISTERED: dict[str, ctypes.CDLL] = {}


class NativeBuildError(RuntimeError):
    """A C++ kernel could not be compiled or loaded here (no compiler, or a compile error)."""


_FAILED: dict[str, NativeBuildError] = {}  # targets that could not be built, with why (not retried)


def cache_dir() -> Path:
    """Where built kernels are kept (see the module docstring)."""
    if path := os.environ.get("XLSTM_JAX_CACHE"):
        return Path(path)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "xlstm_jax" / "native"


def compiler() -> str:
    """The C++ compiler used: ``$CXX`` or the first of g++, c++, clang++ on the PATH."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and (path := shutil.which(name)):
            return path
    raise NativeBuildError("no C++ compiler found (set CXX, or install g++ or clang++)")


def _cpu_features() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def library_path(source: Path) -> Path:
    """The cached library built from ``source`` for this machine (built if missing)."""
    cxx = compiler()
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise NativeBuildError(f"the C++ compiler {cxx} does not run: {err}") from err
    key = hashlib.sha256()
    headers = sorted(source.parent.glob("*.h"))  # what the source may include with "..."
    parts = (source.read_bytes(), *(h.read_bytes() for h in headers), cxx.encode(), version.encode(),
             " ".join(FLAGS).encode(), jaxlib.__version__.encode(), platform.machine().encode(),
             _cpu_features().encode())  # fmt: skip
    for part in parts:
        key.update(part)
        key.update(b"\0")
    target = cache_dir() / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [cxx, *FLAGS, "-isystem", jax.ffi.include_dir(), str(source), "-o", tmp]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise NativeBuildError(f"compiling {source.name} failed ({' '.join(cmd)}):\n{done.stderr[-4000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def _load(path: Path, symbol: str) -> tuple[ctypes.CDLL, object]:
    """The loaded library at ``path`` and its function ``symbol``."""
    try:
        lib = ctypes.CDLL(str(path))
        return lib, getattr(lib, symbol)
    except (OSError, AttributeError) as err:
        raise NativeBuildError(f"loading {symbol} from {path} failed: {err}") from err


def register(source: Path, symbol: str, target_name: str) -> None:
    """Build ``source`` if needed, load it and register its FFI handler ``symbol`` as the CPU custom
    call ``target_name`` (once per process). A failure is remembered: later calls raise the same
    ``NativeBuildError`` without compiling again (a new process tries anew)."""
    with _LOCK:
        if target_name in _REGISTERED:
            return
        if target_name in _FAILED:
            raise _FAILED[target_name]
        try:
            lib, handler = _load(library_path(source), symbol)
        except NativeBuildError as err:
            _FAILED[target_name] = err
            raise
        jax.ffi.register_ffi_target(target_name, jax.ffi.pycapsule(handler), platform="cpu")
        _REGISTERED[target_name] = lib
