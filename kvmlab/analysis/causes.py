"""Why a mirror is held up, from QEMU's trace events (:mod:`kvmlab.qemu.trace`) beside the samples.

``query-block-jobs`` shows a flat offset; the trace says what the job is doing meanwhile:

- **throttled**: sleeping for the speed limit (``mirror_before_sleep`` with a delay on
  QEMU 7.2; on 10.0, which sleeps in the rate limiter without a trace point, no request in
  flight while a limit is set);
- **target**: target not answering: requests in flight, none completing; or answering
  slowly: for at least *min_duration* s before READY, requests nearly always in flight and
  each taking :data:`SLOW_ANSWER_S` or more (a target whose every write is late; the job
  progresses, slowly, and the row's ``latency_ms`` says how late).  The outage
  began in the **onset interval**: after the last request answered (``last_completed``)
  and at or before the first request left unanswered (``onset``), not at the first flat
  sample.  Its width (``onset_width``) is bounded by the job's gap between request
  batches: a rate-limited job sleeps between them, so a server stopped during a sleep is
  first noticed by the next batch;
- **dirtying**: the guest dirties at least as fast as the copy: requests complete, the
  offset moves, the backlog (dirty count, len - offset) does not fall;
- **paused** (``block-job-pause``) and **error** (stopped by ``on-*-error=stop``, or
  requests failing).

A hold-up is a stall (:func:`kvmlab.analysis.series.stalls`), a paused period, or a stretch of at
least *min_duration* seconds before READY in which the backlog did not fall.  Without a
trace (``trace=off``) only paused and error can be told; the rest is ``unknown``.
Pure functions over saved DataFrames, like :mod:`kvmlab.analysis`.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import pandas as pd

from kvmlab import marks
from kvmlab.analysis import series
from kvmlab.store.runs import RunData

CAUSES = ("throttled", "target", "dirtying", "paused", "error", "unknown")
LABELS = {"throttled": "throttled (sleeping for the speed limit)",
          "target": "target not answering (or slow)", "dirtying": "guest dirtying as fast as the copy",
          "paused": "paused", "error": "stopped on an error", "unknown": "cause unknown"}
COLORS = {"throttled": "tab:orange", "target": "tab:red", "dirtying": "tab:olive",
          "paused": "0.6", "error": "black", "unknown": "tab:pink"}
COLUMNS = ["start", "end", "duration", "cause", "job", "onset", "onset_latest",
           "last_completed", "onset_width", "completed", "in_flight_share", "sleep_s",
           "latency_ms"]
_ISSUE = "mirror_one_iteration"
_DONE = "mirror_iteration_done"
#: a trace job and a JOB_STATUS_CHANGE 'created' event further apart are not the same job
MATCH_S = 0.5


def job_objects(trace: pd.DataFrame, events: pd.DataFrame) -> dict[str, str]:
    """QEMU's job pointer in the trace -> the job's id: the ``created`` transitions paired
    with the ``JOB_STATUS_CHANGE created`` events in order when both have all the jobs,
    else each with the nearest in time (the trace has no ids)."""
    if trace is None or trace.empty or events is None or events.empty:
        return {}
    born = trace.loc[((trace["event"] == "job_state_transition")
                      & (trace["state"] == "created")).to_numpy(), ["t", "obj"]]
    created = events.loc[((events["name"] == "JOB_STATUS_CHANGE")
                          & (events["status"] == "created")).to_numpy(), ["t", "job"]]
    if born.empty or created.empty:
        return {}
    if len(born) == len(created):
        # the same QEMU's jobs in the same order: pair them by order, not by clock (a
        # libvirt event reaches us a few ms after QEMU sent it)
        return {str(o): str(j) for o, j in zip(born.sort_values("t")["obj"],
                                               created.sort_values("t")["job"])}
    pairs = pd.merge_asof(born[["t", "obj"]].astype({"t": "float64"}).sort_values("t"),
                          created[["t", "job"]].astype({"t": "float64"}).sort_values("t"),
                          on="t", direction="nearest",
                          tolerance=MATCH_S)  # type: ignore[arg-type]
    pairs = pairs.dropna(subset=["job"])
    return {str(o): str(j) for o, j in zip(pairs["obj"], pairs["job"])}


_LAST: dict[str, Any] = {}


def job_trace(trace: pd.DataFrame, events: pd.DataFrame, job: str | None = None) -> pd.DataFrame:
    """The trace rows of *job* (default: the first job that ran), with a ``job`` column.
    The last answer is kept for the same frames (a dashboard asks once per panel)."""
    hit = _LAST.get("job_trace")
    if hit is not None and hit[0]() is trace and hit[1]() is events and hit[2] == job:
        return hit[3]  # type: ignore[no-any-return]
    out = _job_trace(trace, events, job)
    if trace is not None and events is not None:
        _LAST["job_trace"] = (weakref.ref(trace), weakref.ref(events), job, out)
    return out


def _job_trace(trace: pd.DataFrame, events: pd.DataFrame, job: str | None) -> pd.DataFrame:
    if trace is None or trace.empty:
        return trace if trace is not None else pd.DataFrame()
    objs = job_objects(trace, events)
    if job is None:
        if not objs:
            return trace.iloc[0:0]
        job = next(iter(objs.values()))
    mine = [o for o, j in objs.items() if j == job]
    # QEMU's own text of each line is left out: copying millions of strings is most of
    # the cost, and no question about causes reads it
    cols = [c for c in trace.columns if c != "args"]
    keep = trace["obj"].isin(mine).to_numpy()
    out = trace[cols] if keep.all() else trace.loc[keep, cols]
    # one category, not millions of copies of the same string
    out = out.assign(job=pd.Categorical.from_codes(np.zeros(len(out), dtype=np.int8),
                                                    categories=pd.Index([job])))
    return out if out["t"].is_monotonic_increasing else out.sort_values("t", kind="stable")


def lanes(trace: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A job's trace as the plots' lanes: requests in flight (a step after each issue and
    completion), the dirty count QEMU reports, each throttle sleep's length, and the size
    of each request the mirror issued (its iteration sizes)."""
    if trace is None or trace.empty:
        empty = pd.DataFrame({"t": pd.Series(dtype="float64"), "value": pd.Series(dtype="float64")})
        return {"in_flight": empty, "dirty": empty, "sleep": empty, "size": empty}
    t = trace["t"].to_numpy(dtype="float64")
    event = trace["event"]
    delay = trace["delay"].to_numpy(dtype="float64", na_value=np.nan)

    def lane(mask: Any, value: np.ndarray) -> pd.DataFrame:
        m = np.asarray(mask, dtype=bool)
        return pd.DataFrame({"t": t[m], "value": value[m]})

    return {
        "in_flight": lane(event.isin((_ISSUE, _DONE)),
                          trace["in_flight"].to_numpy(dtype="float64", na_value=np.nan)),
        "dirty": lane(trace["dirty"].notna(),
                      trace["dirty"].to_numpy(dtype="float64", na_value=np.nan)),
        "sleep": lane((event == "mirror_before_sleep").to_numpy() & (delay > 0)
                      & (delay < MAX_SLEEP), delay),
        "size": lane((event == _ISSUE).to_numpy(),
                     trace["bytes"].to_numpy(dtype="float64", na_value=np.nan)),
    }


class JobTrace:
    """One job's trace as sorted arrays, so a question about an interval costs a binary
    search, not a scan (a 10-hour run has millions of rows and thousands of hold-ups)."""

    def __init__(self, jt: pd.DataFrame, events: pd.DataFrame | None, job: str) -> None:
        self.rows = jt
        ln = lanes(jt)
        self._t = ln["in_flight"]["t"].to_numpy(dtype="float64")
        busy = (ln["in_flight"]["value"].fillna(0).to_numpy() > 0).astype("float64")
        self._busy = busy
        self._busy_cum = np.concatenate([[0.0], np.cumsum(np.diff(self._t) * busy[:-1])]) \
            if len(self._t) else np.zeros(0)
        done = jt[jt["event"] == _DONE]
        self.done_t = done["t"].to_numpy(dtype="float64")
        ok = done["ret"].fillna(0).to_numpy() >= 0
        self.ok_t = self.done_t[ok]
        self.issue_t = jt.loc[jt["event"] == _ISSUE, "t"].to_numpy(dtype="float64")
        err = list(self.done_t[~ok])
        if events is not None and len(events):
            e = events[(events["name"] == marks.BLOCK_JOB_ERROR) & (events["job"] == job)]
            err += list(e["t"].astype("float64"))
        self.error_t = np.sort(np.asarray(err, dtype="float64"))
        self._s0 = ln["sleep"]["t"].to_numpy(dtype="float64")
        self._sd = ln["sleep"]["value"].to_numpy(dtype="float64")
        self._s_cum = np.concatenate([[0.0], np.cumsum(self._sd)])
        self._lat: tuple[np.ndarray, np.ndarray] | None = None

    def __bool__(self) -> bool:
        return not self.rows.empty

    def _busy_until(self, x: np.ndarray) -> np.ndarray:
        """Seconds with a request in flight from the first traced request up to each x."""
        if not len(self._t):
            return np.zeros_like(x)
        k = np.searchsorted(self._t, x, side="right") - 1
        kc = np.clip(k, 0, None)
        out = self._busy_cum[kc] + (x - self._t[kc]) * self._busy[kc]
        return np.asarray(np.where(k < 0, 0.0, out), dtype="float64")

    def in_flight_share(self, a: Any, b: Any) -> np.ndarray:
        """Share of each [a, b] with at least one request in flight."""
        lo: np.ndarray = np.asarray(a, dtype="float64")
        hi: np.ndarray = np.asarray(b, dtype="float64")
        share: np.ndarray = (self._busy_until(hi) - self._busy_until(lo)) / np.maximum(hi - lo, 1e-12)
        return share

    def _slept_until(self, x: np.ndarray) -> np.ndarray:
        if not len(self._s0):
            return np.zeros_like(x)
        k = np.searchsorted(self._s0, x, side="right") - 1
        kc = np.clip(k, 0, None)
        out = self._s_cum[kc] + np.minimum(x - self._s0[kc], self._sd[kc])
        return np.asarray(np.where(k < 0, 0.0, out), dtype="float64")

    def slept(self, a: Any, b: Any) -> np.ndarray:
        """Seconds of each [a, b] the job slept for its speed limit (traced sleeps)."""
        lo: np.ndarray = np.asarray(a, dtype="float64")
        hi: np.ndarray = np.asarray(b, dtype="float64")
        out: np.ndarray = self._slept_until(hi) - self._slept_until(lo)
        return out

    @staticmethod
    def count(times: np.ndarray, a: float, b: float) -> int:
        return int(np.searchsorted(times, b, side="right") - np.searchsorted(times, a))

    def errors(self, a: float, b: float) -> bool:
        """Requests failed, or a BLOCK_JOB_ERROR came, in [a - 1 s, b]."""
        return self.count(self.error_t, a - 1.0, b) > 0

    def _latencies(self) -> tuple[np.ndarray, np.ndarray]:
        """(completion time, seconds from issue to completion) of each answered request,
        paired by offset (computed once, for target outages only)."""
        if self._lat is None:
            jt = self.rows
            issued = jt.loc[jt["event"] == _ISSUE, ["t", "offset"]].dropna().sort_values("t")
            done = jt.loc[(jt["event"] == _DONE) & (jt["ret"].fillna(0) >= 0),
                          ["t", "offset"]].dropna().sort_values("t")
            if len(issued) and len(done):
                pair = pd.merge_asof(done.rename(columns={"t": "t_done"}).assign(
                    t=done["t"].to_numpy()), issued.rename(columns={"t": "t_issue"}).assign(
                    t=issued["t"].to_numpy()), on="t", by="offset", direction="backward")
                pair = pair.dropna(subset=["t_issue"])
                self._lat = (pair["t_done"].to_numpy(dtype="float64"),
                             (pair["t_done"] - pair["t_issue"]).to_numpy(dtype="float64"))
            else:
                self._lat = (np.zeros(0), np.zeros(0))
        return self._lat

    def onset(self, b: float) -> dict[str, float | None]:
        """Where a target outage began: after the last request answered before *b*, and
        before the first request issued after it (which never was answered) could have
        been answered: its issue time plus the longest time the target took to answer in
        the 2 s before, answers held up by an earlier outage (over 10x the median) left out
        (a server that stops a moment after a request went out leaves it unanswered too)."""
        k = np.searchsorted(self.ok_t, b, side="right")
        last = float(self.ok_t[k - 1]) if k else None
        lo = np.searchsorted(self.issue_t, last, side="right") if last is not None else 0
        hi = np.searchsorted(self.issue_t, b, side="right")
        first = float(self.issue_t[lo]) if lo < hi else last
        latest = first
        if first is not None and last is not None and first > last:
            t_done, lat = self._latencies()
            recent = lat[(t_done <= last) & (t_done >= last - 2.0)]
            if len(recent):     # the slowest ordinary answer; not one held by an outage
                recent = recent[recent <= 10 * float(np.median(recent))]
            latest = first + (float(recent.max()) if len(recent) else 0.0)
        width = None if latest is None or last is None else round(latest - last, 6)
        return {"onset": first, "onset_latest": latest, "last_completed": last,
                "onset_width": width}


def _backlog_periods(js: pd.DataFrame, min_duration: float, threshold: int) -> list[tuple[float, float]]:
    """Stretches before READY of at least *min_duration* s in which the backlog
    (:func:`series.backlog`, len's momentary dips taken out) did not fall by *threshold*
    bytes while the offset advanced (the guest keeps up with the copy)."""
    if js.empty:
        return []
    t = js["t"].to_numpy(dtype="float64")
    off = js["offset"].to_numpy(dtype="int64")
    rem = series.backlog(js)
    ok = (~series.is_paused(js) & (js["status"] == "running")
          & ~js["ready"].fillna(False).astype(bool)).to_numpy() & (rem > 0)
    return [(float(t[i]), float(t[j]))
            for i, j in series.flat_stretches(t, -rem, ok, min_duration, threshold)
            if off[j] - off[i] >= threshold]


#: the grid classify() paints causes on (seconds)
STEP = 0.05
#: which cause wins where periods overlap (first wins)
PRIORITY = ("error", "paused", "target", "dirtying", "throttled", "unknown")
#: a traced sleep longer than this is QEMU printing a negative delay unsigned
MAX_SLEEP = 3600.0
#: throttled stretches are found in bins this long
BIN = 0.5
#: a target whose answers (the median of a bin's) take this long or longer is slow: a
#: local disk or a healthy NBD server answers a mirror's write in milliseconds
SLOW_ANSWER_S = 0.1


def _stopped_on_error(events: pd.DataFrame, job: str) -> list[tuple[float, float]]:
    """From each BLOCK_JOB_ERROR whose action was ``stop`` until QEMU said the job runs
    again (or ended): a pause too short for a sample to see is still there."""
    if events is None or events.empty:
        return []
    ev = events[events["job"] == job].sort_values("t", kind="stable")
    err = ev[ev["name"] == marks.BLOCK_JOB_ERROR]
    again = ev[((ev["name"] == "JOB_STATUS_CHANGE") & ev["status"].isin(("running", "ready",
                                                                          "concluded")))
               | ev["name"].isin(marks.JOB_ENDED)]["t"].to_numpy(dtype="float64")
    out = []
    for t, raw in zip(err["t"], err["data"]):
        if series.event_data({"data": raw}).get("action") != "stop":
            continue
        k = int(np.searchsorted(again, t, side="right"))
        end = float(again[k]) if k < len(again) else float(ev["t"].max())
        out.append((float(t), max(end, float(t) + STEP)))
    return out


def _slow_target_stretches(js: pd.DataFrame, tr: JobTrace, min_duration: float
                           ) -> list[tuple[float, float, float]]:
    """Stretches before READY of at least *min_duration* s, in bins of :data:`BIN` s, in
    which requests were in flight nearly all the time (not sleeping for a limit) and the
    answers that came took :data:`SLOW_ANSWER_S` or more (the median of those within half
    a bin of it): (start, end, median answer time in ms)."""
    running = js[(js["status"] == "running") & ~js["ready"].fillna(False).astype(bool)]
    if running.empty or not tr:
        return []
    t_done, lat = tr._latencies()
    if not len(lat):
        return []
    rt = running["t"].to_numpy(dtype="float64")
    t0, t1 = float(rt.min()), float(rt.max())
    a = np.arange(t0, t1, BIN)
    b = np.minimum(a + BIN, t1)
    # the answers in and around each bin (half a bin either side: a slow link answers a
    # few a second)
    lo = np.searchsorted(t_done, a - BIN / 2)
    hi = np.searchsorted(t_done, b + BIN / 2, side="right")
    median = np.array([float(np.median(lat[i:j])) if j > i else 0.0 for i, j in zip(lo, hi)])
    busy = (tr.in_flight_share(a, b) >= 0.8) & (tr.slept(a, b) < 0.3 * (b - a))
    on = busy & (median >= SLOW_ANSWER_S)
    out: list[tuple[float, float, float]] = []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], on.astype(np.int8), [0]])))
    for i, j in zip(edges[::2], edges[1::2]):
        start, end = float(a[i]), float(b[j - 1])
        if end - start >= min_duration:
            out.append((start, end, round(float(np.median(median[i:j])) * 1e3, 1)))
    return out


def _throttled_stretches(js: pd.DataFrame, tr: JobTrace, min_duration: float
                         ) -> list[tuple[float, float]]:
    """Stretches before READY of at least *min_duration* s, in bins of :data:`BIN` s, in
    which the job mostly slept for its speed limit: traced sleeps (QEMU 7.2), or no request
    in flight while limited (10.0's rate limiter sleeps without a trace point)."""
    limited = js[(js["speed"].fillna(0) > 0) & (js["status"] == "running")
                 & ~js["ready"].fillna(False).astype(bool)]
    if limited.empty or not tr:
        return []
    lt = limited["t"].to_numpy(dtype="float64")
    t0, t1 = float(lt.min()), float(lt.max())
    a = np.arange(t0, t1, BIN)
    b = np.minimum(a + BIN, t1)
    has = np.searchsorted(lt, b, side="right") > np.searchsorted(lt, a)
    asleep = (tr.slept(a, b) >= 0.5 * (b - a)) | (tr.in_flight_share(a, b) < 0.5)
    on = has & asleep
    out: list[tuple[float, float]] = []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], on.astype(np.int8), [0]])))
    for i, j in zip(edges[::2], edges[1::2]):
        start, end = float(a[i]), float(b[j - 1])
        if end - start >= min_duration:
            out.append((start, end))
    return out


def classify(run: RunData, job: str | None = None, *, min_duration: float = 2.0,
             threshold: int = 64 * 1024) -> pd.DataFrame:
    """Every hold-up of *job* (default: the first) with its cause (see the module doc),
    as non-overlapping periods: where causes overlap, :data:`PRIORITY` decides.

    Columns: start, end, duration, cause, job, onset (for ``target``: the first request
    left unanswered, where the outage had begun), last_completed (the last request
    answered before it), completed (requests completed inside), in_flight_share, sleep_s."""
    samples, events = run.samples, run.events
    names = series.jobs(samples)
    if job is None:
        if not names:
            return pd.DataFrame(columns=COLUMNS)
        job = names[0]
    js = series.job_samples(samples, job)
    tr = JobTrace(job_trace(run.trace, events, job), events, job)
    found: list[dict[str, Any]] = []
    st = series.stalls(js, job, min_duration=min_duration, threshold=threshold)
    found += _stall_rows(tr, job, st["start"].to_numpy(dtype="float64"),
                         st["end"].to_numpy(dtype="float64"),
                         st["speed"].to_numpy(dtype="int64"))
    io_bad = js["io_status"].fillna("ok") != "ok"
    t = js["t"].to_numpy(dtype="float64")
    for a, b in zip(*(series.paused_periods(js, job)[c] for c in ("start", "end"))):
        during = io_bad[(js["t"] >= a) & (js["t"] <= b)]
        k = int(np.searchsorted(t, b, side="right"))
        b = float(t[k]) if k < len(t) else b      # paused until the next sample said not
        cause = "error" if during.any() or tr.errors(a, b) else "paused"
        found.append(_row(float(a), float(b), cause, job))
    for a, b in _stopped_on_error(events, job):
        found.append(_row(a, b, "error", job))
    for a, b in _backlog_periods(js, min_duration, threshold):
        found.append(_row(a, b, "dirtying" if tr else "unknown", job))
    for a, b in _throttled_stretches(js, tr, min_duration):
        found.append(_row(a, b, "throttled", job))
    for a, b, ms in _slow_target_stretches(js, tr, min_duration):
        found.append(_row(a, b, "target", job, latency_ms=ms))
    return _paint(found)


def _paint(found: list[dict[str, Any]]) -> pd.DataFrame:
    """Overlapping periods -> one cause per moment (a grid of :data:`STEP` s)."""
    if not found:
        return pd.DataFrame(columns=COLUMNS)
    t0 = lo = min(r["start"] for r in found)
    hi = max(r["end"] for r in found)
    n = int(np.ceil((hi - t0) / STEP)) + 1
    grid = np.full(n, len(PRIORITY), dtype=np.int64)
    src = np.full(n, -1, dtype=np.int64)
    for k, r in enumerate(found):
        i, j = int(round((r["start"] - t0) / STEP)), int(round((r["end"] - t0) / STEP))
        rank = PRIORITY.index(r["cause"])
        cells = slice(i, j + 1)
        better = grid[cells] > rank
        grid[cells] = np.where(better, rank, grid[cells])
        src[cells] = np.where(better, k, src[cells])
    rows: list[dict[str, Any]] = []
    # runs of one cause: where the cell's cause changes, and where each run ends
    starts = np.flatnonzero(np.concatenate([[True], grid[1:] != grid[:-1]]))
    ends = np.concatenate([starts[1:], [n]]) - 1
    for i, j in zip(starts.tolist(), ends.tolist()):
        if grid[i] == len(PRIORITY):
            continue
        origin = found[int(src[i])]
        a, b = max(t0 + i * STEP, lo), min(t0 + j * STEP, hi)
        row = dict(origin) | {"start": a, "end": b, "duration": b - a,
                              "cause": PRIORITY[int(grid[i])]}
        if row["cause"] != origin["cause"]:
            row.update(onset=None, last_completed=None)
        rows.append(row)
    out = pd.DataFrame(rows, columns=COLUMNS)
    return out[out["duration"] > 0].reset_index(drop=True)


def _row(a: float, b: float, cause: str, job: str, **extra: Any) -> dict[str, Any]:
    return {"start": a, "end": b, "duration": b - a, "cause": cause, "job": job,
            "onset": None, "onset_latest": None, "last_completed": None, "onset_width": None,
            "completed": None,
            "in_flight_share": None, "sleep_s": None, "latency_ms": None, **extra}


def _stall_rows(tr: JobTrace, job: str, a: np.ndarray, b: np.ndarray, speed: np.ndarray
                ) -> list[dict[str, Any]]:
    """The flat-offset stalls [a, b], classified: error, target, throttled, dirtying or
    unknown (every question asked of all stalls at once: a long run has thousands)."""
    if not len(a):
        return []
    errors = np.searchsorted(tr.error_t, b, side="right") > np.searchsorted(tr.error_t, a - 1.0)
    if not tr:
        return [_row(float(x), float(y), "error" if e else "unknown", job)
                for x, y, e in zip(a, b, errors)]
    share = tr.in_flight_share(a, b)
    slept = tr.slept(a, b)
    done = np.searchsorted(tr.done_t, b, side="right") - np.searchsorted(tr.done_t, a)
    late_done = np.searchsorted(tr.done_t, b, side="right") - \
        np.searchsorted(tr.done_t, a + (b - a) / 2)
    target = ~errors & (share >= 0.8) & (late_done == 0)
    throttled = ~errors & ~target & (speed > 0) & ((slept >= 0.3 * (b - a)) | (share < 0.5))
    dirtying = ~errors & ~target & ~throttled & (done > 0)
    cause = np.select([errors, target, throttled, dirtying],
                      ["error", "target", "throttled", "dirtying"], "unknown")
    out = []
    for k in range(len(a)):
        extra: dict[str, Any] = {"completed": int(done[k]),
                                 "in_flight_share": round(float(share[k]), 3),
                                 "sleep_s": round(float(slept[k]), 3)}
        if target[k]:
            extra.update(tr.onset(float(b[k])))
        out.append(_row(float(a[k]), float(b[k]), str(cause[k]), job, **extra))
    return out


def time_per_cause(periods: pd.DataFrame) -> dict[str, float]:
    """Seconds of hold-up per cause (every cause present, 0.0 when none)."""
    out = {c: 0.0 for c in CAUSES}
    if periods is not None and len(periods):
        for cause, d in periods.groupby("cause")["duration"].sum().items():
            out[str(cause)] = float(d)
    return out


def outage_onset(periods: pd.DataFrame) -> float | None:
    """When the first target outage was first seen: its first unanswered request, if any."""
    if periods is None or periods.empty:
        return None
    on = periods.loc[periods["cause"] == "target", "onset"].dropna()
    return float(on.iloc[0]) if len(on) else None


def outage_onset_interval(periods: pd.DataFrame) -> tuple[float, float] | None:
    """The first target outage's onset interval: from the last request answered to the
    latest moment the first unanswered one could have been answered; the outage began
    inside it.  None: no target outage."""
    if periods is None or periods.empty or "last_completed" not in periods:
        return None
    rows = periods[(periods["cause"] == "target") & periods["onset"].notna()]
    if not len(rows):
        return None
    first = rows.iloc[0]
    hi = float(first["onset_latest"]) if "onset_latest" in first and \
        pd.notna(first["onset_latest"]) else float(first["onset"])
    lo = float(first["last_completed"]) if pd.notna(first["last_completed"]) else hi
    return lo, hi


def cause_at(periods: pd.DataFrame, t: float) -> str | None:
    """The cause of the hold-up under way at *t*, if any."""
    if periods is None or periods.empty:
        return None
    hit = periods[(periods["start"] <= t) & (periods["end"] >= t)]
    return str(hit["cause"].iloc[0]) if len(hit) else None
