"""Run options: validated before anything exists; experiments that cannot run on a backend
say so in one line (pure: nothing starts)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvmlab import experiments as ex
from kvmlab.errors import BadInput
from kvmlab.experiments.options import RunOptions


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


def test_killed_experiment_scratch_is_reaped(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed with SIGKILL leaves data/scratch/<run-id>/ (its images); the next
    launch reaps it, while a run that asked to keep its images keeps them."""
    import os
    import signal
    import subprocess
    import sys

    from kvmlab.store.tmpdirs import reap_stale_tmpdirs
    monkeypatch.setenv("KVMLAB_SCRATCH", str(tmp_path / "scratch"))
    script = ("import time\n"
              "from kvmlab.experiments.common import LabRun\n"
              "from kvmlab.experiments.options import RunOptions\n"
              f"lab = LabRun('x', {{}}, RunOptions(runs_dir={str(tmp_path / 'runs')!r}))\n"
              "lab.__enter__()\n"
              "print(lab.workdir, flush=True)\n"
              "time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline().strip()  # type: ignore[union-attr]
        # a child that failed prints nothing: Path("") would be the current folder
        assert line, child.stderr.read()[-2000:]  # type: ignore[union-attr]
        workdir = Path(line)
        (workdir / "disk.qcow2").write_bytes(b"x" * 4096)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert workdir.exists()
    assert workdir in reap_stale_tmpdirs() and not workdir.exists()
    with ex.common.LabRun("y", {}, RunOptions(runs_dir=tmp_path / "runs",
                                               keep_images=True)) as lab:
        lab.verdict = {"pass": True}
    assert lab.workdir.exists() and lab.workdir not in reap_stale_tmpdirs()


def test_pure_tier_shims_fail_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from tests.conftest import _shadow_qemu  # type: ignore[import-not-found]
    monkeypatch.setenv("PATH", os.environ["PATH"])
    _shadow_qemu(tmp_path / "shims")
    res = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True)
    assert res.returncode == 127 and "pure test tier: qemu-img must not run" in res.stderr
