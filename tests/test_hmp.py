"""The seed's HMP command lines, verbatim, through the QMP backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmlab import _proc
from kvmlab.errors import BackendError, BadInput
from kvmlab.live.jobs import job_for
from kvmlab.qemu import images
from kvmlab.vm.machine import Machine

pytestmark = pytest.mark.qemu  # integration: real QEMU and the guest


def test_seed_hmp_commands(scratch: Path) -> None:
    src = scratch / "disk.qcow2"
    images.make_guest_disk(src, 32, fill_mib=4)
    mirror1 = scratch / "x-mirror.img"
    mirror2 = scratch / "mirror2.img"
    with Machine(src, accel="tcg") as vm:
        vm.wait_guest("ready", timeout=60)
        # info block: which image drive0 uses
        out = vm.hmp("info block")
        assert "drive0" in out and str(src) in out

        # drive_mirror -f (sync=full), info block-jobs, block_job_cancel
        since = len(vm.backend.events)
        assert vm.hmp(f"drive_mirror -f drive0 {mirror1}").strip() == ""
        job = job_for(vm.backend, "drive0", since)
        job.wait_ready(60)
        jobs_text = vm.hmp("info block-jobs")
        assert "Type mirror, device drive0" in jobs_text
        vm.hmp("block_job_cancel drive0")
        assert job.wait_done(30).event == "BLOCK_JOB_COMPLETED"
        assert "No active jobs" in vm.hmp("info block-jobs")
        assert mirror1.exists()

        # drive_mirror -n onto an existing image, stop, block_job_complete, c
        _proc.run(["qemu-img", "create", "-q", "-f", "qcow2", mirror2, "32M"])
        since = len(vm.backend.events)
        vm.hmp(f"drive_mirror -n drive0 {mirror2}")
        job = job_for(vm.backend, "drive0", since)
        job.wait_ready(60)
        vm.hmp("stop")
        assert vm.backend.run_state() == "paused"
        vm.hmp("block_job_complete drive0")
        assert job.wait_done(30).event == "BLOCK_JOB_COMPLETED"
        vm.hmp("c")
        assert vm.backend.run_state() == "running"
        assert str(mirror2) in vm.hmp("info block")
        assert vm.block_info()[0].file == str(mirror2)

        # errors come back as one-line BackendError, not silent text
        with pytest.raises(BackendError, match="block_job_cancel"):
            vm.hmp("block_job_cancel drive0")
        with pytest.raises(BackendError):
            vm.hmp("drive_mirror -f nosuchdrive /tmp/never.img")
        with pytest.raises(BackendError, match="unknown command"):
            vm.hmp("no_such_command drive0")
        with pytest.raises(BackendError, match="drive_mirror: block device name expected"):
            vm.hmp("drive_mirror")
        # the seed's line onto a file already there would overwrite it: refused, unchanged
        before = mirror1.read_bytes()[:65536]
        with pytest.raises(BadInput, match="already exists and would be overwritten"):
            vm.hmp(f"drive_mirror -f drive0 {mirror1}")
        assert mirror1.read_bytes()[:65536] == before and not vm.backend.block_jobs()
    assert not Path("/tmp/never.img").exists()


def test_hmp_commit_while_stopped(scratch: Path) -> None:
    """``stop``; ``commit drive0`` flushes the overlay into its base (seed E3's verb)."""
    base = scratch / "base.qcow2"
    images.make_guest_disk(base, 32)
    overlay = images.create_overlay(scratch / "disk.qcow2", base)
    with Machine(overlay, accel="tcg") as vm:
        vm.wait_guest("ready", timeout=60)
        vm.hmp("stop")
        # 64 KiB of pattern 0xab at the end of the disk, written into the overlay
        vm.hmp('qemu-io drive0 "write -P 0xab 33488896 64k"')
        assert images.info(overlay)["actual-size"] > 0
        vm.hmp("commit drive0")
        vm.hmp("c")
    out = _proc.run(["qemu-io", "-f", "qcow2", "-c", "read -P 0xab 33488896 64k", base])
    assert "read 65536/65536 bytes" in out
    assert images.compare(overlay, base)
