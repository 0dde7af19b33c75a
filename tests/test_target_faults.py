"""Target faults against real QEMU: NBD daemon suspended or killed, EIO, ENOSPC, throttle."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kvmlab import analysis
from kvmlab.analysis import causes
from kvmlab.errors import BadInput, StateError
from kvmlab.experiments import target_fault
from kvmlab.experiments.options import RunOptions
from kvmlab.faults import NbdServer, SmallTmpfs, blkdebug_target
from kvmlab.qemu import images

pytestmark = pytest.mark.qemu  # integration: real QEMU and the guest


def _mounted(path: Path) -> bool:
    return str(path) in Path("/proc/mounts").read_text()


def _our_tmpfs_mounts() -> list[str]:
    """The fault tmpfs mounts of this test session (in its own temp dir): another
    worker's, mounted meanwhile, are not this test's."""
    import tempfile
    mine = tempfile.gettempdir()
    return [ln for ln in Path("/proc/mounts").read_text().splitlines()
            if "kvmlab-tmpfs" in ln and f" {mine}/" in ln]


def test_nbd_server_and_tmpfs_leave_nothing(scratch: Path) -> None:
    img = images.create(scratch / "t.qcow2", 8 << 20, "qcow2")
    with NbdServer(img, "qcow2") as nbd:
        out = subprocess.run(["qemu-img", "info", "--output=json", nbd.url], capture_output=True,
                             text=True, check=True, timeout=30).stdout
        assert '"virtual-size": 8388608' in out
        with nbd.down():
            assert not nbd.running
        assert nbd.running
        sock = nbd.socket
    assert not sock.exists()
    with SmallTmpfs(2) as folder:
        with pytest.raises(OSError):        # really 2 MiB
            (folder / "big").write_bytes(b"x" * (3 << 20))
        mnt = folder
    assert not _mounted(mnt) and not mnt.exists()


def test_nbdkit_controls_switch_errors_rate_and_pause_while_it_runs(scratch: Path) -> None:
    """nbdkit in front of an export, its impairments switched by its own means while it
    serves: write errors only while switched on, requests held by the pause filter until
    resumed, the rate set through its file; nothing left after."""
    from kvmlab.faults import NbdkitProxy

    def write(url: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 7 0 1M", url],
                              capture_output=True, text=True, timeout=timeout)
    img = images.create(scratch / "t.qcow2", 8 << 20, "qcow2")
    with NbdServer(img, "qcow2") as nbd, \
            NbdkitProxy(nbd.socket, "target", error_rate=1.0, controls=True) as proxy:
        assert "wrote 1048576" in write(proxy.url).stdout
        proxy.errors(True)
        bad = write(proxy.url)
        assert "Input/output error" in bad.stdout + bad.stderr
        proxy.errors(False)
        assert "wrote 1048576" in write(proxy.url).stdout
        proxy.pause()
        with pytest.raises(subprocess.TimeoutExpired):
            write(proxy.url, timeout=2)
        proxy.resume()
        assert "wrote 1048576" in write(proxy.url).stdout
        proxy.set_rate(256 << 10)                     # 1 MiB at 256 KiB/s: seconds
        assert (proxy.tmp / "rate").read_text().strip() == str(256 << 13)
        folder = proxy.tmp
    assert not folder.exists()
    with pytest.raises(StateError, match="controls"):
        NbdkitProxy(Path("/s"), "d").errors(True)


def test_fault_bad_input(scratch: Path, opts: RunOptions) -> None:
    with pytest.raises(BadInput, match="fault="):
        target_fault(fault="unplug", options=opts)
    with pytest.raises(BadInput, match="tmpfs_mib"):
        target_fault(fault="enospc", tmpfs_mib=64, fill_mib=16, options=opts)
    with pytest.raises(BadInput, match="does not exist"):
        blkdebug_target(scratch / "missing.raw")
    with pytest.raises(BadInput, match="size"):
        SmallTmpfs(0)
    assert opts.runs_dir is not None and list(opts.runs_dir.iterdir()) == []


# (fault, policy) -> what QEMU 7.2 was recorded doing, and the recovery step it needed.
# An error's verdict rests on QEMU's events; a stalled, lost or throttled target's on when
# requests stop and start: those run alone on the host (marked timing).
CASES = [
    ("eio", "report", "failed", ["remirror"], True),
    ("eio", "stop", "paused", ["resume"], False),
    ("eio", "ignore", "ignored", [], False),
    ("enospc", "enospc", "paused", ["resume"], True),
    ("nbd_suspend", "report", "stalled", [], False),
    ("nbd_down", "report", "failed", ["remirror"], True),
    ("throttle", "report", "slowed", [], False),
]


# The SIGSTOP's onset interval is checked to tens of ms: beside a second timing test the
# stop's mark came 26 ms and once 130 ms after the interval's end, so that case runs alone
_TIMED = {"nbd_suspend": [pytest.mark.timing, pytest.mark.solo],
          "nbd_down": [pytest.mark.timing], "throttle": [pytest.mark.timing]}


@pytest.mark.parametrize("fault,policy,behaviour,steps,verify", [
    pytest.param(*c, id=f"{c[0]}-{c[1]}", marks=_TIMED.get(c[0], [])) for c in CASES])
def test_target_fault(fault: str, policy: str, behaviour: str, steps: list[str], verify: bool,
                      opts: RunOptions) -> None:
    # Under the throttle the guest writes below the limit, or its backlog ("dirtying")
    # would be the cause the window is found with.  QEMU's rate limiter does not forget
    # the bytes sent at the old speed in the current 100 ms slice (at 8 MiB/s a slice's
    # 0.8 MiB and the requests then in flight, 256 KiB each): the first sleep after the
    # drop pays for them at the new speed.  At 256 KiB/s that sleep was 3 s (768 KiB) in
    # 2 of 24 runs, longer than half a 3 s window, and the job was rightly judged stalled;
    # at 1 MiB/s it lasts about 1 s at most, under half of a 4 s window.
    throttle = {"workload_rate_kib_s": 64, "throttle_speed": 1 << 20, "fault_s": 4.0} \
        if fault == "throttle" else {"fault_s": 3.0}
    r = target_fault(fault=fault, on_target_error=policy, fault_after_s=1.0,
                     fill_mib=16, verify=verify, options=opts, **throttle)
    v = r.verdict
    assert r.passed, v
    assert v["behaviour"] == behaviour, v
    assert v["recovery_steps"] == steps, v
    assert v["job_end"] == "BLOCK_JOB_COMPLETED" and v["job_error"] is None
    if fault in ("eio", "enospc"):
        assert v["error_events"] >= 1
        assert v["error_actions"] == [{"report": "report", "ignore": "ignore"}.get(policy, "stop")]
    if behaviour == "paused":
        assert v["paused_io_status"] == ("nospace" if fault == "enospc" else "failed")
    if verify:
        assert v["verify_pass"] and v["checked"] > 0
    windows = analysis.fault_windows(r.data.events)
    assert fault in set(windows["name"])
    held = causes.classify(r.data)
    w = windows[windows["name"] == fault].iloc[0]
    mid = causes.cause_at(held, (w["start"] + w["end"]) / 2)
    if fault == "nbd_suspend":
        assert mid == "target", held
        # the stop (marked right after the SIGSTOP) lies in the onset interval.  A request
        # that went out just before the stop is left unanswered too, and beside another
        # timing test the target took up to 30 ms to answer: the interval's end (the last
        # such request plus the slowest answer of the 2 s before) may fall that much short;
        # 50 ms, as in test_trace's onset test (one run: 26 ms after 2 idle seconds).  The
        # case now runs alone ([solo]), where that margin is spare
        lo, hi = causes.outage_onset_interval(held)
        assert lo - 0.02 <= w["start"] <= hi + 0.05, (lo, hi, w["start"])
    elif fault == "throttle":
        assert mid == "throttled", held
    elif behaviour == "paused":                   # stopped by on-target-error
        assert (held["cause"] == "error").any() and not (held["cause"] == "paused").any(), held
    if fault == "throttle":
        # the copy rate inside the window is near the 1 MiB/s limit, well below the 8 MiB/s
        # outside it
        assert v["fault_bytes_copied_in_window"] <= 4 * (1 << 20) * 1.5
        assert v["fault_samples_in_window"] > 10
    assert not _our_tmpfs_mounts()


@pytest.mark.parametrize("fault,policy", [("nbdkit_pause", "report"), ("nbdkit_delay", "report"),
                                          ("nbdkit_rate", "report"), ("nbdkit_error", "stop")])
def test_nbdkit_faults_are_found_with_their_cause(fault: str, policy: str,
                                                  opts: RunOptions) -> None:
    """The field's tool for storage faults: nbdkit in front of the target's export.  Held
    requests (pause) read as the target not answering, late writes (delay: 200 ms each)
    and a capped link (512 KiB/s) as the target answering slowly, write errors (5 % of
    writes) as errors QEMU reports with the policy's action; each copy verifies."""
    window = 5.0 if fault == "nbdkit_rate" else 3.0    # nbdkit takes a moment to read a rate
    # every write of the whole copy is 200 ms late (the window is the copy, to READY): a
    # 16 MiB disk takes 20-30 s, a 64 MiB one over 2 minutes
    size = {"image_mib": 16, "fill_mib": 4} if fault == "nbdkit_delay" else {"fill_mib": 16}
    r = target_fault(fault=fault, on_target_error=policy, fault_after_s=0.3, fault_s=window,
                     delay_ms=200, error_rate=0.05, throttle_speed=512 << 10, options=opts,
                     **size)
    v = r.verdict
    assert r.passed and v["verify_pass"], v
    windows = analysis.fault_windows(r.data.events)
    w = windows[windows["name"] == fault].iloc[0]
    held = causes.classify(r.data)
    inside = held[(held["end"] > w["start"]) & (held["start"] < w["end"])]
    found = set(inside["cause"])
    if fault in ("nbdkit_pause", "nbdkit_delay"):
        assert "target" in found, held
    elif fault == "nbdkit_rate":
        # each 256 KiB write waits half a second for the link: the target, answering slowly
        assert v["behaviour"] == "slowed" and "target" in found, (v, held)
        # 5 s at 512 KiB/s, plus the filter's 2 s burst and a moment to read its new rate
        # (under [rest]'s load that moment let 6.5 MiB through in one run of 7); a rate never
        # applied would let the rest of the 16 MiB through
        assert v["fault_bytes_copied_in_window"] <= 5 * (512 << 10) + (5 << 20), v
        assert (inside.loc[inside["cause"] == "target", "latency_ms"] >= 250).all(), held
    else:
        assert v["error_events"] >= 1 and v["error_actions"] == [policy], v
        assert "error" in found or policy == "ignore", held
        assert v["behaviour"] == ("ignored" if policy == "ignore" else "paused"), v


def test_tmpfs_of_a_killed_owner_is_reaped() -> None:
    """A process killed with SIGKILL leaves its tmpfs mounted; the next kvmlab run unmounts it."""
    import signal
    import sys
    import time

    from kvmlab.store.tmpdirs import reap_stale_tmpdirs
    code = ("from kvmlab.faults import SmallTmpfs; import sys, time\n"
            "t = SmallTmpfs(1); p = t.__enter__(); print(p, flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    mnt = Path(proc.stdout.readline().strip())
    assert _mounted(mnt)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    time.sleep(0.2)
    assert _mounted(mnt)                     # nobody could clean up
    reaped = reap_stale_tmpdirs()
    assert mnt.parent in reaped and not _mounted(mnt) and not mnt.parent.exists()
