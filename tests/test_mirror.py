"""The job API against a real QEMU: ready + cancel, pause/resume, set-speed, bad input."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmlab.errors import BadInput, StateError
from kvmlab.live.record import Recorder
from kvmlab.qemu import images
from kvmlab.vm.machine import Machine

pytestmark = pytest.mark.qemu  # integration: real QEMU and the guest

MIB = 1024 * 1024


@pytest.fixture
def idle_vm(scratch: Path) -> Iterator[Machine]:
    src = scratch / "disk.qcow2"
    images.make_guest_disk(src, 64, fill_mib=24)
    with Machine(src, accel="tcg") as vm:
        vm.wait_guest("ready", timeout=60)
        yield vm


def test_mirror_ready_cancel_identical_when_idle(idle_vm: Machine, scratch: Path) -> None:
    target = scratch / "copy.qcow2"
    job = idle_vm.mirror("drive0", target, sync="full")
    ready = job.wait_ready(120)
    assert ready.data["offset"] == ready.data["len"] > 24 * MIB
    info = job.info()
    assert info is not None and info.ready and info.status == "ready"
    job.cancel()
    out = job.wait_done(60)
    assert out.event == "BLOCK_JOB_COMPLETED" and out.ok
    assert job.info() is None
    with pytest.raises(StateError):
        job.cancel()
    idle_vm.shutdown()
    assert images.compare(scratch / "disk.qcow2", target)


def test_complete_needs_ready(idle_vm: Machine, scratch: Path) -> None:
    job = idle_vm.mirror("drive0", scratch / "t.qcow2", speed=1 * MIB)
    with pytest.raises(StateError, match="ready"):
        job.complete()
    job.cancel()
    assert job.wait_done(30).event == "BLOCK_JOB_CANCELLED"


def _rate(samples, t0: float, t1: float) -> float:  # type: ignore[no-untyped-def]
    w = samples[(samples.t >= t0) & (samples.t <= t1)]
    return float((w.offset.iloc[-1] - w.offset.iloc[0]) / (w.t.iloc[-1] - w.t.iloc[0]))


def test_pause_resume_and_set_speed(idle_vm: Machine, scratch: Path, tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "run", interval=0.05)
    rec.attach_machine(idle_vm, "source")
    with rec:
        # a small buffer keeps QEMU's rate limiting smooth (the default copies in
        # bursts of several MiB then sleeps for seconds)
        job = idle_vm.mirror("drive0", scratch / "t.qcow2", speed=2 * MIB, buf_size=256 * 1024)
        time.sleep(3)
        t_pause = rec.mark("pause")
        job.pause()
        job.wait_status("paused", 10)
        t_paused = rec.now()
        time.sleep(2)
        t_resume = rec.mark("resume")
        job.resume()
        time.sleep(2.5)
        t_fast = rec.mark("set_speed")
        job.set_speed(16 * MIB)
        time.sleep(1)
        job.set_speed(0)
        job.wait_ready(120)
        job.cancel()
        job.wait_done(30)
    s = rec.frames()["samples"]
    paused = s[(s.t > t_paused) & (s.t < t_resume)]
    assert len(paused) >= 30
    assert paused.paused.all()
    assert paused.offset.nunique() == 1, "offset moved while the job was paused"
    before = _rate(s, 0.5, t_pause)
    after_resume = _rate(s, t_resume + 0.5, t_fast)
    fast = _rate(s, t_fast + 0.2, t_fast + 1.0)
    assert 0.5 * MIB < before < 4 * MIB        # limited to about 2 MiB/s
    assert after_resume > 0.5 * MIB            # progress again after resume
    assert fast > 2.5 * before                 # set-speed visible in the samples
    speeds = set(s.speed.dropna())
    assert {2 * MIB, 16 * MIB} <= speeds


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_bad_input_changes_nothing(idle_vm: Machine, scratch: Path) -> None:
    existing = scratch / "existing.img"
    existing.write_bytes(os.urandom(4096))
    before = _sha(existing)
    new = scratch / "new.img"
    cases = [
        (dict(device="drive9", target=new), "unknown drive 'drive9'"),
        (dict(device="drive0", target=existing), "already exists"),
        (dict(device="drive0", target=new, mode="existing"), "does not exist"),
        (dict(device="drive0", target=scratch / "no-dir" / "x.img"), "does not exist"),
        (dict(device="drive0", target=new, granularity=3000), "power of two"),
        (dict(device="drive0", target=new, granularity=128 * MIB), "power of two"),
        (dict(device="drive0", target=new, speed=-1), "speed"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(BadInput, match=msg) as info:
            idle_vm.mirror(**kwargs)  # type: ignore[arg-type]
        assert "\n" not in str(info.value)
        assert not new.exists(), f"{kwargs} left a target file"
        assert idle_vm.backend.block_jobs() == []
    assert _sha(existing) == before


def test_target_directory_not_writable(idle_vm: Machine, scratch: Path) -> None:
    ro = scratch / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: a read-only mount is what refuses it
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    else:
        ro.chmod(0o500)
    try:
        with pytest.raises(BadInput, match="not writable"):
            idle_vm.mirror("drive0", ro / "x.img")
        assert not (ro / "x.img").exists()
        assert idle_vm.backend.block_jobs() == []
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)], check=True)
