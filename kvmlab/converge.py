"""Will this mirror converge?  An online predictor fed the job's samples.

A mirror reaches READY when nothing is left to copy.  ``query-block-jobs`` gives two
counters: ``offset`` (bytes copied so far) and ``len`` (bytes copied plus bytes still to
copy, which grows when the guest dirties what was already copied).  Over a trailing
window of samples:

- the **copy rate** is how fast ``offset`` advances;
- the **dirty rate** is how fast ``len`` grows (the guest re-dirtying copied data);
- their difference is how fast ``remaining = len - offset`` falls.

If remaining falls, the ETA to ready is remaining over that rate.  If the job copies but
remaining does not fall, it **will not converge at current rates**: the verdict an
engineer wants instead of a timeout sized by guessing.  If nothing is copied the job is
**stalled** (a dead target, a pause), which is another question (:mod:`kvmlab.causes`).

The predictor is careful before it says "diverging": it needs :attr:`Predictor.evidence`
seconds of samples, the remaining bytes must be more than a couple of seconds of copying
(a converging job near zero hovers: its remaining cannot fall further), and the state must
hold for :attr:`Predictor.confirm` seconds.  Its accuracy is measured by the
``convergence`` sweep (``benchmarks/``), not assumed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import marks
from .analysis import job_samples, time_of
from .runs import load_run
from .units import MIB

#: the verdicts, in the order a job usually passes through them
STATES = ("unknown", "converging", "diverging", "stalled", "paused", "ready", "ended")


@dataclass(frozen=True)
class Outlook:
    """The predictor's answer at time *t* (seconds on the recording's clock)."""

    t: float
    state: str
    remaining: int
    copy_rate: float | None = None        #: bytes/s offset advanced over the window
    dirty_rate: float | None = None       #: bytes/s len grew over the window
    eta_s: float | None = None            #: seconds to ready at current rates (converging)
    since: float | None = None            #: when the current state began

    @property
    def net_rate(self) -> float | None:
        """Bytes/s remaining falls (copy minus dirty)."""
        if self.copy_rate is None or self.dirty_rate is None:
            return None
        return self.copy_rate - self.dirty_rate

    def text(self) -> str:
        """One phrase for a progress line: ``ETA 12 s`` or ``will not converge: ...``."""
        if self.state == "converging" and self.eta_s is not None:
            return f"ETA {self.eta_s:.0f} s"
        if self.state == "diverging":
            return (f"will not converge at current rates (copy {_rate(self.copy_rate)}, "
                    f"guest dirtying {_rate(self.dirty_rate)}, "
                    f"{self.remaining / MIB:.1f} MiB left)")
        if self.state == "stalled":
            return "stalled (no progress)"
        return {"unknown": "measuring rates"}.get(self.state, self.state)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"net_rate": self.net_rate}


def _rate(bps: float | None) -> str:
    return "?" if bps is None else f"{bps / MIB:.2f} MiB/s"


class Predictor:
    """Online convergence verdict for one job (feed :meth:`add` every sample).

    :param window: seconds of samples the rates are measured over.
    :param evidence: seconds of samples before any verdict but ``unknown``.
    :param confirm: seconds "diverging" must hold before it is said.
    :param hover_s: remaining below this many seconds of copying is "about to be ready",
        never diverging.
    :param progress: bytes the offset must advance over the window not to be stalled.
    :param bursts: the window covers at least this many gaps between copy steps (falls
        of the remaining bytes: in write-blocking mode the counters move with every
        guest write, but the copy still comes in steps).
    :param hover_limit: hovering near zero this many seconds without READY is no longer
        "a moment away": it is said to diverge.
    :param quantize: the ETA adds this many typical gaps between steps (a rate-limited
        mirror copies in steps seconds apart, so the last bytes land a step later than a
        smooth rate says).

    The defaults were chosen on one run of the ``convergence`` sweep and measured on
    another (``benchmarks/``).
    """

    def __init__(self, window: float = 8.0, evidence: float = 6.0, confirm: float = 3.0,
                 hover_s: float = 2.0, progress: int = 64 * 1024, bursts: float = 2.5,
                 quantize: float = 1.0, hover_limit: float = 10.0) -> None:
        self.window, self.evidence, self.confirm = window, evidence, confirm
        self.quantize = quantize
        self.hover_limit = hover_limit
        self._hover_t: float | None = None
        self.bursts = bursts
        self.hover_s, self.progress = hover_s, progress
        self._rows: deque[tuple[float, int, int]] = deque()
        self._falls: deque[float] = deque(maxlen=6)
        self._first: float | None = None
        self._state = "unknown"
        self._since: float | None = None
        self._pending: tuple[str, float] | None = None
        self.last: Outlook | None = None
        #: when each state was first said (seconds, the caller's clock)
        self.first_seen: dict[str, float] = {}

    def add(self, t: float, offset: int, length: int, *, ready: bool = False,
            paused: bool = False, status: str = "running") -> Outlook:
        """One sample of the job; returns the outlook after it."""
        if self._first is None:
            self._first = t
        rows = self._rows
        if rows and (length - offset) < (rows[-1][2] - rows[-1][1]):
            self._falls.append(t)
        rows.append((t, int(offset), int(length)))
        while len(rows) > 2 and t - rows[1][0] >= self._span(t):
            rows.popleft()
        remaining = max(0, int(length) - int(offset))
        t0, off0, len0 = rows[0]
        dt = t - t0
        copy = dirty = eta = None
        if dt > 0:
            copy = max(0.0, (offset - off0) / dt)
            dirty = max(0.0, (length - len0) / dt)
        if ready or status == "ready":
            state, eta = "ready", 0.0
        elif status in ("concluded", "null", "aborting"):
            state = "ended"
        elif paused or status in ("paused", "standby"):
            state = "paused"
        elif copy is None or dirty is None or t - self._first < self.evidence:
            state = "unknown"
        elif offset - off0 < self.progress:
            state = "stalled"
        elif self._hovering(t, remaining, copy):
            # near zero and not READY for hover_limit: the guest re-dirties what each
            # rate-limited pass copies, so the READY that looks a moment away never comes
            state = "diverging"
        elif copy - dirty > 0:
            state = "converging"
            eta = remaining / (copy - dirty) + (self._step_gap() if remaining else 0.0)
        elif remaining <= copy * self.hover_s:
            state = "converging"       # hovering near zero: READY is a moment away
        else:
            state = "diverging"
        state = self._settle(state, t)
        if state == "diverging":
            eta = None
        self.last = Outlook(t, state, remaining, copy, dirty, eta, self._since)
        return self.last

    def _hovering(self, t: float, remaining: int, copy: float) -> bool:
        """True once remaining has stayed near zero (within a few seconds of copying) for
        :attr:`hover_limit` seconds without READY."""
        if remaining > copy * self.hover_s * 4:
            self._hover_t = None
            return False
        if remaining <= copy * self.hover_s and self._hover_t is None:
            self._hover_t = t
        return self._hover_t is not None and t - self._hover_t >= self.hover_limit

    def _step_gap(self) -> float:
        """A rate-limited mirror copies in steps seconds apart; the last step comes one
        gap after the rate says the bytes are done.  0 when it copies all the time."""
        if self.quantize == 0 or len(self._falls) < 3:
            return 0.0
        f = list(self._falls)
        gaps = sorted(b - a for a, b in zip(f[:-1], f[1:]))
        return self.quantize * gaps[len(gaps) // 2]

    def reset(self) -> None:
        """Forget the samples and the state (the job changed: a switch of copy mode makes
        the rates before it no evidence about after); :attr:`first_seen` is kept."""
        self._rows.clear()
        self._falls.clear()
        self._hover_t = None
        self._first, self._state, self._since, self._pending = None, "unknown", None, None

    def _span(self, t: float) -> float:
        """The window, stretched to :attr:`bursts` times the longest gap between the last
        copy steps: a rate limited job sleeps seconds between iterations, so a short
        window would see one step or none."""
        ch = self._falls
        gaps = [b - a for a, b in zip(list(ch)[:-1], list(ch)[1:])]
        if ch:
            gaps.append(t - ch[-1])
        return max(self.window, self.bursts * max(gaps, default=0.0))

    def _settle(self, state: str, t: float) -> str:
        """Diverging only once it has held for :attr:`confirm` seconds (one noisy window
        is no verdict); every other state is taken at once."""
        if state == "diverging" and self._state != "diverging":
            if self._pending is None or self._pending[0] != state:
                self._pending = (state, t)
            if t - self._pending[1] < self.confirm:
                return self._state
            t_state = self._pending[1]
        else:
            self._pending = None
            t_state = t
        if state != self._state:
            self._state, self._since = state, t_state
            self.first_seen.setdefault(state, t)
        return state


def predict(samples: pd.DataFrame, job: str | None = None, events: pd.DataFrame | None = None,
            **kw: Any) -> pd.DataFrame:
    """The predictor replayed over a run's samples: one row per sample with t, state,
    remaining, copy_rate, dirty_rate, net_rate, eta_s, since (what was known live).
    With the run's *events*, it is reset where the copy mode was switched (``copy_mode``
    marks), as :meth:`kvmlab.jobs.Job.wait_ready` does live."""
    s = job_samples(samples, job)
    p = Predictor(**kw)
    switches = sorted(events.loc[events["name"] == marks.COPY_MODE, "t"].astype(float)) \
        if events is not None and len(events) else []
    rows = []
    cols = ("t", "offset", "len", "ready", "paused", "status")
    for t, off, ln, ready, paused, status in s[list(cols)].itertuples(index=False):
        if pd.isna(off) or pd.isna(ln):
            continue
        if switches and float(t) >= switches[0]:
            switches.pop(0)
            p.reset()
        rows.append(p.add(float(t), int(off), int(ln), ready=bool(ready is True),
                          paused=bool(paused is True), status=str(status)).as_dict())
    return pd.DataFrame(rows, columns=[*Outlook.__dataclass_fields__, "net_rate"])


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
    run that gave up on it ends a moment later); None: never.  On a job that converged
    without being switched that is a ``false_alarm``; a job switched to write-blocking
    (``switched_s``) was changed because of the verdict, so it cannot be one.
    *kw* go to :class:`Predictor`.
    """
    s = job_samples(samples, job)
    if s.empty:
        return {"job": job, "converged": None}
    job = str(s["job"].iloc[0])
    start = float(s["t"].iloc[0])
    pred = predict(s, job, events, **kw)
    ready = time_of(events, job, (marks.BLOCK_JOB_READY,), after=start)
    live = time_of(events, job, (marks.DIVERGING,), after=start)
    switched = time_of(events, job, (marks.COPY_MODE,), after=start)
    said = min((t for t in (first_verdict(pred), live) if t is not None), default=None)
    row: dict[str, Any] = {
        "job": job, "converged": ready is not None,
        "time_to_ready_s": None if ready is None else round(ready - start, 3),
        "said_diverging_s": None if said is None else round(said - start, 3),
        "switched_s": None if switched is None else round(switched - start, 3),
        "false_alarm": (ready is not None and switched is None and said is not None
                        and said < ready),
        "eta_error_s": None, "eta_error_rel": None,
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
    return row


def score_runs(folder: str | Path, **kw: Any) -> pd.DataFrame:
    """:func:`accuracy` of every recorded run under *folder* (a sweep, a notebook run or
    one run), a row each with the run's folder, QEMU build and mirror parameters."""
    rows = []
    for rj in sorted(Path(folder).rglob("run.json")):
        run = load_run(rj.parent)
        params = run.meta.get("params") or {}
        rows.append({"run": str(rj.parent.relative_to(folder)) if rj.parent != Path(folder)
                     else rj.parent.name,
                     **{k: params.get(k) for k in ("qemu", "copy_mode", "speed",
                                                    "workload_rate_kib_s", "slow_target_bps")},
                     **accuracy(run.samples, run.events, **kw)})
    return pd.DataFrame(rows)


def accuracy_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Figures over many scored runs (rows of :func:`accuracy`): for the converged ones,
    the median and worst ETA error at half-way (|relative|, and s), and how many had no ETA
    yet; for the others, when the predictor said "will not converge" (median, latest) and
    how many it never flagged (and of those, how many it still called converging when the
    run stopped waiting: slow, not stuck); and the false alarms, which must be 0."""
    conv = table[table["converged"] == True]  # noqa: E712  (a nullable column)
    div = table[table["converged"] == False]  # noqa: E712
    err = pd.to_numeric(conv["eta_error_rel"], errors="coerce")
    err_s = pd.to_numeric(conv["eta_error_s"], errors="coerce")
    said = pd.to_numeric(div["said_diverging_s"], errors="coerce")

    def r(v: float) -> float | None:
        return None if pd.isna(v) else round(float(v), 3)

    return {"runs": int(len(table)), "converged": int(len(conv)),
            "eta_error_median_rel": r(err.abs().median()),
            "eta_error_worst_rel": r(err.abs().max()),
            "eta_error_median_s": r(err_s.abs().median()),
            "eta_error_worst_s": r(err_s.abs().max()),
            "no_eta_at_half_way": int(err.isna().sum()),
            "diverged": int(len(div)),
            "said_diverging_median_s": r(said.median()),
            "said_diverging_latest_s": r(said.max()),
            "never_flagged": int(said.isna().sum()),
            "never_flagged_but_converging": int((said.isna()
                                                 & (div["last_state"] == "converging")).sum()),
            "false_alarms": int(conv["false_alarm"].fillna(False).astype(bool).sum())}


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
