"""Side by side: the same experiments on several QEMU builds, and what differs.

:func:`behaviours` turns one build's runs into ``(case, measure) -> value`` rows (verdict,
time to ready, bytes copied, what QEMU reported during each fault, ``info block`` after a
pivot, how each error policy ended, the copy rate against the speed limit);
:func:`side_by_side` lines the builds up and flags each row that differs; :func:`figure`
draws one difference from the runs behind it.  Paths in QEMU's answers are reduced to
their file names, so two runs' scratch folders never count as a difference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from kvmlab import analysis
from kvmlab.analysis.series import strip_paths
from kvmlab.experiments import ExperimentResult
from kvmlab.lab.suites import rate_fidelity
from kvmlab.plots import convergence
from kvmlab.units import MIB

#: numbers differ when the larger is this many times the smaller (time varies run to run)
RATIO = 1.5
#: and by at least this much, in the measure's unit (s, MiB, a ratio): less is run-to-run noise
MIN_ABS = {"time_to_ready_s": 0.5, "MiB copied": 1.0, "fault_stall_s": 0.5,
           "rate_over_speed": 0.2}


@dataclass
class Row:
    """One measured behaviour of one build, with the run that shows it."""

    case: str
    measure: str
    value: Any
    run: ExperimentResult | None = None


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


def _differs(measure: str, values: list[Any]) -> bool:
    present = [v for v in values if v is not None]
    if len(present) < len(values):
        return len(present) > 0
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        lo, hi = min(present), max(present)
        if hi - lo < MIN_ABS.get(measure, 0):
            return False
        return bool(lo <= 0 < hi or (lo > 0 and hi / lo >= RATIO) or (hi < 0 and lo / hi >= RATIO))
    return len({str(v) for v in present}) > 1


def side_by_side(by_build: Mapping[str, list[Row]]) -> pd.DataFrame:
    """Rows (case, measure), one column per build, and ``differs``."""
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for build, rows in by_build.items():
        for row in rows:
            table.setdefault((row.case, row.measure), {})[build] = row.value
    builds = list(by_build)
    records = []
    for (case, measure), vals in table.items():
        values = [vals.get(b) for b in builds]
        records.append({"case": case, "measure": measure, **dict(zip(builds, values)),
                        "differs": _differs(measure, values)})
    return pd.DataFrame.from_records(records, columns=["case", "measure", *builds, "differs"])


def highlight(df: pd.DataFrame) -> Any:
    """The table with differing rows highlighted (a pandas Styler for notebooks and HTML)."""
    return df.style.apply(lambda row: ["background-color: #ffe08a" if row["differs"] else ""
                                       for _ in row], axis=1).hide(axis="index")


def differences(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["differs"]].reset_index(drop=True)


def figure(case: str, measure: str, by_build: Mapping[str, list[Row]]) -> Figure:
    """One difference: each build's run of *case*, remaining bytes over time, side by side,
    titled with the build's value."""
    found = {b: next((r for r in rows if r.case == case and r.measure == measure), None)
             for b, rows in by_build.items()}
    fig, axes = plt.subplots(1, len(found), figsize=(5.5 * len(found), 3.2), squeeze=False,
                             sharey=True)
    for ax, (build, row) in zip(axes[0], found.items()):
        if row is None or row.run is None:
            ax.set_axis_off()
            ax.set_title(f"QEMU {build}: not run")
            continue
        convergence(row.run.data.samples, row.run.data.events, ax=ax)
        ax.set_title(f"QEMU {build}: {measure} = {row.value}", fontsize=9)
    fig.suptitle(f"{case}: {measure} differs")
    fig.tight_layout()
    return fig
