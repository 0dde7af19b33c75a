"""Seed experiment 3: commit an overlay into its base while the VM is stopped.

The seed's steps: the VM's disk is a qcow2 overlay (``/data/kvm/disk.img``) on a
backing file (``/data/kvm/base/base.img``); the guest has written data;
``stop``; look at the sizes and ``qemu-img info``; ``commit <drive>``; sizes
again; ``c``.  Here the verdict is machine-checked: a VM booted on the base
*alone* must hold every change the guest made.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from kvmlab import marks
from kvmlab.errors import BadInput
from kvmlab.experiments.common import (
    ExperimentResult,
    LabRun,
    complete_and_wait,
    synced_manifest,
    verify_image,
)
from kvmlab.experiments.options import DEFAULT_OPTIONS, RunOptions
from kvmlab.guest.workload import Workload
from kvmlab.qemu import images
from kvmlab.qemu.images import FileSize, create_overlay, file_size, make_guest_disk

METHODS = ("hmp", "qmp")


def _size(path: Path) -> FileSize:
    return file_size(path) or FileSize(0, 0)


def commit_stopped(*, method: str = "hmp", image_mib: int = 64, fill_mib: int = 8,
                   rounds: int = 4, workload_kib: int = 512, workload_rate_kib_s: float = 2048,
                   options: RunOptions = DEFAULT_OPTIONS
                   ) -> ExperimentResult:
    """Run E3: ``stop``; commit the overlay (HMP ``commit drive0`` or QMP block-commit); ``c``.

    :param method: ``hmp`` (the seed's synchronous ``commit``) or ``qmp``
        (``block-commit`` of the active layer, then ``block-job-complete``).
    :param rounds: guest workload rounds written into the overlay before the stop.
    """
    if method not in METHODS:
        raise BadInput(f"method={method!r} is not one of {', '.join(METHODS)}")
    params = dict(locals())
    workload = Workload(dd_kib=workload_kib, rate_kib_s=workload_rate_kib_s, rounds=rounds)
    with LabRun("commit_stopped", params, options) as lab:
        rec = lab.recorder
        (lab.workdir / "base").mkdir()
        base = lab.workdir / "base" / "base.img"
        base_manifest = make_guest_disk(base, image_mib, "qcow2", fill_mib)
        overlay = create_overlay(lab.workdir / "disk.img", base)
        rec.track("base", base)
        chain_before = images.info(overlay, backing_chain=True)
        with lab.machine(overlay, "vm", mode="workload", workload=workload) as vm:
            lab.note_machine(vm, "vm")
            vm.wait_guest("workload_done", timeout=180)
            ops = vm.guest_ops()
            before = {"overlay": _size(overlay), "base": _size(base)}
            rec.mark(marks.STOP)
            vm.hmp("stop")
            state_during = vm.backend.run_state()
            if method == "hmp":
                rec.mark(marks.COMMIT, method="hmp")
                vm.hmp(f"commit {vm.disk_id}")
            else:
                rec.mark(marks.COMMIT, method="qmp")
                job = vm.commit(vm.disk_id)
                job.wait_ready(120)
                complete_and_wait(lab, job, "block-commit")
            drive_after = vm.block_info()[0]
            info_block = vm.hmp("info block")
            rec.mark(marks.CONT)
            vm.hmp("c")
            state_after = vm.backend.run_state()
        after = {"overlay": _size(overlay), "base": _size(base)}
        chain_after = images.info(drive_after.file or overlay, backing_chain=True)
        (lab.run.path / "chain_before.json").write_text(json.dumps(chain_before, indent=2))
        (lab.run.path / "chain_after.json").write_text(json.dumps(chain_after, indent=2))
        (lab.run.path / "info_block_after_commit.txt").write_text(info_block)
        manifest, _ = synced_manifest(vm, base_manifest)
        checked = verify_image(lab, base, manifest, label="verify-base")
        written = sum(int(r.data.get("size", 0)) for r in ops if r.data.get("op") == "dd")
        grew = after["base"].allocated - before["base"].allocated
        lab.verdict = {
            "pass": checked["verify_pass"] and state_during == "paused" and grew > 0,
            "method": method, "vm_state_during_commit": state_during,
            "vm_state_after_c": state_after, "drive_after": drive_after.file,
            "guest_bytes_written": written, "base_allocated_growth": grew,
            "sizes_before": {k: asdict(v) for k, v in before.items()},
            "sizes_after": {k: asdict(v) for k, v in after.items()},
            "chain_before": [c["filename"] for c in chain_before],
            "chain_after": [c["filename"] for c in chain_after],
            **checked,
        }
    return lab.result()
