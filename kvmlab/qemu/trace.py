"""QEMU's own trace events: which a build has, how a VM turns them on, and the parser
that turns QEMU's trace lines into rows on the recorder's time base.

QEMU (Debian's builds use the ``log`` trace backend) writes one line per event::

    22668@1795978146.619255:mirror_before_sleep s 0x561e20249b80 dirty count 67108864 ...

``pid@seconds.microseconds`` is QEMU's own ``gettimeofday()`` at the event (it is there
with ``-msg timestamp=on``), so a row's ``t`` is mapped from QEMU's clock, never stamped
when kvmlab reads the line.  Event names come from the build (``-trace help``), never from a
list in here; the arguments are read from the line itself (``key value`` pairs), so an
event whose text changes between builds still parses, into differently named fields.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from kvmlab import _proc
from kvmlab.errors import BadInput, KvmlabError
from kvmlab.qemu.builds import QemuBuild

#: what a run traces unless told otherwise: the mirror's iterations, sleeps and yields,
#: the job state machine, and the NBD client's failed requests
DEFAULT_EVENTS = ("mirror_*", "job_state_transition", "job_completed", "job_apply_verb",
                  "nbd_co_request_fail", "nbd_read_reply_entry_fail")
#: spellings of "no tracing" and "the default set" in a ``trace`` parameter
OFF = ("", "off", "none", "no", "false", "0")
ON = ("on", "default", "yes", "true", "1")

COLUMNS = ["t", "wall", "machine", "event", "obj", "offset", "bytes", "ret", "dirty",
           "in_flight", "delay", "state", "args"]
_INTS = ["offset", "bytes", "ret", "dirty", "in_flight"]
_CATEGORIES = ("machine", "event", "obj", "state")

#: the log backend's line: pid@sec.usec:event args
_LINE = re.compile(r"(\d+)@(\d+\.\d+):(\w+) ?(.*)")
_NUMBER = re.compile(r"-?(?:0x[0-9a-fA-F]+|\d+)(?:ns)?")
_TRANSITION = re.compile(r"\((\w+)-->(\w+)\)")
_VERB = re.compile(r"applying verb ([\w-]+)")
_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z ", re.MULTILINE)


class TraceError(KvmlabError):
    """The trace file cannot be created or read."""


def strip_stamps(text: str) -> str:
    """QEMU's messages without the timestamps ``-msg timestamp=on`` puts before them."""
    return _STAMP.sub("", text)


# -- which events a build has ------------------------------------------------------------
_EVENTS: dict[tuple[str, str | None], tuple[str, ...]] = {}


def available(build: QemuBuild) -> tuple[str, ...]:
    """Every trace event *build* has, as ``qemu-system-x86_64 -trace help`` lists them
    (asked once per build and process)."""
    env = build.env()
    key = (str(build.emulator), env.get("QEMU_MODULE_DIR"))
    if key not in _EVENTS:
        out = _proc.run([build.emulator, "-trace", "help"], timeout=30, env=env)
        _EVENTS[key] = tuple(line.strip() for line in out.splitlines()
                             if line.strip() and " " not in line.strip())
    return _EVENTS[key]


def parse_spec(value: str | bool | Iterable[str] | None) -> tuple[str, ...]:
    """A ``trace`` parameter as event patterns: off -> (), on/default -> :data:`DEFAULT_EVENTS`,
    else comma-separated names (``*`` patterns allowed)."""
    if value is None or value is False:
        return ()
    if value is True:
        return DEFAULT_EVENTS
    if isinstance(value, str):
        low = value.strip().lower()
        if low in OFF:
            return ()
        if low in ON:
            return DEFAULT_EVENTS
        items = value.split(",")
    else:
        items = list(value)
    names = tuple(dict.fromkeys(i.strip() for i in items if i and i.strip()))
    for n in names:
        if not re.fullmatch(r"[\w*?]+", n):
            raise BadInput(f"trace event {n!r} is not an event name (letters, digits, _, "
                           "and the patterns * and ?)")
    return names


def check(patterns: Iterable[str], build: QemuBuild) -> tuple[str, ...]:
    """*patterns* if each names at least one event of *build*; else :class:`BadInput` with
    the close matches (before anything is started).  The default set is not checked but
    narrowed to what the build has (a build without the NBD client's events still traces
    its mirror)."""
    names = available(build)
    pats = tuple(patterns)
    if pats == DEFAULT_EVENTS:
        return tuple(p for p in pats if fnmatch.filter(names, p))
    for p in pats:
        if not fnmatch.filter(names, p):
            close = difflib.get_close_matches(p.rstrip("*"), names, n=4, cutoff=0.6)
            if not close and "*" in p:
                close = [n for n in names if n.startswith(p.split("*")[0][:4])][:4]
            hint = f"; close: {', '.join(close)}" if close else ""
            raise BadInput(f"QEMU {build.version} has no trace event {p!r} "
                           f"(its list: qemu-system-x86_64 -trace help){hint}")
    return pats


@dataclass(frozen=True)
class TraceSpec:
    """Where one VM's trace goes and which events it holds."""

    path: Path
    events: tuple[str, ...] = DEFAULT_EVENTS

    def create(self) -> None:
        """Create the (empty) trace file now, so a path that cannot be written fails the
        run before QEMU starts, with one line."""
        try:
            with open(self.path, "w", encoding="utf-8"):
                pass
        except OSError as err:
            raise TraceError(f"cannot create the trace file {self.path}: "
                             f"{err.strerror or err}") from None

    def qemu_args(self) -> list[str]:
        """``-D`` (the log backend's file), QEMU's timestamps on, one ``-trace`` per event."""
        args = ["-D", str(self.path), "-msg", "timestamp=on"]
        for e in self.events:
            args += ["-trace", f"enable={e}"]
        return args


# -- parsing -------------------------------------------------------------------------------
def _value(token: str) -> int | None:
    tok = token.strip("(),:{}")
    if tok == "(nil)" or token == "(nil)":
        return 0
    if not _NUMBER.fullmatch(tok):
        return None
    tok = tok[:-2] if tok.endswith("ns") else tok
    return int(tok, 16) if "0x" in tok else int(tok)


def fields(args: str) -> dict[str, int]:
    """``key value`` pairs of an event's text: ``s 0x5 dirty count 7 delay 9ns`` ->
    ``{s: 5, dirty_count: 7, delay: 9}`` (the words since the last value name the next)."""
    out: dict[str, int] = {}
    words: list[str] = []
    for token in args.split():
        v = _value(token)
        if v is None:
            w = re.sub(r"\W", "", token).lower()
            if w:
                words.append(w)
            continue
        key = "_".join(words) or f"arg{len(out)}"
        out.setdefault(key, v)
        words = []
    return out


class Parser:
    """Turns one VM's trace lines into rows; keeps the requests in flight per job (issued
    by ``mirror_one_iteration``, completed by ``mirror_iteration_done``) across calls."""

    def __init__(self, machine: str, to_t: Callable[[float], float]) -> None:
        self.machine = machine
        self.to_t = to_t
        self._in_flight: dict[int, int] = {}
        self.lines = 0

    def row(self, line: str) -> dict[str, Any] | None:
        m = _LINE.match(line)
        if m is None:
            return None                  # another log message, or a torn line
        wall, event, args = float(m.group(2)), m.group(3), m.group(4)
        f = fields(args)
        obj = f.get("s", f.get("job"))
        if obj is None:
            obj = next((v for k, v in f.items() if k.endswith("bs")), None)
        row: dict[str, Any] = {
            "t": self.to_t(wall), "wall": wall, "machine": self.machine, "event": event,
            "obj": None if obj is None else f"{obj:#x}", "offset": f.get("offset"),
            "bytes": f.get("bytes"), "ret": f.get("ret"), "dirty": f.get("dirty_count"),
            "in_flight": f.get("in_flight"),
            "delay": f["delay"] / 1e9 if "delay" in f else None, "state": None, "args": args}
        if obj is not None and event in ("mirror_one_iteration", "mirror_iteration_done"):
            n = self._in_flight.get(obj, 0) + (1 if event == "mirror_one_iteration" else -1)
            self._in_flight[obj] = n = max(n, 0)
            row["in_flight"] = n
        if (tr := _TRANSITION.search(args)) is not None:
            row["state"] = tr.group(2)
        elif (vb := _VERB.search(args)) is not None:
            row["state"] = vb.group(1)
        return row

    def rows(self, lines: Iterable[str]) -> list[dict[str, Any]]:
        out = []
        for line in lines:
            r = self.row(line)
            if r is not None:
                out.append(r)
        self.lines += len(out)
        return out


class Tail:
    """Reads what QEMU has appended to a trace file since the last call (whole lines only)."""

    def __init__(self, path: Path, parser: Parser, start: int = 0) -> None:
        self.path = path
        self.parser = parser
        self._pos = start
        self._rest = b""

    def unread(self) -> int:
        """Bytes QEMU wrote that were not read yet."""
        try:
            return max(self.path.stat().st_size - self._pos, 0)
        except FileNotFoundError:
            return 0

    def read(self, final: bool = False, limit: int = 8 << 20) -> list[dict[str, Any]]:
        """Rows of the whole lines appended since the last call, at most *limit* bytes of
        them (call again while :meth:`unread`); *final*: a torn last line too."""
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size < self._pos:               # truncated (QEMU reopened it)
                    self._pos, self._rest = 0, b""
                fh.seek(self._pos)
                data = fh.read(limit)
        except FileNotFoundError:
            return []
        final = final and self._pos + len(data) >= size
        self._pos += len(data)
        chunk = self._rest + data
        lines = chunk.split(b"\n")
        self._rest = lines.pop()
        if final and self._rest:
            lines.append(self._rest)
            self._rest = b""
        return self.parser.rows(b.decode("utf-8", "replace") for b in lines)


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as the typed ``trace`` table (empty tables keep the columns and types)."""
    df = pd.DataFrame(rows, columns=COLUMNS)
    for c in _INTS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    for c in ("t", "wall", "delay"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in _CATEGORIES:
        df[c] = df[c].astype("string").astype("category")   # few values, millions of rows
    df["args"] = df["args"].astype("string")
    return df


def typed(df: pd.DataFrame) -> pd.DataFrame:
    """A trace read back (parquet, another tool): the repeated columns as categories, so
    selecting a job's or an event's rows compares codes, not millions of strings."""
    for c in _CATEGORIES:
        if c in df and not isinstance(df[c].dtype, pd.CategoricalDtype):
            df[c] = df[c].astype("category")
    return df


#: the trace table's arrow schema (dictionary-encoded names: every row group the same)
SCHEMA = pa.schema([
    ("t", pa.float64()), ("wall", pa.float64()),
    ("machine", pa.dictionary(pa.int32(), pa.string())),
    ("event", pa.dictionary(pa.int32(), pa.string())),
    ("obj", pa.dictionary(pa.int32(), pa.string())),
    ("offset", pa.int64()), ("bytes", pa.int64()), ("ret", pa.int64()), ("dirty", pa.int64()),
    ("in_flight", pa.int64()), ("delay", pa.float64()),
    ("state", pa.dictionary(pa.int32(), pa.string())), ("args", pa.string())])


def read_logs(run_path: Path, wall_to_t: Callable[[float], float]) -> pd.DataFrame:
    """The trace of a run whose recorder never finished (killed): parsed from the
    ``trace-<machine>.log`` files QEMU left in the run folder."""
    rows: list[dict[str, Any]] = []
    for log in sorted(run_path.glob("trace-*.log")):
        machine = log.name[len("trace-"):-len(".log")]
        tail = Tail(log, Parser(machine, wall_to_t))
        while True:
            rows += tail.read(final=True)
            if not tail.unread():
                break
    return frame(rows).sort_values("t", kind="stable").reset_index(drop=True)
