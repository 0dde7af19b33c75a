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
from typing import Any

from kvmlab import marks
from kvmlab.errors import BadInput, WaitTimeout
from kvmlab.events import Record
from kvmlab.experiments.common import (
    ExperimentResult,
    LabRun,
    cut_at_ready,
    start_together,
    surely_after_cut,
    synced_manifest,
    verify_image,
    wait_begun_on_all,
)
from kvmlab.experiments.options import DEFAULT_OPTIONS, RunOptions
from kvmlab.guest.workload import Workload
from kvmlab.live.jobs import Job
from kvmlab.model import JobOutcome
from kvmlab.qemu.images import make_guest_disk
from kvmlab.vm.machine import data_drive, guest_dev

#: most data disks beside the system disk
MAX_DATA_DISKS = 3


def mirror_basic(*, image_mib: int = 64, fill_mib: int = 16, disk_format: str = "qcow2",
                 workload_kib: int = 256, workload_rate_kib_s: float = 1024,
                 speed: int = 8 * 1024 * 1024, sync: str = "full", target_format: str | None = None,
                 granularity: int | None = None, buf_size: int | None = None,
                 after_ready_s: float = 2.0, ready_timeout: float = 300,
                 data_disks: int = 0, data_mib: int = 32,
                 options: RunOptions = DEFAULT_OPTIONS
                 ) -> ExperimentResult:
    """Run E1 and return its result; the verdict passes when the copy holds every synced change.

    :param image_mib: guest disk size; :param fill_mib: random data already on it.
    :param workload_kib: size of each guest dd write; :param workload_rate_kib_s: its rate.
    :param speed: mirror speed limit in bytes/s (0 = unlimited); 8 MiB/s so that progress is visible.
    :param after_ready_s: how long the guest keeps working in the ready state before cancel.
    :param data_disks: data disks beside the system disk (0 to 3), each ``data_mib`` MiB
        with ``fill_mib / 2`` of data, written by the guest each round.  Every disk is
        mirrored, and at READY all are cut together: the VM is stopped, every job
        cancelled, the VM continued, so each copy is the same point in time (QEMU's
        ``transaction`` has no mirror action; see the scenario table).
    """
    if isinstance(data_disks, bool) or not isinstance(data_disks, int) \
            or not 0 <= data_disks <= MAX_DATA_DISKS:
        raise BadInput(f"data_disks={data_disks!r} must be an integer from 0 to {MAX_DATA_DISKS}")
    params = dict(locals())
    with LabRun("mirror_basic", params, options) as lab:
        lab.verdict = e1_steps(lab, **{k: v for k, v in params.items() if k != "options"})
    return lab.result()


def e1_steps(lab: LabRun, *, image_mib: int, fill_mib: int, disk_format: str,
             workload_kib: int, workload_rate_kib_s: float, speed: int, sync: str,
             target_format: str | None, granularity: int | None, buf_size: int | None,
             after_ready_s: float, ready_timeout: float, data_disks: int,
             data_mib: int) -> dict[str, Any]:
    """E1's steps in *lab* (see :func:`mirror_basic`); returns the verdict."""
    workload = Workload(dd_kib=workload_kib, rate_kib_s=workload_rate_kib_s)
    rec = lab.recorder
    source = lab.workdir / f"disk.{disk_format}"
    bases = [make_guest_disk(source, image_mib, disk_format, fill_mib)]
    data = []
    for k in range(1, data_disks + 1):
        drive, base = data_drive(lab.workdir, k, size_mib=data_mib, fill_mib=fill_mib // 2,
                                 fmt=disk_format, cache=lab.options.cache)
        data.append(drive)
        bases.append(base)
    targets = [lab.workdir / "x-mirror.img"] + \
        [lab.workdir / f"x-mirror-data{k}.img" for k in range(1, data_disks + 1)]
    for t in targets:
        rec.track(t.stem, t)
    with lab.machine(source, "source", mode="workload", workload=workload,
                     extra_drives=data) as vm:
        lab.note_machine(vm, "source")
        vm.wait_guest("op", timeout=120)          # the guest is busy: mirror now
        t_start = time.monotonic()
        target_of = {d.id: t for d, t in zip(vm.drives, targets)}
        jobs, start_stopped_s = start_together(
            lab, vm, lambda d: vm.mirror(d.id, target_of[d.id], target_format, sync=sync,
                                         speed=speed, granularity=granularity,
                                         buf_size=buf_size), vm.drives)
        readies = _wait_all_ready(jobs, ready_timeout)
        if None in readies:                   # diverging or stalled: a result, not a crash
            for job in jobs:
                rec.mark(marks.CANCEL, job=job.id, reason="not ready in time")
                if job.ended is None:
                    job.cancel(force=True)
            outcomes = [job.wait_done(60) for job in jobs]
            t_cut = t_resume = time.monotonic()
        else:
            for job in jobs:
                rec.mark(marks.READY_SEEN, job=job.id)
            time.sleep(after_ready_s)             # guest keeps writing while in sync
            t_cut, t_resume, outcomes = cut_at_ready(lab, vm, jobs)
            if len(jobs) > 1:         # writes after the cut, on every disk: none may be there
                wait_begun_on_all(vm, len(jobs), surely_after_cut(t_cut, t_resume), timeout=30)
        ops = vm.guest_ops()
    verdict: dict[str, Any]
    if None in readies:
        waiting = [j.id for j, r in zip(jobs, readies) if r is None]
        who = f"{', '.join(waiting)} " if len(jobs) > 1 else ""    # one disk: the seed's words
        verdict = {"pass": False, "ready": False, "job_end": outcomes[0].event,
                   "reason": f"{who}not ready within {ready_timeout:g} s",
                   "bytes_len": outcomes[0].len, "bytes_offset": outcomes[0].offset}
    else:
        first = readies[0]
        assert first is not None
        checks = []
        for i, (job, target, base) in enumerate(zip(jobs, targets, bases)):
            several = len(jobs) > 1
            manifest, in_flight = synced_manifest(
                vm, base, until=t_cut, disk=guest_dev(i),
                absent_from=t_resume if several else None,
                settled=None if several else t_resume)
            checks.append((manifest, in_flight, verify_image(
                lab, target, manifest, label="verify" if i == 0 else f"verify-{job.id}")))
        manifest, in_flight, checked = checks[0]
        synced = [r for r in ops if r.mono < t_cut]
        all_ok = all(c["verify_pass"] for _, _, c in checks) and \
            all(o.event == marks.BLOCK_JOB_COMPLETED and o.ok for o in outcomes)
        verdict = {
            "pass": all_ok, "ready": True,
            "job_end": outcomes[0].event, "job_error": outcomes[0].error,
            "ops_before_cancel": len(synced), "ops_after_cancel": len(ops) - len(synced),
            "ops_in_flight_at_cancel": len(in_flight),
            "ops_during_mirror": sum(1 for r in ops if t_start <= r.mono < t_cut),
            "time_to_ready_s": round(first.mono - t_start, 3),
            "bytes_len": outcomes[0].len,
            **checked,
        }
        if len(jobs) > 1:
            verdict["disks"] = [_disk_row(j, o, r, t_start, c, i)
                                for i, (j, o, r, c) in enumerate(zip(
                                    jobs, outcomes, readies, checks))]
            verdict["start_stopped_s"] = round(start_stopped_s, 3)
            verdict["cut_stopped_s"] = round(t_resume - t_cut, 3)
            verdict["same_point"] = all(d["verify_pass"] and d["absent_checked"] > 0
                                        for d in verdict["disks"])
            verdict["pass"] = all_ok and verdict["same_point"]
    return verdict


def _wait_all_ready(jobs: list[Job], timeout: float) -> list[Record | None]:
    """Each job's READY record (None for one not ready by the shared deadline)."""
    deadline = time.monotonic() + timeout
    out: list[Record | None] = []
    for job in jobs:
        try:
            out.append(job.wait_ready(max(0.1, deadline - time.monotonic())))
        except WaitTimeout:
            out.append(None)
    return out


def _disk_row(job: Job, outcome: JobOutcome, ready: Any, t_start: float,
              check: tuple[Any, Any, dict[str, Any]], index: int) -> dict[str, Any]:
    """One disk of a multi-disk run, for the verdict's ``disks`` list."""
    manifest, in_flight, checked = check
    return {"disk": guest_dev(index), "job": job.id, "job_end": outcome.event,
            "bytes_len": outcome.len, "time_to_ready_s": round(ready.mono - t_start, 3),
            "verify_pass": checked["verify_pass"], "checked": checked["checked"],
            "absent_checked": len(manifest.gone), "ops_in_flight_at_cut": len(in_flight)}
