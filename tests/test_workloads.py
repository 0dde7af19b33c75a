"""fio in the guest against the real lab: the guest's compaction of fio's status on real
fio output, a notebook run with a profile, and a job file fio refuses."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest

from kvmlab import experiments as ex
from kvmlab.errors import GuestFailed
from kvmlab.experiments.options import RunOptions
from kvmlab.guest import fio
from kvmlab.guest.console import parse_line

pytestmark = pytest.mark.qemu  # integration: the guest's tools and real QEMU

NB = Path(__file__).resolve().parent.parent / "notebooks" / "01_mirror_basic.ipynb"


def _guest_awk() -> str:
    init = resources.files("kvmlab.guest").joinpath("init.sh").read_text()
    m = re.search(r"<<'EOA'\n(.*?)\nEOA\n", init, re.DOTALL)
    assert m, "init.sh holds the fio status script"
    return m.group(1)


def test_the_guests_script_turns_fios_json_status_into_one_line_a_second(tmp_path: Path) -> None:
    """The host's fio (the guest's, same build) runs 4 s of 4 KiB random writes at 512 KiB/s
    with its JSON status each second; busybox awk running the guest's script makes one
    fio_status line per status, and those read back as 128 writes a second."""
    (tmp_path / "awk").write_text(_guest_awk())
    job = fio.profile("rand-write-4k", rate_kib_s=512, size_mib=4).text \
        .replace("directory=/mnt/fio", f"directory={tmp_path}").replace("direct=1", "direct=0") \
        .replace("runtime=86400", "runtime=4")
    (tmp_path / "job.fio").write_text(job)
    run = subprocess.run(["fio", "--status-interval=1", "--output-format=json+",
                          str(tmp_path / "job.fio")], capture_output=True, check=True, timeout=60)
    out = subprocess.run(["/bin/busybox", "awk", "-f", str(tmp_path / "awk")], input=run.stdout,
                         capture_output=True, check=True, timeout=30).stdout.decode()
    lines = out.splitlines()
    assert len(lines) >= 4 and all(line.startswith("KVMLAB fio_status ms=") for line in lines)
    parsed = [parse_line(line) for line in lines]
    rows = [{"t": float(i), "name": fio.STATUS, "data": json.dumps(p[1])}
            for i, p in enumerate(parsed) if p]
    io = fio.guest_io(pd.DataFrame(rows))
    full = io[io["guest_ms"].diff().fillna(1000) > 900]       # whole seconds (not the last bit)
    assert full["write_iops"].median() == pytest.approx(128, rel=0.1)
    assert (full["write_p99_us"] >= full["write_p50_us"]).all() and (io["read_iops"] == 0).all()


def test_a_fio_profile_runs_in_the_notebook_and_its_seconds_are_in_the_run(tmp_path: Path) -> None:
    """``kvmlab run notebooks/01_mirror_basic.ipynb -p workload rand-write-4k``: the guest runs
    fio's 4 KiB random writes at the default 256 KiB/s beside its file operations; the mirror
    gets READY, the copy verifies, and ``guest_io.parquet`` holds ~64 writes a second."""
    out = tmp_path / "r"
    res = subprocess.run([sys.executable, "-m", "kvmlab", "run", str(NB), "-p", "workload",
                          "rand-write-4k", "-p", "image_mib", "48", "-p", "fill_mib", "8",
                          "-p", "accel", "tcg", "-p", "after_ready_s", "8", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "done" and meta["verdict"]["pass"] is True, meta["verdict"]
    assert meta["params"]["workload"] == "rand-write-4k"
    assert meta["fio"]["job"] == "rand-write-4k" and meta["fio"]["error"] is None
    io = pd.read_parquet(out / fio.GUEST_IO_FILE)
    assert len(io) >= 5 and meta["fio"]["seconds"] == len(io)
    assert io["write_iops"].median() == pytest.approx(64, rel=0.25)
    assert (out / "dashboard.png").exists()


def test_a_job_file_fio_refuses_fails_the_run_with_fios_words(tmp_path: Path) -> None:
    bad = tmp_path / "bad.fio"
    bad.write_text("[bad]\nrw=sideways\nsize=1m\n")
    with pytest.raises(GuestFailed, match=r"fio in the guest failed \(bad.fio\): exit 1"):
        ex.mirror_basic(image_mib=48, fill_mib=4, after_ready_s=0.5,
                        options=RunOptions(workload=str(bad), runs_dir=tmp_path / "runs",
                                           accel="tcg"))
    (meta_file,) = (tmp_path / "runs").glob("*/run.json")
    meta = json.loads(meta_file.read_text())
    assert meta["status"] == "error" and "sideways" in meta["fio"]["error"], meta["fio"]


def test_the_workloads_notebook_tabulates_a_profiles_cost(tmp_path: Path) -> None:
    """``15_workloads`` with one cell of its grid: 4 KiB random writes against a 64 KiB
    granularity at 32 MiB/s.  The mirror gets READY; each write dirtied a whole 64 KiB
    cluster, so the job copied again several times what fio wrote (well above 1, at most
    the 16 of clusters hit once each); fio's IOPS held at its rate before and during."""
    out = tmp_path / "w"
    res = subprocess.run([sys.executable, "-m", "kvmlab", "run",
                          str(NB.parent / "15_workloads.ipynb"), "-p", "profiles",
                          "rand-write-4k", "-p", "granularities", "65536", "-p", "speeds",
                          "33554432", "-p", "accel", "tcg", "-p", "baseline_s", "3",
                          "-p", "after_ready_s", "4", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    (row,) = pd.read_csv(out / "workloads.csv").to_dict("records")
    assert row["pass"] and row["outcome"].startswith("READY in"), row
    # (fio's seconds are counted whole at the window's edges: a little over 16 may show)
    assert 4 <= row["write_amplification"] <= 24, row
    assert row["iops_before"] == pytest.approx(64, rel=0.2), row
    assert row["iops_during"] == pytest.approx(64, rel=0.2), row
    assert row["write_p99_ms_during"] >= row["write_p50_ms_during"] > 0
    assert "READY in" in (out / "15_workloads.html").read_text()
