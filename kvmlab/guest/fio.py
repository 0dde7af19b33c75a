"""The guest's fio workloads: named profiles or a user's job file, and fio's per-second
results read back from the guest's console as the run's ``guest_io`` series.

fio runs in the guest from its read-only tools disk (``kvmlab guest build``), beside the
file operations (they make the manifest a copy is verified against), on a file of the
disk being mirrored (``/mnt/fio``), with ``direct=1``, so its writes reach the disk and
the mirror's dirty bitmap at the pattern the profile names.  fio prints its cumulative
JSON status once a second (``--status-interval=1 --output-format=json+``); the guest
compacts each into one console line::

    KVMLAB fio_status ms=<fio's clock> r_bytes=.. r_ios=.. r_lat=k:n,.. w_bytes=.. ...

where ``k:n`` says *n* completions had a latency in bucket *k*: 8 linear steps per power
of two of nanoseconds (12.5 % wide).  :func:`guest_io` turns the cumulative lines into
per-second rows: IOPS, bandwidth and completion-latency percentiles of that second, from
the difference of two lines' buckets.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from kvmlab.errors import BadInput

log = logging.getLogger(__name__)

#: the workload that runs no fio: the guest's file operations alone
FILES = "files"
#: a profile's rate when the spec names none (KiB/s): 64 random 4 KiB writes a second dirty
#: 64 of the mirror's default 64 KiB clusters, 4 MiB/s, which an 8 MiB/s mirror outruns
DEFAULT_RATE_KIB_S = 256
#: the size of fio's file in the guest (MiB), on the disk being mirrored
DEFAULT_SIZE_MIB = 16
#: what every job runs with: its file in /mnt/fio, past the page cache, until the VM stops;
#: the file is written whole before the job (overwrite=1), as a database's or a log's
#: preallocated file, so the mirror sees the profile's writes and not the file system
#: allocating blocks (an extent conversion, a journal commit, per first write)
_COMMON = ("directory=/mnt/fio\nfilename=fio.dat\nsize={size}m\noverwrite=1\ndirect=1\n"
           "ioengine=psync\ntime_based=1\nruntime=86400\ngroup_reporting=1\n")

#: profile -> (what it is, its job options; {rate} is the profile's rate in KiB/s)
PROFILES: dict[str, tuple[str, str]] = {
    "seq-write-1m": ("a log or a backup: 1 MiB sequential writes",
                     "rw=write\nbs=1m\nrate={rate}k\n"),
    "rand-write-4k": ("4 KiB random writes",
                      "rw=randwrite\nbs=4k\nrate={rate}k\n"),
    "rand-rw-70-30": ("4 KiB random I/O, 70 % reads: the rate shared 70/30",
                      "rw=randrw\nrwmixread=70\nbs=4k\nrate={read}k,{write}k\n"),
    "db-like": ("a database: 8 KiB random writes, each followed by fsync",
                "rw=randwrite\nbs=8k\nfsync=1\nrate={rate}k\n"),
    "bursty": ("on and off: 64 KiB random writes for 2 s at the rate, then 3 s idle",
               "rw=randwrite\nbs=64k\nrate={rate}k\nthinktime=3s\nthinktime_iotime=2s\n"),
}
#: the largest job file kvmlab passes to the guest (fw_cfg)
MAX_JOB_BYTES = 64 * 1024
_SECTION = re.compile(r"^\s*\[([^\]]+)\]\s*$", re.MULTILINE)


@dataclass(frozen=True)
class FioJob:
    """One fio workload for the guest.

    :ivar name: the profile's name, or the job file's name.
    :ivar text: the job file the guest runs (``opt/kvmlab/fio`` in fw_cfg).
    :ivar rate_kib_s: the profile's rate (KiB/s); None for a job file (it sets its own).
    """

    name: str
    text: str
    rate_kib_s: int | None = None

    def write(self, path: Path) -> Path:
        Path(path).write_text(self.text)
        return Path(path)


def profile(name: str, rate_kib_s: int = DEFAULT_RATE_KIB_S,
            size_mib: int = DEFAULT_SIZE_MIB) -> FioJob:
    """The named profile (:data:`PROFILES`) at *rate_kib_s* on a *size_mib* MiB file."""
    if name not in PROFILES:
        raise BadInput(f"workload {name!r} is not {FILES!r}, a job file (.fio) or one of "
                       f"{', '.join(PROFILES)}")
    if isinstance(rate_kib_s, bool) or not isinstance(rate_kib_s, int) \
            or not 4 <= rate_kib_s <= 4 << 20:
        raise BadInput(f"workload rate {rate_kib_s!r} must be 4 to 4194304 KiB/s")
    if isinstance(size_mib, bool) or not isinstance(size_mib, int) or not 1 <= size_mib <= 1 << 20:
        raise BadInput(f"fio file size {size_mib!r} must be 1 to 1048576 MiB")
    options = PROFILES[name][1].format(rate=rate_kib_s, read=max(1, rate_kib_s * 7 // 10),
                                       write=max(1, rate_kib_s * 3 // 10))
    text = f"# kvmlab profile {name} ({PROFILES[name][0]})\n[{name}]\n" \
        + _COMMON.format(size=size_mib) + options
    return FioJob(name, text, rate_kib_s)


def job_file(path: Path) -> FioJob:
    """A user's fio job file: read whole (at most :data:`MAX_JOB_BYTES`), with at least one
    job section; kvmlab puts its files in the guest's ``/mnt/fio`` (a ``[global]`` section
    ahead of the file's own)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_JOB_BYTES + 1)
    except OSError as err:
        raise BadInput(f"cannot read fio job file {p}: {err.strerror or err}") from None
    if len(raw) > MAX_JOB_BYTES:
        raise BadInput(f"fio job file {p} is over {MAX_JOB_BYTES // 1024} KiB")
    try:
        body = raw.decode()
    except UnicodeDecodeError:
        raise BadInput(f"fio job file {p} is not UTF-8 text") from None
    jobs = [s for s in _SECTION.findall(body) if s.strip() != "global"]
    if not jobs:
        raise BadInput(f"fio job file {p} has no job section ([name])")
    text = "[global]\ndirectory=/mnt/fio\n" + body + ("" if body.endswith("\n") else "\n")
    return FioJob(p.name, text)


def parse(spec: str | Path | None) -> FioJob | None:
    """A workload spec -> the fio job, or None for the file operations alone.

    ``files`` (or None): no fio.  ``<profile>`` or ``<profile>:<KiB/s>``: a profile.
    A path ending in ``.fio``: that job file.
    """
    if spec is None or spec == FILES:
        return None
    if isinstance(spec, Path) or str(spec).endswith(".fio"):
        return job_file(Path(spec))
    if not isinstance(spec, str):
        raise BadInput(f"workload {spec!r} must be a profile name or a .fio job file")
    name, _, rate = spec.partition(":")
    if not rate:
        return profile(name)
    if not rate.isdigit():
        raise BadInput(f"workload {spec!r}: the rate after ':' must be KiB/s (an integer)")
    return profile(name, int(rate))


# -- the guest's status lines -> per-second rows -------------------------------------

#: guest_io's columns; latencies in microseconds, NaN in a second with no completion
COLUMNS = ["t", "guest_ms", "read_iops", "write_iops", "read_bw", "write_bw",
           "read_p50_us", "read_p99_us", "write_p50_us", "write_p99_us"]
#: the recorder's names of the guest's fio lines (``KVMLAB fio_status`` -> ``guest_fio_status``)
STATUS, DONE, ERROR = "guest_fio_status", "guest_fio_done", "guest_error"


def bucket_ns(k: int) -> float:
    """The middle of latency bucket *k* (ns): 8 linear steps per power of two."""
    e, s = divmod(int(k), 8)
    return float(2 ** e * (1 + (s + 0.5) / 8))


def bucket_of(ns: float) -> int:
    """The bucket a latency of *ns* nanoseconds falls in (the guest's ``bucket()``)."""
    e = max(0, int(math.floor(math.log2(ns)))) if ns >= 1 else 0
    return e * 8 + int((ns / 2 ** e - 1) * 8)


def parse_buckets(raw: Any) -> dict[int, int]:
    """``"92:1,94:9"`` -> {92: 1, 94: 9}; ``-`` (none yet) -> {}."""
    text = str(raw)
    if text in ("-", "", "nan", "None"):
        return {}
    out: dict[int, int] = {}
    for part in text.split(","):
        k, _, n = part.partition(":")
        out[int(k)] = out.get(int(k), 0) + int(n)
    return out


def percentile(counts: dict[int, int], q: float) -> float:
    """The *q* (0..1) quantile of the completions in *counts* (bucket -> n), in
    microseconds (the bucket's middle); NaN when there are none."""
    total = sum(n for n in counts.values() if n > 0)
    if total <= 0:
        return math.nan
    need = q * total
    seen = 0
    for k in sorted(counts):
        if counts[k] <= 0:
            continue
        seen += counts[k]
        if seen >= need:
            return bucket_ns(k) / 1000
    return bucket_ns(max(counts)) / 1000


def _records(events: pd.DataFrame, *names: str) -> list[dict[str, Any]]:
    """The data of the events named *names*, each with its ``t`` and ``name``."""
    if events.empty or "name" not in events:
        return []
    rows = []
    for _, ev in events[events["name"].isin(names)].iterrows():
        raw = ev["data"]
        data = dict(json.loads(raw)) if isinstance(raw, str) else dict(raw or {})
        data["t"], data["name"] = float(ev["t"]), ev["name"]
        rows.append(data)
    return rows


def failure_of(lines: Iterable[tuple[str, Mapping[str, Any]]]) -> str | None:
    """Why fio failed in the guest, from its console lines as (name, data) (``fio_done``
    with a non-zero exit and the start of what fio printed, or ``error=fio``: it could not
    start), or None."""
    for name, data in lines:
        if name == "error" and data.get("error") == "fio":
            return str(data.get("why", "fio did not start"))
        if name == "fio_done" and data.get("rc") not in (0, None):
            return f"exit {data.get('rc')}: {data.get('why', '')}".rstrip(": ")
    return None


def failure(events: pd.DataFrame) -> str | None:
    """:func:`failure_of` on a run's recorded events."""
    return failure_of((str(d["name"]).removeprefix("guest_"), d)
                      for d in _records(events, DONE, ERROR))


def _between(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float] | None:
    """What fio did between two of its cumulative status lines: ``seconds``, and per
    direction ``_iops``, ``_bw`` (bytes/s), ``_bytes`` and the ``_p50_us``/``_p99_us`` of
    every completion in between; None if *b* is not later than *a*."""
    dt = (float(b.get("ms", 0)) - float(a.get("ms", 0))) / 1000
    if dt <= 0:
        return None
    out = {"seconds": dt}
    for d, name in (("r", "read"), ("w", "write")):
        first = parse_buckets(a.get(f"{d}_lat", "-"))
        delta = {k: n - first.get(k, 0) for k, n in parse_buckets(b.get(f"{d}_lat", "-")).items()}
        nbytes = float(int(b.get(f"{d}_bytes", 0)) - int(a.get(f"{d}_bytes", 0)))
        out[f"{name}_iops"] = (int(b.get(f"{d}_ios", 0)) - int(a.get(f"{d}_ios", 0))) / dt
        out[f"{name}_bytes"] = nbytes
        out[f"{name}_bw"] = nbytes / dt
        out[f"{name}_p50_us"] = percentile(delta, 0.50)
        out[f"{name}_p99_us"] = percentile(delta, 0.99)
    return out


def _intact(rec: Mapping[str, Any]) -> bool:
    """Does a status record read back whole?  A serial line can arrive damaged: QEMU's
    stdout once shared the console's stream and its ``Formatting '...'`` notice ran into a
    line's last field (``w_lat`` read ``194Formatting``).  The console has its own socket
    now (:mod:`kvmlab.vm.machine`); a line still damaged some other way is left out."""
    try:
        for d in ("r", "w"):
            parse_buckets(rec.get(f"{d}_lat", "-"))
            int(rec.get(f"{d}_bytes", 0))
            int(rec.get(f"{d}_ios", 0))
        float(rec.get("ms", 0))
    except (TypeError, ValueError):
        return False
    return True


def guest_io(events: pd.DataFrame) -> pd.DataFrame:
    """The guest's fio results as per-second rows (:data:`COLUMNS`), from the run's
    ``fio_status`` events: each row is what happened between two status lines, stamped
    with the later one's host time ``t``.  A damaged line is left out: the lines are
    cumulative, so the row after it spans its second too; how many were left out is in the
    frame's ``attrs["damaged_lines"]``, and said as a warning."""
    status = _records(events, STATUS)
    rows = [r for r in status if _intact(r)]
    if len(rows) < len(status):
        log.warning("%d of fio's %d status lines arrived damaged and were left out (the "
                    "row after each spans its second too)", len(status) - len(rows), len(status))
    out = []
    for a, b in zip(rows, rows[1:]):
        between = _between(a, b)
        if between is not None:
            out.append({**between, "t": b["t"], "guest_ms": int(b.get("ms", 0))})
    df = pd.DataFrame(out, columns=COLUMNS)
    df = df.astype({c: "float64" for c in COLUMNS if c != "guest_ms"}).astype(
        {"guest_ms": "int64"})
    df.attrs["damaged_lines"] = len(status) - len(rows)
    return df


def window(events: pd.DataFrame, t0: float, t1: float) -> dict[str, float]:
    """What the guest's fio did between host times *t0* and *t1*, from the cumulative lines
    last seen at or before each (see :func:`_between`: the window's percentiles are those
    of every completion in it, not a mean of seconds).  Empty without two such lines."""
    rows = [r for r in _records(events, STATUS) if r["t"] <= t1 and _intact(r)]
    before = [r for r in rows if r["t"] <= t0]
    if not before or rows[-1] is before[-1]:
        return {}
    return _between(before[-1], rows[-1]) or {}


#: the file a run keeps its guest_io rows in
GUEST_IO_FILE = "guest_io.parquet"


def read_guest_io(run_path: Path) -> pd.DataFrame:
    """The ``guest_io`` rows of the run in *run_path* (empty, typed, for a run without)."""
    pq = Path(run_path) / GUEST_IO_FILE
    if not pq.exists():
        return guest_io(pd.DataFrame())
    return pd.read_parquet(pq)
