"""Parameter sweeps: many papermill runs of one notebook, locally in parallel or on Dask.

A sweep folder holds ``sweep.json`` (the plan), ``points/<point>/`` (one
:func:`kvmlab.batch.notebooks.run_notebook` folder each, with ``point.json`` recording
its parameters, status, error and wall time), and, after :func:`collect`,
``results.parquet`` / ``results.csv`` (a row per recorded run: the point's
parameters plus :func:`kvmlab.analysis.summarize`).

Each point runs as its own ``python -m kvmlab run`` process (its own kernel,
its own QEMU), so a point that crashes cannot take the sweep down, Ctrl-C can
stop every point cleanly, and a Dask worker on another host runs exactly the
same function.  Re-running a sweep skips points already done (resume).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from tqdm.auto import tqdm

from kvmlab import _proc, analysis, paths, trust
from kvmlab.batch.notebooks import check_parameters, execute, export_html
from kvmlab.errors import BadInput, KvmlabError
from kvmlab.store.runs import load_run
from kvmlab.store.sweepdir import read_points
from kvmlab.store.tmpdirs import reap_stale_tmpdirs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Point:
    """One run of the sweep: its parameters and repetition number."""

    params: dict[str, Any]
    repeat: int = 0

    @property
    def name(self) -> str:
        """Folder name: readable, with a hash so equal names cannot collide."""
        text = json.dumps(self.params, sort_keys=True, default=str)
        digest = hashlib.sha256(f"{text}|{self.repeat}".encode()).hexdigest()[:8]
        readable = "_".join(f"{k}-{v}" for k, v in sorted(self.params.items()))
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in readable)[:80]
        return f"{safe}_r{self.repeat}-{digest}" if safe else f"r{self.repeat}-{digest}"


@dataclass
class SweepSpec:
    """What to sweep: a notebook, fixed parameters, a grid or explicit points, repeats."""

    notebook: Path
    params: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    repeat: int = 1

    def plan(self) -> list[Point]:
        """The cartesian product of the grid (or the listed points), times *repeat*, the
        repetitions taking turns."""
        if self.repeat < 1:
            raise BadInput(f"repeat={self.repeat} must be at least 1")
        if self.grid and self.points:
            raise BadInput("give either a grid or a list of points, not both")
        combos: list[dict[str, Any]]
        if self.points:
            combos = [dict(p) for p in self.points]
        elif self.grid:
            for k, values in self.grid.items():
                if not isinstance(values, list) or not values:
                    raise BadInput(f"grid {k} must be a non-empty list of values")
            keys = list(self.grid)
            combos = [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*self.grid.values())]
        else:
            combos = [{}]                          # one point (repeated, or rejected below)
        fulls = []
        for combo in combos:
            full = {**self.params, **combo}
            check_parameters(self.notebook, full)     # (numbers for str parameters: text)
            fulls.append(full)
        # repetitions take turns (every point once, then every point again), so drift over
        # the sweep's hours hits every point alike
        out = [Point(full, r) for r in range(self.repeat) for full in fulls]
        if len(out) == 1 and not self.points:
            raise BadInput("nothing to sweep: give a grid (--grid NAME=V1,V2,...), points, "
                           "or --repeat above 1")
        return out

    @classmethod
    def from_yaml(cls, path: str | Path, notebook: str | Path | None = None) -> SweepSpec:
        """Read a sweep file: ``notebook`` (relative to the file), ``params``, ``grid`` or
        ``points``, ``repeat``.  A *notebook* argument overrides the file's."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise BadInput(f"cannot read sweep file {path}: {err}") from err
        if not isinstance(data, dict):
            raise BadInput(f"sweep file {path} must be a mapping")
        unknown = set(data) - {"notebook", "params", "grid", "points", "repeat", "description"}
        if unknown:
            raise BadInput(f"sweep file {path}: unknown key(s) {', '.join(sorted(unknown))}")
        nb = Path(notebook) if notebook else (path.parent / str(data.get("notebook", ""))
                                              if data.get("notebook") else None)
        if nb is None:
            raise BadInput(f"sweep file {path} names no notebook")
        return cls(nb.resolve(), dict(data.get("params") or {}), dict(data.get("grid") or {}),
                   list(data.get("points") or []), int(data.get("repeat", 1)))


def parse_grid(items: Iterable[str]) -> dict[str, list[Any]]:
    """``["speed=0,1048576", "sync=full,top"]`` -> ``{"speed": [0, 1048576], "sync": [...]}``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, eq, values = item.partition("=")
        if not eq or not name or not values:
            raise BadInput(f"--grid {item!r} must look like name=v1,v2,...")
        grid[name.strip()] = [yaml.safe_load(v) for v in values.split(",")]
    return grid


# -- one point -----------------------------------------------------------------------------
def run_point(notebook: str, params: dict[str, Any], folder: str,
              timeout: float = 3600) -> dict[str, Any]:
    """Run one point as ``python -m kvmlab run`` in its own process group; record point.json.

    The same function runs in a local thread or as a Dask task on another host.
    """
    folder_p = Path(folder)
    lock = _point_lock(folder_p)
    try:
        if folder_p.exists() and not point_done(folder_p):
            shutil.rmtree(folder_p)     # half-written by a sweep that was stopped: afresh
        return _run_point_locked(notebook, params, folder_p, timeout, lock)
    finally:
        os.close(lock)


#: how long a point waits for an earlier run of itself (a sweep killed with ``kill -9``,
#: whose points then get SIGTERM) to end before it is failed instead of started twice
OWNER_WAIT_S = 300.0


def _point_lock(folder: Path, wait_s: float | None = None) -> int:
    """The point's lock (``.locks/<name>.lock`` in the sweep folder, an ``flock``), held by the sweep's thread
    and the point's own ``kvmlab run``: a point orphaned by a killed sweep holds it until
    it ends, so a resume never runs a point twice at once.

    :raise KvmlabError: an earlier run of the point held it for *wait_s*.
    """
    locks = folder.parent.parent / ".locks"
    locks.mkdir(mode=0o700, exist_ok=True)
    return trust.take_lock(
        locks / f"{folder.name}.lock", OWNER_WAIT_S if wait_s is None else wait_s,
        f"point {folder.name}: waiting for an earlier run of it to end",
        KvmlabError(f"point {folder.name} is still run by an earlier sweep (it holds its "
                    "lock); not started twice"))


def _run_point_locked(notebook: str, params: dict[str, Any], folder_p: Path, timeout: float,
                      lock: int) -> dict[str, Any]:
    params_file = folder_p.parent / f".{folder_p.name}.params.yaml"
    trust.write_atomic(params_file, yaml.safe_dump(params))
    # the point dies with the thread that started it (SIGTERM: it stops its kernel and
    # QEMU cleanly), and holds the point's lock while it lives
    cmd = [_proc.which("setpriv"), "--pdeathsig", "TERM", "--",
           sys.executable, "-m", "kvmlab", "run", str(notebook), "-f", str(params_file),
           "--out", str(folder_p)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, pass_fds=(lock,))
    try:
        out, _ = proc.communicate(timeout=timeout)
        status = "done" if proc.returncode == 0 else "failed"
        text = out.decode(errors="replace")
        error = None if status == "done" else (
            [ln for ln in text.splitlines() if ln.startswith(("kvmlab: error:", "FAIL "))] or
            text.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"])[0]
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        status, error = "failed", f"timed out after {timeout:.0f} s"
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        params_file.unlink(missing_ok=True)
    record = {"params": params, "status": status, "error": error,
              "wall_s": round(time.monotonic() - t0, 3), "host": os.uname().nodename,
              "finished": time.time()}
    folder_p.mkdir(parents=True, exist_ok=True)
    trust.write_atomic(folder_p / "point.json", json.dumps(record, indent=2, default=str) + "\n")
    return record


STOP_SIGNALS = ((signal.SIGINT, 20.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a point's process group: SIGINT first (the kernel's cell gets KeyboardInterrupt,
    so its experiment shuts QEMU down and removes its files), then SIGTERM, then SIGKILL."""
    for sig, wait_s in STOP_SIGNALS:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def outcome(folder: str | Path) -> tuple[int, list[tuple[str, str]]]:
    """How the sweep in *folder* stands: the number of points done, and (point, error)
    for each point that failed."""
    done, failed = 0, []
    for p in read_points(folder):
        if p.status == "done":
            done += 1
        else:
            failed.append((p.name, p.error or p.status))
    return done, failed


def point_done(folder: Path) -> bool:
    """Has the point in *folder* run to the end (its point.json says done)?"""
    return any(p.status == "done" for p in read_points(folder.parent.parent, [folder.name]))


# -- the sweep -----------------------------------------------------------------------------
def run_sweep(spec: SweepSpec, out: str | Path | None = None, *, workers: int = 1,
              dask: str | Any | None = None, report: bool = True, progress: bool = True,
              point_timeout: float = 3600) -> Path:
    """Run every point of *spec* into *out* (default ``data/sweeps/<name>-<time>``).

    :param workers: points run in parallel on this machine (each its own QEMU).
    :param dask: a Dask scheduler address (or a ``distributed.Client``): each point is a
        task; workers run papermill locally and write into *out*, which must be shared.
    :param report: run ``notebooks/20_sweep_report.ipynb`` on the results at the end.
    :return: the sweep folder.  Points already done there are skipped (resume).
    """
    if workers < 1:
        raise BadInput(f"workers={workers} must be at least 1")
    points = spec.plan()
    folder = Path(out) if out else (paths.data_dir() / "sweeps" /
                                    f"{spec.notebook.stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    folder = folder.resolve()
    (folder / "points").mkdir(parents=True, exist_ok=True)
    meta_file = folder / "sweep.json"
    meta: dict[str, Any] = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    plan = {"notebook": str(spec.notebook), "params": spec.params, "grid": spec.grid,
            "points": [p.name for p in points], "repeat": spec.repeat}
    if meta.get("plan") and meta["plan"] != json.loads(json.dumps(plan, default=str)):
        raise BadInput(f"{folder} holds a different sweep; use another --out")
    meta["plan"] = plan
    todo = [p for p in points if not point_done(folder / "points" / p.name)]
    _save(meta_file, meta)
    t0 = time.monotonic()
    bar = tqdm(total=len(points), initial=len(points) - len(todo), unit="point",
               desc=spec.notebook.stem, disable=not progress)
    try:
        if dask is not None:
            results = _run_dask(todo, spec, folder, dask, bar, point_timeout)
        else:
            results = _run_local(todo, spec, folder, workers, bar, point_timeout)
    finally:
        bar.close()
    wall = time.monotonic() - t0
    serial = sum(r["wall_s"] for r in results)
    meta.setdefault("sessions", []).append({
        "workers": workers, "dask": str(dask) if dask is not None else None,
        "points_run": len(results), "failed": sum(r["status"] != "done" for r in results),
        "wall_s": round(wall, 3), "sum_point_wall_s": round(serial, 3),
        "speedup_vs_serial": round(serial / wall, 3) if wall > 0 and results else None})
    _save(meta_file, meta)
    frame = collect(folder)
    if report and not frame.empty:
        make_report(folder)
    return folder


def _save(path: Path, meta: dict[str, Any]) -> None:
    trust.write_atomic(path, json.dumps(meta, indent=2, default=str) + "\n")


def _run_local(todo: list[Point], spec: SweepSpec, folder: Path, workers: int, bar: Any,
               timeout: float) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kvmlab-sweep")
    futures: dict[Future[dict[str, Any]], Point] = {}
    pending = list(todo)
    try:
        while pending or futures:
            while pending and len(futures) < workers:
                p = pending.pop(0)
                futures[pool.submit(run_point, str(spec.notebook), p.params,
                                    str(folder / "points" / p.name), timeout)] = p
            done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
            for fut in done:
                futures.pop(fut)
                results.append(fut.result())
                bar.update(1)
    except KeyboardInterrupt:
        # running points get SIGTERM/SIGKILL from their own threads' cleanup
        _interrupt_children()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    # a point of an earlier sweep killed with SIGKILL ends on its own (SIGTERM, its
    # pdeathsig), maybe before it could remove its VM's temp dir: gone now that its owner is
    reap_stale_tmpdirs()
    return results


def _interrupt_children() -> None:
    """Stop the process groups of our running points (SIGINT, SIGTERM, SIGKILL), then
    remove what a killed point could not (VM temp dirs whose owner is gone)."""
    for sig, wait_s in STOP_SIGNALS:
        pids = _child_pids()
        if not pids:
            break
        for pid in pids:
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait_s
        while _child_pids() and time.monotonic() < deadline:
            time.sleep(0.2)
    time.sleep(0.5)   # QEMU follows its dead kernel (pdeathsig)
    reap_stale_tmpdirs()


def _child_pids() -> list[int]:
    me = os.getpid()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me and b"kvmlab\x00run" in cmd:
            out.append(int(d.name))
    return out


def _run_dask(todo: list[Point], spec: SweepSpec, folder: Path, dask: Any, bar: Any,
              timeout: float) -> list[dict[str, Any]]:
    try:
        from distributed import Client, as_completed
    except ImportError as err:
        raise KvmlabError("--dask needs the 'distributed' package "
                          "(pip install 'kvmlab[dask]')") from err
    own = not isinstance(dask, Client)
    client = Client(dask) if own else dask
    try:
        futures = [client.submit(run_point, str(spec.notebook), p.params,
                                 str(folder / "points" / p.name), timeout, pure=False,
                                 key=f"kvmlab-point-{p.name}-{time.time_ns()}")
                   for p in todo]
        results = []
        try:
            for fut in as_completed(futures):
                results.append(fut.result())
                bar.update(1)
        except KeyboardInterrupt:
            client.cancel(futures)
            raise
        return results
    finally:
        if own:
            client.close()


# -- results -------------------------------------------------------------------------------
def collect(folder: str | Path, write: bool = True) -> pd.DataFrame:
    """One row per recorded run in the sweep: point parameters, status, wall time, summary.

    Writes ``results.parquet`` and ``results.csv`` into the sweep folder (unless *write*
    is false: a reader such as ``kvmlab report`` leaves its inputs as they are).
    """
    folder = Path(folder)
    rows: list[dict[str, Any]] = []
    for p in read_points(folder):
        if p.status == "unreadable":
            continue
        base = {"point": p.name, "point_status": p.status, "point_error": p.error,
                "point_wall_s": p.record.get("wall_s"),
                **{k: v for k, v in p.params.items() if not isinstance(v, (dict, list))}}
        runs = p.runs()
        if not runs:
            rows.append(base)
            continue
        for run in runs:
            try:
                summary = analysis.summarize(load_run(run))
            except (KvmlabError, ValueError, KeyError, OSError) as err:
                summary = {"summary_error": str(err)}
            rows.append({**base, **summary})
    frame = pd.DataFrame(rows)
    if write and not frame.empty:
        frame.to_csv(folder / "results.csv", index=False)
        frame.astype({c: "string" for c in frame.columns
                      if frame[c].dtype == object}).to_parquet(folder / "results.parquet",
                                                                index=False)
    return frame


REPORT_NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "20_sweep_report.ipynb"


def make_report(folder: str | Path, notebook: Path | None = None) -> Path:
    """Execute the sweep report notebook on *folder* (executed copy + HTML + figures there)."""
    folder = Path(folder)
    nb = notebook or REPORT_NOTEBOOK
    if not nb.exists():
        raise BadInput(f"report notebook {nb} not found")
    out = folder / "report.ipynb"
    execute(nb, out, {"sweep_dir": str(folder)}, cwd=folder)
    export_html(out)
    return out

