"""Seed experiment 7: ``drive_mirror -n`` onto an existing overlay of the same base.

The seed: a base image; two overlays on it made with
``qemu-img create -f qcow2 -o backing_file=base.img`` -- the VM's disk and the
future mirror; the guest writes; ``drive_mirror -n <drive> mirror.img``
(reuse the target; without ``-f`` only the top layer is copied, sync=top);
file operations during the mirror; cancel when synced; boot the mirror.
Its claim: with ``-n`` and a shared base, the mirror copies the least data and
is ready fastest.  Here the same VM also runs, side by side and *repeats* times in a
rotating order, two controls of the same disk:

- ``top``: ``sync=top`` *without* ``-n`` (QEMU creates a new overlay on the same base): it
  tells whether the saving comes from ``-n`` or from copying only the top layer;
- ``full``: a full mirror (the seed's ``-f``).

So "least data" and "fastest" are ratios with their spread over the repetitions, each
variant against the full mirror; the first ``-n`` copy is booted and verified.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from kvmlab import marks
from kvmlab.errors import BadInput
from kvmlab.experiments.common import ExperimentResult, LabRun, synced_manifest, verify_image
from kvmlab.experiments.options import DEFAULT_OPTIONS, RunOptions
from kvmlab.guest.workload import Workload
from kvmlab.live.jobs import job_for
from kvmlab.qemu.images import create_overlay, make_guest_disk
from kvmlab.vm.machine import Machine

#: why this experiment cannot run on the libvirt backend
SHALLOW_LIBVIRT = (
    "the seed's HMP block_job_cancel of a libvirt-owned copy job did not end it here "
    "(QEMU 7.2, libvirt 9.0: no BLOCK_JOB_COMPLETED in 100 s)")


#: the mirrors compared: the seed's ``-n`` onto the existing overlay, ``sync=top`` onto a
#: new overlay QEMU makes, and a full mirror
VARIANTS = ("-n", "top", "full")


def _timed_mirror(lab: LabRun, vm: Machine, variant: str, base: Path, rep: int,
                  ready_timeout: float) -> dict[str, Any]:
    """One mirror of drive0 as *variant*, to ready then cancelled: bytes copied and time
    to ready (s)."""
    target = lab.workdir / f"{variant.strip('-')}-{rep}.img"
    lab.recorder.mark(marks.MIRROR_START, job="drive0", kind=variant, rep=rep)
    if variant == "-n":
        create_overlay(target, base)
        spec: dict[str, Any] = {"sync": "top", "mode": "existing", "format": "qcow2"}
    else:
        spec = {"sync": variant, "format": "qcow2"}
    t0 = time.monotonic()
    job = vm.mirror("drive0", target, **spec)
    ready = job.wait_ready(ready_timeout)
    lab.recorder.mark(marks.CANCEL, job="drive0")
    job.cancel()
    out = job.wait_done(60)
    target.unlink(missing_ok=True)
    return {"bytes": out.offset, "ready_s": ready.mono - t0}


def shallow_existing(*, image_mib: int = 64, base_fill_mib: int = 24, pre_writes: int = 4,
                     workload_kib: int = 512, workload_rate_kib_s: float = 2048,
                     after_ready_s: float = 1.0, ready_timeout: float = 300, repeats: int = 5,
                     options: RunOptions = DEFAULT_OPTIONS) -> ExperimentResult:
    """Run E7 and compare a shallow ``-n`` mirror with ``sync=top`` and full mirrors of the
    same disk, *repeats* times each.

    :param base_fill_mib: data in the shared base (what the shallow mirror need not copy).
    :param pre_writes: guest dd writes into the overlay before the mirror starts.
    """
    params = dict(locals())
    if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= 50:
        raise BadInput(f"repeats={repeats!r} must be an integer from 1 to 50")
    wl = Workload(dd_kib=workload_kib, rate_kib_s=workload_rate_kib_s)
    with LabRun("shallow_existing", params, options, unsupported={"libvirt": SHALLOW_LIBVIRT}) as lab:
        rec = lab.recorder
        base = lab.workdir / "base.img"
        base_manifest = make_guest_disk(base, image_mib, "qcow2", base_fill_mib)
        src = create_overlay(lab.workdir / "disk.img", base)
        tgt = create_overlay(lab.workdir / "mirror.img", base)
        rec.track("base", base)
        rec.track("mirror", tgt)
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
            t_settled = time.monotonic()      # the job ended: the cut took effect before this
            shallow_ttr = ready.mono - t0
            # the three side by side, each cancelled at ready, in a rotating order (the
            # seed's copy above ran on past ready, so its bytes are not comparable)
            rows = []
            for rep in range(repeats):
                for variant in VARIANTS[rep % 3:] + VARIANTS[:rep % 3]:
                    rows.append({"rep": rep, "variant": variant,
                                 **_timed_mirror(lab, vm, variant, base, rep, ready_timeout)})
        table = pd.DataFrame(rows)
        table.to_csv(lab.run.path / "variants.csv", index=False)
        med_bytes = {str(k): float(v) for k, v in
                     table.groupby("variant")["bytes"].median().items()}
        med_ready = {str(k): float(v) for k, v in
                     table.groupby("variant")["ready_s"].median().items()}
        full_bytes, top_bytes = int(med_bytes["full"]), int(med_bytes["top"])
        full_ttr, top_ttr = med_ready["full"], med_ready["top"]
        per_rep = table.pivot(index="rep", columns="variant", values="ready_s")
        time_ratios = (per_rep["full"] / per_rep["-n"]).dropna()
        bytes_rep = table.pivot(index="rep", columns="variant", values="bytes")
        # an operation begun between the cancel and the job's end may be in the copy or not
        manifest, in_flight = synced_manifest(vm, base_manifest, until=t_cut,
                                              settled=t_settled)
        checked = verify_image(lab, tgt, manifest)
        n_bytes = med_bytes["-n"]
        bytes_ratio = full_bytes / n_bytes if n_bytes else None
        least = bool((bytes_rep["-n"] < bytes_rep["full"]).all())
        lab.verdict = {
            "pass": bool(checked["verify_pass"] and shallow.ok
                         and shallow.event == marks.BLOCK_JOB_COMPLETED
                         and shallow.offset < full_bytes),
            "repeats": repeats,
            "shallow_bytes_copied": int(n_bytes), "full_bytes_copied": full_bytes,
            "top_bytes_copied": top_bytes,
            "bytes_ratio_full_over_shallow": bytes_ratio,
            "bytes_ratio_top_over_shallow": top_bytes / n_bytes if n_bytes else None,
            "shallow_time_to_ready_s": round(med_ready["-n"], 4),
            "full_time_to_ready_s": round(full_ttr, 4),
            "top_time_to_ready_s": round(top_ttr, 4),
            "time_ratio_full_over_shallow": float(time_ratios.median()),
            "time_ratio_full_over_shallow_min": float(time_ratios.min()),
            "time_ratio_full_over_shallow_max": float(time_ratios.max()),
            "shallow_faster_than_full": int((time_ratios > 1).sum()),
            "seed_claim_least_data": least,
            "seed_claim_fastest": bool((time_ratios > 1).all()),
            "time_to_ready_s": round(shallow_ttr, 3), "bytes_copied": shallow.offset,
            "ops_in_flight_at_cancel": len(in_flight), **checked,
        }
    return lab.result()
