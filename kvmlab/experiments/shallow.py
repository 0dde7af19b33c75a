"""Seed experiment 7: ``drive_mirror -n`` onto an existing overlay of the same base.

The seed: a base image; two overlays on it made with
``qemu-img create -f qcow2 -o backing_file=base.img`` -- the VM's disk and the
future mirror; the guest writes; ``drive_mirror -n <drive> mirror.img``
(reuse the target; without ``-f`` only the top layer is copied, sync=top);
file operations during the mirror; cancel when synced; boot the mirror.
Its claim: with ``-n`` and a shared base, the mirror copies the least data and
is ready fastest.  Here the same VM then runs a full mirror of the same disk,
so the claim is shown as ratios measured side by side.
"""

from __future__ import annotations

import time

from kvmlab import marks
from kvmlab.experiments.common import ExperimentResult, LabRun, synced_manifest, verify_image
from kvmlab.experiments.options import DEFAULT_OPTIONS, RunOptions
from kvmlab.guest.workload import Workload
from kvmlab.live.jobs import job_for
from kvmlab.qemu.images import create_overlay, make_guest_disk

#: why this experiment cannot run on the libvirt backend
SHALLOW_LIBVIRT = (
    "the seed's HMP block_job_cancel of a libvirt-owned copy job did not end it here "
    "(QEMU 7.2, libvirt 9.0: no BLOCK_JOB_COMPLETED in 100 s)")


def shallow_existing(*, image_mib: int = 64, base_fill_mib: int = 24, pre_writes: int = 4,
                     workload_kib: int = 512, workload_rate_kib_s: float = 2048,
                     after_ready_s: float = 1.0, ready_timeout: float = 300,
                     options: RunOptions = DEFAULT_OPTIONS) -> ExperimentResult:
    """Run E7 and compare a shallow ``-n`` mirror with a full mirror of the same disk.

    :param base_fill_mib: data in the shared base (what the shallow mirror need not copy).
    :param pre_writes: guest dd writes into the overlay before the mirror starts.
    """
    params = dict(locals())
    wl = Workload(dd_kib=workload_kib, rate_kib_s=workload_rate_kib_s)
    with LabRun("shallow_existing", params, options, unsupported={"libvirt": SHALLOW_LIBVIRT}) as lab:
        rec = lab.recorder
        base = lab.workdir / "base.img"
        base_manifest = make_guest_disk(base, image_mib, "qcow2", base_fill_mib)
        src = create_overlay(lab.workdir / "disk.img", base)
        tgt = create_overlay(lab.workdir / "mirror.img", base)
        full = lab.workdir / "full-mirror.img"
        rec.track("base", base)
        rec.track("mirror", tgt)
        rec.track("full-mirror", full)
        with lab.machine(src, "vm", mode="workload", workload=wl) as vm:
            lab.note_machine(vm, "vm")
            vm.wait_ops(pre_writes, "dd", after=0, timeout=180)
            # the seed's command line, verbatim: -n = reuse the target, no -f = sync=top
            since = len(vm.backend.events)
            rec.mark(marks.MIRROR_START, job="drive0", kind="shallow")
            t0 = time.monotonic()
            vm.hmp(f"drive_mirror -n drive0 {tgt}")
            job = job_for(vm.backend, "drive0", since)
            ready = job.wait_ready(ready_timeout)
            time.sleep(after_ready_s)
            t_cut = time.monotonic()
            rec.mark(marks.CANCEL, job="drive0")
            vm.hmp("block_job_cancel drive0")
            shallow = job.wait_done(60)
            shallow_ttr = ready.mono - t0
            # the same disk mirrored in full, for comparison
            rec.mark(marks.MIRROR_START, job="drive0", kind="full")
            t1 = time.monotonic()
            job2 = vm.mirror("drive0", full, sync="full")
            ready2 = job2.wait_ready(ready_timeout)
            rec.mark(marks.CANCEL, job="drive0")
            job2.cancel()
            full_out = job2.wait_done(60)
            full_ttr = ready2.mono - t1
        manifest, in_flight = synced_manifest(vm, base_manifest, until=t_cut)
        checked = verify_image(lab, tgt, manifest)
        bytes_ratio = full_out.offset / shallow.offset if shallow.offset else None
        time_ratio = full_ttr / shallow_ttr if shallow_ttr > 0 else None
        lab.verdict = {
            "pass": bool(checked["verify_pass"] and shallow.ok
                         and shallow.event == marks.BLOCK_JOB_COMPLETED
                         and shallow.offset < full_out.offset),
            "shallow_bytes_copied": shallow.offset, "full_bytes_copied": full_out.offset,
            "bytes_ratio_full_over_shallow": bytes_ratio,
            "shallow_time_to_ready_s": round(shallow_ttr, 3),
            "full_time_to_ready_s": round(full_ttr, 3),
            "time_ratio_full_over_shallow": time_ratio,
            "seed_claim_least_data": shallow.offset < full_out.offset,
            "seed_claim_fastest": shallow_ttr < full_ttr,
            "time_to_ready_s": round(shallow_ttr, 3), "bytes_copied": shallow.offset,
            "ops_in_flight_at_cancel": len(in_flight), **checked,
        }
    return lab.result()
