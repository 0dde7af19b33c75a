"""Notebook sources: each notebooks/NN_name.py (jupytext) and its paired .ipynb agree, and
every parameter's default and type come from the experiment (or RunOptions)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import jupytext
import nbformat
import pytest

from kvmlab import experiments as ex
from kvmlab.batch.notebooks import notebook_parameters
from kvmlab.experiments.options import RunOptions

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))

#: the experiment each notebook runs (its parameters are that function's)
EXPERIMENT = {"01_mirror_basic": ex.mirror_basic, "02_mirror_nfs_outage": ex.mirror_nfs_outage,
              "03_commit_stopped": ex.commit_stopped, "04_pivot": ex.pivot,
              "05_double_pivot": ex.double_pivot, "06_remove_source": ex.remove_source,
              "07_shallow_existing": ex.shallow_existing, "09_target_faults": ex.target_fault,
              "10_consistency": ex.consistency_study,
              "11_active_mirror": ex.convergence_pressure,
              "12_snapshot_methods": ex.snapshot_methods, "13_scenarios": ex.scenario,
              "14_storage_migration": ex.storage_migration, "15_workloads": ex.workload_cost}
OPTION_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunOptions)}


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", ())))
            for c in nb.cells]


def test_every_notebook_has_a_source_and_no_generator_is_left() -> None:
    ipynbs = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    assert [p.stem for p in SOURCES] == ipynbs and len(ipynbs) >= 12
    assert not (NOTEBOOKS.parent / "tools" / "make_notebooks.py").exists()


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_source_and_ipynb_agree(source: Path) -> None:
    from_py = jupytext.read(source)
    ipynb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    assert _cells(from_py) == _cells(ipynb), (
        f"{source.name} and its .ipynb differ: run 'make notebooks' after editing the .py")
    tagged = [c for c in ipynb.cells if "parameters" in c.metadata.get("tags", ())]
    assert len(tagged) == 1


@pytest.mark.parametrize("name", sorted(EXPERIMENT))
def test_parameter_defaults_come_from_the_experiment(name: str) -> None:
    """Each parameter is typed and has the experiment's (or RunOptions') default."""
    params = notebook_parameters(NOTEBOOKS / f"{name}.ipynb")
    signature = inspect.signature(EXPERIMENT[name]).parameters
    checked = 0
    for pname, spec in params.items():
        assert spec["inferred_type_name"] not in ("None", ""), f"{name}: {pname} has no type"
        default = ast.literal_eval(spec["default"])
        if pname in signature:
            want = signature[pname].default
        elif pname in OPTION_DEFAULTS:
            want = OPTION_DEFAULTS[pname]
        else:
            continue           # the notebook's own (a list of cases, strategies as text)
        if isinstance(want, tuple):
            want = " ".join(map(str, want))
        assert default == want, f"{name}: {pname} = {default!r} in the notebook, {want!r} in code"
        checked += 1
    assert checked >= 3


def test_declared_types_check_values_before_anything_runs() -> None:
    from kvmlab.batch.notebooks import check_parameters
    from kvmlab.errors import BadInput
    nb = NOTEBOOKS / "01_mirror_basic.ipynb"
    check_parameters(nb, {"granularity": 65536, "buf_size": None, "workload_rate_kib_s": 512,
                          "after_ready_s": 1, "target_format": "raw"})
    for bad, msg in (({"granularity": "big"}, "should be Optional\\[int\\]"),
                     ({"speed": 1.5}, "should be int"), ({"speed": True}, "should be int"),
                     ({"speed": None}, "should be int"), ({"sync": ["full"]}, "should be str"),
                     ({"sync": 3}, "sync='3' is not one of")):
        with pytest.raises(BadInput, match=msg):
            check_parameters(nb, bad)
    # a number where text is declared is its text: "-p speeds 4194304" is a list of one
    given = {"speeds": 4194304, "profiles": "bursty"}
    check_parameters(NOTEBOOKS / "15_workloads.ipynb", given)
    assert given == {"speeds": "4194304", "profiles": "bursty"}
