"""The control panel driven from Python against a real lab VM (the browser test is separate)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kvmlab import load_run
from kvmlab.errors import BadInput, KvmlabError
from kvmlab.lab import widgets
from kvmlab.lab.widgets import MirrorPanel, MirrorPanels

pytestmark = pytest.mark.qemu  # integration: real QEMU and the guest


def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _enabled(p: MirrorPanel) -> set[str]:
    return {k for k, b in p.buttons.items() if not b.disabled}


@pytest.fixture
def panel(runs: Path):
    p = MirrorPanel.lab(accel="tcg", fill_mib=16, runs_dir=runs, refresh=0.25)
    yield p
    scratch = p.session.scratch if p.session else None
    p.close()
    assert scratch is None or not scratch.exists()


@pytest.mark.timing                      # numbers and plot refreshed on their schedule
def test_panel_drives_a_mirror_through_every_state(panel: MirrorPanel, runs: Path) -> None:
    p = panel
    _until(lambda: _enabled(p) == {"start", "stop_vm"}, 10, "start enabled")
    p.speed.value = widgets.MIB                        # 1 MiB/s: slow enough to steer
    p.buf_size.value = 256 << 10
    p.click("start")
    _until(lambda: "running" in p.status.value, 10, "running")
    assert _enabled(p) == {"pause", "cancel", "stop_vm"}
    _until(lambda: 0 < p.progress.value < 1 and "remaining" in p.numbers.value, 10, "progress")
    # QEMU 7.2 cannot switch a running job: the button stays disabled and says why
    assert "block-job-change came in QEMU 8.2" in p.buttons["active_mode"].tooltip
    _until(lambda: p.outlook is not None and p.outlook.state == "converging"
           and "ETA " in p.numbers.value, 15, "the predictor's ETA")
    p.click("pause")
    _until(lambda: "paused" in p.status.value, 10, "paused")
    assert _enabled(p) == {"resume", "cancel", "stop_vm"}
    p.click("resume")
    p.click("stop_vm")
    _until(lambda: "cont_vm" in _enabled(p) and "VM paused" in p.status.value, 10, "VM paused")
    p.click("cont_vm")
    time.sleep(4)                                      # watch it run for a while
    # numbers and plot are due every 0.45 s (twice a second when a draw takes less, as on
    # an idle host: benchmarks' live_plot); a tick still drawing when the next is due skips
    # it, so beside the suite's other workers a refresh comes at least once a second
    for times in (p.update_times, p.plot_times):
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)][-8:]
        assert len(gaps) >= 4 and statistics.median(gaps) <= 1.0, gaps
    p.speed.value = 0                                  # unlimited, while the job runs
    _until(lambda: "ready" in p.status.value, 60, "ready")
    assert "complete" in _enabled(p)
    # the status follows QEMU's READY event at once, the bar the next sample's numbers (and
    # once ready, a guest write shows as a sliver until it is copied): it shows the whole
    # copy within a few refreshes (0.985 on the refresh right after READY, once, beside a
    # second timing test)
    _until(lambda: p.progress.value == pytest.approx(1.0), 5, "the bar full")
    assert p.plot.value[:4] == b"\x89PNG"             # the live plot of remaining bytes
    # under it, QEMU's trace: requests in flight (the recorder reads the session's trace)
    assert p.plot.lane.get_lines() and p.plot.lane.get_ylabel() == "in flight"
    p.click("cancel")
    fin = p.session.wait_finished(30)
    _until(lambda: "run saved" in p.summary.value, 10, "summary shown")
    assert fin.outcome == "BLOCK_JOB_COMPLETED" and fin.error is None
    assert p.dashboard.value[:4] == b"\x89PNG" and (fin.run_path / "dashboard.png").exists()
    assert _enabled(p) == {"start", "stop_vm"}
    time.sleep(1)                                      # refreshes after the end keep saying it
    assert "<b>BLOCK_JOB_COMPLETED</b>" in p.status.value and "run saved" in p.status.value
    run = load_run(fin.run_path)
    assert run.meta["status"] == "done" and run.meta["verdict"]["job_end"] == "BLOCK_JOB_COMPLETED"
    assert {"running", "paused", "ready"} <= set(run.samples["status"])
    marks = set(run.events[run.events.source == "kvmlab"]["name"])
    assert {"mirror_start", "pause", "resume", "stop", "cont", "set_speed", "cancel"} <= marks
    assert fin.summary["time_to_ready_s"] > 0
    assert p.display_errors == 0


def test_display_failure_never_touches_the_recording(panel: MirrorPanel,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    p = panel

    def broken(*args: object, **kw: object) -> object:
        raise RuntimeError("display broke")

    monkeypatch.setattr(widgets.plots, "convergence", broken)   # live plot and dashboard
    _until(lambda: "start" in _enabled(p), 10, "start enabled")
    p.speed.value = 0                                  # unlimited
    p.click("start")
    _until(lambda: p.session.job is not None and p.session.job.is_ready, 60, "ready")
    _until(lambda: p.display_errors > 0, 10, "a display error")
    p.session.cancel()
    fin = p.session.wait_finished(30)
    run = load_run(fin.run_path)
    assert run.meta["status"] == "done" and len(run.samples) > 0
    assert fin.failures and "display broke" in fin.failures[0]   # the dashboard callback


def test_panel_bad_input_creates_nothing(panel: MirrorPanel, runs: Path) -> None:
    p = panel
    _until(lambda: "start" in _enabled(p), 10, "start enabled")
    existing = p.session.default_target("qcow2")
    existing.write_bytes(b"")
    p.target.value = str(existing)
    p.click("start")
    assert "already exists" in p.message.value and p.session.job is None
    p.target.value = str(existing) + ".new"
    p.drive.value = "nosuch"
    p.click("start")
    assert "drive" in p.message.value
    assert list(runs.iterdir()) == []
    assert _enabled(p) == {"start", "stop_vm"}


@pytest.mark.xdist_group("libvirt")
def test_panel_on_a_libvirt_domain(scratch: Path, runs: Path) -> None:
    from kvmlab.qemu.images import make_guest_disk
    from kvmlab.vm.libvirt_lab import LibvirtMachine
    make_guest_disk(scratch / "disk.qcow2", 48, fill_mib=8)
    with LibvirtMachine(scratch / "disk.qcow2", mode="workload") as vm:
        vm.wait_guest("op", timeout=90)
        p = MirrorPanel(refresh=0.25)
        try:
            assert _enabled(p) == set()                # nothing to steer before connecting
            p.backend.value = "libvirt"
            p.domain.value = "no-such-domain"
            p.connect.click()
            assert "no-such-domain" in p.message.value and p.session is None
            p.domain.value = vm.domain_name
            p.connect.click()
            assert p.session is not None and p.drive.value == "vda"
            # the domain's QEMU (7.2) read over its monitor: no block-job-change
            assert p.session.caps is not None and p.session.caps.version.startswith("7.2")
            assert not p.session.can_change and "8.2" in p.buttons["active_mode"].tooltip
            p.session.runs_dir = runs
            p.target.value = str(scratch / "copy.qcow2")
            p.speed.value = 0
            p.click("start")
            _until(lambda: "ready" in p.status.value, 90, "ready")
            assert "complete" in _enabled(p)
            p.click("cancel")
            fin = p.session.wait_finished(30)
            assert fin.outcome == "BLOCK_JOB_COMPLETED" and fin.error is None
            assert load_run(fin.run_path).meta["backend"] == "libvirt"
        finally:
            p.close()


def test_panel_first_hour(panel: MirrorPanel, runs: Path) -> None:
    """What a new user met: Stop/Continue VM without a job, no broken images, a slider in
    the middle, a second job (its own events only, a fresh target), words for what a
    cancel after READY and a pivot leave, and a second panel replacing the first."""
    p = panel
    _until(lambda: _enabled(p) == {"start", "stop_vm"}, 10, "start enabled")
    assert p.plot.widget.layout.display == "none" and p.dashboard.layout.display == "none"
    assert p.plot.interactive                            # ipympl: zoom while it runs
    assert p.speed.value == 8 * widgets.MIB
    assert 0.3 < p.speed.index / (len(p.speed.options) - 1) < 0.6       # not at the far left
    p.click("stop_vm")                                  # no job: it still works, visibly
    assert "VM stopped" in p.message.value, p.message.value
    _until(lambda: "VM paused" in p.status.value and "cont_vm" in _enabled(p), 10, "paused")
    p.click("cont_vm")
    assert "VM continues" in p.message.value
    _until(lambda: "VM running" in p.status.value, 10, "running again")

    first_target = p.target.value
    p.speed.value = 0
    p.click("start")
    _until(lambda: "complete" in _enabled(p), 60, "ready")
    p.click("cancel")
    fin = p.session.wait_finished(30)
    _until(lambda: "point-in-time copy" in p.summary.value, 10, "the cancel's meaning")
    assert first_target in fin.meaning and p.dashboard.layout.display != "none"
    assert p.target.value != first_target                # the next Start gets a new file

    p.click("start")                                     # a second job, right away
    assert p.session.job is not None, p.message.value
    _until(lambda: "complete" in _enabled(p), 60, "ready again")
    rec = p.session.recorder                             # an unlimited mirror can be ready
    assert rec is not None                               # before the guest's next write
    _until(lambda: len(rec.frames()["guest_ops"]) > 0, 10, "a guest operation in the job")
    p.click("complete")
    fin2 = p.session.wait_finished(30)
    assert fin2.run_path != fin.run_path and "pivot" in fin2.meaning
    ops = fin2.data.guest_ops
    assert len(ops) and ops["t"].min() >= 0             # not the guest's lines since boot
    assert load_run(fin2.run_path).meta["meaning"] == fin2.meaning

    first_vm = p.session.machine
    second = MirrorPanel.lab(accel="tcg", fill_mib=8, runs_dir=runs, refresh=0.25)
    try:
        assert first_vm is not None and not first_vm.running   # replaced, not leaked
        assert MirrorPanel.current is second
    finally:
        second.close()


def test_panel_switches_a_running_mirror_to_active_mode_on_qemu_10(runs: Path) -> None:
    p = MirrorPanel.lab(accel="tcg", fill_mib=16, runs_dir=runs, refresh=0.25, qemu="10.0")
    try:
        _until(lambda: _enabled(p) == {"start", "stop_vm"}, 10, "start enabled")
        p.speed.value = widgets.MIB
        p.click("start")
        _until(lambda: "active_mode" in _enabled(p), 10, "active mode enabled")
        p.click("active_mode")
        assert "write-blocking" in p.message.value and p.session.job.copy_mode == "write-blocking"
        _until(lambda: "active_mode" not in _enabled(p), 5, "active mode done")
        p.speed.value = 0
        _until(lambda: "ready" in p.status.value, 60, "ready")
        p.click("cancel")
        fin = p.session.wait_finished(30)
        run = load_run(fin.run_path)
        switched = run.events[run.events["name"] == "copy_mode"]
        assert len(switched) == 1 and "write-blocking" in switched["data"].iloc[0]
        assert run.samples["actively_synced"].dropna().any()
    finally:
        p.close()


def test_panels_side_by_side_run_a_job_on_each_disk_at_once(runs: Path) -> None:
    """A lab VM with a data disk: one panel per disk, a job on each at the same time, each
    steered on its own (one cancelled at READY, one paused then cancelled before READY)
    and recorded in its own run, with its own summary and dashboard."""
    ps = MirrorPanels.lab(accel="tcg", fill_mib=8, image_mib=48, runs_dir=runs,
                          refresh=0.25, data_disks=1)
    owner = ps.session
    try:
        assert [list(p.drive.options) for p in ps.panels] == [["drive0"], ["data1"]]
        assert owner.drives == ["drive0", "data1"]
        a, b = ps["drive0"], ps["data1"]
        assert a.target.value != b.target.value          # each its own target file
        for p in (a, b):
            _until(lambda p=p: "start" in _enabled(p), 10, "start enabled")
        b.speed.value = 256 << 10                          # slow: still running later
        a.speed.value = 0
        a.click("start")
        b.click("start")
        _until(lambda: "ready" in a.status.value, 90, "drive0 ready")
        assert "running" in b.status.value and b.session.active
        b.click("pause")
        _until(lambda: "paused" in b.status.value, 10, "data1 paused")
        assert "ready" in a.status.value                   # the other job is untouched
        time.sleep(1.0)
        a.click("cancel")
        b.click("cancel")
        fa, fb = a.session.wait_finished(30), b.session.wait_finished(30)
        assert fa.run_path != fb.run_path
        assert (fa.job, fb.job) == ("drive0", "data1")
        assert fa.outcome == "BLOCK_JOB_COMPLETED" and "point-in-time copy" in fa.meaning
        # QEMU refuses a plain cancel of a paused job: the session forces it, and says so
        assert fb.outcome == "BLOCK_JOB_CANCELLED" and fb.meaning.startswith("force-cancelled")
        assert "#b00020" not in b.message.value          # no error said
        # each summary is its own job's, though both runs recorded both jobs
        assert fa.summary["job"] == "drive0" and fb.summary["job"] == "data1"
        assert fa.summary["time_to_ready_s"] > 0
        assert fb.summary.get("time_to_ready_s") is None
        run_b = load_run(fb.run_path)
        assert "data1" in set(run_b.samples["job"])
        assert "vdb" in set(run_b.guest_ops["disk"].dropna())   # the guest wrote data1
        for p in (a, b):
            _until(lambda p=p: "Summary" in p.summary.value, 30, "summary shown")
            assert (p.session.finished.run_path / "dashboard.png").stat().st_size > 10_000
        with pytest.raises(KvmlabError, match="already has a session"):
            owner.beside("data1")
        with pytest.raises(BadInput, match="one panel per disk"):   # before anything changes
            MirrorPanels(owner, ["data1", "data1"])
        assert MirrorPanel.current is ps
    finally:
        scratch = owner.scratch
        ps.close()
    assert not b.session.active and MirrorPanel.current is None
    assert scratch is None or not scratch.exists()
