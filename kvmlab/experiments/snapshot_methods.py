"""Snapshot methods side by side: is a mirror a good way to take a point-in-time copy?

The seed asked whether a mirror can serve as a snapshot.  Today's QEMU has other ways to
copy a running disk at a point in time; here each runs on the same guest and workload (the
``consistency`` style: files whose blocks name the operation, synced or only written):

- ``mirror``: ``drive-mirror`` to ready, cut by ``block-job-cancel`` (point in time: the cut);
- ``backup``: ``blockdev-backup sync=full`` (copy-before-write; point in time: the job's
  start; the guest runs on while it copies);
- ``snapshot``: ``blockdev-snapshot-sync`` to a new overlay (point in time: the snapshot),
  the frozen image below copied on the host, then ``block-commit`` of the active layer
  back into it (the VM ends on its original image).

Each with each **quiesce** around its point in time: ``none``, ``stop`` (HMP, the vCPUs
paused) or ``fsfreeze`` (guest agent).  One VM per method; the quiesce modes interleave.

Per copy it measures: what the copy holds relative to its point in time (the classes of
:mod:`kvmlab.experiments.consistency`, plus ``after``: operations begun after the point in
time, which the copy must not hold); whether the file system is clean after its journal is
replayed; whether the copy boots and verifies (the first copy of each quiesce mode: a fresh
VM mounts it and checks every synced operation is there and every later one is not); the
guest's write latency (median and p95 of its synced writes) and write rate during the
operation against the seconds before; the wall time; and the bytes the host wrote to make
the copy (the jobs' offsets, plus the host's copy of the frozen image).

The verdict passes when every copy kept the guest's promises (synced and flushed
operations intact, clean after replay), held nothing from after its point in time, and
every booted copy verified.
"""

from __future__ import annotations

import hashlib
import random
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kvmlab import marks
from kvmlab.errors import BadInput, JobError
from kvmlab.experiments.common import (
    ExperimentResult,
    LabRun,
    busy_vm,
    distinct_choices,
    verify_image,
)
from kvmlab.experiments.consistency import (
    AGENT_LIBVIRT,
    CLASSES,
    classify,
    tally,
)
from kvmlab.experiments.options import DEFAULT_OPTIONS, RunOptions
from kvmlab.guest.workload import Manifest, Workload, block_content
from kvmlab.model import CACHE_MODES
from kvmlab.qemu.images import check_replayed, file_size, make_guest_disk, qemu_img
from kvmlab.units import MIB
from kvmlab.vm.agent import GuestAgent
from kvmlab.vm.machine import Machine

METHODS = ("mirror", "backup", "snapshot")
QUIESCE = ("none", "stop", "fsfreeze")
#: the classes of operations at a method's point in time, ``after`` included
METHOD_CLASSES = (*CLASSES, "after")
#: the seconds before an operation whose guest writes are its baseline (quiet ones: each
#: copy waits this long after the previous copy's checks and boot)
BEFORE_S = 2.0
#: guest downtimes closer than this are one rank when picking a method (TCG's spread)
DOWNTIME_STEP_S = 0.05


def snapshot_methods(*, methods: Sequence[str] = METHODS, quiesce: Sequence[str] = QUIESCE,
                     trials: int = 3, cache: str = "none", image_mib: int = 48,
                     fill_mib: int = 16, speed: int = 16 * MIB, blocks: int = 4,
                     workload_rate_kib_s: float = 80, seed: int = 1,
                     options: RunOptions = DEFAULT_OPTIONS) -> ExperimentResult:
    """Take *trials* copies with each method and quiesce; the verdict holds the summary.

    :param fill_mib: data on the disk before the guest starts (what every copy moves).
    :param speed: the rate limit in bytes/s of every copy (mirror, backup, commit and the
        host's ``qemu-img convert -r``; 0: none), the same for all so their times compare,
        and long enough for the guest's writes during them to be measured.
    """
    params = dict(locals())
    methods = distinct_choices(methods, METHODS, "method")
    quiesce = distinct_choices(quiesce, QUIESCE, "quiesce")
    if cache not in CACHE_MODES:
        raise BadInput(f"cache mode {cache!r} is not one of {', '.join(CACHE_MODES)}")
    if isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= 50:
        raise BadInput(f"trials={trials!r} must be an integer from 1 to 50")
    workload = Workload(style="consistency", blocks=blocks, rate_kib_s=workload_rate_kib_s)
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    with LabRun("snapshot_methods", params, options, unsupported={"libvirt": AGENT_LIBVIRT}
                ) as lab:
        for method in methods:
            order = [q for _ in range(trials) for q in rng.sample(quiesce, len(quiesce))]
            rows += _one_vm(lab, method, order, [rng.uniform(0.5, 1.5) for _ in order],
                            cache, workload, (image_mib, fill_mib, speed), start=len(rows))
        frame = pd.DataFrame(rows)
        frame.to_csv(lab.run.path / "copies.csv", index=False)
        table = summary(frame)
        table.to_csv(lab.run.path / "methods.csv", index=False)
        booted = frame[frame["booted"].notna()]
        lab.verdict = {
            "pass": bool(frame["promises_kept"].all() and (frame["after_leaked"] == 0).all()
                         and booted["booted"].astype(bool).all()),
            "copies": len(frame), "booted": len(booted),
            "promises_kept": bool(frame["promises_kept"].all()),
            "nothing_after_point_in_time": bool((frame["after_leaked"] == 0).all()),
            "recommendation": recommendation(table),
            "methods": table.to_dict(orient="records")}
    return lab.result()


def summary(copies: pd.DataFrame) -> pd.DataFrame:
    """Per method and quiesce: copies, how many were point-in-time and quiesced, booted,
    the guest's write latency and rate during the operation against before (medians over
    the copies), its downtime, the wall time and the host's bytes written."""
    rows = []
    for (method, q), g in copies.groupby(["method", "quiesce"], sort=False):
        booted = g["booted"].dropna()
        rows.append({
            "method": method, "quiesce": q, "copies": len(g),
            "promises_kept": int(g["promises_kept"].sum()),
            "point_in_time": int(g["point_in_time"].sum()),
            "no_replay": int((~g["needs_recovery"].astype(bool)).sum()),
            "after_leaked": int(g["after_leaked"].sum()),
            "booted": f"{int(booted.astype(bool).sum())} of {len(booted)}",
            "latency_p50_ms": _median(g["latency_p50_ms"]),
            "latency_p95_ms": _median(g["latency_p95_ms"]),
            "latency_p95_before_ms": _median(g["latency_p95_before_ms"]),
            "write_kib_s": _median(g["write_kib_s"]),
            "write_kib_s_before": _median(g["write_kib_s_before"]),
            "guest_downtime_s": _median(g["guest_downtime_s"]),
            "wall_s": _median(g["wall_s"]),
            "host_mib_written": _median(g["host_bytes_written"] / MIB),
        })
    return pd.DataFrame(rows)


def recommendation(table: pd.DataFrame) -> str:
    """What the numbers recommend, in words, for two kinds of disk.

    - A **data disk** whose application syncs what it needs: a copy must keep every synced
      write and nothing from after its point in time, in every copy.
    - A **system disk**: the copy should hold every finished operation and boot with no
      journal to replay, in every copy.

    Among the method/quiesce cells that qualify, the pick is the least guest downtime (in
    steps of :data:`DOWNTIME_STEP_S`, closer is noise under TCG), then the least written on
    the host; a runner-up in the same step and within 10 % of the host bytes is named."""
    def pick(rows: pd.DataFrame, kind: str) -> str:
        if rows.empty:
            return f"{kind}: no method and quiesce qualified in every copy"
        rows = rows.assign(step=(rows["guest_downtime_s"] // DOWNTIME_STEP_S))
        ranked = rows.sort_values(["step", "host_mib_written"])
        r = ranked.iloc[0]
        text = (f"{kind}: {r['method']} with quiesce {r['quiesce']} (guest downtime "
                f"{r['guest_downtime_s'] * 1000:.0f} ms, {r['host_mib_written']:.1f} MiB "
                f"written on the host, ready in {r['wall_s']:.2f} s)")
        rest = ranked.iloc[1:]
        close = rest[(rest["step"] == r["step"])
                     & (rest["host_mib_written"] <= r["host_mib_written"] * 1.1)]
        if len(close):
            c = close.iloc[0]
            text += (f", with {c['method']} + {c['quiesce']} as good within the spread "
                     f"({c['host_mib_written']:.1f} MiB)")
        return text
    sound = table[(table["promises_kept"] == table["copies"]) & (table["after_leaked"] == 0)]
    whole = sound[(sound["point_in_time"] == sound["copies"])
                  & (sound["no_replay"] == sound["copies"])]
    return "; ".join([pick(sound, "data disk (its application syncs)"),
                      pick(whole, "system disk (every finished operation, no journal to "
                                  "replay)")])


def _median(values: pd.Series) -> float | None:
    v = values.dropna()
    return round(float(v.median()), 3) if len(v) else None


def _one_vm(lab: LabRun, method: str, order: list[str], waits: list[float], cache: str,
            workload: Workload, disk: tuple[int, int, int], start: int) -> list[dict[str, Any]]:
    """One busy VM, copied once per entry of *order* with *method*; *disk* is (size MiB,
    fill MiB, the jobs' speed)."""
    label = f"vm-{method}"
    source = lab.workdir / f"disk-{method}.qcow2"
    image_mib, fill_mib, speed = disk
    make_guest_disk(source, image_mib, "qcow2", fill_mib)
    rows: list[dict[str, Any]] = []
    flushes: list[float] = []
    booted: set[str] = set()
    with busy_vm(lab, source, workload, label=label, cache=cache, agent=True) as vm:
        agent = vm.agent()
        for i, (q, wait) in enumerate(zip(order, waits, strict=True)):
            n = start + i + 1
            time.sleep(BEFORE_S + wait)     # a quiet baseline of the guest's writes
            copy = lab.workdir / f"copy-{n}.raw"
            taken = _take(lab, vm, agent, method, q, n, copy, image_mib, speed, flushes)
            rows.append(_check(lab, vm, method, q, n, copy, taken, flushes,
                               boot=q not in booted, blocks=workload.blocks))
            booted.add(q)
            copy.unlink(missing_ok=True)
    source.unlink(missing_ok=True)
    return rows


def _quiesce(lab: LabRun, vm: Machine, agent: GuestAgent, q: str, flushes: list[float]
             ) -> int | None:
    if q == "stop":
        lab.recorder.mark(marks.STOP)
        vm.hmp("stop")
    elif q == "fsfreeze":
        flushes.append(time.monotonic())
        lab.recorder.mark(marks.start(marks.FSFREEZE))
        return agent.fsfreeze_freeze()
    return None


def _resume(lab: LabRun, vm: Machine, agent: GuestAgent, q: str) -> None:
    if q == "stop":
        vm.hmp("c")
        lab.recorder.mark(marks.CONT)
    elif q == "fsfreeze":
        agent.fsfreeze_thaw()
        lab.recorder.mark(marks.end(marks.FSFREEZE))


def _take(lab: LabRun, vm: Machine, agent: GuestAgent, method: str, q: str, n: int,
          copy: Path, image_mib: int, speed: int, flushes: list[float]) -> dict[str, Any]:
    """Take one copy into the raw file *copy*: host times of the start, the point in time,
    the end and the guest's downtime, and the bytes the host wrote."""
    rec = lab.recorder
    disk = vm.disk_id
    t_start = time.monotonic()
    rec.mark(marks.MIRROR_START, job=disk, kind=method, quiesce=q, copy=n)
    if method == "mirror":
        job = vm.mirror(disk, copy, "raw", speed=speed)
        job.wait_ready(300)
        t_down = time.monotonic()
        _quiesce(lab, vm, agent, q, flushes)
        t_pit = time.monotonic()
        rec.mark(marks.CANCEL, job=job.id)
        job.cancel()
        written = job.wait_done(60).offset
        _resume(lab, vm, agent, q)
        downtime = time.monotonic() - t_down
    elif method == "backup":
        with open(copy, "xb") as fh:                    # the target, at the disk's size
            fh.truncate(image_mib * MIB)
        t_down = time.monotonic()
        _quiesce(lab, vm, agent, q, flushes)
        t_pit = time.monotonic()
        job = vm.backup(disk, copy, job_id=f"backup{n}", speed=speed)
        _resume(lab, vm, agent, q)
        downtime = time.monotonic() - t_down
        outcome = job.wait_done(300)
        vm.backend.drop_backup_target(job.id)
        if not outcome.ok:
            raise JobError(f"blockdev-backup ended with {outcome.event}: {outcome.error}")
        written = outcome.offset
    else:
        overlay = lab.workdir / f"overlay-{n}.qcow2"
        base = Path(vm.drives[0].path)
        t_down = time.monotonic()
        _quiesce(lab, vm, agent, q, flushes)
        t_pit = time.monotonic()
        vm.snapshot(disk, overlay)
        _resume(lab, vm, agent, q)
        downtime = time.monotonic() - t_down
        # the frozen image, as it was, copied at the same rate limit as the jobs
        qemu_img(["convert", "-U", "-O", "raw", *(["-r", str(speed)] if speed else []),
                  base, copy])
        size = file_size(copy)
        job = vm.commit(disk, job_id=f"commit{n}", speed=speed)
        job.wait_ready(300)
        job.complete()
        written = job.wait_done(60).offset + (size.allocated if size else 0)
        overlay.unlink(missing_ok=True)
    if q == "none":
        downtime = 0.0
    return {"t_start": t_start, "t_pit": t_pit, "t_end": time.monotonic(),
            "downtime": downtime, "host_bytes_written": written}


def _check(lab: LabRun, vm: Machine, method: str, q: str, n: int, copy: Path,
           taken: dict[str, Any], flushes: list[float], *, boot: bool, blocks: int
           ) -> dict[str, Any]:
    """One copy's row: its classes and states, e2fsck after replay, the guest's writes
    during the operation against before, and (if *boot*) a fresh VM's verification."""
    time.sleep(0.3)                     # the guest's lines for operations before the end
    records = vm.console.records.snapshot()
    ops = classify(records, taken["t_pit"], flushes, until=taken["t_end"])
    checked = check_replayed(copy, lab.workdir, [f"/c/o{op}" for op in ops])
    row: dict[str, Any] = {
        "method": method, "quiesce": q, "n": n,
        "needs_recovery": checked["needs_recovery"], "fs_clean": checked["clean"],
        "wall_s": round(taken["t_end"] - taken["t_start"], 3),
        "guest_downtime_s": round(taken["downtime"], 3),
        "host_bytes_written": int(taken["host_bytes_written"])}
    row.update(tally(ops, checked["files"], blocks, METHOD_CLASSES))
    row["after_leaked"] = row["after_n"] - row["after_missing"]
    row["promises_kept"] = bool(checked["clean"] and all(
        row[f"{c}_n"] == row[f"{c}_intact"] for c in ("synced", "flushed")))
    row["point_in_time"] = bool(row["promises_kept"] and row["after_leaked"] == 0
                                and row["written_n"] == row["written_intact"])
    row.update(guest_writes(records, taken["t_start"], taken["t_end"], blocks))
    row["booted"] = None
    if boot:
        result = verify_image(lab, copy, _manifest(ops, blocks), label=f"verify-{n}", cache="none")
        row["booted"] = bool(result["verify_pass"])
    return row


def guest_writes(records: Sequence[Any], t_start: float, t_end: float, blocks: int
                 ) -> dict[str, float | None]:
    """The guest's synced-write latency (median, p95, ms) and its write rate (KiB/s) from
    host time *t_start* to *t_end*, and the same over the :data:`BEFORE_S` before."""
    def window(lo: float, hi: float) -> tuple[list[float], int]:
        done = [r for r in records if r.name == "op" and r.data.get("op") == "write"
                and lo <= r.mono < hi]
        lat = [float(r.data["us"]) / 1000 for r in done
               if r.data.get("cls") == "synced" and "us" in r.data]
        return lat, len(done)

    def pct(values: list[float], q: int) -> float | None:
        if not values:
            return None
        if len(values) == 1:
            return round(values[0], 2)
        return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 2)

    during, n_during = window(t_start, max(t_end, t_start + 0.5))
    before, n_before = window(t_start - BEFORE_S, t_start)
    kib = blocks * 4
    return {"latency_p50_ms": pct(during, 50), "latency_p95_ms": pct(during, 95),
            "latency_p50_before_ms": pct(before, 50), "latency_p95_before_ms": pct(before, 95),
            "write_kib_s": round(n_during * kib / max(t_end - t_start, 0.5), 1),
            "write_kib_s_before": round(n_before * kib / BEFORE_S, 1)}


def _manifest(ops: dict[int, tuple[str, float]], blocks: int) -> Manifest:
    """What a fresh VM checks on the copy: each synced or flushed operation's file with
    its content's sha256, each operation begun after the point in time absent, the rest
    (only written, in flight) reported, not judged."""
    m = Manifest()
    for op, (cls, _age) in ops.items():
        path = f"/c/o{op}"
        if cls in ("synced", "flushed"):
            content = b"".join(block_content(op, k) for k in range(blocks))
            m.add_file(path, hashlib.sha256(content).hexdigest())
        elif cls == "after":
            m.gone.add(path)
        else:
            m.mark_unknown(path)
    return m

