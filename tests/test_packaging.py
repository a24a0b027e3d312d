"""Packaging: the project installs under the one name ``xlstm_jax`` and ships its presets.

The repository keeps ``train/``, ``pallas_kernels/`` and ``configs/`` at its top level; pyproject
maps them to ``xlstm_jax.train``, ``xlstm_jax.pallas_kernels`` and ``xlstm_jax.configs``. A user's
own ``train.py`` or ``pallas_kernels/`` in the working directory must neither break nor be run.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAPPED = {"xlstm_jax": "xlstm_jax", "xlstm_jax.train": "train", "xlstm_jax.pallas_kernels": "pallas_kernels",
          "xlstm_jax.configs": "configs"}  # fmt: skip


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_package_folder_is_listed():
    tool = _pyproject()["tool"]["setuptools"]
    assert tool["package-dir"] == MAPPED
    found = set()
    for name, folder in MAPPED.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join((name, *rel.parts)))
    assert found == set(tool["packages"])


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory) -> Path:
    """A working directory that holds names a user may well have: train.py, pallas_kernels/."""
    d = tmp_path_factory.mktemp("user_project")
    (d / "train.py").write_text("raise SystemExit('the user train.py ran')\n")
    (d / "pallas_kernels").mkdir()
    (d / "pallas_kernels" / "__init__.py").write_text("raise ImportError('the user pallas_kernels was imported')\n")
    return d


def _run(args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_lists_and_resolves_presets_beside_a_user_train_py(user_dir):
    listed = _run([sys.executable, "-m", "xlstm_jax.train", "--list-configs"], user_dir)
    assert listed.returncode == 0, listed.stderr
    presets = listed.stdout.split()
    assert "quickstart" in presets and "pretrain_xlstm71_125m" in presets and "base" not in presets
    shown = _run([sys.executable, "-m", "xlstm_jax.train", "--config", "quickstart", "--print-config"], user_dir)
    assert shown.returncode == 0, shown.stderr
    assert '"kind": "parity"' in shown.stdout and '"out_dir": "runs/quickstart"' in shown.stdout
    bad = _run([sys.executable, "-m", "xlstm_jax.train", "--config", "quikstart"], user_dir)
    assert bad.returncode == 2 and "is not a preset" in bad.stderr and "quickstart" in bad.stderr


def test_python_api_imports_beside_user_modules(user_dir):
    code = ("import xlstm_jax.train.trainer, xlstm_jax.pallas_kernels.mlstm.config, xlstm_jax.configs as c; "
            "print(c.preset_path('quickstart').name)")  # fmt: skip
    proc = _run([sys.executable, "-c", code], user_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "quickstart.yaml"


def test_wheel_installs_only_under_xlstm_jax(tmp_path):
    proc = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                 str(REPO)], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = tmp_path.glob("xlstm_jax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"xlstm_jax"}
    for needed in ("xlstm_jax/train/trainer.py", "xlstm_jax/pallas_kernels/mlstm/tpu.py",
                   "xlstm_jax/pallas_kernels/mlstm/cpu_fwd.cc",
                   "xlstm_jax/pallas_kernels/mlstm/cpu_bwd.cc", "xlstm_jax/pallas_kernels/mlstm/cpu_common.h",
                   "xlstm_jax/configs/quickstart.yaml", "xlstm_jax/configs/model/xlstm11_tiny.yaml"):  # fmt: skip
        assert needed in names
