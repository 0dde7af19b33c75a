"""Run options: validated before anything exists; experiments that cannot run on a backend
say so in one line (pure: nothing starts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmlab import experiments as ex
from kvmlab.errors import BadInput
from kvmlab.options import RunOptions


@pytest.mark.parametrize("field,value,msg", [
    ("backend", "nosuch", "backend='nosuch' is not one of qmp, libvirt"),
    ("accel", "hvf", "accel='hvf' is not one of"), ("cache", "fast", "cache='fast'"),
    ("sample_interval", 0, "sample_interval=0 must be"),
    ("sample_interval", True, "sample_interval=True must be")])
def test_bad_options_are_one_line(field: str, value: object, msg: str) -> None:
    with pytest.raises(BadInput, match=msg) as err:
        RunOptions(**{field: value})  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


def test_options_from_notebook_params_and_recorded() -> None:
    o = RunOptions.from_params({"accel": "tcg", "run_path": "/x", "image_mib": 48})
    assert o.accel == "tcg" and o.run_path == Path("/x")
    assert "run_path" not in o.recorded() and o.recorded()["backend"] == "qmp"


@pytest.mark.parametrize("fn,kwargs", [
    (ex.mirror_nfs_outage, {}), (ex.target_fault, {}), (ex.consistency_study, {}),
    (ex.shallow_existing, {})])
def test_experiments_say_which_backend_they_cannot_use(fn, kwargs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    opts = RunOptions(backend="libvirt", runs_dir=tmp_path / "runs")
    with pytest.raises(BadInput, match=r"cannot run on the libvirt backend: \w") as err:
        fn(**kwargs, options=opts)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists()
