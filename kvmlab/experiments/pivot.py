"""Seed experiments 4-6: switch the VM's image at run time with block_job_complete.

- E4 :func:`pivot`: mirror, (``stop``), ``block_job_complete``, (``c``); writes
  after the pivot land in the mirror, not in the old image.
- E5 :func:`double_pivot`: two mirrors and two completes in a row.
- E6 :func:`remove_source`: after the pivot, move (or delete) the old image
  while the guest keeps writing.

Every verdict rests on what QEMU reports (``query-block``), the content hash
of the old images (unchanged after the pivot), the recorded sizes, and a
fresh VM booted from the active image checking every synced change.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from kvmlab import marks
from kvmlab.errors import BadInput
from kvmlab.experiments.common import (
    ExperimentResult,
    LabRun,
    busy_vm,
    complete_and_wait,
    snapshot_image,
    synced_manifest,
    unchanged,
    verify_image,
)
from kvmlab.experiments.options import DEFAULT_OPTIONS, RunOptions
from kvmlab.guest.workload import Workload
from kvmlab.qemu.images import make_guest_disk
from kvmlab.store.tmpdirs import disown, owned_tmpdir
from kvmlab.vm.machine import Machine


def mirror_and_complete(lab: LabRun, vm: Machine, target: Path, *, paused: bool = False,
                        sync: str = "full", speed: int = 0,
                        ready_timeout: float = 300) -> dict[str, Any]:
    """Mirror drive0 to *target*, wait for ready, (stop), complete, (cont).  Returns facts."""
    rec = lab.recorder
    rec.track(target.stem, target)
    rec.mark(marks.MIRROR_START, job=vm.disk_id, target=str(target))
    t0 = time.monotonic()
    job = vm.mirror(vm.disk_id, target, sync=sync, speed=speed)
    ready = job.wait_ready(ready_timeout)
    if paused:
        rec.mark(marks.STOP)
        vm.hmp("stop")
    outcome = complete_and_wait(lab, job, f"mirror to {target}")
    drive = vm.block_info()[0]
    info_block = vm.hmp("info block")
    state = vm.backend.run_state()
    if paused:
        rec.mark(marks.CONT)
        vm.hmp("c")
    return {"target": str(target), "job_end": outcome.event, "paused": paused,
            "vm_state_at_complete": state, "drive_file_after": drive.file,
            "on_target": drive.file == str(target), "info_block": info_block.strip(),
            "time_to_ready_s": round(ready.mono - t0, 3), "bytes_copied": outcome.offset,
            "t_pivot": time.monotonic()}


def pivot(*, paused: bool = False, image_mib: int = 64, fill_mib: int = 16,
          disk_format: str = "qcow2", workload_kib: int = 512, workload_rate_kib_s: float = 2048,
          post_pivot_writes: int = 4, speed: int = 0,
          options: RunOptions = DEFAULT_OPTIONS) -> ExperimentResult:
    """Run E4: mirror, complete (with the VM paused or running), and check where writes go.

    :param paused: ``stop`` before ``block_job_complete`` and ``c`` after (the seed did both).
    :param post_pivot_writes: guest dd writes to wait for after the pivot.
    """
    params = dict(locals())
    wl = Workload(dd_kib=workload_kib, rate_kib_s=workload_rate_kib_s)
    with LabRun("pivot", params, options) as lab:
        src = lab.workdir / "disk.img"
        tgt = lab.workdir / "x-mirror.img"
        base = make_guest_disk(src, image_mib, disk_format, fill_mib)
        with busy_vm(lab, src, wl) as vm:
            facts = mirror_and_complete(lab, vm, tgt, paused=paused, speed=speed)
            src_at_pivot, tgt_at_pivot = snapshot_image(src), snapshot_image(tgt)
            after = vm.wait_ops(post_pivot_writes, "dd", after=facts["t_pivot"])
            src_end, tgt_end = snapshot_image(src), snapshot_image(tgt)
        manifest, in_flight = synced_manifest(vm, base)
        checked = verify_image(lab, tgt, manifest)
        grew = (tgt_end["allocated"] or 0) - (tgt_at_pivot["allocated"] or 0)
        lab.verdict = {
            "pass": bool(facts["on_target"] and unchanged(src_at_pivot, src_end) and grew > 0
                         and checked["verify_pass"]),
            **{k: v for k, v in facts.items() if k != "t_pivot"},
            "info_block_shows_original": str(src) in facts["info_block"].split("\n")[0],
            "source_unchanged_after_pivot": unchanged(src_at_pivot, src_end),
            "target_allocated_growth": grew, "post_pivot_dd_bytes":
                sum(int(r.data.get("size", 0)) for r in after),
            "ops_in_flight_at_end": len(in_flight), **checked,
        }
    return lab.result()


def double_pivot(*, image_mib: int = 64, fill_mib: int = 16, disk_format: str = "qcow2",
                 workload_kib: int = 512, workload_rate_kib_s: float = 2048,
                 post_pivot_writes: int = 4, options: RunOptions = DEFAULT_OPTIONS
                 ) -> ExperimentResult:
    """Run E5: mirror+complete to a second image, then to a third; writes land only in the third."""
    params = dict(locals())
    wl = Workload(dd_kib=workload_kib, rate_kib_s=workload_rate_kib_s)
    with LabRun("double_pivot", params, options) as lab:
        first = lab.workdir / "disk.img"
        second = lab.workdir / "mirror1.img"
        third = lab.workdir / "mirror2.img"
        base = make_guest_disk(first, image_mib, disk_format, fill_mib)
        with busy_vm(lab, first, wl) as vm:
            p1 = mirror_and_complete(lab, vm, second)
            first_at_p1 = snapshot_image(first)
            vm.wait_ops(2, "dd", after=p1["t_pivot"])       # writes go to the second image
            p2 = mirror_and_complete(lab, vm, third)
            first_at_p2, second_at_p2 = snapshot_image(first), snapshot_image(second)
            third_at_p2 = snapshot_image(third)
            vm.wait_ops(post_pivot_writes, "dd", after=p2["t_pivot"])
            first_end, second_end = snapshot_image(first), snapshot_image(second)
            third_end = snapshot_image(third)
        manifest, in_flight = synced_manifest(vm, base)
        checked = verify_image(lab, third, manifest)
        grew = (third_end["allocated"] or 0) - (third_at_p2["allocated"] or 0)
        lab.verdict = {
            "pass": bool(p1["on_target"] and p2["on_target"]
                         and unchanged(first_at_p1, first_end)
                         and unchanged(second_at_p2, second_end) and grew > 0
                         and checked["verify_pass"]),
            "first_pivot_on_target": p1["on_target"], "second_pivot_on_target": p2["on_target"],
            "drive_file_after": p2["drive_file_after"],
            "first_unchanged_since_pivot1": unchanged(first_at_p1, first_end),
            "first_unchanged_since_pivot2": unchanged(first_at_p2, first_end),
            "second_unchanged_since_pivot2": unchanged(second_at_p2, second_end),
            "third_allocated_growth": grew,
            "time_to_ready_s": p1["time_to_ready_s"], "time_to_ready_2_s": p2["time_to_ready_s"],
            "bytes_copied": p1["bytes_copied"], "bytes_copied_2": p2["bytes_copied"],
            "ops_in_flight_at_end": len(in_flight), **checked,
        }
    return lab.result()


ACTIONS = ("move", "delete")


def remove_source(*, action: str = "move", move_to: str | Path | None = None,
                  image_mib: int = 64, fill_mib: int = 16, disk_format: str = "qcow2",
                  workload_kib: int = 512, workload_rate_kib_s: float = 2048,
                  post_remove_writes: int = 4, options: RunOptions = DEFAULT_OPTIONS
                  ) -> ExperimentResult:
    """Run E6: pivot, then move (to *move_to*, another directory or file system) or delete
    the old image while the guest keeps writing."""
    if action not in ACTIONS:
        raise BadInput(f"action={action!r} is not one of {', '.join(ACTIONS)}")
    if move_to is not None and not Path(move_to).is_dir():
        raise BadInput(f"move_to={move_to} is not a directory")
    params = dict(locals())
    wl = Workload(dd_kib=workload_kib, rate_kib_s=workload_rate_kib_s)
    with LabRun("remove_source", params, options) as lab:
        src = lab.workdir / "disk.img"
        tgt = lab.workdir / "x-mirror.img"
        base = make_guest_disk(src, image_mib, disk_format, fill_mib)
        moved: Path | None = None
        other_fs: bool | None = None
        try:
            with busy_vm(lab, src, wl) as vm:
                facts = mirror_and_complete(lab, vm, tgt)
                src_at_pivot = snapshot_image(src)
                t_remove = time.monotonic()
                if action == "move":
                    if move_to:     # an owned dir there: reaped if we are killed (/dev/shm)
                        dest_dir = owned_tmpdir("kvmlab-moved-", Path(move_to))
                    else:
                        dest_dir = lab.workdir / "elsewhere"
                        dest_dir.mkdir(exist_ok=True)
                    other_fs = dest_dir.stat().st_dev != src.parent.stat().st_dev
                    moved = dest_dir / f"{lab.run.meta['run_id']}-{src.name}"
                    lab.recorder.mark(marks.SOURCE_MOVED, to=str(moved))
                    shutil.move(src, moved)
                    lab.recorder.track("moved", moved)
                else:
                    lab.recorder.mark(marks.SOURCE_DELETED)
                    os.unlink(src)
                after = vm.wait_ops(post_remove_writes, "dd", after=t_remove)
                state = vm.backend.run_state()
                io_errors = [r.name for r in vm.backend.events.snapshot()
                             if r.name in (marks.BLOCK_IO_ERROR, marks.BLOCK_JOB_ERROR)]
                moved_end = snapshot_image(moved) if moved else None
            # once the VM has stopped, as E4 and E5 do: taken while the guest still ran, an
            # operation it made after (an rmdir of a directory the manifest expects) left the
            # image unlike the manifest and failed the verify of a sound copy
            manifest, in_flight = synced_manifest(vm, base)
            checked = verify_image(lab, tgt, manifest)
        finally:
            if moved is not None and move_to is not None:   # outside the scratch folder
                if options.keep_images:
                    disown(moved.parent)
                else:
                    shutil.rmtree(moved.parent, ignore_errors=True)
        moved_ok = unchanged(src_at_pivot, moved_end) if moved_end else None
        lab.verdict = {
            "pass": bool(facts["on_target"] and not io_errors and state == "running"
                         and len(after) >= post_remove_writes and moved_ok is not False
                         and not src.exists() and checked["verify_pass"]),
            "action": action, "moved_to": str(moved) if moved else None,
            "moved_to_other_file_system": other_fs,
            "drive_file_after": facts["drive_file_after"], "vm_state_after": state,
            "io_error_events": len(io_errors), "writes_after_remove": len(after),
            "moved_file_unchanged": moved_ok, **checked,
        }
    return lab.result()


__all__ = ["pivot", "double_pivot", "remove_source", "mirror_and_complete"]
