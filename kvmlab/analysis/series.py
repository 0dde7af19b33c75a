"""The series of a recorded run, read: pure functions over the recorder's DataFrames.

Why a mirror took long, or never became ready:

- **remaining** (len - offset) is QEMU's dirty backlog plus bytes in flight: the
  convergence metric;
- **copy rate** (d offset/dt) against **dirtying rate** (d len/dt, the guest's
  writes as the job sees them) and the guest's own write rate from its dd lines;
- **stalls**: the job is not paused, not done, has work left, and its offset
  does not advance -- what a hung NFS server looks like while QEMU still says
  ``running``.  A paused job is reported as paused, never as a stall;
- a **convergence verdict** per job: converged / converging / diverging /
  stalled / failed.

Times are the recorder's ``t`` (seconds since recording started).
Nothing here talks to QEMU; everything works on a saved run (:func:`kvmlab.load_run`).
:mod:`kvmlab.analysis.causes` builds on this module, and :mod:`kvmlab.analysis` (the one-row
summary of a run) on both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kvmlab import marks
from kvmlab.rates import trailing as trailing_rate

ACTIVE_STATUSES = ("running", "ready")
#: ``<name>_start`` marks that are steps, not fault windows
PAUSED_STATUSES = ("paused", "standby")


# -- selection -----------------------------------------------------------------------
def jobs(samples: pd.DataFrame) -> list[str]:
    """Job ids in the order they first appear."""
    if samples.empty:
        return []
    return [str(j) for j in pd.unique(samples["job"].dropna())]


def job_span(events: pd.DataFrame) -> float | None:
    """Seconds from the first job's creation (QEMU's ``created`` status, else the step that
    started it) to its end event (else to the next step: HMP ``commit`` is synchronous and
    sends none); None if the events do not show both."""
    if events.empty:
        return None
    created = events[(events["name"] == marks.JOB_STATUS_CHANGE) &
                     (events["status"] == "created")]
    if created.empty:
        created = events[events["name"].isin(marks.JOB_STARTS)]
    if created.empty:
        return None
    start = float(created["t"].min())
    ends = events[events["name"].isin(marks.JOB_ENDED) & (events["t"] >= start)]
    if ends.empty:
        ends = events[(events["source"] == "kvmlab") & (events["t"] > start)]
    return float(ends["t"].min()) - start if len(ends) else None


def job_samples(samples: pd.DataFrame, job: str | None = None) -> pd.DataFrame:
    """Samples of one job (default: the first one recorded), sorted by time."""
    if samples.empty:
        return samples
    job = job or jobs(samples)[0]
    return samples[samples["job"] == job].sort_values("t").reset_index(drop=True)


def job_events(events: pd.DataFrame, job: str | None, names: tuple[str, ...]) -> pd.DataFrame:
    if events is None or events.empty:
        return pd.DataFrame(columns=["t", "name", "job", "data"])
    ev = events[events["name"].isin(names)]
    if job is not None:
        ev = ev[ev["job"] == job]
    return ev.sort_values("t")


# -- series --------------------------------------------------------------------------
def remaining(samples: pd.DataFrame, job: str | None = None) -> pd.Series:
    """Remaining bytes (len - offset) indexed by time."""
    s = job_samples(samples, job)
    return pd.Series((s["len"] - s["offset"]).astype("float64").to_numpy(),
                     index=s["t"].to_numpy(), name="remaining")


def backlog(js: pd.DataFrame, window: float = 1.0) -> np.ndarray:
    """Bytes left to copy (len - offset) at each sample of one job (:func:`job_samples`),
    len's momentary dips taken out.

    QEMU clears a batch's dirty bits before the batch is in flight, and a sample taken in
    between (10.0 can sleep for its speed limit there) counts the batch nowhere: len dips
    by a batch for a moment.  Read as it is, the backlog then seems to rise again by a
    batch, as if the guest were keeping up.  len can also fall for good (in write-blocking
    mode the guest's own writes copy dirty chunks), so it is read as its maximum over the
    trailing *window* seconds only: a dip shorter than that is gone, a lasting fall shows
    *window* s late.  A job run again under the same id starts its offset again, and each
    run of the offset is read on its own."""
    t = js["t"].to_numpy(dtype="float64")
    off = js["offset"].to_numpy(dtype="int64")
    ln = js["len"].to_numpy(dtype="int64")
    run = np.concatenate([[0], np.cumsum(np.diff(off) < 0)]) if len(off) else off
    top = np.empty_like(ln)
    for r in np.unique(run):
        m = run == r
        top[m] = pd.Series(ln[m], index=pd.to_timedelta(t[m], unit="s")).rolling(
            pd.Timedelta(seconds=window)).max().to_numpy(dtype="int64")
    out: np.ndarray = top - off
    return out


def rates(samples: pd.DataFrame, job: str | None = None, window: float = 2.0) -> pd.DataFrame:
    """Copy rate (d offset/dt) and dirtying rate (d len/dt), bytes/s, each averaged over
    the trailing *window* seconds.

    QEMU's mirror copies in chunks (a buffer-full, then it sleeps to keep to the speed
    limit), so the offset rises in steps: over a window shorter than a few chunks the rate
    swings around the limit.  The default 2 s spans several chunks at the lab's speeds.
    """
    s = job_samples(samples, job)
    t = s["t"].to_numpy(dtype="float64")
    return pd.DataFrame({
        "t": t,
        "copy_rate": trailing_rate(t, s["offset"].to_numpy(dtype="float64"), window),
        "dirty_rate": trailing_rate(t, s["len"].to_numpy(dtype="float64"), window),
    })


def guest_write_rate(guest_ops: pd.DataFrame, window: float = 2.0,
                     machine: str | None = None) -> pd.DataFrame:
    """The guest's own data write rate (bytes/s) from its ``dd`` lines, trailing window."""
    if guest_ops is None or guest_ops.empty:
        return pd.DataFrame(columns=["t", "write_rate"])
    g = guest_ops[guest_ops["op"] == "dd"]
    if machine is not None:
        g = g[g["machine"] == machine]
    if g.empty:
        return pd.DataFrame(columns=["t", "write_rate"])
    g = g.sort_values("t")
    t = g["t"].to_numpy(dtype="float64")
    total = g["size"].astype("float64").cumsum().to_numpy()
    t_all = np.concatenate([[t[0] - window], t])
    y_all = np.concatenate([[0.0], total])
    rate = trailing_rate(t_all, y_all, window)[1:]
    return pd.DataFrame({"t": t, "write_rate": rate})


# -- periods -------------------------------------------------------------------------
@dataclass(frozen=True)
class Period:
    """A time interval [start, end] (seconds), with what happened in it."""

    start: float
    end: float
    kind: str
    job: str
    offset: int = 0
    speed: int = 0

    @property
    def duration(self) -> float:
        return self.end - self.start


def _periods_frame(periods: list[Period]) -> pd.DataFrame:
    cols = ["start", "end", "duration", "kind", "job", "offset", "speed"]
    return pd.DataFrame([{**p.__dict__, "duration": p.duration} for p in periods], columns=cols)


def is_paused(s: pd.DataFrame) -> pd.Series:
    return s["paused"].fillna(False).astype(bool) | s["status"].isin(PAUSED_STATUSES)


def paused_periods(samples: pd.DataFrame, job: str | None = None) -> pd.DataFrame:
    """Intervals where the job was paused (block-job-pause, or on-*-error=stop)."""
    s = job_samples(samples, job)
    if s.empty:
        return _periods_frame([])
    name = str(s["job"].iloc[0])
    flag = is_paused(s).to_numpy(dtype=bool)
    t = s["t"].to_numpy(dtype="float64")
    off = s["offset"].to_numpy()
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flag.astype(np.int8), [0]])))
    return _periods_frame([Period(float(t[i]), float(t[j - 1]), "paused", name, int(off[i]))
                           for i, j in zip(edges[::2], edges[1::2])])


def flat_stretches(t: np.ndarray, y: np.ndarray, eligible: np.ndarray, min_duration: float,
                   threshold: float) -> list[tuple[int, int]]:
    """(first, last) sample indices of each eligible stretch of at least *min_duration*
    seconds in which *y* rose less than *threshold* above its value at the stretch's start
    (a flat offset is a stall; a flat -remaining, a backlog that does not fall)."""
    out: list[tuple[int, int]] = []
    anchor: int | None = None
    last = -1
    # plain lists: indexing them is several times faster than numpy scalars in this loop
    t, y, eligible = (np.asarray(t).tolist(), np.asarray(y).tolist(),
                      np.asarray(eligible).tolist())

    def close(a: int, b: int) -> None:
        if b >= 0 and t[b] - t[a] >= min_duration:
            out.append((a, b))

    for i in range(len(t)):
        if not eligible[i]:
            if anchor is not None:
                close(anchor, last)
            anchor, last = None, -1
        elif anchor is None:
            anchor, last = i, i
        elif y[i] - y[anchor] >= threshold:
            close(anchor, last)
            anchor, last = i, i
        else:
            last = i
    if anchor is not None:
        close(anchor, last)
    return out


def stalls(samples: pd.DataFrame, job: str | None = None, *, min_duration: float = 2.0,
           threshold: int = 64 * 1024) -> pd.DataFrame:
    """Stall periods: not paused, active, remaining > 0, offset advancing < *threshold*
    bytes for at least *min_duration* seconds.

    A stall starts at the first sample of the flat stretch and ends at its last
    sample, so each edge is within one sample interval of the truth.  ``speed``
    is the job's limit during the stall (a stall under a tiny limit is throttling).
    """
    s = job_samples(samples, job)
    if s.empty:
        return _periods_frame([])
    name = str(s["job"].iloc[0])
    t = s["t"].to_numpy(dtype="float64")
    off = s["offset"].to_numpy(dtype="int64")
    rem = (s["len"] - s["offset"]).to_numpy(dtype="int64")
    eligible = (~is_paused(s) & s["status"].isin(ACTIVE_STATUSES)).to_numpy() & (rem > 0)
    speed = s["speed"].fillna(0).to_numpy(dtype="int64")
    out = [Period(float(t[i]), float(t[j]), "stall", name, int(off[i]), int(speed[j]))
           for i, j in flat_stretches(t, off, eligible, min_duration, threshold)]
    return _periods_frame(out)


# -- milestones ----------------------------------------------------------------------
def job_start(events: pd.DataFrame, job: str) -> float | None:
    """When the job was created (JOB_STATUS_CHANGE created), else the first 'mirror_start' mark."""
    ev = job_events(events, job, ("JOB_STATUS_CHANGE",))
    created = ev[ev["status"] == "created"] if "status" in ev else ev.iloc[0:0]
    if not created.empty:
        return float(created["t"].iloc[0])
    starts = job_events(events, None, (marks.MIRROR_START,))
    return float(starts["t"].iloc[0]) if not starts.empty else None


def time_of(events: pd.DataFrame, job: str | None, names: tuple[str, ...],
            after: float | None = None) -> float | None:
    ev = job_events(events, job, names)
    if after is not None:
        ev = ev[ev["t"] >= after]
    return float(ev["t"].iloc[0]) if not ev.empty else None


def job_error(events: pd.DataFrame, job: str) -> str | None:
    """The error a job ended with (BLOCK_JOB_COMPLETED carrying 'error'), if any."""
    for _, ev in job_events(events, job, (marks.BLOCK_JOB_COMPLETED,)).iterrows():
        data = event_data(ev)
        if data.get("error"):
            return str(data["error"])
    return None


# -- faults --------------------------------------------------------------------------
def fault_windows(events: pd.DataFrame) -> pd.DataFrame:
    """Fault windows (:data:`kvmlab.marks.FAULT_WINDOWS`) from kvmlab's marks."""
    return windows(events, marks.FAULT_WINDOWS)


def windows(events: pd.DataFrame, names: Sequence[str] = marks.WINDOWS) -> pd.DataFrame:
    """Windows from kvmlab's marks: each ``<name>_start`` of a window in *names* paired
    with the next ``<name>_end`` (an unmatched start runs to the last event).  Columns:
    name, start, end, duration, data (the start mark's fields)."""
    cols = ["name", "start", "end", "duration", "data"]
    if events is None or events.empty:
        return pd.DataFrame(columns=cols)
    wanted = [f"{n}_{edge}" for n in names for edge in ("start", "end")]
    ev = events[(events["source"] == "kvmlab") & events["name"].isin(wanted)]
    ev = ev.sort_values("t", kind="stable")
    t_last = float(events["t"].max())
    out: list[dict[str, Any]] = []
    open_: dict[str, tuple[float, str]] = {}
    for name, t, raw in zip(ev["name"], ev["t"], ev["data"]):
        base, _, edge = str(name).rpartition("_")
        if edge == "start":
            open_.setdefault(base, (float(t), raw))
        elif edge == "end" and base in open_:
            start, data = open_.pop(base)
            out.append({"name": base, "start": start, "end": float(t),
                        "duration": float(t) - start, "data": event_data({"data": data})})
    for base, (start, data) in open_.items():
        out.append({"name": base, "start": start, "end": t_last, "duration": t_last - start,
                    "data": event_data({"data": data})})
    return pd.DataFrame(out, columns=cols).sort_values("start", ignore_index=True)


def progress_after(samples: pd.DataFrame, t: float, job: str | None = None,
                   threshold: int = 1) -> float | None:
    """Seconds from *t* to the first sample whose offset is at least *threshold* bytes past
    the offset at *t* (the job's first progress after a fault ended); None if never."""
    s = job_samples(samples, job)
    if s.empty:
        return None
    before = s[s["t"] <= t]
    base = int(before["offset"].iloc[-1]) if not before.empty else int(s["offset"].iloc[0])
    later = s[(s["t"] > t) & (s["offset"] >= base + threshold)]
    return float(later["t"].iloc[0]) - t if not later.empty else None


def during(periods: pd.DataFrame, start: float, end: float) -> pd.DataFrame:
    """The rows of a periods frame (stalls, paused periods) overlapping [start, end]."""
    if periods.empty:
        return periods
    return periods[(periods["start"] <= end) & (periods["end"] >= start)]


def fault_effect(samples: pd.DataFrame, events: pd.DataFrame, start: float, end: float,
                 job: str | None = None) -> dict[str, Any]:
    """What the job did in the fault window [start, end]: the statuses and io-statuses it
    reported, the bytes it copied, error events, the longest stall overlapping the window,
    and the seconds from *end* to its first progress (None: none recorded)."""
    s = job_samples(samples, job)
    w = s[(s["t"] >= start) & (s["t"] <= end)]
    ev = events[(events["t"] >= start) & (events["t"] <= end + 1.0)] if not events.empty \
        else events
    st = during(stalls(samples, job, min_duration=min(2.0, max(0.5, (end - start) / 2))),
                start, end)
    copied = int(w["offset"].max() - w["offset"].min()) if len(w) else 0
    return {
        "window_s": round(end - start, 3),
        "statuses": sorted(set(w["status"].dropna().astype(str))) if len(w) else [],
        "io_statuses": sorted(set(w["io_status"].dropna().astype(str))) if len(w) else [],
        "bytes_copied_in_window": copied,
        "samples_in_window": int(len(w)),
        "job_errors": int((ev["name"] == marks.BLOCK_JOB_ERROR).sum()) if len(ev) else 0,
        "stall_s": round(float(st["duration"].max()), 3) if len(st) else 0.0,
        "first_progress_after_s": _round(progress_after(samples, end, job)),
    }


def _round(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


# -- verdicts ------------------------------------------------------------------------
def convergence(samples: pd.DataFrame, events: pd.DataFrame | None = None,
                job: str | None = None, *, window: float = 8.0,
                min_duration: float = 2.0, threshold: int = 64 * 1024) -> dict[str, Any]:
    """The job's convergence verdict.

    ``failed`` (ended with an error) > ``converged`` (READY reached) >
    ``stalled`` (in a stall at the end) > ``converging`` (remaining trending
    down over the last *window* seconds; with an estimated time to ready) >
    ``diverging`` (not trending down: the guest dirties at least as fast as
    the job copies).
    """
    s = job_samples(samples, job)
    ev = events if events is not None else pd.DataFrame()
    name = job or (str(s["job"].iloc[0]) if not s.empty else None)
    out: dict[str, Any] = {"job": name, "verdict": None, "slope": None, "eta_s": None}
    if name is None:
        out["verdict"] = "no-job"
        return out
    err = job_error(ev, name) if not ev.empty else None
    if err:
        out.update(verdict="failed", error=err)
        return out
    if not ev.empty and time_of(ev, name, (marks.BLOCK_JOB_READY,)) is not None:
        out["verdict"] = "converged"
        return out
    if not s.empty and bool(s["ready"].fillna(False).any()):
        out["verdict"] = "converged"
        return out
    if s.empty:
        out["verdict"] = "unknown"  # no samples and no READY: nothing to judge
        return out
    st = stalls(s, name, min_duration=min_duration, threshold=threshold)
    if not st.empty and st["end"].iloc[-1] >= float(s["t"].iloc[-1]) - 1e-9:
        out["verdict"] = "stalled"
        return out
    active = s[~is_paused(s)]
    tail = active[active["t"] >= float(s["t"].iloc[-1]) - window]
    if len(tail) < 3:
        out["verdict"] = "converging"  # too short to tell a trend; not ready yet
        return out
    x = tail["t"].to_numpy(dtype="float64")
    y = (tail["len"] - tail["offset"]).to_numpy(dtype="float64")
    slope = float(np.polyfit(x, y, 1)[0])
    out["slope"] = slope
    if slope < 0:
        out.update(verdict="converging", eta_s=float(y[-1] / -slope))
    else:
        out["verdict"] = "diverging"
    return out


def job_instances(samples: pd.DataFrame, events: pd.DataFrame) -> list[tuple[str, float, float]]:
    """Each job run as (id, start, end): one id can run twice (E5 mirrors drive0 twice).

    From JOB_STATUS_CHANGE ``created`` events and the end events that follow;
    a run recorded without events falls back to one instance per id in the samples.
    """
    out: list[tuple[str, float, float]] = []
    if events is not None and not events.empty:
        block = set(events.loc[events["name"].str.startswith("BLOCK_JOB_"), "job"].dropna())
        # only block jobs: libvirt also runs image-creation jobs ("create-libvirt-2-format")
        created = events[(events["name"] == "JOB_STATUS_CHANGE")
                         & (events["status"] == "created")
                         & events["job"].isin(block)].sort_values("t")
        for _, c in created.iterrows():
            job, start = str(c["job"]), float(c["t"])
            end = time_of(events, job, marks.JOB_ENDED, after=start)
            out.append((job, start, end if end is not None else float("inf")))
    if not out and samples is not None and not samples.empty:
        for job in jobs(samples):
            t = samples.loc[samples["job"] == job, "t"]
            out.append((job, float(t.min()), float(t.max())))
    return out


def jobs_by_start(samples: pd.DataFrame, events: pd.DataFrame) -> list[str]:
    """Job ids in the order the jobs started (QEMU lists the newest job first in a sample,
    so :func:`jobs` puts jobs started together in reverse)."""
    return list(dict.fromkeys(job for job, _, _ in job_instances(samples, events)))


def duration(a: float | None, b: float | None) -> float | None:
    return b - a if a is not None and b is not None else None


def event_data(ev: pd.Series | dict[str, Any]) -> dict[str, Any]:
    raw = ev["data"]
    if isinstance(raw, str):
        return dict(json.loads(raw))
    return dict(raw or {})


_PATH_RE = re.compile(r"(/[^\s:'\"()]+/)([^/\s:'\"()]+)")
_NODE_RE = re.compile(r"#block\d+")


def strip_paths(text: str) -> str:
    """``/data/scratch/<run>/x.qcow2`` -> ``x.qcow2`` and ``#block629`` -> ``#block``: runs
    differ in folders and in QEMU's generated node names only."""
    return _NODE_RE.sub("#block", _PATH_RE.sub(lambda m: m.group(2), text))
