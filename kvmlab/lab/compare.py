"""Side by side: the same experiments on several QEMU builds, and what differs.

:func:`behaviours` turns one build's runs into ``(case, measure) -> value`` rows (verdict,
time to ready, bytes copied, what QEMU reported during each fault, ``info block`` after a
pivot, how each error policy ended, the copy rate against the speed limit);
:func:`side_by_side` lines the builds up, every run of each, and flags a row as differing
only when the builds' values never meet (:func:`judge`); :func:`figure` draws one
difference from the runs behind it.  Paths in QEMU's answers are reduced to
their file names, so two runs' scratch folders never count as a difference.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from kvmlab import analysis
from kvmlab.analysis.series import strip_paths
from kvmlab.errors import BadInput
from kvmlab.experiments import ExperimentResult
from kvmlab.lab.suites import rate_fidelity
from kvmlab.plots import convergence
from kvmlab.store.runs import load_run
from kvmlab.trust import write_atomic
from kvmlab.units import MIB

#: a behaviour is judged only with at least this many runs per build: one run each cannot
#: tell a difference from run-to-run spread
MIN_RUNS = 5
#: and numbers must be apart by at least this much, in the measure's unit (s, MiB, a
#: ratio): less is run-to-run noise even when the ranges do not overlap
MIN_ABS = {"time_to_ready_s": 0.5, "MiB copied": 1.0, "fault_stall_s": 0.5,
           "rate_over_speed": 0.2}


@dataclass
class Row:
    """One measured behaviour of one build, with the run that shows it (*run*, or only
    its folder, *path*, when read back from a file)."""

    case: str
    measure: str
    value: Any
    run: ExperimentResult | None = None
    path: str | None = None

    @property
    def folder(self) -> str | None:
        return str(self.run.run_path) if self.run is not None else self.path


#: the file in which a notebook run keeps its behaviour rows (:func:`save_rows`)
ROWS_FILE = "behaviours.json"


def save_rows(by_build: Mapping[str, list[Row] | list[list[Row]]], folder: str | Path) -> Path:
    """Keep every build's runs of behaviour rows in *folder*/``behaviours.json``, so that
    runs made apart (a sweep's points, side by side) can be tabulated as one
    (:func:`rows_in`).  Values are kept as JSON keeps them; each row names its run's folder."""
    data = {build: [[{"case": r.case, "measure": r.measure, "value": r.value,
                      "path": r.folder} for r in rows] for rows in _runs(reps)]
            for build, reps in by_build.items()}
    out = Path(folder) / ROWS_FILE
    write_atomic(out, json.dumps(data, indent=1, default=str) + "\n")
    return out


def rows_in(folder: str | Path) -> dict[str, list[list[Row]]]:
    """Every run's behaviour rows kept under *folder* (a sweep's folder, a notebook run's),
    by build, in the order of the files' paths: the repetitions of a sweep tabulated as
    one comparison.  A file that is not a mapping of build -> runs is one line."""
    found: dict[str, list[list[Row]]] = {}
    for f in sorted(Path(folder).rglob(ROWS_FILE)):
        try:
            data = json.loads(f.read_text())
            for build, reps in data.items():
                for rows in reps:
                    found.setdefault(str(build), []).append(
                        [Row(r["case"], r["measure"], r["value"], path=r.get("path"))
                         for r in rows])
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise BadInput(f"{f}: not a file of behaviour rows ({e})") from None
    return found


def _verdict_rows(case: str, r: ExperimentResult) -> list[Row]:
    s = analysis.summarize(r.data)
    ttr, copied = s.get("time_to_ready_s"), s.get("bytes_copied")
    return [Row(case, "verdict", "PASS" if r.passed else "FAIL", r),
            Row(case, "time_to_ready_s", round(ttr, 2) if ttr is not None else None, r),
            Row(case, "MiB copied", round(copied / MIB, 2) if copied is not None else None, r)]


def behaviours(seed: Mapping[str, ExperimentResult], faults: Mapping[str, ExperimentResult],
               throttled: ExperimentResult | None = None) -> list[Row]:
    """One build's behaviour rows from its seed runs, fault runs and throttled mirror."""
    rows: list[Row] = []
    for case, r in seed.items():
        rows += _verdict_rows(case, r)
        v = r.verdict
        if "info_block" in v:
            first = str(v["info_block"]).splitlines()[0] if v["info_block"] else ""
            rows.append(Row(case, "info block after pivot", strip_paths(first), r))
        if "job_end" in v:
            rows.append(Row(case, "job end", v["job_end"], r))
    for case, r in faults.items():
        v = r.verdict
        rows += _verdict_rows(case, r)
        rows += [Row(case, "behaviour", v.get("behaviour"), r),
                 Row(case, "BLOCK_JOB_ERROR events", v.get("error_events"), r),
                 Row(case, "error actions", ", ".join(v.get("error_actions") or []) or "none", r),
                 Row(case, "paused io-status", v.get("paused_io_status"), r),
                 Row(case, "job end", v.get("job_end"), r)]
        if v.get("fault_stall_s") is not None:
            rows.append(Row(case, "fault_stall_s", round(float(v["fault_stall_s"]), 2), r))
    if throttled is not None:
        fid = rate_fidelity(throttled)
        ratio = fid["rate_over_speed"]
        case = f"throttled mirror ({fid['speed'] / 2**20:g} MiB/s)"
        rows += _verdict_rows(case, throttled)
        rows.append(Row(case, "rate_over_speed", round(ratio, 3) if ratio is not None else None,
                        throttled))
    return rows


#: what the scenario table compares between builds (verdict field -> measure)
SCENARIO_MEASURES = {"pass": "verdict", "job_end": "job end", "events": "events",
                     "qemu_error": "QEMU's error", "guest_io_errors": "guest I/O errors",
                     "copy_verifies": "copy verifies"}


def scenario_behaviours(results: Mapping[str, ExperimentResult]) -> list[Row]:
    """One build's rows from its scenario runs (:data:`SCENARIO_MEASURES`); QEMU's words
    with paths reduced to file names."""
    rows: list[Row] = []
    for name, r in results.items():
        v = r.verdict
        for key, measure in SCENARIO_MEASURES.items():
            value = v.get(key)
            if key == "pass":
                value = "PASS" if value else "FAIL"
            elif key == "events" and isinstance(value, list):
                value = " ".join(value)
            elif isinstance(value, str):
                value = strip_paths(value)
            rows.append(Row(name, measure, value, r))
    return rows


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def judge(measure: str, by_build: Mapping[str, list[Any]], min_runs: int = MIN_RUNS
          ) -> tuple[bool, str]:
    """(differs, why) for one behaviour, from every run's value on each build.

    A behaviour differs only when each build has at least *min_runs* runs and no value of
    one build is among (text) or between (numbers, with :data:`MIN_ABS` apart) the other's:
    with 5 runs a side, ranges that do not overlap are exactly what a two-sided
    Mann-Whitney rank test calls different at p = 2/252 = 0.008.  A behaviour whose values
    spread within a build and overlap is "varies", never a difference.
    """
    runs = {b: list(v) for b, v in by_build.items()}
    flat = [v for vs in runs.values() for v in vs]
    if len({repr(v) for v in flat}) <= 1:
        return False, "same"
    varies = any(len({repr(v) for v in vs}) > 1 for vs in runs.values())
    if any(len(vs) < min_runs for vs in runs.values()):
        return False, f"not judged: fewer than {min_runs} runs on a build"
    sets = list(runs.values())
    if all(v is not None for v in flat) and _numeric(flat):
        spans = sorted((min(vs), max(vs)) for vs in sets)
        apart = all(b[0] - a[1] >= MIN_ABS.get(measure, 0) and b[0] > a[1]
                    for a, b in zip(spans[:-1], spans[1:]))
    else:
        keys = [{repr(v) for v in vs} for vs in sets]
        apart = all(not (keys[i] & keys[j]) for i in range(len(keys))
                    for j in range(i + 1, len(keys)))
    if apart:
        return True, "differs in every run"
    return False, "varies within a build" if varies else "overlaps"


def spread(values: list[Any]) -> str:
    """Every run's value in a few words: ``9``, ``8–24 (n=5)``, ``stop ×3, report ×2``."""
    if not values:
        return "not run"
    present = [v for v in values if v is not None]
    if len({repr(v) for v in values}) == 1:
        return str(values[0]) + (f" (n={len(values)})" if len(values) > 1 else "")
    if present and len(present) == len(values) and _numeric(present):
        return f"{min(present):g}–{max(present):g} (n={len(values)})"
    counts: dict[str, int] = {}
    for v in values:
        counts[str(v)] = counts.get(str(v), 0) + 1
    return ", ".join(f"{k} ×{n}" for k, n in counts.items())


def _runs(reps: list[Row] | list[list[Row]]) -> list[list[Row]]:
    """One run's rows, or several runs' rows, as a list of runs."""
    if reps and isinstance(reps[0], list):
        return [list(r) for r in reps if isinstance(r, list)]
    return [[r for r in reps if isinstance(r, Row)]]


def side_by_side(by_build: Mapping[str, list[Row] | list[list[Row]]],
                 min_runs: int = MIN_RUNS) -> pd.DataFrame:
    """Rows (case, measure): one column per build with every run's values in words
    (:func:`spread`), ``differs`` (:func:`judge`) and ``why``.  Each build gives one run's
    rows or a list of runs' rows."""
    table: dict[tuple[str, str], dict[str, list[Any]]] = {}
    for build, reps in by_build.items():
        for rows in _runs(reps):
            for row in rows:
                table.setdefault((row.case, row.measure), {}).setdefault(build, []).append(
                    row.value)
    builds = list(by_build)
    records = []
    for (case, measure), vals in table.items():
        per = {b: vals.get(b, []) for b in builds}
        differs, why = judge(measure, per, min_runs)
        records.append({"case": case, "measure": measure,
                        **{b: spread(v) for b, v in per.items()},
                        "differs": differs, "why": why})
    return pd.DataFrame.from_records(records,
                                     columns=["case", "measure", *builds, "differs", "why"])


def highlight(df: pd.DataFrame) -> Any:
    """The table with differing rows highlighted (a pandas Styler for notebooks and HTML):
    amber where the builds differ in every run, pale where their values differ but too few
    runs were made to call it a difference."""
    def colour(row: pd.Series) -> list[str]:
        c = ("background-color: #ffe08a" if row["differs"] else
             "background-color: #fff5d6" if str(row["why"]).startswith("not judged") else "")
        return [c for _ in row]
    return df.style.apply(colour, axis=1).hide(axis="index")


def differences(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["differs"]].reset_index(drop=True)


def figure(case: str, measure: str, by_build: Mapping[str, list[Row] | list[list[Row]]]
           ) -> Figure:
    """One difference: each build's (first) run of *case*, remaining bytes over time, side
    by side, titled with the build's value."""
    found = {b: next((r for r in (_runs(rows) or [[]])[0] if r.case == case and r.measure == measure),
                     None)
             for b, rows in by_build.items()}
    fig, axes = plt.subplots(1, len(found), figsize=(5.5 * len(found), 3.2), squeeze=False,
                             sharey=True)
    for ax, (build, row) in zip(axes[0], found.items()):
        if row is None or row.folder is None:
            ax.set_axis_off()
            ax.set_title(f"QEMU {build}: not run")
            continue
        data = row.run.data if row.run is not None else load_run(row.folder)
        convergence(data.samples, data.events, ax=ax)
        ax.set_title(f"QEMU {build}: {measure} = {row.value}", fontsize=9)
    fig.suptitle(f"{case}: {measure} differs")
    fig.tight_layout()
    return fig
