"""The seed's conclusions 2 and 3, measured: what does a copy cut from a live VM hold?

The seed concludes that with ``cache=none`` whatever the guest wrote to disk reaches the
mirror, that changes still in the guest's page cache are not covered, and that without
pausing the guest nothing guarantees a 100 % consistent copy.  Here the guest's operations
come in known states, and each copy is checked for every one of them.

One VM per cache mode runs the ``consistency`` workload: operation N writes ``/c/oN``
(blocks whose content names the operation and the block), odd ones synced with the file's
fsync, even ones only written.  The VM is mirrored to a raw image again and again; each
copy is cut (``block_job_cancel`` after ready, a random moment later) with one of four
**cuts**, interleaved in a random order:

- ``nothing``: cancel while the guest writes;
- ``stop``: HMP ``stop`` (the vCPUs pause), cancel, ``c``;
- ``sync_stop``: the guest agent runs ``sync`` in the guest, then ``stop``, cancel, ``c``;
- ``fsfreeze``: ``guest-fsfreeze-freeze``, cancel, ``guest-fsfreeze-thaw``.

Each operation confirmed before the cut has a **class**: ``synced`` (its fsync returned),
``flushed`` (only written, but a guest-wide sync or freeze began after it), ``written``
(only written, nothing flushed it since: its data may still be in the guest's page cache)
or ``in_flight`` (begun, not confirmed).  Each copy is checked on the host, without a
mount: the journal's state as cut, then on a scratch copy the journal replayed and
``e2fsck -fn``, then each operation's file read back as ``intact``, ``torn``, ``empty``
or ``missing`` (:func:`kvmlab.guest.workload.file_state`).

The verdict passes when every synced and flushed operation is intact in every copy, every
copy's file system is clean once its journal is replayed, and every fsfreeze copy needed no
replay: what QEMU and the guest promise.  What happens to the ``written`` class is the
finding, not a condition.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import pandas as pd

from kvmlab import marks
from kvmlab.counts import wilson
from kvmlab.errors import BadInput, WaitTimeout
from kvmlab.experiments.common import ExperimentResult, LabRun, busy_vm, distinct_choices
from kvmlab.experiments.options import DEFAULT_OPTIONS, RunOptions
from kvmlab.guest.workload import Workload, file_state
from kvmlab.model import CACHE_MODES
from kvmlab.qemu.images import check_replayed, make_guest_disk
from kvmlab.vm.agent import GuestAgent
from kvmlab.vm.machine import Machine

#: why this experiment cannot run on the libvirt backend
AGENT_LIBVIRT = (
    "it needs the guest agent's virtio-serial channel, which the libvirt lab domain "
    "does not define")

CUTS = ("nothing", "stop", "sync_stop", "fsfreeze")
#: the state of an operation at the cut (see the module's docstring)
CLASSES = ("synced", "flushed", "written", "in_flight")
#: the cache modes the seed suite measures (one run each)
SEED_CACHES = ("none", "writeback", "directsync")
#: what a copy holds of an operation's file
STATES = ("intact", "torn", "empty", "missing")


def consistency_study(*, cuts: Sequence[str] = CUTS,
                      cache_modes: Sequence[str] = SEED_CACHES,
                      trials: int = 10, image_mib: int = 32, blocks: int = 4,
                      workload_rate_kib_s: float = 80,
                      cut_after_s: tuple[float, float] = (0.2, 1.0),
                      seed: int = 1, options: RunOptions = DEFAULT_OPTIONS) -> ExperimentResult:
    """Cut *trials* copies per cut and cache mode; the verdict holds the counts per class.

    :param blocks: 4 KiB blocks per guest file.
    :param workload_rate_kib_s: the guest's write rate (one file per ``blocks`` x 4 KiB).
    :param cut_after_s: each cut comes a random time in this range after ready (from
        *seed*), so cuts fall at different points of the guest's work.
    """
    params = dict(locals())
    cuts = distinct_choices(cuts, CUTS, "cut")
    cache_modes = distinct_choices(cache_modes, CACHE_MODES, "cache mode")
    if isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= 100:
        raise BadInput(f"trials={trials!r} must be an integer from 1 to 100")
    lo, hi = cut_after_s
    if not 0 <= lo <= hi:
        raise BadInput(f"cut_after_s={cut_after_s!r} must be (low, high) with 0 <= low <= high")
    workload = Workload(style="consistency", blocks=blocks, rate_kib_s=workload_rate_kib_s)
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    with LabRun("consistency", params, options, unsupported={"libvirt": AGENT_LIBVIRT}) as lab:
        for cache in cache_modes:
            order = [c for _ in range(trials) for c in rng.sample(cuts, len(cuts))]
            rows += _one_vm(lab, cache, workload, image_mib, order,
                            [rng.uniform(lo, hi) for _ in order], start=len(rows))
        frame = pd.DataFrame(rows)
        frame.drop(columns=["fsck_problems"]).to_csv(lab.run.path / "trials.csv", index=False)
        table = rates(frame)
        table.to_csv(lab.run.path / "rates.csv", index=False)
        counts(frame).to_csv(lab.run.path / "counts.csv", index=False)
        lab.verdict = verdict(frame)
        lab.verdict["rates"] = table.to_dict(orient="records")
    return lab.result()


def verdict(trials: pd.DataFrame) -> dict[str, Any]:
    """What QEMU and the guest promise, checked on every copy (see the module docstring)."""
    kept = all(int(trials[f"{c}_n"].sum()) == int(trials[f"{c}_intact"].sum())
               for c in ("synced", "flushed"))
    clean = bool(trials["fs_clean"].all())
    frozen = trials[trials["cut"] == "fsfreeze"]
    quiesced = bool((~frozen["needs_recovery"].astype(bool)).all())
    return {"pass": kept and clean and quiesced, "trials": len(trials),
            "synced_and_flushed_intact": kept, "clean_after_replay": clean,
            "fsfreeze_needs_no_replay": quiesced if len(frozen) else None,
            "written_ops": int(trials["written_n"].sum()),
            "written_intact": int(trials["written_intact"].sum())}


def counts(trials: pd.DataFrame) -> pd.DataFrame:
    """Per cut, cache mode and class: how many operations, and how many of each state."""
    rows = []
    for (cut, cache), g in trials.groupby(["cut", "cache"], sort=False):
        for cls in CLASSES:
            rows.append({"cut": cut, "cache": cache, "class": cls, "copies": len(g),
                         "ops": int(g[f"{cls}_n"].sum()),
                         **{s: int(g[f"{cls}_{s}"].sum()) for s in STATES}})
    return pd.DataFrame(rows)


def rates(trials: pd.DataFrame) -> pd.DataFrame:
    """Per cut and cache mode, over its copies: how many needed a journal replay, were clean
    after it, held every synced and flushed operation, and were point-in-time (every
    operation confirmed before the cut intact), each with its 95 % interval."""
    rows = []
    for (cut, cache), g in trials.groupby(["cut", "cache"], sort=False):
        row: dict[str, Any] = {"cut": cut, "cache": cache, "copies": len(g)}
        for name, hits in (("needs_replay", g["needs_recovery"].astype(bool)),
                           ("clean_after_replay", g["fs_clean"].astype(bool)),
                           ("promises_kept", g["promises_kept"].astype(bool)),
                           ("point_in_time", g["point_in_time"].astype(bool))):
            k = int(hits.sum())
            lo, hi = wilson(k, len(g))
            row.update({name: k, f"{name}_rate": k / len(g),
                        f"{name}_low": round(lo, 3), f"{name}_high": round(hi, 3)})
        w = int(g["written_n"].sum())
        row["written_intact_rate"] = int(g["written_intact"].sum()) / w if w else None
        row["mean_guest_downtime_s"] = float(g["guest_downtime_s"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def classify(records: Sequence[Any], t_cut: float, flushes: Sequence[float],
             until: float | None = None) -> dict[int, tuple[str, float]]:
    """Each operation the guest began before host time *t_cut*: op number -> (class, age at
    the cut in s).  *records* are the console's records; *flushes* the host times at which
    a guest-wide sync or freeze began.  With *until*, operations begun from *t_cut* to
    *until* are classed ``after`` (a point-in-time copy must not hold them)."""
    begun: dict[int, float] = {}
    done: dict[int, tuple[str, float]] = {}
    end = t_cut if until is None else until
    for r in records:
        if r.mono >= end or r.data.get("op") != "write" or "n" not in r.data:
            continue
        n = int(r.data["n"])
        if r.name == "begin":
            begun[n] = r.mono
        elif r.name == "op" and r.mono < t_cut:
            done[n] = (str(r.data.get("cls")), r.mono)
    out: dict[int, tuple[str, float]] = {}
    for n, t_begin in begun.items():
        if t_begin >= t_cut:
            out[n] = ("after", t_cut - t_begin)
        elif n not in done:
            out[n] = ("in_flight", t_cut - t_begin)
        else:
            cls, t_done = done[n]
            if cls != "synced":
                cls = "flushed" if any(t_done < f < t_cut for f in flushes) else "written"
            out[n] = (cls, t_cut - t_done)
    return out


def tally(ops: dict[int, tuple[str, float]], files: dict[str, bytes | None], blocks: int,
          classes: Sequence[str] = CLASSES) -> dict[str, Any]:
    """A copy's counts: for each class, how many operations and how many in each state
    (``<class>_n``, ``<class>_<state>``), from *files* (guest path -> content) read back."""
    row: dict[str, Any] = {f"{c}_{k}": 0 for c in classes for k in ("n", *STATES)}
    lost_ages = []
    for op, (cls, age) in ops.items():
        state = file_state(files[f"/c/o{op}"], op, blocks)
        row[f"{cls}_n"] += 1
        row[f"{cls}_{state}"] += 1
        if cls == "written" and state != "intact":
            lost_ages.append(age)
    row["written_lost_oldest_age_s"] = round(max(lost_ages), 3) if lost_ages else None
    return row


def guest_sync(agent: GuestAgent, timeout: float = 30) -> None:
    """Run ``sync`` in the guest through the agent and wait until it returns."""
    pid = agent.execute("guest-exec", {"path": "/bin/sync"})["pid"]
    deadline = time.monotonic() + timeout
    while not agent.execute("guest-exec-status", {"pid": pid}).get("exited"):
        if time.monotonic() > deadline:
            raise WaitTimeout(f"the guest's sync did not return in {timeout:g} s")
        time.sleep(0.01)


def _one_vm(lab: LabRun, cache: str, workload: Workload, image_mib: int, order: list[str],
            waits: list[float], start: int) -> list[dict[str, Any]]:
    """One busy VM with *cache*, cut once per entry of *order*."""
    label = f"vm-{cache}"
    source = lab.workdir / f"disk-{cache}.qcow2"
    make_guest_disk(source, image_mib, "qcow2", 0)
    rows = []
    flushes: list[float] = []
    with busy_vm(lab, source, workload, label=label, cache=cache, agent=True) as vm:
        agent = vm.agent()
        for i, (cut, wait) in enumerate(zip(order, waits, strict=True)):
            n = start + i + 1
            rows.append(_cut(lab, vm, agent, n, i // len(set(order)), cut, cache, wait,
                             workload.blocks, flushes))
    source.unlink(missing_ok=True)
    return rows


def _cut(lab: LabRun, vm: Machine, agent: GuestAgent, n: int, trial: int, cut: str,
         cache: str, wait: float, blocks: int, flushes: list[float]) -> dict[str, Any]:
    """Mirror to ready, wait, cut with *cut*, check the copy against every operation."""
    rec = lab.recorder
    copy = lab.workdir / f"copy-{n}.raw"
    rec.mark(marks.MIRROR_START, job=vm.disk_id, trial=f"c{n}-{cut}-{cache}")
    job = vm.mirror(vm.disk_id, copy, "raw")
    job.wait_ready(120)
    time.sleep(wait)
    t_down = time.monotonic()
    frozen: int | None = None
    if cut == "sync_stop":
        flushes.append(time.monotonic())
        rec.mark(marks.GUEST_SYNC)
        guest_sync(agent)
    if cut in ("stop", "sync_stop"):
        rec.mark(marks.STOP)
        vm.hmp("stop")
    elif cut == "fsfreeze":
        flushes.append(time.monotonic())
        rec.mark(marks.start(marks.FSFREEZE))
        frozen = agent.fsfreeze_freeze()
    t_cut = time.monotonic()
    rec.mark(marks.CANCEL, job=job.id, cut=cut)
    job.cancel()
    outcome = job.wait_done(60)
    if cut in ("stop", "sync_stop"):
        vm.hmp("c")
        rec.mark(marks.CONT)
    elif cut == "fsfreeze":
        agent.fsfreeze_thaw()
        rec.mark(marks.end(marks.FSFREEZE))
    downtime = time.monotonic() - t_down if cut != "nothing" else 0.0
    time.sleep(0.3)                 # the guest's lines for operations done before the cut
    ops = classify(vm.console.records.snapshot(), t_cut, flushes)
    checked = check_replayed(copy, lab.workdir, [f"/c/o{op}" for op in ops])
    copy.unlink(missing_ok=True)
    row: dict[str, Any] = {
        "trial": trial, "n": n, "cut": cut, "cache": cache, "cut_after_ready_s": round(wait, 3),
        "job_end": outcome.event, "needs_recovery": checked["needs_recovery"],
        "fsck_rc": checked["fsck_rc"], "fs_clean": checked["clean"],
        "fsck_problems": checked["problems"], "frozen_filesystems": frozen,
        "guest_downtime_s": round(downtime, 3)}
    row.update(tally(ops, checked["files"], blocks))
    row["promises_kept"] = bool(checked["clean"] and all(
        row[f"{c}_n"] == row[f"{c}_intact"] for c in ("synced", "flushed")))
    row["point_in_time"] = bool(row["promises_kept"]
                                and row["written_n"] == row["written_intact"])
    return row
