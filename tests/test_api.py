"""The public API: names, the lazy trainer import, deprecated aliases, and the documented list."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import xlstm_jax

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_every_public_name_resolves_and_is_documented():
    documented = set(re.findall(r"^- `xlstm_jax\.([A-Za-z_]\w*)`", API_DOC.read_text(), flags=re.M))
    eager = [name for name in xlstm_jax.__all__ if name not in ("fit", "load_run")]
    for name in eager:
        assert getattr(xlstm_jax, name) is not None, name
    assert documented == set(xlstm_jax.__all__), documented ^ set(xlstm_jax.__all__)


def test_one_naming_convention_for_both_architectures():
    from xlstm_jax.models import xlstm_large, xlstm_lm

    for package in (xlstm_lm, xlstm_large):
        assert {"mLSTMLayer", "mLSTMBlock"} <= set(package.__all__), package.__name__
        assert not [name for name in package.__all__ if name.startswith(("MLSTM", "SLSTM"))], package.__name__
    assert xlstm_jax.mLSTMBlock is xlstm_lm.mLSTMBlock and xlstm_jax.xlstm_large.mLSTMBlock is xlstm_large.mLSTMBlock


@pytest.mark.parametrize("old, new", [("MLSTMLayerConfig", "mLSTMLayerConfig"), ("SLSTMBlockState", "sLSTMBlockState")])
def test_old_names_are_deprecated_aliases(old, new):
    from xlstm_jax.models import xlstm_lm

    with pytest.warns(DeprecationWarning, match=f"xlstm_lm.{old} is deprecated; use .*{new}"):
        assert getattr(xlstm_lm, old) is getattr(xlstm_lm, new)
    with pytest.raises(AttributeError, match="NoSuchLayer"):
        xlstm_lm.NoSuchLayer  # noqa: B018


def test_importing_the_library_does_not_import_the_trainer():
    code = "import sys, xlstm_jax; print(sorted(m for m in sys.modules if m.startswith('xlstm_jax.train')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", ["fit", "load_run"])
def test_trainer_entry_points_resolve_lazily(name):
    """``xlstm_jax.fit`` / ``load_run`` are ``xlstm_jax.train``'s, or an AttributeError that says where
    they are expected (while the trainer API does not define them)."""
    train = importlib.import_module("xlstm_jax.train")
    if hasattr(train, name):
        assert getattr(xlstm_jax, name) is getattr(train, name)
    else:
        with pytest.raises(AttributeError, match=f"xlstm_jax.{name} is provided by xlstm_jax.train"):
            getattr(xlstm_jax, name)
    with pytest.raises(AttributeError, match="has no attribute 'not_a_name'"):
        xlstm_jax.not_a_name  # noqa: B018
