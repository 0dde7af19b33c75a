"""The convergence predictor (:mod:`kvmlab.live.predictor`) replayed and scored on saved runs,
and the guest's write cost during a job.

:func:`predict` replays the live predictor over a run's samples, :func:`accuracy` and
:func:`score_runs` judge what it said against what each job then did, and
:func:`write_cost` measures the guest's writes (their rate and latency) in a window.
The live predictor's names are reached here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from kvmlab import marks
from kvmlab.analysis.series import event_data, job_samples, time_of
from kvmlab.live.predictor import STATES, Outlook, Predictor, RamPredictor, ram_outlook
from kvmlab.store.runs import load_run, read_migration
from kvmlab.units import MIB

__all__ = ["STATES", "Outlook", "Predictor", "RamPredictor", "predict", "first_verdict",
           "accuracy", "ram_predict", "ram_accuracy", "score_runs", "accuracy_summary",
           "write_cost"]


def predict(samples: pd.DataFrame, job: str | None = None, events: pd.DataFrame | None = None,
            **kw: Any) -> pd.DataFrame:
    """The predictor replayed over a run's samples: one row per sample with t, state,
    remaining, copy_rate, dirty_rate, net_rate, eta_s, since (what was known live).
    With the run's *events*, it is reset wherever the job's conditions were changed (a
    ``set_speed`` or ``copy_mode`` mark), as :meth:`kvmlab.live.jobs.Job.wait_ready` does
    live."""
    s = job_samples(samples, job)
    p = Predictor(**kw)
    job_id = str(s["job"].iloc[0]) if len(s) else job
    switches = condition_changes(events, job_id)
    modes = copy_modes(events, job_id)
    active = False
    rows = []
    cols = ("t", "offset", "len", "ready", "paused", "status", "speed")
    frame = s.assign(speed=s["speed"] if "speed" in s else 0)
    for t, off, ln, ready, paused, status, speed in frame[list(cols)].itertuples(index=False):
        if pd.isna(off) or pd.isna(ln):
            continue
        if switches and float(t) >= switches[0]:
            switches.pop(0)
            p.reset()
        while modes and float(t) >= modes[0][0]:
            active = modes.pop(0)[1] == "write-blocking"
        rows.append(p.add(float(t), int(off), int(ln), ready=bool(ready is True),
                          paused=bool(paused is True), status=str(status),
                          speed=0 if pd.isna(speed) else int(speed), active=active).as_dict())
    return pd.DataFrame(rows, columns=[*Outlook.__dataclass_fields__, "net_rate"])


def condition_changes(events: pd.DataFrame | None, job: str | None, *,
                      guest: bool = False) -> list[float]:
    """When the user changed *job*'s conditions (its speed, its copy mode), in order; with
    *guest*, also when the guest changed its write rate."""
    if events is None or not len(events):
        return []
    names = [*marks.CONDITION_CHANGES, *([marks.GUEST_RATE_CHANGE] if guest else [])]
    ev = events[events["name"].isin(names)]
    if job is not None and "job" in ev:
        ev = ev[ev["job"].isna() | (ev["job"] == job)]
    return sorted(ev["t"].astype(float))


def copy_modes(events: pd.DataFrame | None, job: str | None) -> list[tuple[float, str]]:
    """When *job* began to copy in each mode: its start's mode (``mirror_start``, which
    says it) and every live switch (``copy_mode``), in order; a start that does not say
    is ``background``, QEMU's default."""
    if events is None or not len(events):
        return []
    ev = events[events["name"].isin([marks.MIRROR_START, marks.COPY_MODE])]
    if job is not None and "job" in ev:
        ev = ev[ev["job"].isna() | (ev["job"] == job)]
    return sorted((float(e["t"]), str(event_data(e).get("copy_mode") or "background"))
                  for _, e in ev.iterrows())


def alarms(pred: pd.DataFrame) -> list[float]:
    """Every time the replayed predictor began to say "diverging"."""
    if not len(pred):
        return []
    diverging = (pred["state"] == "diverging").to_numpy()
    starts = diverging & ~pd.Series(diverging).shift(1, fill_value=False).to_numpy()
    return [float(t) for t in pred["t"].to_numpy()[starts]]


def first_verdict(pred: pd.DataFrame, state: str = "diverging") -> float | None:
    """When the replayed predictor first said *state* (None: never)."""
    hit = pred[pred["state"] == state] if len(pred) else pred
    return float(hit["t"].iloc[0]) if len(hit) else None


# -- how good it is: the predictor against what happened ---------------------------------------
def accuracy(samples: pd.DataFrame, events: pd.DataFrame, job: str | None = None, *,
             at: float = 0.5, **kw: Any) -> dict[str, Any]:
    """The predictor replayed over one recorded job, scored against what the job did.

    ``converged``: the job got READY; then ``eta_error_s`` is what the predictor's ETA at
    *at* (0.5: half-way) of the time to ready got wrong (ETA minus the time READY really
    took from there, s; NaN if it had no ETA then) and ``eta_error_rel`` that over the
    true remaining time.  ``said_diverging_s``: seconds after the job's first sample when
    it first said "will not converge", replayed or live (the run's ``diverging`` mark: a
    run that gave up on it ends a moment later); None: never.  An alarm is judged against
    the conditions in force when it was made: it is a ``false_alarm`` if the job then got
    READY with no change of speed, copy mode or the guest's write rate in between; one
    followed by such a change (``switched_s`` for a copy-mode switch, ``changed_s`` for the
    first change of any kind) is ``excused_alarms``: the job it spoke of was changed.  *kw* go to
    :class:`Predictor`.
    """
    s = job_samples(samples, job)
    if s.empty:
        return {"job": job, "converged": None}
    job = str(s["job"].iloc[0])
    start = float(s["t"].iloc[0])
    pred = predict(s, job, events, **kw)
    # READY can come before the first sample (a small disk over a fast link): looked for
    # from the job's start mark
    begun = time_of(events, job, (marks.MIRROR_START,))
    ready = time_of(events, job, (marks.BLOCK_JOB_READY,),
                    after=start if begun is None else min(begun, start))
    live = time_of(events, job, (marks.DIVERGING,), after=start)
    switched = time_of(events, job, (marks.COPY_MODE,), after=start)
    changes = [t for t in condition_changes(events, job, guest=True) if t >= start]
    # one alarm per stretch of unchanged conditions (the replayed predictor and the live
    # one may both have said it): the first of each stretch
    said_at: list[float] = []
    for t in sorted({*alarms(pred), *([live] if live is not None else [])}):
        if not said_at or any(said_at[-1] < c <= t for c in changes):
            said_at.append(t)
    said = said_at[0] if said_at else None

    def falsified(alarm: float) -> bool:      # READY came under the alarm's conditions
        return ready is not None and alarm < ready and \
            not any(alarm <= c <= ready for c in changes)
    false_alarms = [a for a in said_at if falsified(a)]
    row: dict[str, Any] = {
        "job": job, "converged": ready is not None,
        "time_to_ready_s": None if ready is None else round(max(0.0, ready - start), 3),
        "said_diverging_s": None if said is None else round(said - start, 3),
        "switched_s": None if switched is None else round(switched - start, 3),
        "changed_s": None if not changes else round(changes[0] - start, 3),
        "false_alarm": bool(false_alarms),
        "excused_alarms": sum(1 for a in said_at if ready is not None and a < ready
                              and not falsified(a)),
        "eta_error_s": None, "eta_error_rel": None, "eta_in_range": None,
        "last_state": pred["state"].iloc[-1] if len(pred) else None,
        "last_eta_s": (round(float(pred["eta_s"].iloc[-1]), 3)
                       if len(pred) and pd.notna(pred["eta_s"].iloc[-1]) else None)}
    if ready is not None and len(pred):
        half = start + at * (ready - start)
        known = pred[pred["t"] <= half]
        if len(known):
            last = known.iloc[-1]
            truth = ready - float(last["t"])
            eta = float(last["eta_s"]) if pd.notna(last["eta_s"]) else float("nan")
            row["eta_error_s"] = round(eta - truth, 3)
            row["eta_error_rel"] = round((eta - truth) / truth, 3) if truth > 0 else None
            lo, hi = last.get("eta_low_s"), last.get("eta_high_s")
            if pd.notna(lo) and pd.notna(hi):
                row["eta_in_range"] = bool(float(lo) <= truth <= float(hi))
    return row


def ram_predict(migration: pd.DataFrame, **kw: Any) -> pd.DataFrame:
    """The RAM predictor replayed over a migration's ``query-migrate`` samples (the
    ``migration`` stream): one row per sample, as :func:`predict`.  *kw* go to
    :class:`RamPredictor`."""
    p = RamPredictor(**kw)
    rows = [ram_outlook(p, r).as_dict() for r in migration.to_dict("records")]
    return pd.DataFrame(rows, columns=[*Outlook.__dataclass_fields__, "net_rate"])


def ram_accuracy(migration: pd.DataFrame, **kw: Any) -> dict[str, Any]:
    """The RAM predictor replayed over one migration, scored against how it ended:
    ``ram_converged`` (it completed; None: no migration), ``ram_said_diverging_s`` (s after
    its first sample; None: never) and ``ram_false_alarm`` ("will not converge", then it
    completed: the migration's limits are never changed while it runs)."""
    if migration.empty or "status" not in migration:
        return {"ram_converged": None, "ram_said_diverging_s": None, "ram_false_alarm": False}
    pred = ram_predict(migration, **kw)
    said = first_verdict(pred)
    done = bool((migration["status"] == "completed").any())
    start = float(migration["t"].iloc[0])
    return {"ram_converged": done,
            "ram_said_diverging_s": None if said is None else round(said - start, 3),
            "ram_false_alarm": bool(done and said is not None)}


def score_runs(folder: str | Path, **kw: Any) -> pd.DataFrame:
    """:func:`accuracy` of every recorded run under *folder* (a sweep, a notebook run or
    one run), a row each with the run's folder, QEMU build and mirror parameters; a
    storage migration's row adds its RAM stream's (:func:`ram_accuracy`)."""
    rows = []
    for rj in sorted(Path(folder).rglob("run.json")):
        run = load_run(rj.parent)
        params = run.meta.get("params") or {}
        rows.append({"run": str(rj.parent.relative_to(folder)) if rj.parent != Path(folder)
                     else rj.parent.name,
                     **{k: params.get(k) for k in ("qemu", "copy_mode", "speed", "workload_kib",
                                                    "workload_rate_kib_s", "slow_target_bps",
                                                    "workload_then_rate_kib_s",
                                                    "raise_speed_to", "link_rate_bps", "max_bandwidth",
                                                    "ram_mib_s")},
                     **accuracy(run.samples, run.events, **kw),
                     **(ram_accuracy(read_migration(rj.parent))
                        if run.meta.get("experiment") == "storage_migration" else {})})
    return pd.DataFrame(rows)


def accuracy_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Figures over many scored runs (rows of :func:`accuracy`): for the converged ones,
    the median and worst ETA error at half-way (|relative|, signed, and s), how many had
    no ETA yet, and in how many of those with a range READY came inside it; for the
    others, when the predictor said "will not converge" (median, latest) and how many it
    never flagged (and of those, how many it still called converging when the
    run stopped waiting: slow, not stuck); and the false alarms, which must be 0."""
    conv = table[table["converged"] == True]  # noqa: E712  (a nullable column)
    div = table[table["converged"] == False]  # noqa: E712
    err = pd.to_numeric(conv["eta_error_rel"], errors="coerce")
    err_s = pd.to_numeric(conv["eta_error_s"], errors="coerce")
    said = pd.to_numeric(div["said_diverging_s"], errors="coerce")

    def r(v: float) -> float | None:
        return None if pd.isna(v) else round(float(v), 3)

    ranged = conv["eta_in_range"].dropna() if "eta_in_range" in conv else pd.Series([], dtype=bool)
    known = err.dropna().to_numpy()
    worst = float(known[abs(known).argmax()]) if len(known) else float("nan")
    return {"runs": int(len(table)), "converged": int(len(conv)),
            "eta_error_median_rel": r(err.abs().median()),
            "eta_error_worst_rel": r(err.abs().max()),
            # signed: below 0 the ETA was optimistic (READY came later than it said)
            "eta_error_median_signed_rel": r(err.median()),
            "eta_error_worst_signed_rel": r(worst),
            "eta_ranged": int(len(ranged)), "eta_in_range": int(ranged.astype(bool).sum()),
            "eta_error_median_s": r(err_s.abs().median()),
            "eta_error_worst_s": r(err_s.abs().max()),
            "no_eta_at_half_way": int(err.isna().sum()),
            "diverged": int(len(div)),
            "said_diverging_median_s": r(said.median()),
            "said_diverging_latest_s": r(said.max()),
            "never_flagged": int(said.isna().sum()),
            "never_flagged_but_converging": int((said.isna()
                                                 & (div["last_state"] == "converging")).sum()),
            "false_alarms": int(conv["false_alarm"].fillna(False).astype(bool).sum()),
            **_ram_summary(table)}


def _ram_summary(table: pd.DataFrame) -> dict[str, Any]:
    """The RAM stream's figures of scored storage migrations (none without)."""
    if "ram_converged" not in table:
        return {}
    ram = table[table["ram_converged"].notna()]
    stuck = ram[ram["ram_converged"] == False]  # noqa: E712
    said = pd.to_numeric(stuck["ram_said_diverging_s"], errors="coerce")
    return {"ram_migrations": int(len(ram)),
            "ram_completed": int((ram["ram_converged"] == True).sum()),  # noqa: E712
            "ram_never_completed": int(len(stuck)),
            "ram_never_flagged": int(said.isna().sum()),
            "ram_said_diverging_median_s": None if said.dropna().empty
            else round(float(said.median()), 3),
            "ram_false_alarms": int(ram["ram_false_alarm"].astype(bool).sum())}


# -- the guest's side: what a mirror costs its writes -----------------------------------------
def write_cost(ops: Any, start: float | None, end: float | None) -> dict[str, Any] | None:
    """The guest's ``dd`` writes that finished in [start, end) (seconds on the ops' clock;
    None: open): how many, each write's latency (dd with its fsync: median, 95th
    percentile, worst, in ms), the write throughput (bytes written over the time spent
    writing, MiB/s) and, for a closed window, the rate the guest achieved (bytes written
    over the window's length, MiB/s: what a workload paced to a rate loses when each write
    takes longer).  *ops*: a run's ``guest_ops`` frame, or :class:`~kvmlab.events.Record`
    list of the console's ``op`` lines (``mono`` as the clock).  None without timed writes
    (a guest built before writes were timed)."""
    if isinstance(ops, pd.DataFrame):
        df = ops
    else:
        df = pd.DataFrame([{"t": r.mono, "op": r.data.get("op"), "size": r.data.get("size"),
                            "dd_s": (int(r.data["dd_us"]) / 1e6 if r.data.get("dd_us")
                                     else None)} for r in ops])
    if df.empty or "dd_s" not in df:
        return None
    t = df["t"].astype("float64")
    keep = (df["op"] == "dd") & df["dd_s"].notna()
    if start is not None:
        keep &= t >= start
    if end is not None:
        keep &= t < end
    w = df[keep]
    if w.empty:
        return None
    lat = w["dd_s"].astype("float64")
    size = pd.to_numeric(w["size"], errors="coerce").fillna(0).astype("float64")
    return {"writes": int(len(w)), "latency_median_ms": round(float(lat.median()) * 1e3, 2),
            "latency_p95_ms": round(float(lat.quantile(0.95)) * 1e3, 2),
            "latency_max_ms": round(float(lat.max()) * 1e3, 2),
            "throughput_mib_s": round(float(size.sum() / max(lat.sum(), 1e-9)) / MIB, 3),
            "written_mib_s": (round(float(size.sum()) / (end - start) / MIB, 3)
                              if start is not None and end is not None and end > start
                              else None)}
