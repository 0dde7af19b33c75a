"""The house's layers (pyproject's import contract), checked the way `make lint` checks
them, and what importing a low layer loads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT), "--no-cache", "--config", str(tree / "pyproject.toml")],
                          cwd=tree, capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A scratch copy of the package and its contract."""
    shutil.copytree(ROOT / "kvmlab", tmp_path / "kvmlab",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contract_holds_and_is_checked_on_this_tree(copy: Path) -> None:
    res = _lint(copy)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 kept, 0 broken" in res.stdout


def test_a_lower_layer_importing_a_higher_one_breaks_it(copy: Path) -> None:
    with open(copy / "kvmlab" / "analysis" / "series.py", "a") as fh:
        fh.write("\nfrom kvmlab import plots  # noqa: E402,F401 - the analysis is below plots\n")
    res = _lint(copy)
    assert res.returncode != 0
    assert "BROKEN" in res.stdout and "kvmlab.analysis.series -> kvmlab.plots" in res.stdout


def test_a_cycle_breaks_it(copy: Path) -> None:
    with open(copy / "kvmlab" / "units.py", "a") as fh:           # leaves import each other
        fh.write("\nfrom kvmlab import marks  # noqa: E402,F401\n")
    with open(copy / "kvmlab" / "marks.py", "a") as fh:
        fh.write("\nfrom kvmlab import units  # noqa: E402,F401\n")
    res = _lint(copy)
    assert res.returncode != 0 and "No import cycles" in res.stdout and "BROKEN" in res.stdout


def test_the_analysis_loads_nothing_that_talks_to_qemu_or_draws() -> None:
    code = ("import sys, kvmlab, kvmlab.analysis, kvmlab.analysis.converge\n"
            "print(sorted(m for m in ('qemu.qmp', 'IPython', 'matplotlib.pyplot', "
            "'kvmlab.vm.machine', 'kvmlab.backends.qmp') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert res.stdout.strip() == "[]"


def test_the_package_root_is_lazy_and_keeps_its_names() -> None:
    code = ("import sys, kvmlab\n"
            "assert 'kvmlab.vm.machine' not in sys.modules\n"
            "from kvmlab import Machine, load_run, MirrorSpec, BadInput, __version__\n"
            "assert Machine.__module__ == 'kvmlab.vm.machine' and 'kvmlab.vm.machine' in sys.modules\n"
            "print(sorted(set(kvmlab.__all__) - set(dir(kvmlab))))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
