"""Package boundaries: imports run one way, and no package reaches into another's private modules.

Layers, lowest first (a module may import its own layer and the layers below it):

  ops       xlstm_jax.ops, xlstm_jax._validation   pure-JAX cells and the math the kernels share
  kernels   xlstm_jax.pallas_kernels               Pallas kernels (import ops' public modules only)
  dispatch  xlstm_jax.backends                     chooses a cell implementation, imports kernels lazily
  modules   xlstm_jax.nn                           Flax NNX layers
  models    xlstm_jax.models, .convert, .generation, .hub, .tokenizer
  train     xlstm_jax.train, xlstm_jax.configs
  app       xlstm_jax (its __init__), xlstm_jax.demo

The source is parsed (``ast``), not imported, so imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Repository folder -> installed package name (see [tool.setuptools] package-dir in pyproject.toml).
FOLDERS = {"xlstm_jax": "xlstm_jax", "pallas_kernels": "xlstm_jax.pallas_kernels", "train": "xlstm_jax.train"}
LAYERS = [
    ("ops", ("xlstm_jax.ops", "xlstm_jax._validation")),
    ("kernels", ("xlstm_jax.pallas_kernels",)),
    ("dispatch", ("xlstm_jax.backends",)),
    ("modules", ("xlstm_jax.nn",)),
    (
        "models",
        ("xlstm_jax.models", "xlstm_jax.convert", "xlstm_jax.generation", "xlstm_jax.hub", "xlstm_jax.tokenizer"),
    ),
    ("train", ("xlstm_jax.train", "xlstm_jax.configs")),
    ("app", ("xlstm_jax",)),
]


def _layer(module: str) -> int:
    """Index in LAYERS of the longest matching prefix."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, module
    return best


def _modules() -> dict[str, Path]:
    """Installed module name -> source file, for every module of the package."""
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


MODULES = _modules()


def _is_package(module: str) -> bool:
    return MODULES.get(module, Path()).name == "__init__.py"


def _imports(module: str, path: Path):
    """(imported module, imported name or None, line) for every ``xlstm_jax`` import of one file."""
    package = module if _is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("xlstm_jax"):
                    yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("xlstm_jax"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in MODULES:  # ``from pkg import submodule``
                    yield sub, None, node.lineno
                else:
                    yield base, alias.name, node.lineno


def _owner(target: str, name: str | None) -> str | None:
    """The package that owns the first private (``_x``) part of ``target.name``; None if all public."""
    parts = target.split(".") + ([name] if name else [])
    for index, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:index])
    return None


def _violations():
    layering, private = [], []
    for module, path in MODULES.items():
        where = f"{path.relative_to(ROOT)}"
        for target, name, line in _imports(module, path):
            if _layer(target) > _layer(module):
                layering.append(
                    f"{where}:{line}: {LAYERS[_layer(module)][0]} module {module} imports "
                    f"{LAYERS[_layer(target)][0]} module {target}"
                )
            owner = _owner(target, name)
            if owner is not None and not (module == owner or module.startswith(owner + ".")):
                private.append(
                    f"{where}:{line}: {module} imports {target}{'.' + name if name else ''}, private to {owner}"
                )
    return layering, private


def test_the_walk_sees_the_package():
    assert {
        "xlstm_jax.ops",
        "xlstm_jax.backends",
        "xlstm_jax.pallas_kernels.mlstm.tpu",
        "xlstm_jax.train.trainer",
    } <= set(MODULES)
    edges = {(m, t) for m, p in MODULES.items() for t, _, _ in _imports(m, p)}
    assert ("xlstm_jax.backends", "xlstm_jax.pallas_kernels.mlstm.tpu") in edges  # a lazy import inside a function
    assert ("xlstm_jax.ops._mlstm_chunkwise", "xlstm_jax.ops.chunkwise_math") in edges  # a relative import


@pytest.mark.parametrize(
    "module,target,name,expected",
    [
        ("xlstm_jax.pallas_kernels.mlstm.tpu", "xlstm_jax.ops._checks", "check_eps", "xlstm_jax.ops"),
        ("xlstm_jax.pallas_kernels.slstm.tpu", "xlstm_jax.ops.slstm_math", "_pointwise", "xlstm_jax.ops.slstm_math"),
        ("xlstm_jax.ops._slstm", "xlstm_jax.ops._checks", None, "xlstm_jax.ops"),
        ("xlstm_jax.models.xlstm_lm.config", "xlstm_jax._validation", None, "xlstm_jax"),
    ],
)
def test_private_owner(module, target, name, expected):
    assert _owner(target, name) == expected


def test_layer_order():
    ranks = [_layer(m) for m in ("xlstm_jax.ops.decay", "xlstm_jax.pallas_kernels.mlstm.gpu", "xlstm_jax.backends")]
    ranks += [_layer(m) for m in ("xlstm_jax.nn.layers", "xlstm_jax.models.xlstm_lm.model", "xlstm_jax.train.cli")]
    assert ranks == sorted(ranks) and len(set(ranks)) == 6


def test_imports_run_one_way():
    layering, _ = _violations()
    assert not layering, "imports against the layer order:\n" + "\n".join(layering)


def test_no_private_imports_across_packages():
    _, private = _violations()
    assert not private, "private modules or names used outside their package:\n" + "\n".join(private)
