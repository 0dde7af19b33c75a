"""The seed's conclusions 2 and 3, tested: how consistent is a copy cut from a live VM?

The seed concludes that with ``cache=none`` everything the guest wrote to
disk reaches the mirror, but that without pausing the guest nothing
guarantees a fully consistent copy.  Each trial here:

1. boots a VM (with the guest agent) whose guest is busy with file operations;
2. mirrors its disk to a raw image and waits for ready;
3. after a random extra moment, cuts the copy with ``block_job_cancel`` using a
   *strategy*: ``nothing`` (cancel while the guest writes), ``pause`` (HMP
   ``stop``, cancel, ``c``) or ``fsfreeze`` (``guest-fsfreeze-freeze``,
   cancel, ``guest-fsfreeze-thaw``);
4. checks the copy twice: ``e2fsck -fn`` (clean or not, journal needing
   recovery or not), then a fresh VM mounts it and checks every operation the
   guest had confirmed (synced) before the cut, and reports what it finds at
   the paths of operations that were in flight.

The table of consistency rates per strategy and cache mode is the result.
The verdict passes when every copy holds every synced operation (conclusion 2)
and every fsfreeze copy is clean and quiesced (the counter-case to conclusion 3).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import pandas as pd

from kvmlab import marks
from kvmlab.errors import BadInput
from kvmlab.experiments.common import ExperimentResult, LabRun, synced_manifest, verify_image
from kvmlab.experiments.options import DEFAULT_OPTIONS, RunOptions
from kvmlab.guest.workload import Workload
from kvmlab.model import CACHE_MODES
from kvmlab.qemu.images import fsck, make_guest_disk

#: why this experiment cannot run on the libvirt backend
AGENT_LIBVIRT = (
    "it needs the guest agent's virtio-serial channel, which the libvirt lab domain "
    "does not define")

STRATEGIES = ("nothing", "pause", "fsfreeze")


def consistency_study(*, strategies: Sequence[str] = STRATEGIES,
                      cache_modes: Sequence[str] = ("none", "writeback"), trials: int = 2,
                      image_mib: int = 64, fill_mib: int = 8, workload_kib: int = 128,
                      workload_rate_kib_s: float = 1024, cut_after_s: tuple[float, float] = (0.2, 1.5),
                      seed: int = 1, options: RunOptions = DEFAULT_OPTIONS) -> ExperimentResult:
    """Run *trials* cuts per strategy and cache mode; the verdict holds the rates table.

    :param cut_after_s: the cut comes a random time in this range after ready
        (from *seed*), so trials fall at different points of the guest's work.
    """
    params = dict(locals())
    strategies, cache_modes = tuple(strategies), tuple(cache_modes)
    for s in strategies:
        if s not in STRATEGIES:
            raise BadInput(f"strategy {s!r} is not one of {', '.join(STRATEGIES)}")
    for c in cache_modes:
        if c not in CACHE_MODES:
            raise BadInput(f"cache mode {c!r} is not one of {', '.join(CACHE_MODES)}")
    if not strategies or not cache_modes:
        raise BadInput("give at least one strategy and one cache mode")
    if not isinstance(trials, int) or not 1 <= trials <= 100:
        raise BadInput(f"trials={trials!r} must be an integer from 1 to 100")
    lo, hi = cut_after_s
    if not 0 <= lo <= hi:
        raise BadInput(f"cut_after_s={cut_after_s!r} must be (low, high) with 0 <= low <= high")
    rng = random.Random(seed)
    workload = Workload(dd_kib=workload_kib, rate_kib_s=workload_rate_kib_s)
    rows: list[dict[str, Any]] = []
    with LabRun("consistency", params, options, unsupported={"libvirt": AGENT_LIBVIRT}) as lab:
        n = 0
        for trial in range(trials):
            for cache in cache_modes:
                for strategy in strategies:
                    n += 1
                    rows.append(_trial(lab, n, trial, strategy, cache, workload, image_mib,
                                       fill_mib, rng.uniform(lo, hi)))
        frame = pd.DataFrame(rows)
        frame.drop(columns=["fsck_problems", "in_flight_states"]).to_csv(
            lab.run.path / "trials.csv", index=False)
        table = rates(frame)
        table.to_csv(lab.run.path / "rates.csv", index=False)
        freeze = frame[frame["strategy"] == "fsfreeze"]
        quiesced = bool((freeze["fs_clean"] & ~freeze["needs_recovery"]).all())
        lab.verdict = {
            "pass": bool(frame["synced_ops_present"].all() and quiesced),
            "trials": len(frame),
            "all_synced_ops_present": bool(frame["synced_ops_present"].all()),
            "fsfreeze_always_clean": bool(freeze["fs_clean"].all()) if len(freeze) else None,
            "fsfreeze_always_quiesced": quiesced if len(freeze) else None,
            "live_copies_needing_recovery": int(frame.loc[frame["strategy"] != "fsfreeze",
                                                          "needs_recovery"].sum()),
            "rates": table.to_dict(orient="records"),
        }
    return lab.result()


def rates(trials: pd.DataFrame) -> pd.DataFrame:
    """Per strategy and cache mode: how many trials, and the share with a clean file
    system (e2fsck finds nothing to fix), quiesced (no journal recovery needed), with every
    synced operation present, with both clean and complete, and needing journal recovery."""
    g = trials.groupby(["strategy", "cache"], sort=False)
    return pd.DataFrame({
        "trials": g.size(),
        "fs_clean_rate": g["fs_clean"].mean(),
        "quiesced_rate": (~trials["needs_recovery"]).groupby(
            [trials["strategy"], trials["cache"]], sort=False).mean(),
        "synced_ops_rate": g["synced_ops_present"].mean(),
        "consistent_rate": g["consistent"].mean(),
        "needs_recovery_rate": g["needs_recovery"].mean(),
        "mean_in_flight": g["in_flight"].mean(),
        "mean_guest_downtime_s": g["guest_downtime_s"].mean(),
    }).reset_index()


def _trial(lab: LabRun, n: int, trial: int, strategy: str, cache: str, workload: Workload,
           image_mib: int, fill_mib: int, extra_s: float) -> dict[str, Any]:
    """One cut: mirror to ready, wait *extra_s*, cut with *strategy*, check the copy."""
    rec = lab.recorder
    label = f"t{n}-{strategy}-{cache}"
    source = lab.workdir / f"disk-{n}.qcow2"
    copy = lab.workdir / f"copy-{n}.raw"
    base = make_guest_disk(source, image_mib, "qcow2", fill_mib)
    frozen: int | None = None
    with lab.machine(source, label, mode="workload", workload=workload, cache=cache,
                     agent=True) as vm:
        lab.note_machine(vm, label)
        agent = vm.agent()
        vm.wait_guest("op", timeout=120)
        rec.mark(marks.MIRROR_START, job=vm.disk_id, trial=label)
        job = vm.mirror(vm.disk_id, copy, "raw")
        job.wait_ready(120)
        time.sleep(extra_s)
        t_down = time.monotonic()
        if strategy == "pause":
            rec.mark(marks.STOP)
            vm.hmp("stop")
        elif strategy == "fsfreeze":
            rec.mark(marks.start(marks.FSFREEZE))
            frozen = agent.fsfreeze_freeze()
        rec.mark(marks.CANCEL, job=job.id, strategy=strategy)
        t_cut = time.monotonic()
        job.cancel()
        outcome = job.wait_done(60)
        if strategy == "pause":
            vm.hmp("c")
            rec.mark(marks.CONT)
        elif strategy == "fsfreeze":
            agent.fsfreeze_thaw()
            rec.mark(marks.end(marks.FSFREEZE))
        downtime = time.monotonic() - t_down if strategy != "nothing" else 0.0
        time.sleep(0.3)                 # the guest's lines for ops finished before the cut
    manifest, in_flight = synced_manifest(vm, base, until=t_cut)
    fs = fsck(copy)
    checked = verify_image(lab, copy, manifest, label=f"verify-{n}", cache="none")
    states = checked["in_flight_found"]
    for path in (source, copy):
        path.unlink(missing_ok=True)
    return {
        "trial": trial, "n": n, "strategy": strategy, "cache": cache,
        "cut_after_ready_s": round(extra_s, 3), "job_end": outcome.event,
        "fs_clean": fs["clean"], "fsck_rc": fs["fsck_rc"], "needs_recovery": fs["needs_recovery"],
        "fsck_problems": fs["problems"],
        "synced_ops": len(manifest), "synced_ops_present": checked["verify_pass"],
        "bad": checked["bad"], "consistent": bool(fs["clean"] and checked["verify_pass"]),
        "in_flight": len(in_flight), "in_flight_states": states,
        "in_flight_present": sum(1 for s in states if s.get("state") in ("file", "dir")),
        "frozen_filesystems": frozen, "guest_downtime_s": round(downtime, 3),
    }
