"""Sweeps: planning and validation, a real sweep with 2 workers, resume, a failing point,
Ctrl-C, and the Dask path on a LocalCluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import qemu_pids

from kvmlab.batch.sweep import SweepSpec, collect, parse_grid, run_sweep
from kvmlab.cli import main
from kvmlab.errors import BadInput


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""

ROOT = Path(__file__).resolve().parent.parent
NB = ROOT / "notebooks" / "01_mirror_basic.ipynb"
# small and quick: a 48 MiB disk, 4 MiB of data, a short wait in the ready state
TINY = {"image_mib": 48, "fill_mib": 4, "workload_kib": 128, "after_ready_s": 0.3,
        "accel": "tcg", "ready_timeout": 60.0}


def test_grid_is_a_cartesian_product() -> None:
    spec = SweepSpec(NB, {"image_mib": 48}, parse_grid(["speed=0,1048576", "sync=full,top"]),
                     repeat=2)
    pts = spec.plan()
    assert len(pts) == 8
    assert {p.params["sync"] for p in pts} == {"full", "top"}
    assert len({p.name for p in pts}) == 8          # distinct folders
    assert all(p.params["image_mib"] == 48 for p in pts)
    # the repetitions take turns: every point once, then every point again
    assert [p.repeat for p in pts] == [0] * 4 + [1] * 4
    assert [p.params for p in pts[:4]] == [p.params for p in pts[4:]]


@pytest.mark.parametrize("spec,msg", [
    (SweepSpec(NB, grid={"no_such": [1, 2]}), "unknown parameter"),
    (SweepSpec(NB, grid={"speed": ["fast"]}), "should be int"),
    (SweepSpec(NB, params={"after_ready_s": "soon"}), "should be float"),
    (SweepSpec(NB, grid={"speed": []}), "non-empty list"),
    (SweepSpec(NB, grid={"speed": [0]}, points=[{"speed": 0}]), "either a grid"),
    (SweepSpec(NB, repeat=0), "repeat"),
    (SweepSpec(NB), "nothing to sweep"),
    (SweepSpec(NB, grid={"granularity": [65536, 3000]}), "granularity=3000 must be a power"),
    (SweepSpec(NB, params={"speed": 0}), "nothing to sweep"),
])
def test_bad_sweeps_rejected_before_anything_runs(spec: SweepSpec, msg: str,
                                                  tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=msg):
        run_sweep(spec, tmp_path / "sw", progress=False)
    assert not (tmp_path / "sw").exists()


def test_cli_sweep_errors_are_one_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["sweep", str(NB), "--grid", "speed", "--out",
                                    str(tmp_path / "x")])
    assert res.exit_code == 2 and res.output.startswith("kvmlab: error: --grid")
    res = CliRunner().invoke(main, ["sweep"])
    assert res.exit_code == 2 and "NOTEBOOK or a sweep file" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("notebook: ../x.ipynb\ngird: {}\n")
    res = CliRunner().invoke(main, ["sweep", "-f", str(bad)])
    assert res.exit_code == 2 and "unknown key(s) gird" in res.output


def test_cli_sweep_reports_failed_points_and_exits_non_zero(tmp_path: Path) -> None:
    """Both points fail in the notebook (the pure tier's QEMU programs refuse to run): the
    sweep says "0 done, 2 failed" with each point's error and exits 1."""
    out = tmp_path / "sw"
    res = CliRunner().invoke(main, ["sweep", str(NB), "--grid", "speed=0,1048576", "-p",
                                    "accel", "tcg", "--out", str(out), "--no-report"])
    assert res.exit_code == 1, res.output
    assert "0 done, 2 failed" in res.output
    assert res.output.count("FAILED ") == 2 and "must not run here" in res.output


def test_shipped_sweeps_are_valid() -> None:
    for name, n, nb in (("speed_vs_dirty_rate.yaml", 6, NB), ("buffers.yaml", 6, NB),
                        ("nfs_outage.yaml", 8, NB.parent / "02_mirror_nfs_outage.ipynb")):
        spec = SweepSpec.from_yaml(ROOT / "notebooks" / "sweeps" / name)
        assert spec.notebook == nb
        assert len(spec.plan()) == n


def _overlapped(folder: Path) -> bool:
    """Did two points' runs overlap in time (from their run.json, not a timing)?"""
    spans = sorted((m["started"], m["ended"]) for m in
                   (json.loads(p.read_text()) for p in folder.glob("points/*/run.json")))
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


@pytest.mark.long
@pytest.mark.qemu
def test_sweep_two_workers_failing_point_resume_and_report(tmp_path: Path) -> None:
    """4 points against real QEMU with 2 workers, one failing point, then a resume."""
    points = [{"speed": 0, "workload_rate_kib_s": 256},
              {"speed": 4194304, "workload_rate_kib_s": 256},
              {"speed": 4194304, "workload_rate_kib_s": 1024},
              {"speed": 1048576, "ready_timeout": 0.01}]   # fails inside the notebook
    spec = SweepSpec(NB, dict(TINY), points=points)
    out = tmp_path / "sweep"
    folder = run_sweep(spec, out, workers=2, progress=False)
    frame = pd.read_parquet(folder / "results.parquet")
    assert len(frame) == 4
    done = frame[frame.point_status == "done"]
    failed = frame[frame.point_status == "failed"]
    assert len(done) == 3 and len(failed) == 1
    assert "not ready within 0.01 s" in failed.point_error.iloc[0]
    assert set(done.convergence) == {"converged"} and done["pass"].astype(str).eq("True").all()
    assert {"speed", "workload_rate_kib_s", "time_to_ready_s", "bytes_copied"} <= set(frame)
    assert (folder / "results.csv").exists()
    meta = json.loads((folder / "sweep.json").read_text())
    s0 = meta["sessions"][0]
    assert s0["points_run"] == 4 and s0["failed"] == 1 and s0["workers"] == 2
    assert _overlapped(folder), "no two points ran side by side"
    assert (folder / "report.html").exists()
    assert (folder / "sweep_ttr_vs_speed.png").exists()
    assert (folder / "sweep_convergence_map.png").exists()
    # resume: nothing done is run again; the failed point is retried; an interrupted point
    # (no point.json) starts afresh
    victim = next(p for p in sorted((folder / "points").iterdir())
                  if json.loads((p / "point.json").read_text())["status"] == "done")
    (victim / "point.json").unlink()
    run_sweep(spec, out, workers=2, progress=False, report=False)
    s1 = json.loads((folder / "sweep.json").read_text())["sessions"][1]
    assert s1["points_run"] == 2 and s1["failed"] == 1
    assert len(collect(folder)) == 4
    # a different sweep cannot reuse the folder
    with pytest.raises(BadInput, match="different sweep"):
        run_sweep(SweepSpec(NB, dict(TINY), points=points[:2]), out, progress=False)


@pytest.mark.qemu
def test_ctrl_c_stops_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "kvmlab", "sweep", str(NB), "--out", str(out), "--workers", "2",
           "--grid", "speed=0,4194304", "--grid", "workload_rate_kib_s=256,512", "--no-report"]
    for k, v in TINY.items():
        cmd += ["-p", k, str(v)]
    from kvmlab import paths
    scratch_before = set(paths.scratch_dir().glob("*")) if paths.scratch_dir().exists() else set()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # wait until points are really running (their QEMU exists), then Ctrl-C
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            qemus = [str(p) for p in qemu_pids() if "qemu-system" in _cmdline(p)]
            if qemus:
                break
            time.sleep(0.5)
        else:
            pytest.fail("no point started")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "interrupted" in err
    for _ in range(50):   # every QEMU the points started is gone
        left = [p for p in qemus if Path(f"/proc/{p}").exists()]
        if not left:
            break
        time.sleep(0.2)
    assert not left
    assert set(paths.scratch_dir().glob("*")) <= scratch_before, "images left in scratch"
    assert (out / "sweep.json").exists()
    assert not [p for p in (out / "points").iterdir() if (p / "point.json").exists()
                and json.loads((p / "point.json").read_text())["status"] == "done"
                and not list(p.rglob("run.json"))]


@pytest.mark.long
@pytest.mark.qemu
def test_dask_local_cluster(tmp_path: Path) -> None:
    from distributed import Client, LocalCluster
    spec = SweepSpec(NB, dict(TINY), grid={"speed": [0, 4194304]})
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        folder = run_sweep(spec, tmp_path / "sweep", dask=client, progress=False,
                           report=False)
        hosts = {json.loads(p.read_text())["host"] for p in folder.rglob("point.json")}
    frame = collect(folder)
    assert len(frame) == 2 and (frame.point_status == "done").all()
    assert set(frame.convergence) == {"converged"}
    assert hosts == {os.uname().nodename}
    meta = json.loads((folder / "sweep.json").read_text())
    assert meta["sessions"][0]["dask"] is not None


@pytest.mark.long
@pytest.mark.qemu
def test_kill_9_then_resume_at_once_runs_no_point_twice(tmp_path: Path) -> None:
    """The sweep dies with SIGKILL mid-run and the same command is run again at once:
    the orphaned points stop (they die with their sweep) long before their mirrors could
    have ended, the resume waits for them instead of clashing, every point ends done, and
    no QEMU outlives it."""
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "kvmlab", "sweep", str(NB), "--out", str(out), "--workers", "2",
           "--grid", "speed=2097152,3145728", "--no-report"]
    for k, v in {**TINY, "fill_mib": 16, "workload_rate_kib_s": 256}.items():  # 6-9 s mirrors
        cmd += ["-p", k, str(v)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            qemus = [str(p) for p in qemu_pids() if "qemu-system" in _cmdline(p)]
            if len(qemus) >= 2:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the points did not start")
        points = subprocess.run(["pgrep", "-f", f"kvmlab run .*{out}/points"],
                                capture_output=True, text=True).stdout.split()
        assert len(points) == 2
        first.kill()
        first.wait(10)
        killed = time.monotonic()
        again = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while any(Path(f"/proc/{p}").exists() for p in points) and \
                time.monotonic() - killed < 120:
            time.sleep(0.1)
        orphans_lived = time.monotonic() - killed
        stdout, stderr = again.communicate(timeout=600)
    finally:
        first.kill()
    # stopped, not run to their end: far shorter than a whole point of the resume
    whole = min(json.loads(p.read_text())["wall_s"] for p in out.glob("points/*/point.json"))
    assert orphans_lived < 0.5 * whole, (orphans_lived, whole)
    assert again.returncode == 0, stdout + stderr
    assert "Traceback" not in stderr
    for p in sorted((out / "points").iterdir()):
        point = json.loads((p / "point.json").read_text())
        assert point["status"] == "done", point
    for _ in range(50):
        left = [q for q in qemus if Path(f"/proc/{q}").exists()]
        if not left:
            break
        time.sleep(0.2)
    assert not left, "an orphaned QEMU outlived the resume"
