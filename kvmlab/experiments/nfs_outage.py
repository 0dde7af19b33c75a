"""Seed experiment 2: mirror to NFS, stop the NFS server mid-mirror, start it again.

The seed's steps, automated against a real NFS server (nfs-ganesha on
loopback) and QEMU's own NFS client (libnfs):

1. a running VM whose guest is busy with its file operations;
2. ``drive_mirror -f drive0 nfs://127.0.0.1/<export>/x-mirror.img``, rate
   limited so that the copy is still under way when
3. the server goes away (``stop``: the process ends, as ``service nfs stop``;
   ``freeze``: SIGSTOP, a hung server) for *outage_s* seconds while the guest
   keeps working -- the recorder sees what QEMU reports meanwhile;
4. the server comes back (a new process on the same export, or SIGCONT);
   the time to the job's first progress after that is measured;
5. if the job failed or paused on the error (depending on *on_target_error*),
   the documented recovery step: ``block-job-resume``, or a new mirror onto
   the same image (``mode=existing``);
6. once ready, ``block_job_cancel``; a fresh VM boots the copy and checks
   every operation the guest had synced before the cancel, including those
   made during the outage.
"""

from __future__ import annotations

import time

from kvmlab import analysis, marks
from kvmlab.errors import BadInput
from kvmlab.experiments.common import (
    ExperimentResult,
    LabRun,
    busy_vm,
    cancel_after,
    drive_to_ready,
    fault_behaviour,
    synced_manifest,
    verify_image,
)
from kvmlab.experiments.options import DEFAULT_OPTIONS, RunOptions
from kvmlab.faults.nfs import OUTAGE_MODES, NfsServer
from kvmlab.guest.workload import Workload
from kvmlab.live.jobs import Job
from kvmlab.model import ERROR_POLICIES_TARGET
from kvmlab.qemu.images import make_guest_disk

#: why this experiment cannot run on the libvirt backend
NFS_LIBVIRT = (
    "its target is QEMU's own libnfs client (an nfs:// URL), which kvmlab's libvirt "
    "backend does not pass to blockCopy (no <disk type='network'> destination yet)")


def mirror_nfs_outage(*, outage: str = "stop", outage_after_s: float = 2.0,
                      outage_s: float = 5.0, on_target_error: str = "report",
                      image_mib: int = 64, fill_mib: int = 24, disk_format: str = "qcow2",
                      target_format: str = "qcow2", speed: int = 4 * 1024 * 1024,
                      buf_size: int | None = 256 * 1024, workload_kib: int = 256,
                      workload_rate_kib_s: float = 512, after_ready_s: float = 1.0,
                      recover_timeout: float = 180,
                      options: RunOptions = DEFAULT_OPTIONS) -> ExperimentResult:
    """Run E2; the verdict passes when the copy holds every synced change, outage included.

    :param outage: ``stop`` (server process ends, a new one starts) or ``freeze``
        (SIGSTOP/SIGCONT).
    :param outage_after_s: seconds after the mirror starts when the server goes away.
    :param speed: copy limit (bytes/s) so the outage falls mid-copy.
    :param on_target_error: the mirror's policy: report, ignore, enospc or stop.
    """
    if outage not in OUTAGE_MODES:
        raise BadInput(f"outage={outage!r} is not one of {', '.join(OUTAGE_MODES)}")
    if on_target_error not in ERROR_POLICIES_TARGET:
        raise BadInput(f"on_target_error={on_target_error!r} is not one of "
                       f"{', '.join(ERROR_POLICIES_TARGET)}")
    if outage_s <= 0 or outage_after_s < 0:
        raise BadInput("outage_s must be > 0 and outage_after_s >= 0")
    params = dict(locals())
    workload = Workload(dd_kib=workload_kib, rate_kib_s=workload_rate_kib_s)
    with LabRun("mirror_nfs_outage", params, options, unsupported={"libvirt": NFS_LIBVIRT}) as lab:
        rec = lab.recorder
        source = lab.workdir / f"disk.{disk_format}"
        export = lab.workdir / "nfs-export"
        export.mkdir()
        local_copy = export / "x-mirror.img"
        base = make_guest_disk(source, image_mib, disk_format, fill_mib)
        rec.track("target (NFS export)", local_copy)
        with NfsServer(export, mark=rec.mark) as nfs, \
                busy_vm(lab, source, workload, label="source") as vm:
            url = nfs.url(local_copy.name)
            lab.extra["nfs"] = {"url": url, "server": "nfs-ganesha (VFS), NFSv3/TCP"}

            def start(mode: str) -> Job:
                rec.mark(marks.MIRROR_START, job=vm.disk_id, target=url, mode=mode)
                return vm.mirror(vm.disk_id, url, target_format, mode=mode, speed=speed,
                                 buf_size=buf_size, on_target_error=on_target_error)

            job = start("absolute-paths")
            t_mirror = time.monotonic()
            time.sleep(outage_after_s)
            before = job.info()
            ops_before = len(vm.guest_ops())
            with nfs.outage(outage):
                time.sleep(outage_s)
            ops_during = len(vm.guest_ops()) - ops_before
            t_back = rec.now()
            job, steps = drive_to_ready(lab, job, recover_timeout,
                                        restart=lambda: start("existing"))
            t_ready = time.monotonic()
            t_cut, outcome = cancel_after(lab, job, after_ready_s)
            t_settled = time.monotonic()      # the job ended: the cut took effect before this
        frames = rec.frames()
        windows = analysis.fault_windows(frames["events"])
        w = windows[windows["name"] == "nfs_outage"].iloc[0]
        effect = analysis.fault_effect(frames["samples"], frames["events"], float(w["start"]),
                                       float(w["end"]), job.id)
        manifest, in_flight = synced_manifest(vm, base, until=t_cut, settled=t_settled)
        checked = verify_image(lab, local_copy, manifest)
        lab.verdict = {
            "pass": bool(checked["verify_pass"] and outcome.ok
                         and outcome.event == marks.BLOCK_JOB_COMPLETED),
            "outage": outage, "on_target_error": on_target_error,
            "mid_copy_at_outage": bool(before is not None and not before.ready
                                       and before.offset < before.len),
            "behaviour": fault_behaviour(effect, steps, effect["job_errors"]),
            **{f"outage_{k}": v for k, v in effect.items()},
            "recovery_steps": [s["step"] for s in steps],
            "outage_end_t": round(t_back, 3),
            "ops_during_outage": ops_during, "ops_in_flight_at_cancel": len(in_flight),
            "job_end": outcome.event, "job_error": outcome.error,
            "time_to_ready_s": round(t_ready - t_mirror, 3),
            **checked,
        }
    return lab.result()
