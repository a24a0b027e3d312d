"""The run presets shipped with the package, as ``xlstm_jax.configs``.

Each top-level ``*.yaml`` here is a preset (``quickstart``, ``pretrain_xlstm71_125m``, ...);
``base.yaml`` and ``model/*.yaml`` are the layers the presets list under ``defaults``.
``xlstm-train --config quickstart`` finds a preset by name from any directory;
``xlstm-train --list-configs`` lists them.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
_LAYERS = ("base",)  # top-level files that are layers, not runnable presets


def list_presets() -> list[str]:
    """Names of the runnable presets, sorted (``quickstart``, ``parity_xlstm11``, ...)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem not in _LAYERS)


def preset_path(name: str) -> Path:
    """The YAML file of preset ``name`` (with or without ``.yaml``); ``ValueError`` naming the presets."""
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    path = CONFIG_DIR / f"{stem}.yaml"
    if "/" in stem or stem in _LAYERS or not path.is_file():
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(list_presets())}")
    return path


__all__ = ["CONFIG_DIR", "list_presets", "preset_path"]
