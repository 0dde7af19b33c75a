"""Analysis accuracy on runs recorded from a real QEMU, stalls and divergence made on purpose."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kvmlab import analysis
from kvmlab.guest.workload import Workload
from kvmlab.live.record import Recorder
from kvmlab.qemu import images
from kvmlab.vm.machine import Machine

pytestmark = [pytest.mark.qemu, pytest.mark.timing]  # real QEMU; verdicts on timing

MIB = 1024 * 1024


def test_stall_made_with_set_speed_is_found_within_0_3_s(scratch: Path, tmp_path: Path) -> None:
    images.make_guest_disk(scratch / "disk.qcow2", 64, fill_mib=24)
    with Machine(scratch / "disk.qcow2", accel="tcg") as vm:
        vm.wait_guest("ready", timeout=60)
        rec = Recorder(tmp_path / "run", interval=0.05)
        rec.attach_machine(vm)
        with rec:
            job = vm.mirror("drive0", scratch / "t.qcow2", speed=4 * MIB, buf_size=256 * 1024)
            time.sleep(2)
            t_a = rec.mark("set_speed", speed=1)
            job.set_speed(1)
            time.sleep(3)
            t_b = rec.mark("set_speed", speed=4 * MIB)
            job.set_speed(4 * MIB)
            job.wait_ready(60)
            job.cancel()
            job.wait_done(30)
        f = rec.frames()
    st = analysis.stalls(f["samples"], min_duration=1.0)
    assert len(st) == 1, st
    assert abs(st["start"].iloc[0] - t_a) <= 0.3
    assert abs(st["end"].iloc[0] - t_b) <= 0.3
    # QEMU says "running" all along: the stall is seen from the offset alone
    inside = f["samples"][(f["samples"].t > t_a + 0.3) & (f["samples"].t < t_b - 0.3)]
    assert (inside.status == "running").all()
    assert analysis.convergence(f["samples"], f["events"])["verdict"] == "converged"


@pytest.mark.solo
def test_guest_faster_than_limit_diverges_then_converges(scratch: Path, tmp_path: Path) -> None:
    images.make_guest_disk(scratch / "disk.qcow2", 128)
    wl = Workload(dd_kib=512, rate_kib_s=2048, max_files=16)
    with Machine(scratch / "disk.qcow2", accel="tcg", mode="workload", workload=wl) as vm:
        vm.wait_guest("op", timeout=60)
        rec = Recorder(tmp_path / "run", interval=0.1)
        rec.attach_machine(vm)
        with rec:
            job = vm.mirror("drive0", scratch / "t.qcow2", speed=256 * 1024, buf_size=256 * 1024)
            time.sleep(12)
            t_raise = rec.mark("set_speed", speed=0)
            job.set_speed(0)
            job.wait_ready(120)
            job.cancel()
            job.wait_done(30)
        f = rec.frames()
    s, ev = f["samples"], f["events"]
    before = analysis.convergence(s[s.t < t_raise], ev[ev.t < t_raise])
    assert before["verdict"] == "diverging", before
    assert before["slope"] > 0
    gw = analysis.guest_write_rate(f["guest_ops"])
    assert gw["write_rate"].median() > 256 * 1024  # the guest really wrote faster than the limit
    assert analysis.convergence(s, ev)["verdict"] == "converged"
