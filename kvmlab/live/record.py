"""The recorder: job samples, QMP events, image sizes and guest operations, as they happen.

Four streams, each a journal (JSON lines, written out by the recorder's thread every
:data:`JOURNAL_EVERY` seconds, so a killed process loses at most that much; rows are
kept, not written, where they arrive: a 100 Hz watch pays no JSON or write there)
that becomes a parquet file when the recorder stops:

- ``samples``: ``query-block-jobs`` every *interval* seconds (default 0.1; 0.01 works);
- ``events``: every QMP event, guest console record and experiment mark;
- ``sizes``: apparent and allocated size of tracked image files (the seed's ``ll``),
  on change and at least once a second;
- ``guest_ops``: the guest's operation lines (op, path, size, sha256).

A fifth stream, ``trace``, holds QEMU's own trace events (:mod:`kvmlab.qemu.trace`) of every
attached VM that writes them.  QEMU's trace file is its journal (QEMU writes it, so a killed
run keeps it); the recorder parses it when a live view asks (:meth:`Recorder.frames`), when
:data:`TRACE_BACKLOG` bytes wait, and at stop, into ``trace.parquet`` in row groups of
:data:`TRACE_ROW_GROUP` rows, so memory stays bounded however long the run; the last
:data:`TRACE_LIVE_ROWS` rows stay in memory for live views.

Times: ``t`` is seconds since the recorder's start on the host's monotonic
clock, comparable across streams; ``wall`` is Unix time.  Recording is never
best effort: a sampling failure is recorded as an event, not swallowed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kvmlab import marks, trust
from kvmlab.backends.base import Backend, InLoopSampling
from kvmlab.errors import BadInput, KvmlabError, NoSpace
from kvmlab.events import Record
from kvmlab.guest.console import Console
from kvmlab.pacing import Pacer
from kvmlab.qemu import trace as qtrace
from kvmlab.qemu.images import file_size
from kvmlab.store.runs import FAILED, STREAMS, RunDir

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ["t", "wall", "job", "type", "len", "offset", "remaining", "speed", "busy",
                  "paused", "ready", "status", "io_status", "actively_synced"]
EVENT_COLUMNS = ["t", "wall", "source", "name", "job", "status", "qemu_time", "data"]
SIZE_COLUMNS = ["t", "wall", "label", "path", "exists", "apparent", "allocated"]
OP_COLUMNS = ["t", "wall", "op", "path", "size", "sha256", "round", "guest_t", "machine",
              "dd_s", "disk"]
COLUMNS = {"samples": SAMPLE_COLUMNS, "events": EVENT_COLUMNS, "sizes": SIZE_COLUMNS,
           "guest_ops": OP_COLUMNS}


#: longest time a row waits before its journal has it (what a killed recorder can lose);
#: the recorder thread wakes this often anyway, for the file sizes
JOURNAL_EVERY = 0.1

_JSON = json.JSONEncoder(default=str)

#: trace rows per parquet row group (what the recorder holds before writing)
TRACE_ROW_GROUP = 50_000
#: trace rows kept in memory for live views (the panel's lanes)
TRACE_LIVE_ROWS = 20_000
#: QEMU's trace is parsed when read (:meth:`Recorder.frames`), at stop, and whenever this
#: many bytes of it wait: while nobody watches, a run's CPU goes to QEMU, not to parsing
TRACE_BACKLOG = 16 << 20


#: a pause between two job samples longer than this many intervals is a ``sample_gap``
GAP_INTERVALS = 5
#: ...and longer than this (a 100 Hz recorder is held up for 50 ms by a busy host often)
GAP_MIN_S = 0.5


def gap_reason(gap: float, wall_delta: float, cpu_delta: float, boot_delta: float) -> str:
    """Why no sample came for *gap* seconds of the monotonic clock, from what the other
    clocks did meanwhile: the host slept (the boot clock ran on), the process was stopped
    (it used no CPU at all: SIGSTOP, a debugger), or it was only held up."""
    if boot_delta - gap > 1.0:
        return f"the host was suspended for {boot_delta - gap:.1f} s"
    if cpu_delta < 0.01 * gap:
        reason = "the recording process was stopped (it used no CPU)"
    else:
        reason = "the recording process was held up (a busy host)"
    if abs(wall_delta - gap) > 1.0:
        reason += f"; the wall clock jumped by {wall_delta - gap:+.1f} s"
    return reason


#: rows of each stream kept in memory for live views (:meth:`Recorder.live_frames`); the
#: whole stream is in its journal, so a long run's memory stays flat
LIVE_ROWS = 20_000


class _Stream:
    """One stream: its rows go to a JSON-lines journal (whole lines, every
    :data:`JOURNAL_EVERY`), and only the last :data:`LIVE_ROWS` stay in memory.
    :meth:`add` only keeps the row; :meth:`flush` writes the rows not yet in the journal;
    :meth:`rows` reads the whole stream back.  A full disk stops the journal (the rows then
    wait in memory) and is kept in :attr:`error`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending: list[dict[str, Any]] = []
        self.recent: deque[dict[str, Any]] = deque(maxlen=LIVE_ROWS)
        self.error: KvmlabError | None = None
        with trust.writing(path.parent, path.name):
            self._fh: IO[str] | None = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def add(self, row: dict[str, Any]) -> None:
        self.pending.append(row)            # list.append is atomic: no lock on the hot path
        self.recent.append(row)

    def flush(self) -> None:
        with self._lock:
            end = len(self.pending)
            if self._fh is None or end == 0 or self.error is not None:
                return
            try:
                self._fh.write("".join(_JSON.encode(r) + "\n" for r in self.pending[:end]))
                self._fh.flush()
            except OSError as err:
                if not trust.is_no_space(err):
                    raise
                self.error = NoSpace(f"no space left on {self.path.parent} while writing "
                                     f"the {self.path.stem} journal")
                return
            del self.pending[:end]          # rows added meanwhile stay

    def rows(self) -> list[dict[str, Any]]:
        """Every row so far: the journal's, then those still waiting to be written."""
        with self._lock:
            out = []
            if self.path.exists():
                with open(self.path, encoding="utf-8") as fh:
                    for line in fh:
                        if line.endswith("\n"):           # a torn line at a full disk
                            out.append(json.loads(line))
            return out + self.pending[:]

    def close(self) -> None:
        self.flush()
        with self._lock:
            if self._fh is not None:
                try:
                    self._fh.close()
                except OSError:
                    pass                    # a full disk: self.error says so
                self._fh = None


class _TraceSink:
    """The ``trace`` stream: tails of the VMs' trace files, parsed rows written to
    ``trace.parquet`` in row groups; see the module docstring."""

    def __init__(self, run_path: Path) -> None:
        self.final = run_path / "trace.parquet"
        self._partial = run_path / "trace.parquet.partial"
        self._tails: list[tuple[qtrace.Tail, bool]] = []
        self._pending: list[dict[str, Any]] = []
        self.recent: deque[dict[str, Any]] = deque(maxlen=TRACE_LIVE_ROWS)
        self._writer: pq.ParquetWriter | None = None
        self._schema = qtrace.SCHEMA
        self.count = 0
        self._lock = threading.Lock()

    def add(self, tail: qtrace.Tail, owned: bool) -> None:
        """Tail *tail*'s file; an *owned* file (in the run folder) is removed once its
        rows are in ``trace.parquet``."""
        with self._lock:
            self._tails.append((tail, owned))

    def backlog(self) -> int:
        """Bytes of trace written by QEMU and not parsed yet."""
        with self._lock:
            return sum(tail.unread() for tail, _ in self._tails)

    def poll(self, final: bool = False) -> None:
        """Parse everything the files have now (in 8 MiB pieces, writing a row group
        whenever one is full: memory holds at most a group and a piece)."""
        with self._lock:
            for tail, _ in self._tails:
                while True:
                    rows = tail.read(final)
                    self._pending += rows
                    self.recent.extend(rows)
                    self.count += len(rows)
                    if len(self._pending) >= TRACE_ROW_GROUP:
                        self._write()
                    if not tail.unread():
                        break

    def _write(self) -> None:
        table = pa.Table.from_pandas(qtrace.frame(self._pending), schema=self._schema,
                                     preserve_index=False)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._partial, self._schema)
        self._writer.write_table(table)
        self._pending = []

    def close(self) -> None:
        """Read the files to their end, write ``trace.parquet`` (when anything was traced)."""
        self.poll(final=True)
        with self._lock:
            if not self._tails:
                return
            if self._pending or self._writer is None:
                self._write()
            assert self._writer is not None
            self._writer.close()
            os.replace(self._partial, self.final)
            for tail, owned in self._tails:
                if owned:
                    tail.path.unlink(missing_ok=True)
            self._tails = []


class Recorder:
    """Records one run into *run_path*.  Start it, attach machines, mark steps, stop it.

    :param interval: seconds between ``query-block-jobs`` samples.
    :param size_every: longest gap between two size rows of an unchanged file.
    """

    def __init__(self, run_path: str | Path, *, interval: float = 0.1,
                 size_every: float = 1.0) -> None:
        if not (0.001 <= interval <= 60):
            raise BadInput(f"sample interval {interval!r} must be between 0.001 and 60 s")
        self.path = Path(run_path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.interval = interval
        self.size_every = size_every
        self.t0 = time.monotonic()
        #: Unix time at t = 0 (maps QEMU's trace timestamps onto t)
        self.wall0 = time.time() - (time.monotonic() - self.t0)
        self._streams = {s: _Stream(self.path / f"{s}.jsonl") for s in STREAMS}
        self._backend: Backend | None = None
        self._console: Console | None = None
        self._machine_label = ""
        self._files: dict[str, Path] = {}
        self._last_size: dict[str, tuple[float, Any]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.sample_count = 0
        self.late_ticks = 0
        self._stopped = False
        self._sampler_stop: Callable[[], None] | None = None
        self._next_sizes = 0.0
        self._own_run: RunDir | None = None
        self._trace = _TraceSink(self.path)
        self._final: dict[str, pd.DataFrame] | None = None
        #: the last sample's (t, wall, process CPU, boot clock): gaps are judged by it
        self._last_tick: tuple[float, float, float, float] | None = None

    # -- wiring ----------------------------------------------------------------------
    def __enter__(self) -> Recorder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def attach(self, backend: Backend | None, console: Console | None = None,
               label: str = "vm", console_history: bool = True) -> None:
        """Record this VM's events, console and jobs (replacing any previous VM).

        :param console_history: also record the guest's lines from before now (its boot:
            an experiment's run starts with its VM); a job started by hand on a VM that
            has run for a while records only what the guest does from now on.
        """
        self.detach()
        with self._lock:
            self._backend = backend
            self._console = console
            self._machine_label = label
        if backend is not None:
            backend.events.subscribe(self._on_qmp_event, replay_since=len(backend.events))
        if console is not None:
            console.records.subscribe(self._on_console, replay_since=0 if console_history
                                      else len(console.records))
        self.mark(marks.ATTACH, machine=label)
        if self._thread is not None and not self._stopped:
            self._start_job_sampler()

    def attach_machine(self, vm: Any, label: str = "vm", console_history: bool = True) -> None:
        """:meth:`attach` a :class:`~kvmlab.vm.machine.Machine`, and track its disk files."""
        self.attach(vm.backend, vm.console, label, console_history)
        for d in vm.drives:
            self.track(f"{label}:{d.id}", d.path)
        source = getattr(vm, "trace_source", None)
        if source is not None and (found := source()) is not None:
            path, start = found
            if not console_history:          # as for the console: from now on only
                start = max(start, path.stat().st_size if path.exists() else 0)
            self.trace_file(label, path, start)

    def trace_file(self, label: str, path: str | Path, start: int = 0) -> None:
        """Parse QEMU trace lines appended to *path* from byte *start* on into the ``trace``
        stream, as VM *label* (see :mod:`kvmlab.qemu.trace`).  A file in the run folder is
        removed once its rows are in ``trace.parquet``."""
        path = Path(path)
        parser = qtrace.Parser(label, lambda wall: wall - self.wall0)
        self._trace.add(qtrace.Tail(path, parser, start), path.parent == self.path)

    def detach(self) -> None:
        self._stop_job_sampler()
        self._last_tick = None               # no VM, no samples due: not a gap
        with self._lock:
            be, con = self._backend, self._console
            self._backend = self._console = None
        if be is not None:
            be.events.unsubscribe(self._on_qmp_event)
        if con is not None:
            con.records.unsubscribe(self._on_console)

    def track(self, label: str, path: str | Path) -> None:
        """Record the size of the image file at *path* under *label*."""
        with self._lock:
            self._files[label] = Path(path)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def mark(self, name: str, **data: Any) -> float:
        """Record an experiment step (``cancel``, ``fault_start``...) as an event; returns its t."""
        t = self.now()
        self._streams["events"].add({"t": t, "wall": time.time(), "source": "kvmlab",
                                     "name": name, "job": _text(data.get("job")),
                                     "status": _text(data.get("status")), "qemu_time": None,
                                     "data": json.dumps(data, default=str)})
        self._flush_unless_running()
        return t

    def _flush_unless_running(self) -> None:
        """Write the journals now when no recorder thread will (before start, after stop)."""
        if self._thread is None or not self._thread.is_alive():
            for stream in self._streams.values():
                stream.flush()

    # -- producers -------------------------------------------------------------------
    def _on_qmp_event(self, rec: Record) -> None:
        d = rec.data
        self._streams["events"].add({
            "t": rec.mono - self.t0, "wall": rec.wall,
            "source": "libvirt" if rec.name.startswith("libvirt:") else "qmp", "name": rec.name,
            "job": _text(d.get("device") or d.get("id") or d.get("disk")),
            "status": _text(d.get("status")),
            "qemu_time": rec.source, "data": json.dumps(dict(d), default=str)})

    def _on_console(self, rec: Record) -> None:
        d = rec.data
        if rec.name == "op":
            self._streams["guest_ops"].add({
                "t": rec.mono - self.t0, "wall": rec.wall, "op": d.get("op"),
                "path": d.get("path"), "size": d.get("size"), "sha256": d.get("sha256"),
                "round": d.get("n"), "guest_t": d.get("t"), "machine": self._machine_label,
                # how long the guest's dd (with its fsync) took: the write's latency
                "dd_s": _seconds_us(d.get("dd_us")),
                # which of the guest's disks (``vdb``: a data disk; the system disk is vda)
                "disk": d.get("disk", "vda")})
        else:
            self._streams["events"].add({
                "t": rec.mono - self.t0, "wall": rec.wall, "source": "guest",
                "name": f"guest_{rec.name}", "job": None, "status": None,
                "qemu_time": None, "data": json.dumps(dict(d), default=str)})

    def _start_job_sampler(self) -> None:
        """Sample jobs inside the backend's own loop thread when it can (the QMP backend:
        no thread hand-off per sample); otherwise the recorder thread polls."""
        self._stop_job_sampler()
        be = self._backend
        if isinstance(be, InLoopSampling):
            self._sampler_stop = be.start_sampler(self.interval, self._on_jobs,
                                                  self._on_sample_error)

    def _stop_job_sampler(self) -> None:
        stop, self._sampler_stop = self._sampler_stop, None
        if stop is not None:
            stop()

    def _on_jobs(self, mono: float, wall: float, jobs: list[Any], late: int) -> None:
        t = mono - self.t0
        self._check_gap(t, wall)
        add = self._streams["samples"].add
        for j in jobs:
            add({"t": t, "wall": wall, "job": j.id, "type": j.type, "len": j.len,
                 "offset": j.offset, "remaining": j.len - j.offset, "speed": j.speed,
                 "busy": j.busy, "paused": j.paused, "ready": j.ready, "status": j.status,
                 "io_status": j.io_status, "actively_synced": j.actively_synced})
        self.sample_count += 1
        self.late_ticks = late

    def _check_gap(self, t: float, wall: float) -> None:
        """A sample that comes over :data:`GAP_INTERVALS` intervals after the last one
        leaves a hole in the record: it is marked as a ``sample_gap`` window, with why
        where that can be told."""
        cpu, boot = time.process_time(), time.clock_gettime(time.CLOCK_BOOTTIME)
        last, self._last_tick = self._last_tick, (t, wall, cpu, boot)
        if last is None:
            return
        gap = t - last[0]
        if gap <= max(GAP_INTERVALS * self.interval, GAP_MIN_S):
            return
        reason = gap_reason(gap, wall - last[1], cpu - last[2], boot - last[3])
        data = {"seconds": round(gap, 3), "reason": reason}
        ev = self._streams["events"]
        for name, when in ((marks.start(marks.SAMPLE_GAP), last[0]),
                           (marks.end(marks.SAMPLE_GAP), t)):
            ev.add({"t": when, "wall": None, "source": "kvmlab", "name": name, "job": None,
                    "status": None, "qemu_time": None, "data": json.dumps(data)})

    def _on_sample_error(self, error: str) -> None:
        be = self._backend
        if be is not None and not be.events.closed:
            self.mark(marks.SAMPLE_ERROR, error=error)

    def sample(self) -> None:
        """Take one sample of every block job and every tracked file now."""
        self._sample_jobs()
        self.sample_sizes()
        self._flush_unless_running()

    def _sample_jobs(self) -> None:
        """One ``query-block-jobs`` from this thread (a failure is recorded, not raised)."""
        with self._lock:
            be = self._backend
        if be is None:
            return
        try:
            jobs = be.block_jobs()
        except KvmlabError as err:
            jobs = []
            self._on_sample_error(str(err))
        self._on_jobs(time.monotonic(), time.time(), jobs, self.late_ticks)

    def sample_sizes(self) -> None:
        """Record the size of each tracked file if it changed (or every *size_every* s)."""
        with self._lock:
            files = dict(self._files)
        t, wall = self.now(), time.time()
        for label, path in files.items():
            fs = file_size(path)
            val = (fs.apparent, fs.allocated) if fs else None
            last = self._last_size.get(label)
            if last is None or last[1] != val or t - last[0] >= self.size_every:
                self._last_size[label] = (t, val)
                self._streams["sizes"].add({
                    "t": t, "wall": wall, "label": label, "path": str(path),
                    "exists": fs is not None, "apparent": fs.apparent if fs else None,
                    "allocated": fs.allocated if fs else None})

    def _loop(self) -> None:
        """The recorder thread: job samples for backends without an in-loop sampler, file
        sizes (at most every 0.1 s: ``ll`` needs no more), and the journals' writing."""
        pacer = Pacer(self.interval, 0.0)           # on the recorder's clock (now())
        size_every = max(self.interval, 0.1)
        next_jobs = 0.0
        while not self._stop.is_set():
            now = self.now()
            sampling_here = self._sampler_stop is None
            if sampling_here and now >= next_jobs:
                self._sample_jobs()
                next_jobs = pacer.next(self.now())
                self.late_ticks = pacer.late
            if now >= self._next_sizes:
                self._next_sizes = now + size_every
                self.sample_sizes()
            if self._trace.backlog() >= TRACE_BACKLOG:
                self._trace.poll()
            for stream in self._streams.values():
                stream.flush()
            due = min(self._next_sizes, self.now() + JOURNAL_EVERY)
            if sampling_here:
                due = min(due, next_jobs)
            self._stop.wait(max(due - self.now(), 0))

    def start(self) -> None:
        """Start sampling.  A folder without ``run.json`` (a Recorder used on its own, not
        inside an experiment) becomes a run of its own, so that :func:`~kvmlab.store.runs.load_run`
        and ``kvmlab analyze`` read it; :meth:`stop` finishes that ``run.json``."""
        if self._thread is not None:
            return
        if not (self.path / "run.json").exists():
            self._own_run = RunDir.create("recording", {"interval": self.interval},
                                          run_path=self.path)
        self.mark(marks.RECORDER_START, interval=self.interval)
        self._thread = threading.Thread(target=self._loop, name="kvmlab-recorder", daemon=True)
        if self._backend is not None:
            self._start_job_sampler()
        self._thread.start()

    def stop(self) -> dict[str, pd.DataFrame]:
        """Stop sampling, write parquet files, remove the journals; returns the frames."""
        if self._stopped:
            return self.frames()
        self._stopped = True
        self._final = None
        self._stop_job_sampler()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.sample()
        self.mark(marks.RECORDER_STOP, samples=self.sample_count, late_ticks=self.late_ticks)
        self.detach()
        self._trace.close()
        for stream in self._streams.values():
            stream.close()
        frames = self.frames()
        self._final = frames                  # the journals go: frames() returns these now
        errors: list[KvmlabError] = []
        for name, stream in self._streams.items():
            if stream.error is not None:
                errors.append(stream.error)   # the journal is what was kept
                continue
            try:
                with trust.writing(self.path, f"{name}.parquet"):
                    frames[name].to_parquet(self.path / f"{name}.parquet", index=False)
            except NoSpace as err:
                (self.path / f"{name}.parquet").unlink(missing_ok=True)   # a cut file
                errors.append(err)            # its journal stays: load_run reads it
                continue
            os.remove(self.path / f"{name}.jsonl")
        error = errors[0] if errors else None
        if self._own_run is not None:
            if error is None:
                self._own_run.finish("done", samples=self.sample_count)
            else:
                self._own_run.finish(FAILED, error=str(error), samples=self.sample_count)
        if error is not None:
            raise error
        return frames

    def frames(self) -> dict[str, pd.DataFrame]:
        """The streams so far as DataFrames (typed, even when empty); ``trace`` holds the
        last :data:`TRACE_LIVE_ROWS` rows (the whole stream is in ``trace.parquet``)."""
        if self._final is not None:
            return dict(self._final)
        return self._frames(lambda stream: stream.rows())

    def live_frames(self) -> dict[str, pd.DataFrame]:
        """The last :data:`LIVE_ROWS` rows of each stream, for live views: cheap at any
        length of run (:meth:`frames` reads the journals back)."""
        return self._frames(lambda stream: list(stream.recent))

    def _frames(self, rows: Callable[[_Stream], list[dict[str, Any]]]) -> dict[str, pd.DataFrame]:
        out = {}
        for name, stream in self._streams.items():
            df = pd.DataFrame(rows(stream), columns=COLUMNS[name])
            out[name] = _typed(name, df)
        self._trace.poll()
        out["trace"] = qtrace.frame(list(self._trace.recent))
        return out

    @property
    def error(self) -> KvmlabError | None:
        """Why a journal stopped (a full disk), or None."""
        return next((s.error for s in self._streams.values() if s.error is not None), None)

    @property
    def trace_rows(self) -> int:
        """Trace events recorded so far (parsing what waits)."""
        self._trace.poll()
        return self._trace.count


def _text(value: Any) -> str | None:
    """Event columns hold text (libvirt's own events carry numbers where QMP has words)."""
    return None if value is None else str(value)


def _seconds_us(value: Any) -> float | None:
    try:
        return None if value is None else int(value) / 1e6
    except (TypeError, ValueError):
        return None


def _typed(name: str, df: pd.DataFrame) -> pd.DataFrame:
    ints = {"samples": ["len", "offset", "remaining", "speed"],
            "sizes": ["apparent", "allocated"], "guest_ops": ["size", "round"]}.get(name, [])
    bools = {"samples": ["busy", "paused", "ready", "actively_synced"],
             "sizes": ["exists"]}.get(name, [])
    for c in ints:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    for c in bools:
        if c in df:                        # runs recorded before a column was added
            df[c] = df[c].astype("boolean")
    for c in ("t", "wall", "guest_t", "qemu_time", "dd_s"):
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    return df

