"""Run folders: ``data/runs/<run-id>/`` with ``run.json`` (metadata, provenance, verdict)
and one parquet file per recorded stream; :func:`load_run` reads any saved run back."""

from __future__ import annotations

import json
import os
import platform
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kvmlab import _proc, paths, trust
from kvmlab._version import __version__
from kvmlab.errors import BadInput, KvmlabError
from kvmlab.guest.fio import read_guest_io
from kvmlab.qemu import builds, trace

STREAMS = ("samples", "events", "sizes", "guest_ops")


def new_run_id(experiment: str) -> str:
    """``YYYYmmdd-HHMMSS-<experiment>-<6 hex>``: sortable and unique."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in experiment)[:40]
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}-{secrets.token_hex(3)}"


def _git_revision() -> str | None:
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(checkout), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _qemu_version() -> str | None:
    """The current build's ``--version`` line (see :func:`kvmlab.qemu.builds.current`)."""
    try:
        out = _proc.run([builds.current().emulator, "--version"], timeout=20)
    except Exception:  # noqa: BLE001 - provenance is best effort
        return None
    return out.splitlines()[0].strip() if out else None


def provenance(**extra: Any) -> dict[str, Any]:
    """Where and with what a run was made: versions, host, revision."""
    info: dict[str, Any] = {
        "kvmlab_version": __version__, "git_revision": _git_revision(),
        "python": platform.python_version(), "host": socket.gethostname(),
        "host_kernel": platform.release(), "cpus": os.cpu_count(),
        "qemu_version": _qemu_version(),
    }
    info.update(extra)
    return info


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_to_jsonable(v) for v in obj]
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    return obj


class RunDir:
    """One run's folder and its ``run.json``, rewritten atomically on each update."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        self._reserve: trust.Reserve | None = None

    @classmethod
    def create(cls, experiment: str, params: dict[str, Any], parent: Path | None = None,
               run_path: Path | None = None) -> RunDir:
        """Make a new run folder under *parent* (default ``data/runs``), or use *run_path*.

        *run_path* may exist already (a batch run puts the executed notebook
        there) but must not hold a run yet.
        """
        if run_path is not None:
            path = Path(run_path).resolve()
            if (path / "run.json").exists():
                raise BadInput(f"{path} already holds a run")
            run_id = path.name
        else:
            run_id = new_run_id(experiment)
            path = (Path(parent) if parent else paths.runs_dir()) / run_id
            if path.exists():
                raise BadInput(f"run folder {path} already exists")
        if path.parent == paths.runs_dir():
            trust.private_dir(path.parent, "runs folder")
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        trust.private_dir(path, "run folder")
        meta = {"run_id": run_id, "experiment": experiment, "params": _to_jsonable(params),
                "status": "running", "started": time.time(), "owner": _proc.owner_token(),
                "started_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "provenance": provenance()}
        rd = cls(path, meta)
        rd.save()
        try:
            rd._reserve = trust.Reserve(path, RESERVES[0])
        except KvmlabError:
            try:
                rd.finish(FAILED, error=f"no space left on {path} to record a run")
            except KvmlabError:
                pass                      # run.json says running: its owner's end shows
            raise
        return rd

    def save(self) -> None:
        """Write ``run.json`` at once (a rename); on a full disk, the room reserved for it
        is given up and the write tried again.

        :raise NoSpace: the disk is full even so.
        """
        text = json.dumps(_to_jsonable(self.meta), indent=2, sort_keys=True) + "\n"
        with trust.writing(self.path, "run.json"):
            try:
                trust.write_atomic(self.path / "run.json", text)
            except OSError as err:
                if not trust.is_no_space(err) or self._reserve is None:
                    raise
                self._reserve.release()
                self._reserve = None
                trust.write_atomic(self.path / "run.json", text)

    def update(self, **fields: Any) -> None:
        self.meta.update(_to_jsonable(fields))
        self.save()

    def finish(self, status: str, verdict: dict[str, Any] | None = None, **fields: Any) -> None:
        self.meta.update(_to_jsonable(fields))
        self.meta["status"] = status
        self.meta["ended"] = time.time()
        self.meta["ended_iso"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if isinstance(self.meta.get("started"), (int, float)):
            self.meta["duration_s"] = round(self.meta["ended"] - self.meta["started"], 3)
        if verdict is not None:
            self.meta["verdict"] = _to_jsonable(verdict)
        if self._reserve is not None:             # the last word: its room is used now
            self._reserve.release()
            self._reserve = None
        self.save()


@dataclass
class RunData:
    """A saved run read back: metadata and one DataFrame per stream."""

    path: Path
    meta: dict[str, Any]
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def samples(self) -> pd.DataFrame:
        return self.frames["samples"]

    @property
    def events(self) -> pd.DataFrame:
        return self.frames["events"]

    @property
    def sizes(self) -> pd.DataFrame:
        return self.frames["sizes"]

    @property
    def guest_ops(self) -> pd.DataFrame:
        return self.frames["guest_ops"]

    @property
    def trace(self) -> pd.DataFrame:
        """QEMU's trace events (:mod:`kvmlab.qemu.trace`), read on first use: a run's trace can
        be far larger than its other streams, and most readers never look at it."""
        if "trace" not in self.frames:
            self.frames["trace"] = read_trace(self.path, self.frames.get("events"))
        return self.frames["trace"]

    @property
    def guest_io(self) -> pd.DataFrame:
        """The guest's fio results, per second (:mod:`kvmlab.guest.fio`); empty for a run
        whose guest ran no fio."""
        if "guest_io" not in self.frames:
            self.frames["guest_io"] = read_guest_io(self.path)
        return self.frames["guest_io"]

    @property
    def verdict(self) -> dict[str, Any] | None:
        return self.meta.get("verdict")


def _read_parquet(pq: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(pq)
    except (OSError, ValueError) as err:     # pyarrow's ArrowInvalid is a ValueError
        raise BadInput(f"{pq} is damaged and cannot be read ({type(err).__name__}: "
                       f"{str(err).splitlines()[0] if str(err) else ''})") from err


def read_stream(path: Path, stream: str) -> pd.DataFrame:
    """A stream's DataFrame: the parquet file, or the journal a killed run left."""
    pq = path / f"{stream}.parquet"
    if pq.exists():
        return _read_parquet(pq)
    journal = path / f"{stream}.jsonl"
    if journal.exists() and journal.stat().st_size:
        rows = []
        with open(journal, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    break  # a torn last line from a killed process
        return pd.DataFrame(rows)
    return pd.DataFrame()


def tile(run: RunData, hours: float, hz: float | None = None) -> RunData:
    """A *hours*-long run made of copies of *run* laid end to end (every stream, the trace
    too), cut to *hours* x *hz* samples if given: how a dashboard of a long run is tried
    and timed without waiting hours."""
    span = float(run.events["t"].max()) + 0.1
    n = int(hours * 3600 / span) + 1
    frames = {}
    for name in (*STREAMS, "trace"):
        df = getattr(run, name)
        frames[name] = pd.concat([df.assign(t=df["t"] + k * span) for k in range(n)],
                                 ignore_index=True) if len(df) else df
    if hz is not None:
        frames["samples"] = frames["samples"].iloc[:int(hours * 3600 * hz)]
    return RunData(run.path, run.meta, frames)


def read_trace(path: Path, events: pd.DataFrame | None = None) -> pd.DataFrame:
    """The ``trace`` stream: ``trace.parquet``, or the trace files a killed run left
    (their QEMU timestamps mapped onto t with the events' own wall/t pairs)."""
    pq = path / "trace.parquet"
    if pq.exists():
        return trace.typed(_read_parquet(pq))
    if path.is_dir() and any(path.glob("trace-*.log")):
        offset = 0.0
        if events is not None and len(events) and {"wall", "t"} <= set(events.columns):
            offset = float((events["wall"] - events["t"]).median())
        return trace.read_logs(path, lambda wall: wall - offset)
    return trace.frame([])


#: a storage migration's RAM stream (``query-migrate`` samples), beside the block jobs
MIGRATION_FILE = "migration.parquet"


def read_migration(path: Path) -> pd.DataFrame:
    """The ``migration`` stream of the run in *path* (empty for a run without one)."""
    pq = Path(path) / MIGRATION_FILE
    return _read_parquet(pq) if pq.exists() else pd.DataFrame()


#: the status of a run whose process was killed before it could finish it
KILLED = "killed"
#: the space reserves kept in a run folder (the run's own, and its notebook run's): a
#: killed process leaves them, and marking its run killed removes them
RESERVES = (".run-reserve", ".batch-reserve")
#: the status of a run that could not be recorded whole (a full disk): ``error`` says why
FAILED = "failed"


def mark_failed(folder: Path, reason: str) -> list[Path]:
    """Finish every run under *folder* (the folder and its sub-folders) that is still
    ``running`` or says ``done`` as ``failed`` with *reason*: its record is not whole
    (the executed notebook or its export could not be written).  Returns those runs."""
    marked = []
    for meta_file in [folder / "run.json", *folder.glob("*/run.json")]:
        try:
            meta = json.loads(trust.read_owned(meta_file))
        except (OSError, ValueError, KvmlabError):
            continue
        if isinstance(meta, dict) and meta.get("status") in ("running", "done"):
            RunDir(meta_file.parent, meta).finish(FAILED, error=reason)
            marked.append(meta_file.parent)
    return marked


def mark_killed(path: Path) -> bool:
    """If the run in *path* is still ``running`` but its owner process is gone, finish it
    as ``killed`` (the next launch and :func:`load_run` call this).  Returns whether it did."""
    try:
        meta = json.loads((path / "run.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("status") != "running" or \
            not _proc.owner_dead(meta.get("owner")):
        return False
    if not trust.owned_dir(path, private=False):
        return False       # another user's run: not ours to change
    rd = RunDir(path, meta)
    try:
        for name in RESERVES:             # the killed process's room, no longer needed
            (path / name).unlink(missing_ok=True)
        rd.finish(KILLED, error=f"its process (pid {meta['owner'].get('pid')}) was killed "
                  "before the run ended; the data up to then is kept")
    except OSError:
        return False       # a read-only copy: load_run still shows the status
    return True


def load_run(path: str | Path) -> RunData:
    """Read a run folder (complete, or left by a killed process: marked ``killed``)."""
    path = Path(path)
    meta_file = path / "run.json"
    if not meta_file.is_file():
        raise BadInput(f"{path} is not a kvmlab run folder (no run.json)")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as err:
        raise BadInput(f"{meta_file} is damaged and cannot be read ({err})") from err
    if not isinstance(meta, dict):
        raise BadInput(f"{meta_file} is damaged: not a JSON object")
    if mark_killed(path):
        meta = json.loads(meta_file.read_text())
    return RunData(path, meta, {s: read_stream(path, s) for s in STREAMS})
