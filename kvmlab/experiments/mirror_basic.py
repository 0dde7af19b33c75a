"""Seed experiment 1: drive_mirror while the guest works on its files, then cancel.

The seed's steps, automated:

1. a running VM whose disk the guest is busy with (touch, mkdir, rmdir, dd);
2. ``drive_mirror -f drive0 x-mirror.img`` (sync=full);
3. watch ``info block-jobs`` -- here: the recorder samples ``query-block-jobs``;
4. "when the mirror image is as big as the source" -- here: wait for the job's
   *ready* state (BLOCK_JOB_READY), which is what that rule approximates;
5. ``block_job_cancel drive0`` -- after ready this leaves a point-in-time copy;
6. boot a new VM from the mirror and check every change the guest had synced
   before the cancel is there.
"""

from __future__ import annotations

import time

from kvmlab import marks
from kvmlab.errors import WaitTimeout
from kvmlab.events import Record
from kvmlab.experiments.common import ExperimentResult, LabRun, synced_manifest, verify_image
from kvmlab.experiments.options import DEFAULT_OPTIONS, RunOptions
from kvmlab.guest.workload import Workload
from kvmlab.qemu.images import make_guest_disk


def mirror_basic(*, image_mib: int = 64, fill_mib: int = 16, disk_format: str = "qcow2",
                 workload_kib: int = 256, workload_rate_kib_s: float = 1024,
                 speed: int = 8 * 1024 * 1024, sync: str = "full", target_format: str | None = None,
                 granularity: int | None = None, buf_size: int | None = None,
                 after_ready_s: float = 2.0, ready_timeout: float = 300,
                 options: RunOptions = DEFAULT_OPTIONS
                 ) -> ExperimentResult:
    """Run E1 and return its result; the verdict passes when the copy holds every synced change.

    :param image_mib: guest disk size; :param fill_mib: random data already on it.
    :param workload_kib: size of each guest dd write; :param workload_rate_kib_s: its rate.
    :param speed: mirror speed limit in bytes/s (0 = unlimited); 8 MiB/s so that progress is visible.
    :param after_ready_s: how long the guest keeps working in the ready state before cancel.
    """
    params = dict(locals())
    workload = Workload(dd_kib=workload_kib, rate_kib_s=workload_rate_kib_s)
    with LabRun("mirror_basic", params, options) as lab:
        rec = lab.recorder
        source = lab.workdir / f"disk.{disk_format}"
        target = lab.workdir / "x-mirror.img"
        base = make_guest_disk(source, image_mib, disk_format, fill_mib)
        rec.track("target", target)
        with lab.machine(source, "source", mode="workload", workload=workload) as vm:
            lab.note_machine(vm, "source")
            vm.wait_guest("op", timeout=120)          # the guest is busy: mirror now
            rec.mark(marks.MIRROR_START, job=vm.disk_id)
            t_start = time.monotonic()
            job = vm.mirror(vm.disk_id, target, target_format, sync=sync, speed=speed,
                            granularity=granularity, buf_size=buf_size)
            try:
                ready: Record | None = job.wait_ready(ready_timeout)
            except WaitTimeout:
                ready = None                          # diverging or stalled: a result, not a crash
            if ready is None:
                rec.mark(marks.CANCEL, job=job.id, reason="not ready in time")
                job.cancel(force=True)
            else:
                rec.mark(marks.READY_SEEN, job=job.id)
                time.sleep(after_ready_s)             # guest keeps writing while in sync
                rec.mark(marks.CANCEL, job=job.id)
            t_cut = time.monotonic()
            if ready is not None:
                job.cancel()
            outcome = job.wait_done(60)
            ops = vm.guest_ops()
        if ready is None:
            lab.verdict = {"pass": False, "ready": False, "job_end": outcome.event,
                           "reason": f"not ready within {ready_timeout:g} s",
                           "bytes_len": outcome.len, "bytes_offset": outcome.offset}
        else:
            manifest, in_flight = synced_manifest(vm, base, until=t_cut)
            synced = [r for r in ops if r.mono < t_cut]
            checked = verify_image(lab, target, manifest)
            lab.verdict = {
                "pass": checked["verify_pass"] and outcome.event == marks.BLOCK_JOB_COMPLETED
                and outcome.ok, "ready": True,
                "job_end": outcome.event, "job_error": outcome.error,
                "ops_before_cancel": len(synced), "ops_after_cancel": len(ops) - len(synced),
                "ops_in_flight_at_cancel": len(in_flight),
                "ops_during_mirror": sum(1 for r in ops if t_start <= r.mono < t_cut),
                "time_to_ready_s": round(ready.mono - t_start, 3), "bytes_len": outcome.len,
                **checked,
            }
    return lab.result()
