"""Will this mirror converge?  The online predictor a live wait feeds the job's samples.

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
**stalled** (a dead target, a pause), which is another question (:mod:`kvmlab.analysis.causes`).
A job with no speed limit whose remaining bytes hover near zero for long, copying as fast
as the guest dirties (a guest writing as fast as the link carries), is **hovering**: READY
comes only in a lull of the guest's writes, which no rate can promise or rule out, so it is
neither an ETA nor "will not converge".

The predictor is careful before it says "diverging": it needs :attr:`Predictor.evidence`
seconds of samples; near zero it judges over a long window that covers several of a bursty
guest's bursts (a job the guest leaves idle between bursts gets READY in one of those
moments); and the state must hold for :attr:`Predictor.confirm` seconds.  Its accuracy is
measured on held-out recordings (``benchmarks/predictor.py``), not assumed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from kvmlab import rates
from kvmlab.units import MIB

#: the verdicts, in the order a job usually passes through them
STATES = ("unknown", "converging", "hovering", "diverging", "stalled", "paused", "ready",
          "ended")


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
    eta_low_s: float | None = None        #: the ETA's honest range: READY is expected
    eta_high_s: float | None = None       #: between these (see :class:`Predictor`)
    stream: str = "disk"                  #: ``disk`` (a mirror) or ``ram`` (a migration)

    @property
    def net_rate(self) -> float | None:
        """Bytes/s remaining falls (copy minus dirty)."""
        if self.copy_rate is None or self.dirty_rate is None:
            return None
        return self.copy_rate - self.dirty_rate

    def text(self) -> str:
        """One phrase for a progress line: ``ETA 12 s`` or ``will not converge: ...``."""
        if self.state == "converging" and self.eta_s is not None:
            if self.eta_low_s is not None and self.eta_high_s is not None \
                    and round(self.eta_high_s) > round(self.eta_low_s):
                return f"ETA {self.eta_low_s:.0f}–{self.eta_high_s:.0f} s"
            return f"ETA {self.eta_s:.0f} s"
        if self.state == "diverging" and self.stream == "ram":
            return (f"RAM will not converge: dirtying {_rate(self.dirty_rate)} over "
                    f"{_rate(self.copy_rate)} ({self.remaining / MIB:.1f} MiB left)")
        if self.state == "diverging":
            return (f"will not converge at current rates (copy {_rate(self.copy_rate)}, "
                    f"guest dirtying {_rate(self.dirty_rate)}, "
                    f"{self.remaining / MIB:.1f} MiB left)")
        if self.state == "hovering":
            return (f"hovering near READY ({self.remaining / MIB:.1f} MiB left; copy "
                    f"{_rate(self.copy_rate)} ≈ guest dirtying {_rate(self.dirty_rate)}): "
                    "READY needs a lull in the guest's writes")
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
    :param hover_limit: near zero this many seconds without READY (and no speed limit) is
        no longer "a moment away": it is said to be ``hovering`` (READY only in a lull of
        the guest's writes: a coin toss that no rate decides, so not "diverging").
    :param quantize: the ETA adds this many typical gaps between steps (a rate-limited
        mirror copies in steps seconds apart, so the last bytes land a step later than a
        smooth rate says).
    :param long_window: seconds a "will not converge" verdict is judged over: longer
        than the short window, so that it covers several of a bursty guest's bursts
        (stretched to 3 of its typical quiet gaps).
    :param busy: under a speed limit, a job is said to diverge only when, over the long
        window, it copied at this share of its limit or more and its remaining bytes did
        not fall.  READY needs a moment with nothing dirty: a guest that writes in bursts
        leaves the job idle between them (a share well under 1), one that dirties as fast
        as the job may copy never does.  Without a limit: remaining that does not fall,
        or (``hovering``) near zero for :attr:`hover_limit` seconds.
    :param fall: "did not fall" means by less than this share of what was copied.
    :param patience: waits this many times longer before "diverging" (the long window,
        the hover limit and the confirmation): fewer, later alarms.
    :param eta_low, eta_high: the ETA's range is [ETA x eta_low, ETA x eta_high].

    The defaults were chosen on the tuning and development recordings in
    ``benchmarks/data/predictor`` (``benchmarks/sweeps/predictor-{tuning,development}.yaml``)
    and are scored on the evaluation ones, cases they were never chosen on
    (``benchmarks/predictor.py``).
    """

    def __init__(self, window: float = 8.0, evidence: float = 6.0, confirm: float = 3.0,
                 hover_s: float = 2.0, progress: int = 64 * 1024, bursts: float = 2.5,
                 quantize: float = 1.0, hover_limit: float = 10.0, busy: float = 0.9,
                 long_window: float = 15.0, fall: float = 0.2, patience: float = 1.0,
                 eta_low: float = 0.5, eta_high: float = 2.3) -> None:
        if patience <= 0:
            raise ValueError(f"patience={patience!r} must be positive")
        self.window, self.evidence = window, evidence
        self.confirm = confirm * patience
        self.quantize = quantize
        self.hover_limit = hover_limit * patience
        self.busy, self.fall, self.patience = busy, fall, patience
        self.long_window = long_window * patience
        self.eta_low, self.eta_high = eta_low, eta_high
        self._long: deque[tuple[float, int, int]] = deque()
        self._quiet: deque[float] = deque(maxlen=6)     #: recent gaps with len still
        self._last_rise: float | None = None
        self._speed = 0
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
            paused: bool = False, status: str = "running", speed: int = 0,
            active: bool = False) -> Outlook:
        """One sample of the job (*speed*: its limit, bytes/s, 0 for none; *active*: it
        copies in ``write-blocking`` mode); returns the outlook after it.

        In write-blocking mode QEMU counts every guest write in both counters as it
        mirrors it (``offset`` and ``len`` grow together), so the offset advances while
        the background copy waits: for a rate limit's debt (a first burst it sleeps
        off), or for a slow target.  The guest cannot add to the backlog then; only the
        remaining bytes' fall is the copy's progress.  A backlog that holds still is
        ``stalled``, and one that grows (a failed target write dirties its area again)
        is ``diverging``."""
        if self._first is None:
            self._first = t
        self._speed = int(speed or 0)
        self._track_long(t, int(offset), int(length))
        rows = self._rows
        if rows and (length - offset) < (rows[-1][2] - rows[-1][1]):
            self._falls.append(t)
        rows.append((t, int(offset), int(length)))
        while len(rows) > 2 and t - rows[1][0] >= self._span(t):
            rows.popleft()
        remaining = max(0, int(length) - int(offset))
        t0, off0, len0 = rows[0]
        copy = dirty = eta = None
        if t - t0 > 0:
            ts = [r[0] for r in rows]
            span = t - t0
            copy = max(0.0, rates.latest(ts, [r[1] for r in rows], span) or 0.0)
            dirty = max(0.0, rates.latest(ts, [r[2] for r in rows], span) or 0.0)
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
        elif active:
            state = self._active_state(remaining, len0 - off0)
            if state == "converging" and remaining > 0 and copy - dirty > 0:
                eta = remaining / (copy - dirty) + self._step_gap()
        elif (stuck := self._will_not_finish(t, remaining, copy)) is not None:
            # the guest keeps the job copying at its limit and the backlog does not fall:
            # whatever it copies is dirtied again, so READY never comes (or, near zero
            # without a limit, only in a lull: hovering)
            state = stuck
        elif remaining > 0 and copy - dirty > 0:
            state = "converging"
            eta = remaining / (copy - dirty) + (self._step_gap() if remaining else 0.0)
        elif remaining > copy * self.hover_s:
            state = "diverging"        # a backlog of seconds of copying, and it grows
        else:
            state = "converging"       # near zero, or idle between bursts: READY comes
        state = self._settle(state, t)
        if state == "diverging":
            eta = None
        low = high = None
        if eta is not None and state == "converging":
            low, high = eta * self.eta_low, eta * self.eta_high
        self.last = Outlook(t, state, remaining, copy, dirty, eta, self._since, low, high)
        return self.last

    def _track_long(self, t: float, offset: int, length: int) -> None:
        """Keep the samples of the long window, and the guest's quiet gaps (len still)."""
        rows = self._long
        if rows and length > rows[-1][2]:
            if self._last_rise is not None and t - self._last_rise > 0:
                self._quiet.append(t - self._last_rise)
            self._last_rise = t
        rows.append((t, offset, length))
        span = self._long_span()
        while len(rows) > 2 and t - rows[1][0] >= span:
            rows.popleft()

    def _long_span(self) -> float:
        """The long window, stretched to 3 of the guest's typical quiet gaps (the median of
        the last few: one long gap, as the bulk copy's end, is no burst period)."""
        gaps = sorted(self._quiet)
        typical = gaps[len(gaps) // 2] if gaps else 0.0
        return max(self.long_window, 3 * self.patience * typical)

    def _long_full(self) -> bool:
        """The long window holds (nearly) its whole span: enough to judge a trend by."""
        rows = self._long
        return len(rows) >= 2 and rows[-1][0] - rows[0][0] >= self._long_span() * 0.95

    def busy_share(self) -> float | None:
        """How busy the job was over the long window: bytes copied per second as a share of
        its speed limit (None: no limit, or the window is not yet full)."""
        rows = self._long
        if not self._speed or not self._long_full():
            return None
        span = rows[-1][0] - rows[0][0]
        copy = rates.latest([r[0] for r in rows], [r[1] for r in rows], span) or 0.0
        return max(0.0, copy) / self._speed

    def _will_not_finish(self, t: float, remaining: int, copy: float) -> str | None:
        """``diverging``: over the long window the backlog did not fall, and the job copied
        at its limit (under a speed limit) or, without one, the backlog stayed large;
        ``hovering``: without a limit, near zero for the hover limit; else None."""
        if not self._long_full():
            return None
        rows = self._long
        copied = rows[-1][1] - rows[0][1]
        fell = (rows[0][2] - rows[0][1]) - (rows[-1][2] - rows[-1][1])
        if fell > self.fall * copied:
            self._hover_t = None
            return None
        share = self.busy_share()
        if share is not None:
            return "diverging" if share >= self.busy else None
        # no limit: a backlog that stays large, or one near zero that never reaches READY
        if remaining > copy * self.hover_s:
            self._hover_t = None
            return "diverging"
        if self._hover_t is None:
            self._hover_t = t
        return "hovering" if t - self._hover_t >= self.hover_limit else None

    def _active_state(self, remaining: int, before: int) -> str:
        """A write-blocking job's state from its backlog alone (*before*: the remaining
        bytes at the window's start): ``diverging`` when it grew over the long window,
        ``stalled`` when it fell by less than :attr:`progress` over the short one."""
        rows = self._long
        if self._long_full() and remaining - (rows[0][2] - rows[0][1]) >= self.progress:
            return "diverging"
        if remaining < self.progress or before - remaining >= self.progress:
            return "converging"            # about to be ready, or the backlog falls
        return "stalled"

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
        self._long.clear()
        self._quiet.clear()
        self._last_rise = None
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


class RamPredictor:
    """Online convergence verdict for a migration's RAM stream (feed :meth:`add` every
    ``query-migrate`` sample of the source).

    RAM is sent in passes: after the first, each pass sends what the guest dirtied during
    the last, and QEMU stops the VM for the switchover once what is left fits in the
    downtime limit at the link's rate.  A guest that dirties pages as fast as they are
    sent keeps every pass as big as the last: **"RAM will not converge: dirtying X MiB/s
    over Y MiB/s"**.  The transfer rate is how fast ``ram.transferred`` grows over the
    window; the dirty rate is QEMU's ``dirty-pages-rate`` times the page size.

    :param window: seconds of samples the transfer rate is measured over.
    :param passes: a verdict only once QEMU has synced the dirty bitmap this many times
        (the first pass sends all of RAM; it says nothing of the dirtying).
    :param busy: "diverging" when the dirty rate is at least this share of the transfer
        rate (QEMU counts each page dirtied since the last sync once, so a guest that
        outpaces the link shows a dirty rate about equal to it: every pass as big as the
        last)...
    :param confirm: ...and that held this many seconds.
    """

    def __init__(self, window: float = 3.0, passes: int = 3, busy: float = 0.9,
                 confirm: float = 2.0) -> None:
        self.window, self.passes, self.busy, self.confirm = window, passes, busy, confirm
        self._rows: deque[tuple[float, int, int]] = deque()
        self._pending: float | None = None
        self._state = "unknown"
        self._since: float | None = None
        self.last: Outlook | None = None
        #: when each state was first said (seconds, the caller's clock)
        self.first_seen: dict[str, float] = {}

    def add(self, t: float, status: str, transferred: int | None, remaining: int | None,
            dirty_pages_rate: float | None, page_size: int | None = None,
            sync_count: int | None = None) -> Outlook:
        """One ``query-migrate`` sample (its ``ram`` fields); the outlook after it."""
        rem = int(remaining or 0)
        if status == "completed":
            state, rate, dirty = "ready", None, None
        elif status != "active" or transferred is None:
            state, rate, dirty = ("unknown" if status in ("setup", "") else "ended"), None, None
        else:
            rows = self._rows
            rows.append((t, int(transferred), rem))
            while len(rows) > 2 and t - rows[1][0] >= self.window:
                rows.popleft()
            rate = rates.latest([r[0] for r in rows], [r[1] for r in rows], self.window,
                                min_span=self.window * 0.8)
            dirty = float(dirty_pages_rate or 0) * int(page_size or 4096)
            if rate is None or int(sync_count or 0) < self.passes:
                state = "unknown"
            elif dirty >= self.busy * rate:
                state = "diverging"
            else:
                state = "converging"
        if state == "diverging" and self._state != "diverging":
            self._pending = t if self._pending is None else self._pending
            if t - self._pending < self.confirm:
                state = self._state
        elif state != "diverging":
            self._pending = None
        if state != self._state:
            self._state = state
            self._since = self._pending if state == "diverging" and self._pending else t
            self.first_seen.setdefault(state, t)
        eta = None
        if state == "converging" and rate and dirty is not None and rate > dirty:
            eta = rem / (rate - dirty)
        self.last = Outlook(t, state, rem, rate, dirty, eta, self._since, stream="ram")
        return self.last


def ram_outlook(pred: RamPredictor, row: Mapping[Any, Any]) -> Outlook:
    """Feed one ``query-migrate`` sample, as the migration's time series keeps it (``t``,
    ``status``, ``ram_transferred``, ``ram_remaining``, ``ram_dirty_pages_rate``,
    ``ram_page_size``, ``ram_dirty_sync_count``), to *pred*."""
    def num(key: str) -> Any:
        v = row.get(key)
        return None if v is None or v != v else v       # (NaN from a parquet column)
    return pred.add(float(row["t"]), str(row.get("status") or ""), num("ram_transferred"),
                    num("ram_remaining"), num("ram_dirty_pages_rate"), num("ram_page_size"),
                    num("ram_dirty_sync_count"))
