"""The seed's lab note, reproduced: each of its claims beside what kvmlab measured.

The seed (an engineer's notes on ``drive_mirror``, E1–E7 and three conclusions) makes
claims such as "``block_job_complete`` switches the VM to the mirror, paused or not" or
"``info block`` still points to the original image".  A :class:`Claim` names the seed's
words, the suite cases whose runs test it (:data:`kvmlab.lab.suites.SEED_SUITE`) and a judge
that reads those runs' verdicts and says, in one sentence with numbers, what happened and
whether that agrees.  :func:`judge_all` does it for each QEMU build; :func:`sections`
turns the result into the sections :mod:`kvmlab.report.document` renders.

An agreement is three-valued: ``True`` (agrees), ``False`` (disagrees) and ``None``
(not shown: the run failed or, for a claim that something is *not guaranteed*, every
trial happened to come out well, which a handful of trials cannot disprove).  A claim
about what a QEMU build *displays* has a fourth outcome, **not reproduced**: the seed's
build is unknown, so a display that differs on ours says nothing against the seed.

Besides the seed's claims, :data:`CLAIMS` holds kvmlab's own questions (``own=True``: is
pausing alone enough? a guest sync first? fsfreeze? is a mirror as good a snapshot as the
other methods?), judged on the same data but never
presented as the seed's words: the note puts them in a section of their own, and their
outcome reads "holds" or "does not hold".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kvmlab.analysis.series import strip_paths
from kvmlab.counts import k_of_n
from kvmlab.experiments.consistency import SEED_CACHES
from kvmlab.experiments.snapshot_methods import METHODS
from kvmlab.experiments.snapshot_methods import recommendation as method_recommendation
from kvmlab.experiments.snapshot_methods import summary as method_summary
from kvmlab.store.sweepdir import read_points
from kvmlab.units import MIB


@dataclass(frozen=True)
class CaseRun:
    """One recorded run of a suite case on one build: its folder and ``run.json``."""

    case: str
    build: str
    path: Path
    meta: dict[str, Any]

    @property
    def verdict(self) -> dict[str, Any]:
        return dict(self.meta.get("verdict") or {})

    @property
    def passed(self) -> bool:
        return bool(self.verdict.get("pass"))

    @property
    def failed(self) -> str | None:
        """Why the run ended without a verdict (its error), or None."""
        if self.meta.get("status") == "done" and self.verdict:
            return None
        return str(self.meta.get("error") or self.meta.get("status") or "no verdict")

    def trials(self) -> pd.DataFrame:
        """The consistency study's trials table (empty for other experiments)."""
        return self.table("trials.csv")

    def table(self, name: str) -> pd.DataFrame:
        """A CSV table the run wrote (``trials.csv``, ``copies.csv``), or an empty one."""
        f = self.path / name
        return pd.read_csv(f) if f.is_file() else pd.DataFrame()


@dataclass(frozen=True)
class Finding:
    """What kvmlab measured for one claim on one build, and whether it agrees."""

    text: str
    agrees: bool | None
    #: False: the seed's observation of its own (unknown) build's display did not recur on
    #: this build; that is no disagreement (``agrees`` is then None)
    reproduced: bool = True

    @property
    def word(self) -> str:
        """agrees / disagrees / not shown / not reproduced."""
        if not self.reproduced:
            return "not reproduced"
        return {True: "agrees", False: "disagrees", None: "not shown"}[self.agrees]


Judge = Callable[[Mapping[str, CaseRun]], Finding]


@dataclass(frozen=True)
class Claim:
    """One of the seed's claims, the suite cases that test it and how to judge them."""

    key: str
    claim: str
    seed: str                 # what the seed did and saw, in its words
    cases: tuple[str, ...]
    judge: Judge
    #: kvmlab's own question, not the seed's words: reported in a section of its own
    own: bool = False


def _name(path: Any) -> str:
    return Path(str(path)).name if path else "?"


def _mib(n: Any) -> str:
    return f"{float(n) / MIB:.1f} MiB" if n is not None else "?"


def _num(x: Any, fmt: str = ".2f") -> str:
    """*x* formatted, or ``?`` when the run did not record it."""
    return format(float(x), fmt) if isinstance(x, (int, float)) else "?"


def _copy_checked(v: Mapping[str, Any]) -> str:
    return (f"the copy held {v.get('checked', '?')} checked guest operations, "
            f"{v.get('bad', '?')} missing or wrong")


def _failed(run: CaseRun) -> str:
    v = run.verdict
    why = v.get("reason") or v.get("job_error") or run.meta.get("error")
    return f"{run.case} did not pass" + (f" ({why})" if why else "")


def _e1(r: Mapping[str, CaseRun]) -> Finding:
    run = r["E1"]
    v = run.verdict
    if not v.get("ready"):
        return Finding(_failed(run), False)
    return Finding(f"{v.get('ops_during_mirror', '?')} guest operations during the mirror, "
                   f"ready after {_num(v.get('time_to_ready_s'))} s; {_copy_checked(v)}",
                   run.passed)


def _e2(r: Mapping[str, CaseRun]) -> Finding:
    parts, ok = [], True
    for case in ("E2 stop", "E2 freeze"):
        v = r[case].verdict
        # the seed: 'info block-jobs' showed the job no longer progressing
        ok = ok and r[case].passed and v.get("behaviour") in ("stalled", "paused")
        how = {"stop": "stopped", "freeze": "frozen"}.get(str(v.get("outage")), "down")
        parts.append(f"server {how} for "
                     f"{_num(v.get('outage_window_s'), '.1f')} s: the job "
                     f"{v.get('behaviour', '?')} (no progress for "
                     f"{_num(v.get('outage_stall_s'), '.1f')} s), progressed again "
                     f"{_num(v.get('outage_first_progress_after_s'))} s after the server came "
                     f"back; the guest made {v.get('ops_during_outage', '?')} operations "
                     f"meanwhile; {_copy_checked(v)}")
    return Finding(E2_SETUP + "; ".join(parts), ok)


#: how the seed's NFS outage and kvmlab's differ, said before what was measured
E2_SETUP = ("The seed's QEMU wrote to a file on a kernel NFS mount and the seed ran 'service "
            "nfs stop'/'start', then saw the job progress again \"after a while\"; this host's "
            "kernel has no NFS client, so here QEMU wrote through its own libnfs client "
            "(nfs://127.0.0.1/...) to nfs-ganesha on loopback, which was stopped (SIGTERM, "
            "restarted) or frozen (SIGSTOP, SIGCONT). Measured: ")


def _e3(r: Mapping[str, CaseRun]) -> Finding:
    v = r["E3"].verdict
    return Finding(f"commit with the VM {v.get('vm_state_during_commit', '?')}: the base grew "
                   f"by {_mib(v.get('base_allocated_growth'))} of the guest's "
                   f"{_mib(v.get('guest_bytes_written'))}; {_copy_checked(v)}",
                   r["E3"].passed)


def _pivot_text(v: Mapping[str, Any]) -> str:
    how = "paused" if v.get("paused") else "running"
    return (f"{how}: the drive then used {_name(v.get('drive_file_after'))}, which grew "
            f"{_mib(v.get('target_allocated_growth'))} under a {_mib(v.get('post_pivot_dd_bytes'))} "
            f"dd while the original stayed "
            f"{'unchanged' if v.get('source_unchanged_after_pivot') else 'changing'}")


def _e4(r: Mapping[str, CaseRun]) -> Finding:
    runs = [r["E4 paused"], r["E4 running"]]
    return Finding("; ".join(_pivot_text(x.verdict) for x in runs), all(x.passed for x in runs))


def info_block_line(verdict: Mapping[str, Any]) -> str:
    """``info block``'s first line after the pivot, folders and node names stripped."""
    text = str(verdict.get("info_block") or "").splitlines()
    return strip_paths(text[0]) if text else "(nothing)"


def _switched(v: Mapping[str, Any]) -> bool:
    """Did the pivot really move the VM's writes to the mirror (the original unchanged,
    the mirror growing under the guest's dd)?"""
    return bool(v.get("source_unchanged_after_pivot")) and \
        float(v.get("target_allocated_growth") or 0) > 0


def _e4_info(r: Mapping[str, CaseRun]) -> Finding:
    """The seed saw ``info block`` name the original image *although the VM had actually
    switched*: a display of its own build (unknown to us).  Disagrees only if the VM did
    not switch (then the display told the truth); a build that names the mirror has not
    reproduced the seed's display."""
    runs = [r["E4 paused"], r["E4 running"]]
    text = "; ".join(f"{'paused' if x.verdict.get('paused') else 'running'}: "
                     f"'info block' names {info_block_line(x.verdict)!r}" for x in runs)
    if not all(_switched(x.verdict) for x in runs):
        return Finding(text + " (the writes did not move to the mirror: the display was "
                       "right, not a quirk)", False)
    if all(bool(x.verdict.get("info_block_shows_original")) for x in runs):
        return Finding(text + ", although the writes went to the mirror, as the seed saw",
                       True)
    return Finding(text + "; the writes went to the mirror, and this build's display says "
                   "so. The seed's QEMU build is unknown; the seed itself says the VM had "
                   "actually switched, so its 'info block' was a display of that build",
                   None, reproduced=False)


def _e5(r: Mapping[str, CaseRun]) -> Finding:
    v = r["E5"].verdict
    return Finding(f"both completes switched the drive (now {_name(v.get('drive_file_after'))}); "
                   f"after the second only it grew ({_mib(v.get('third_allocated_growth'))}), "
                   f"the first and second images "
                   f"{'unchanged' if v.get('second_unchanged_since_pivot2') else 'changed'}; "
                   f"{_copy_checked(v)}", r["E5"].passed)


def _e6(r: Mapping[str, CaseRun]) -> Finding:
    v = r["E6"].verdict
    moved = Path(str(v.get("moved_to"))).parent if v.get("moved_to") else "?"
    other = v.get("moved_to_other_file_system")
    where = "?" if other is None else "another file system" if other else "the same file system"
    return Finding(f"the old image moved to {moved} ({where}); "
                   f"the VM stayed {v.get('vm_state_after', '?')} with "
                   f"{v.get('io_error_events', '?')} I/O errors and "
                   f"{v.get('writes_after_remove', '?')} writes after; {_copy_checked(v)}",
                   r["E6"].passed)


def _e7_data(r: Mapping[str, CaseRun]) -> Finding:
    """Least data: the ``-n`` mirror against the full one in every repetition; the
    ``sync=top`` control without ``-n`` says where the saving comes from."""
    v = r["E7"].verdict
    text = (f"over {v.get('repeats', 1)} repetitions (medians), -n onto the overlay copied "
            f"{_mib(v.get('shallow_bytes_copied'))}, a full mirror "
            f"{_mib(v.get('full_bytes_copied'))} "
            f"({_num(v.get('bytes_ratio_full_over_shallow'), '.1f')}x as much)")
    top = v.get("bytes_ratio_top_over_shallow")
    if isinstance(top, (int, float)):
        text += (f"; sync=top onto a new overlay, without -n, copied "
                 f"{_mib(v.get('top_bytes_copied'))} ({top:.2f}x the -n copy)")
        if 0.8 <= top <= 1.25:
            text += ": the saving comes from copying only the top layer, not from -n"
    return Finding(text, bool(v.get("seed_claim_least_data")) and r["E7"].passed)


def _e7_time(r: Mapping[str, CaseRun]) -> Finding:
    """Fastest: the full mirror's time to ready over the ``-n`` one's, per repetition;
    agrees if -n was faster in every one, disagrees if in none, not shown if mixed."""
    v = r["E7"].verdict
    reps = int(v.get("repeats") or 1)
    faster = v.get("shallow_faster_than_full")
    if faster is None:              # a run from before the repetitions
        faster = int(bool(v.get("seed_claim_fastest")))
    text = (f"-n was ready in {_num(v.get('shallow_time_to_ready_s'), '.3f')} s against "
            f"{_num(v.get('full_time_to_ready_s'), '.3f')} s for a full mirror (medians); the "
            f"full mirror took {_num(v.get('time_ratio_full_over_shallow'), '.1f')}x as long "
            f"(from {_num(v.get('time_ratio_full_over_shallow_min'), '.1f')}x to "
            f"{_num(v.get('time_ratio_full_over_shallow_max'), '.1f')}x); -n was faster in "
            f"{faster} of {reps} repetitions; sync=top without -n: "
            f"{_num(v.get('top_time_to_ready_s'), '.3f')} s")
    return Finding(text, True if faster == reps else False if faster == 0 else None)


CONSISTENCY = tuple(f"C2/3 {c}" for c in SEED_CACHES)


def consistency_trials(r: Mapping[str, CaseRun]) -> pd.DataFrame:
    """The copies of one build's consistency runs, in one table."""
    frames = [r[c].trials() for c in CONSISTENCY if c in r]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _ops(g: pd.DataFrame, classes: Sequence[str]) -> dict[str, int]:
    """Operations of *classes* over the copies *g*: how many, and how many in each state."""
    return {k: int(sum(g[f"{c}_{k}"].sum() for c in classes))
            for k in ("n", "intact", "torn", "empty", "missing")}


def _kept(g: pd.DataFrame) -> str:
    """What copies *g* held of the operations that were synced (or flushed) before the cut.
    Each copy checks every operation before its cut, so the counts are checks."""
    o = _ops(g, ("synced", "flushed"))
    return f"{o['intact']} of {o['n']} checks of synced or flushed operations intact"


def _written(g: pd.DataFrame) -> str:
    """What copies *g* held of the operations only written (in the guest's page cache)."""
    o = _ops(g, ("written",))
    if not o["n"]:
        return "no operation was only written at a cut"
    return (f"of {o['n']} checks of operations only written (not synced), {o['intact']} intact, "
            f"{o['empty']} empty, {o['missing']} missing, {o['torn']} torn")


def _copies(g: pd.DataFrame, column: str) -> str:
    return k_of_n(int(g[column].astype(bool).sum()), len(g))


def conclusion_1(r: Mapping[str, CaseRun]) -> Finding:
    """A mirror cut from a running VM is a usable snapshot: E1's copy boots in a fresh VM
    and holds every operation, and the consistency copies are clean once their journal is
    replayed and hold every synced operation.  Disagrees if any copy fails either."""
    e1 = r["E1"].verdict
    trials = consistency_trials(r)
    if trials.empty:
        return Finding("no consistency copy was checked", None)
    booted = bool(e1.get("verify_pass", r["E1"].passed))
    kept = bool(trials.promises_kept.astype(bool).all())
    text = (f"E1's copy {'booted' if booted else 'did not verify'} in a fresh VM: "
            f"{_copy_checked(e1)}; {_copies(trials, 'promises_kept')} copies cut from the "
            f"running VM were clean once their journal was replayed and held every synced "
            f"operation; a data disk beside the system disk is not covered yet (the lab VM "
            f"has one disk)")
    return Finding(text, booted and kept)


def conclusion_2(trials: pd.DataFrame) -> Finding:
    """Cache none: whatever the guest synced reaches the copy (disagrees if any synced or
    flushed operation is not intact); changes in its page cache are not guaranteed (shown
    only if some operation that was only written did not reach a copy)."""
    if trials.empty:
        return Finding("no copy was checked", None)
    none = trials[trials.cache == "none"]
    if none.empty:
        return Finding("no copy was cut with cache=none", None)
    parts = [f"cache=none, {len(none)} copies: {_kept(none)}; {_written(none)}"]
    for cache, g in trials[trials.cache != "none"].groupby("cache", sort=False):
        parts.append(f"cache={cache}, {len(g)} copies: {_kept(g)}; {_written(g)}")
    synced, written = _ops(none, ("synced", "flushed")), _ops(none, ("written",))
    if synced["intact"] < synced["n"]:
        return Finding("; ".join(parts), False)
    if written["intact"] == written["n"]:
        return Finding("; ".join(parts) + f" (every unsynced write reached the copy: that "
                       f"they may not is not shown in {len(none)} trials)", None)
    return Finding("; ".join(parts), True)


def conclusion_3(trials: pd.DataFrame) -> Finding:
    """Without pausing, nothing guarantees a 100 % consistent copy: shown when a copy cut
    from the running guest was not point-in-time (an operation the guest had finished
    missing, empty or torn, or a file system unclean after replay); never disproved by
    trials, so otherwise "not shown in n trials"."""
    live = trials[trials.cut == "nothing"] if not trials.empty else trials
    if live.empty:
        return Finding("no copy was cut from the running guest", None)
    n_bad = int((~live.point_in_time.astype(bool)).sum())
    text = (f"of {len(live)} copies cut from the running guest, {n_bad} lacked operations "
            f"the guest had finished ({_written(live)}; {_kept(live)})")
    if not n_bad:
        return Finding(text + f"; every one was point-in-time: no guarantee is not shown in "
                       f"{len(live)} trials", None)
    return Finding(text, True)


def _own(trials: pd.DataFrame, cut: str, what: str, ok: pd.Series | None = None) -> Finding:
    g = trials[trials.cut == cut] if not trials.empty else trials
    if g.empty:
        return Finding(f"no copy was cut with {cut}", None)
    good = (ok if ok is not None else g.point_in_time).loc[g.index].astype(bool)
    return Finding(f"{k_of_n(int(good.sum()), len(g))} copies cut with {cut} {what} "
                   f"({_kept(g)}; {_written(g)}; {_copies(g, 'needs_recovery')} needed a "
                   "journal replay)", bool(good.all()))


def pause_alone(trials: pd.DataFrame) -> Finding:
    """kvmlab's question: does pausing the guest (``stop``) alone give a copy that holds
    every operation the guest had finished?  Stopping the vCPUs leaves the page cache."""
    return _own(trials, "stop", "held every operation the guest had finished")


def sync_then_pause(trials: pd.DataFrame) -> Finding:
    """kvmlab's question: a guest ``sync`` then ``stop``: does the copy hold every
    operation finished before the sync?"""
    return _own(trials, "sync_stop", "held every operation finished before the sync",
                trials.promises_kept if not trials.empty else None)


def freeze_quiesces(trials: pd.DataFrame) -> Finding:
    """kvmlab's question: guest-agent fsfreeze: is the copy quiesced (no journal to
    replay) and does it hold every operation finished before the freeze?"""
    ok = None if trials.empty else \
        trials.point_in_time.astype(bool) & ~trials.needs_recovery.astype(bool)
    return _own(trials, "fsfreeze", "were quiesced and held every operation finished "
                "before the freeze", ok)


METHOD_CASES = tuple(f"S {m}" for m in METHODS)


def method_copies(r: Mapping[str, CaseRun]) -> pd.DataFrame:
    """The copies of one build's snapshot-method runs, in one table."""
    frames = [r[c].table("copies.csv") for c in METHOD_CASES if c in r]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def mirror_as_good(copies: pd.DataFrame) -> Finding:
    """kvmlab's question: is a mirror cut as consistent a snapshot as ``blockdev-backup``
    or an external snapshot, with each quiesce?  Holds when, under every quiesce, the
    mirror's copies were point-in-time (and kept the guest's promises) as often as the
    best other method's; the text adds what each cost and what the numbers recommend."""
    if copies.empty or copies["method"].nunique() < 2 or "mirror" not in set(copies.method):
        return Finding("the mirror and at least one other method must have run", None)
    table = method_summary(copies)
    parts, worse = [], []
    for q in dict.fromkeys(table["quiesce"]):
        rows: list[dict[str, Any]] = table[table["quiesce"] == q].to_dict(orient="records")
        parts.append(f"{q}: " + ", ".join(
            f"{r['method']} {r['point_in_time']} of {r['copies']} point-in-time, "
            f"{float(r['guest_downtime_s']) * 1000:.0f} ms downtime, p95 write latency "
            f"{_num(r['latency_p95_ms'], '.1f')} ms (before "
            f"{_num(r['latency_p95_before_ms'], '.1f')}), "
            f"{float(r['host_mib_written']):.1f} MiB on the host" for r in rows))
        share = {r["method"]: r["point_in_time"] / r["copies"] for r in rows}
        others = [v for m, v in share.items() if m != "mirror"]
        if "mirror" in share and others and share["mirror"] < max(others):
            worse.append(str(q))
    text = "; ".join(parts)
    if worse:
        text += f"; the mirror did worse with quiesce {', '.join(worse)}"
    return Finding(text + ". What the numbers recommend: " + method_recommendation(table),
                   not worse)


CLAIMS: tuple[Claim, ...] = (
    Claim("E1", "the mirror holds every change the guest made during it",
          "drive_mirror -f on a running VM while the guest touches files, makes and removes "
          "folders and writes with dd; cancel when the mirror is as big as the source; boot "
          "the mirror: every change is there.", ("E1",), _e1),
    Claim("E2", "a mirror survives an NFS outage and resumes, losing nothing",
          "mirror into an NFS mount; 'service nfs stop' mid-mirror: 'info block-jobs' shows "
          "no progress while the guest keeps working; 'service nfs start': after a while the "
          "job progresses again; cancel when synced, boot the copy: nothing lost.",
          ("E2 stop", "E2 freeze"), _e2),
    Claim("E3", "commit works while the VM is stopped; the data lands in the base",
          "'stop', 'commit' the qcow2 overlay into its backing file, sizes and 'qemu-img "
          "info' before and after: the guest's data is in the base.", ("E3",), _e3),
    Claim("E4", "block_job_complete switches the VM to the mirror, paused or not",
          "mirror, 'stop', 'block_job_complete' when synced, 'c'; a 512 MB dd grows the "
          "mirror image, not the original; again without pausing: the same.",
          ("E4 paused", "E4 running"), _e4),
    Claim("E4b", "after complete, 'info block' still names the original image",
          "the notes say 'info block' \"still points to the original image\" after the "
          "switch, although the writes go to the mirror.", ("E4 paused", "E4 running"),
          _e4_info),
    Claim("E5", "completes can be chained; only the last image grows",
          "from E4's state mirror again to a second file and complete; dd 512 MB; reboot: "
          "only the second mirror grows.", ("E5",), _e5),
    Claim("E6", "after complete the old image can be moved away",
          "after complete, 'mv' the old image to another file system: the VM carries on.",
          ("E6",), _e6),
    Claim("E7", "-n onto an overlay of the same base copies the least data",
          "two overlays on one base image, the VM's disk and the future mirror; "
          "'drive_mirror -n' onto the existing overlay: the least data is copied.",
          ("E7",), _e7_data),
    Claim("E7b", "-n onto an overlay of the same base is the fastest",
          "the same mirror \"is created fastest\".", ("E7",), _e7_time),
    Claim("C1", "a mirror works as a snapshot method",
          "conclusion 1: mirror works as a snapshot method, with different options for "
          "system and data disks.", ("E1", *CONSISTENCY), conclusion_1),
    Claim("C2", "with cache=none, whatever the guest wrote to disk reaches the image",
          "conclusion 2: with the drive's cache mode none, whatever the guest wrote to disk "
          "reaches the image, but changes still in the guest's page cache are not "
          "guaranteed.", CONSISTENCY, lambda r: conclusion_2(consistency_trials(r))),
    Claim("C3", "without pausing the guest, nothing guarantees a consistent copy",
          "conclusion 3: without pausing the guest, nothing guarantees a 100 % consistent "
          "copy.", CONSISTENCY, lambda r: conclusion_3(consistency_trials(r))),
    Claim("Q1", "pausing the guest alone gives a copy holding every finished operation",
          "the seed says only that without pausing "
          "nothing guarantees a consistent copy; is pausing (HMP 'stop') enough?",
          CONSISTENCY, lambda r: pause_alone(consistency_trials(r)), own=True),
    Claim("Q2", "a guest sync, then a pause, gives a copy holding everything synced",
          "the guest agent runs 'sync' in the guest, "
          "then 'stop': does the copy hold every operation finished before the sync?",
          CONSISTENCY, lambda r: sync_then_pause(consistency_trials(r)), own=True),
    Claim("Q3", "guest-agent fsfreeze gives a quiesced, complete copy",
          "'guest-fsfreeze-freeze' around the cut: is "
          "the copy's journal empty and does it hold every finished operation?",
          CONSISTENCY, lambda r: freeze_quiesces(consistency_trials(r)), own=True),
    Claim("Q4", "a mirror cut is as consistent a snapshot as backup or an external snapshot",
          "the seed asked whether a mirror can serve as a snapshot; today's QEMU also has "
          "blockdev-backup (copy-before-write) and external snapshots (blockdev-snapshot-sync, "
          "then block-commit). The same guest and workload, each method with each quiesce "
          "(none, stop, fsfreeze): which copies are point-in-time, and what does each cost "
          "the guest and the host?", METHOD_CASES,
          lambda r: mirror_as_good(method_copies(r)), own=True),
)


# -- reading a seed folder ----------------------------------------------------------------
def read_runs(folder: str | Path) -> dict[str, dict[str, CaseRun]]:
    """build -> case -> run, from a ``kvmlab seed`` folder (one sweep point per case and
    build; ``point.json`` names them).  Points that recorded no run are left out."""
    out: dict[str, dict[str, CaseRun]] = {}
    for p in read_points(folder):
        case, build = str(p.params.get("experiments")), str(p.params.get("qemu", "system"))
        for run in p.runs():
            meta = json.loads((run / "run.json").read_text())
            out.setdefault(build, {})[case] = CaseRun(case, build, run, meta)
    return out


def asked_cases(folder: str | Path) -> set[str]:
    """The suite cases a ``kvmlab seed`` folder was asked to run (``--only``), run or not."""
    return {str(p.params.get("experiments")) for p in read_points(folder)}


def claims_for(cases: Iterable[str]) -> list[Claim]:
    """The claims that some of *cases* test (all of them for the whole suite)."""
    asked = set(cases)
    return [c for c in CLAIMS if asked & set(c.cases)]


@dataclass
class Judgement:
    """A claim judged on every build: a finding per build (None: its runs are missing)."""

    claim: Claim
    findings: dict[str, Finding] = field(default_factory=dict)

    @property
    def outcome(self) -> str:
        """agrees / disagrees / differs between builds / agrees where shown / not shown /
        not reproduced."""
        got = {f.word for f in self.findings.values()}
        if len(got) == 1:
            return got.pop()
        if "agrees" in got and "disagrees" in got:
            return "differs between builds"
        if "disagrees" in got:
            return "disagrees where shown"
        if "agrees" in got:
            return "agrees where shown"
        return "not reproduced" if "not reproduced" in got else "not shown"


def judge_all(runs: Mapping[str, Mapping[str, CaseRun]], builds: Sequence[str],
              claims: Iterable[Claim] = CLAIMS) -> list[Judgement]:
    """Each claim on each build; a claim whose runs are missing on a build is "not
    measured" there (its point failed: the sweep's point.json says why)."""
    out = []
    for claim in claims:
        j = Judgement(claim)
        for build in builds:
            have = runs.get(build, {})
            broken = [(c, have[c].failed) for c in claim.cases if c in have and have[c].failed]
            if broken:
                c, why = broken[0]
                j.findings[build] = Finding(f"not measured: {c} failed ({why})", None)
                continue
            try:
                j.findings[build] = claim.judge(have)
            except KeyError as err:
                j.findings[build] = Finding(f"not measured: no run of {err.args[0]}", None)
            except (TypeError, ValueError) as err:
                j.findings[build] = Finding(f"not measured: {err}", None)
        out.append(j)
    return out


def tally(judgements: Sequence[Judgement], build: str) -> dict[str, int]:
    """How many claims agree, disagree, are not shown or not reproduced on *build*."""
    got = [j.findings[build].word for j in judgements if build in j.findings]
    return {"agree": got.count("agrees"), "disagree": got.count("disagrees"),
            "not shown": got.count("not shown"), "not reproduced": got.count("not reproduced")}
