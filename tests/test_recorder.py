"""The recorder against a real mirror: fast sampling, all streams, and surviving kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmlab.live.record import JOURNAL_EVERY, SAMPLE_COLUMNS, Recorder
from kvmlab.qemu import images
from kvmlab.store.runs import read_stream
from kvmlab.store.tmpdirs import reap_stale_tmpdirs
from kvmlab.vm.machine import Machine

# integration where a real QEMU runs (marked qemu); the journal, the pacer and the gap
# reasons are pure logic and run in the pure tier

MIB = 1024 * 1024


@pytest.mark.qemu
@pytest.mark.timing
@pytest.mark.solo
def test_sustains_100_hz_and_records_all_streams(scratch: Path, tmp_path: Path) -> None:
    src = scratch / "disk.qcow2"
    images.make_guest_disk(src, 64, fill_mib=16)
    target = scratch / "t.qcow2"
    with Machine(src, accel="tcg") as vm:
        vm.wait_guest("ready", timeout=60)
        rec = Recorder(tmp_path / "run", interval=0.01)
        rec.attach_machine(vm, "source")
        rec.track("target", target)
        with rec:
            job = vm.mirror("drive0", target, speed=4 * MIB, buf_size=256 * 1024)
            time.sleep(3)
            job.set_speed(0)
            job.wait_ready(60)
            job.cancel()
            job.wait_done(30)
        frames = rec.stop()
    s = frames["samples"]
    assert list(s.columns) == SAMPLE_COLUMNS
    dt = s.t.diff().dropna()
    span = s.t.iloc[-1] - s.t.iloc[0]
    assert len(s) >= 0.8 * span / 0.01, f"{len(s)} samples in {span:.2f} s at 0.01 s"
    assert 0.008 <= dt.median() <= 0.012
    assert (s.remaining == s.len - s.offset).all()
    assert s.status.isin(["running", "ready", "created"]).all()
    ev = frames["events"]
    names = set(ev.name)
    assert {"BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "JOB_STATUS_CHANGE"} <= names
    assert ev[ev.name == "BLOCK_JOB_READY"].qemu_time.notna().all()
    sz = frames["sizes"]
    tgt = sz[sz.label == "target"]
    assert not tgt.exists.iloc[0] or tgt.apparent.iloc[0] < tgt.apparent.iloc[-1]
    assert tgt.allocated.iloc[-1] >= 16 * MIB
    assert set(sz.label) == {"source:drive0", "target"}
    for name in ("samples", "events", "sizes", "guest_ops"):
        assert (tmp_path / "run" / f"{name}.parquet").exists()
        assert not (tmp_path / "run" / f"{name}.jsonl").exists()


CHILD = """
import sys, time
from kvmlab.vm.machine import Machine
from kvmlab.live.record import Recorder
vm = Machine(sys.argv[1], accel="tcg")
vm.launch()
vm.wait_guest("ready", timeout=60)
rec = Recorder(sys.argv[2], interval=0.02)
rec.attach_machine(vm, "source")
rec.start()
vm.mirror("drive0", sys.argv[3], speed=1024 * 1024, buf_size=256 * 1024)
print(vm.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.qemu
def test_killed_process_loses_at_most_one_interval(scratch: Path, tmp_path: Path) -> None:
    src = scratch / "disk.qcow2"
    images.make_guest_disk(src, 64, fill_mib=16)
    run = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(src), str(run),
                              str(scratch / "t.qcow2")], stdout=subprocess.PIPE, text=True)
    try:
        qemu_pid = int(child.stdout.readline())  # type: ignore[union-attr]
        time.sleep(2)
        killed_at = time.time()
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        child.kill()
    for _ in range(50):  # QEMU follows its parent (pdeathsig)
        try:
            os.kill(qemu_pid, 0)
            time.sleep(0.1)
        except ProcessLookupError:
            break
    reap_stale_tmpdirs()
    s = read_stream(run, "samples")
    assert len(s) >= 50
    lag = 0.02 + JOURNAL_EVERY + 0.05      # an interval, the journal's lag, scheduling slack
    assert s.wall.max() >= killed_at - lag, "more than the journal's lag of samples lost"
    assert (s.offset.diff().dropna() >= 0).all()
    # the journal's lines are whole JSON objects up to the kill
    lines = (run / "samples.jsonl").read_text().splitlines()
    json.loads(lines[-1])


def test_journal_keeps_rows_until_the_thread_writes_them(tmp_path: Path) -> None:
    """The hot path only appends; a flush writes the rows since the last one, as whole
    lines in order (odd values as text); close writes what is left."""
    from kvmlab.live.record import _Stream

    path = tmp_path / "s.jsonl"
    st = _Stream(path)
    for i in range(3):
        st.add({"i": i, "p": tmp_path})
    assert path.read_text() == "" and len(st.rows()) == 3
    st.flush()
    assert st.pending == [] and len(st.recent) == 3     # memory: the live window only
    st.add({"i": 3, "p": None})
    assert [json.loads(x)["i"] for x in path.read_text().splitlines()] == [0, 1, 2]
    st.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["i"] for x in lines] == [0, 1, 2, 3] and lines[0]["p"] == str(tmp_path)
    st.add({"i": 4})                        # after close: kept in memory, no error
    st.flush()
    assert len(path.read_text().splitlines()) == 4
    assert [r["i"] for r in st.rows()] == [0, 1, 2, 3, 4]  # the journal, then what waits


@pytest.mark.qemu                   # mounts a small tmpfs: root, as the integration tier
def test_a_full_disk_stops_the_journal_and_says_so(tmp_path: Path) -> None:
    """On a full tmpfs the journal stops with NoSpace kept, the rows stay in memory, and
    the recorder's stop raises it after writing what it could."""
    import subprocess

    from kvmlab.errors import NoSpace
    from kvmlab.live.record import Recorder
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], check=True)
    try:
        rec = Recorder(mnt / "run", interval=0.05)
        rec.start()
        for i in range(3000):                       # ~600 KiB of events: more than fits
            rec.mark("step", i=i, pad="x" * 100)
        time.sleep(0.5)
        assert isinstance(rec.error, NoSpace)
        assert str(rec.error) == (f"no space left on {mnt / 'run'} while writing the events "
                                  "journal")
        with pytest.raises(NoSpace):
            rec.stop()
        meta = json.loads((mnt / "run" / "run.json").read_text())
        assert meta["status"] == "failed" and "no space left" in meta["error"]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_memory_stays_flat_over_a_long_recording(tmp_path: Path) -> None:
    """Rows leave memory once journaled: only the live window stays (the whole stream
    is read back from the journal)."""
    from kvmlab.live.record import LIVE_ROWS, Recorder
    rec = Recorder(tmp_path / "run", interval=0.05)
    rec.start()
    n = LIVE_ROWS + 5000
    for i in range(n):
        rec._streams["samples"].add({"t": float(i), "wall": 0.0, "job": "j"})
    time.sleep(0.3)
    st = rec._streams["samples"]
    assert len(st.recent) == LIVE_ROWS and len(st.pending) < 100
    assert len(rec.live_frames()["samples"]) == LIVE_ROWS
    frames = rec.stop()
    assert len(frames["samples"]) == n and frames["samples"].t.is_monotonic_increasing


def test_pacer_keeps_the_grid_and_counts_skipped_ticks() -> None:
    """Ticks stay on t0 + k*interval (no drift from late wake-ups); a tick already past
    is skipped for the next one on the grid and counted late."""
    from kvmlab.pacing import Pacer

    p = Pacer(0.01, 100.0)
    assert p.next(100.0) == pytest.approx(100.01)
    assert p.next(100.0109) == pytest.approx(100.02)     # woke 0.9 ms late: no drift
    assert p.late == 0
    assert p.next(100.0451) == pytest.approx(100.05)     # 100.03, 100.04 passed: skipped
    assert p.late == 1
    assert p.next(100.05) == pytest.approx(100.06)


def test_gap_reasons_each_outcome() -> None:
    from kvmlab.live.record import gap_reason
    assert gap_reason(15.0, 15.0, 0.0, 15.0) == \
        "the recording process was stopped (it used no CPU)"
    assert gap_reason(2.0, 2.0, 0.5, 2.0) == "the recording process was held up (a busy host)"
    assert gap_reason(2.0, 2.0, 0.5, 62.0) == "the host was suspended for 60.0 s"
    assert gap_reason(2.0, 32.0, 0.5, 2.0).endswith("; the wall clock jumped by +30.0 s")


@pytest.mark.qemu
def test_a_stopped_recorder_leaves_a_gap_window_with_its_reason(scratch: Path,
                                                                tmp_path: Path) -> None:
    """SIGSTOP the recording process for 3 s: the hole is a ``sample_gap`` window that says
    the process was stopped, summarize counts it, and the dashboard draws it."""
    from kvmlab import analysis, marks, plots
    from kvmlab.store.runs import load_run
    disk = scratch / "disk.qcow2"
    images.make_guest_disk(disk, 32)
    run = tmp_path / "run"
    script = (
        "import sys, time\n"
        "from kvmlab.vm.machine import Machine\n"
        "from kvmlab.live.record import Recorder\n"
        f"with Machine({str(disk)!r}, accel='tcg') as vm:\n"
        f"    rec = Recorder({str(run)!r}, interval=0.05)\n"
        "    rec.attach_machine(vm, 'source')\n"
        "    rec.start()\n"
        "    print('recording', flush=True)\n"
        "    time.sleep(6)\n"
        "    rec.stop()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "recording"
        time.sleep(1)
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(3)
        os.kill(proc.pid, signal.SIGCONT)
        assert proc.wait(60) == 0
    finally:
        proc.kill()
    data = load_run(run)
    gaps = analysis.windows(data.events, (marks.SAMPLE_GAP,))
    assert len(gaps) == 1, gaps
    gap = gaps.iloc[0]
    assert 2.5 < gap["duration"] < 4.5
    assert gap["data"]["reason"] == "the recording process was stopped (it used no CPU)"
    summary = analysis.summarize(data)
    assert summary["sample_gaps"] == 1 and summary["sample_gap_s"] == pytest.approx(
        gap["duration"])
    fig = plots.dashboard(data)
    labels = {h.get_label() for ax in fig.axes for h in ax.collections}
    assert plots.GAP_LABEL in labels
