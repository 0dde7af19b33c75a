"""Following a notebook run from outside, as ``virsh blockjob --wait --verbose`` does.

``kvmlab run`` executes the notebook in a kernel process; the experiment's recorder writes
its journals (``samples.jsonl``, ``events.jsonl``) into the run folder as it goes (every
0.1 s).  :class:`RunWatcher` reads what is new in them once a second and renders one live
line (cell, job state, offset/len, copy rate, ETA) plus a log line per experiment step or
QEMU job event.  :func:`outcome` reads the finished run folder(s) into PASS or FAIL.

This is display only: it reads files the recorder wrote, and never talks to QEMU.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmlab import marks, rates
from kvmlab.analysis.converge import Predictor
from kvmlab.analysis.series import event_data
from kvmlab.units import MIB

#: steps too routine to be worth a log line
QUIET_MARKS = frozenset({marks.RECORDER_START, marks.RECORDER_STOP, marks.ATTACH})
#: QEMU events worth a log line (JOB_STATUS_CHANGE is too chatty: the job states are in
#: the live line)
JOB_ENDS = frozenset(marks.JOB_ENDED)
LOUD_QMP = ("BLOCK_JOB_", "BLOCK_IO_ERROR", "STOP", "RESUME", "SHUTDOWN", "libvirt:")


class Journal:
    """The complete lines appended to a JSON-lines file since the last :meth:`read`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except OSError:
            return []
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()              # an incomplete last line waits
        rows = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows


@dataclass
class JobView:
    """The latest ``query-block-jobs`` rows of one job, enough for a rate over ~1 s."""

    name: str
    rows: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=64))
    ended: str | None = None               #: the event that ended it (completed...)
    #: will it converge? fed every sample (see :mod:`kvmlab.analysis.converge`)
    predictor: Predictor = field(default_factory=Predictor)
    #: it copies in write-blocking mode (its start's or switch's mark says so)
    active: bool = False

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if row.get("t") is not None and row.get("offset") is not None and row.get("len") is not None:
            self.predictor.add(float(row["t"]), int(row["offset"]), int(row["len"]),
                               ready=bool(row.get("ready")), paused=bool(row.get("paused")),
                               status=str(row.get("status") or "running"),
                               speed=int(row.get("speed") or 0), active=self.active)

    def rate(self, window: float = 1.0) -> float | None:
        """Bytes/s copied over the last *window* seconds of samples (None: less than half a
        window held); the one definition of the copy rate, :func:`kvmlab.rates.latest`."""
        rows = [r for r in self.rows if r.get("t") is not None and r.get("offset") is not None]
        r = rates.latest([float(x["t"]) for x in rows], [float(x["offset"]) for x in rows],
                         window, min_span=window * 0.5)
        return None if r is None else max(0.0, r)

    def text(self) -> str:
        r = self.rows[-1]
        length, offset = r.get("len") or 0, r.get("offset") or 0
        pct = 100.0 * offset / length if length else 0.0
        state = str(r.get("status") or "?")
        if r.get("io_status") not in (None, "ok"):
            state += f" io-{r['io_status']}"
        if r.get("paused"):
            state += " paused"
        words = [f"{self.name} {r.get('type') or 'job'} {self.ended or state}",
                 f"{offset / MIB:.1f}/{length / MIB:.1f} MiB ({pct:.0f}%)"]
        rate = None if self.ended else self.rate()
        if rate is not None:
            words.append(f"{rate / MIB:.2f} MiB/s")
            out = self.predictor.last
            if r.get("ready"):
                words.append("ready")
            elif out is not None and out.state != "unknown":
                words.append(out.text())
            elif max(0, length - offset):
                words.append("measuring rates")
        return " | ".join(words)


class RunWatcher:
    """Follows the run folder(s) under *folder* while a notebook executes.

    :param show: called about once a second with the live line.
    :param log: called with each new step or job event line.
    :param cell: returns (current code cell, code cells) of the notebook, or None.
    """

    def __init__(self, folder: Path, show: Callable[[str], None], log: Callable[[str], None],
                 cell: Callable[[], tuple[int, int] | None] | None = None,
                 every: float = 1.0) -> None:
        self.folder = folder
        self._show, self._log, self._cell = show, log, cell
        self.every = every
        self._journals: dict[Path, tuple[Journal, Journal]] = {}
        self.jobs: dict[str, JobView] = {}
        self._active: dict[str, bool] = {}      #: job -> copies in write-blocking mode
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _discover(self) -> None:
        for samples in [self.folder / "samples.jsonl", *self.folder.glob("*/samples.jsonl")]:
            run = samples.parent
            if run not in self._journals and samples.exists():
                self._journals[run] = (Journal(samples), Journal(run / "events.jsonl"))
                if run != self.folder:
                    self._log(f"run {run.name}")
                self.jobs.clear()                # a new run: its own jobs
                self._active.clear()

    def poll(self) -> None:
        """Read what is new; log steps and job events."""
        self._discover()
        for run, (samples, events) in self._journals.items():
            rows, evs = samples.read(), events.read()
            for ev in evs:          # a job's mode first: the rows read with its mark follow it
                if ev.get("name") in (marks.MIRROR_START, *marks.CONDITION_CHANGES) \
                        and ev.get("job"):
                    self._condition(str(ev["job"]), ev)
            for row in rows:
                job = str(row.get("job") or "?")
                self.jobs.setdefault(job, JobView(job, active=self._active.get(job, False))).add(row)
            for ev in evs:
                if ev.get("name") in JOB_ENDS and ev.get("job") in self.jobs:
                    self.jobs[str(ev["job"])].ended = marks.LABELS.get(ev["name"], ev["name"])
                line = event_line(ev)
                if line:
                    prefix = f"[{run.name}] " if run != self.folder else ""
                    self._log(prefix + line)

    def _condition(self, job: str, ev: dict[str, Any]) -> None:
        """A job's start or a change of its conditions: its copy mode from the mark, and
        after a change a fresh predictor (as :meth:`kvmlab.live.jobs.Job.wait_ready`)."""
        mode = event_data(ev).get("copy_mode")
        if ev.get("name") == marks.MIRROR_START or mode:
            self._active[job] = mode == "write-blocking"
        view = self.jobs.get(job)
        if view is not None:
            view.active = self._active.get(job, False)
            if ev.get("name") in marks.CONDITION_CHANGES:
                view.predictor.reset()

    def line(self) -> str:
        parts = []
        where = self._cell() if self._cell else None
        if where:
            parts.append(f"cell {where[0]}/{where[1]}")
        live = [j for j in self.jobs.values() if j.rows]
        parts.extend(j.text() for j in live[-2:])
        if not live:
            parts.append("no block job yet")
        return " | ".join(parts)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.poll()
            self._show(self.line())

    def __enter__(self) -> RunWatcher:
        self._thread = threading.Thread(target=self._loop, name="kvmlab-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.poll()                              # the last steps before the verdict


def event_line(ev: dict[str, Any]) -> str | None:
    """A log line for a step or a job event, None for the routine ones."""
    name, source = str(ev.get("name") or ""), ev.get("source")
    if source == "kvmlab":
        if name in QUIET_MARKS:
            return None
    elif source in ("qmp", "libvirt"):
        if not name.startswith(LOUD_QMP):
            return None
    else:
        return None
    t = ev.get("t")
    words = [f"{t:7.2f} s" if isinstance(t, (int, float)) else "", marks.LABELS.get(name, name)]
    if ev.get("job"):
        words.append(str(ev["job"]))
    if ev.get("status"):
        words.append(str(ev["status"]))
    return "  ".join(w for w in words if w)


# -- the verdict ---------------------------------------------------------------------------
@dataclass
class Outcome:
    """PASS or FAIL of a finished notebook run, with one line per run in it; a notebook
    that recorded no run has no verdict: it only *ran*."""

    passed: bool
    lines: list[str]
    recorded: bool = True

    @property
    def label(self) -> str:
        """``PASS``, ``FAIL``, or ``RAN`` (no run recorded, so nothing was judged)."""
        return "FAIL" if not self.passed else "PASS" if self.recorded else "RAN"


def _verdict_text(verdict: dict[str, Any]) -> str:
    if verdict.get("reason"):
        return str(verdict["reason"])
    shown = [f"{k}={v}" for k, v in verdict.items()
             if k != "pass" and isinstance(v, (bool, str)) and len(str(v)) < 40]
    return ", ".join(shown[:6])


def outcome(folder: Path, error: str | None = None) -> Outcome:
    """Each run's status and verdict under *folder* (the run, or its sub-runs); PASS when
    every run is done and passed (a notebook without an experiment only RAN).
    *error*: the notebook itself failed with it."""
    runs = sorted({p.parent for p in [folder / "run.json", *folder.glob("*/run.json")]
                   if p.is_file()})
    lines, passed = [], error is None
    for run in runs:
        try:
            meta = json.loads((run / "run.json").read_text())
        except (OSError, ValueError):
            lines.append(f"FAIL {run.name}: run.json unreadable")
            passed = False
            continue
        status, verdict = meta.get("status"), meta.get("verdict") or {}
        ok = status == "done" and bool(verdict.get("pass"))
        passed = passed and ok
        if status != "done":
            detail = f"{status}: {meta.get('error') or 'no verdict'}"
        else:
            detail = _verdict_text(verdict)
        lines.append(f"{'PASS' if ok else 'FAIL'} {meta.get('experiment', run.name)} "
                     f"({run.name}): {detail}")
    if error is not None:
        lines.append(f"FAIL notebook: {error}")
    elif not runs:
        lines.append("RAN notebook: it records no experiment run, so there is no verdict")
    return Outcome(passed, lines, recorded=bool(runs))
