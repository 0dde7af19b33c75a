"""One flat row of a run: its series and the causes of its hold-ups, summarized (sweep
tables, ``kvmlab analyze``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from kvmlab import marks
from kvmlab.analysis import causes
from kvmlab.analysis.series import (  # the series' functions, reached here as they always were
    convergence,
    duration,
    event_data,
    guest_write_rate,
    job_events,
    job_instances,
    job_samples,
    jobs_by_start,
    paused_periods,
    rates,
    stalls,
    time_of,
    windows,
)
from kvmlab.store.runs import RunData
from kvmlab.units import MIB


def summarize(run: RunData, job: str | None = None, *, instance: int = 0,
              rate_window: float = 2.0, stall_min: float = 2.0,
              stall_threshold: int = 64 * 1024) -> dict[str, Any]:
    """One flat row of everything above for a run (for sweep tables).

    :param job: which job id (default: the first that ran).
    :param instance: which run of that id (0 = the first), when an id ran more than once.
    """
    s, ev, ops = run.samples, run.events, run.guest_ops
    meta = run.meta
    row: dict[str, Any] = {"run_id": meta.get("run_id"), "experiment": meta.get("experiment"),
                           "status": meta.get("status"), "accel": meta.get("accel")}
    verdict = meta.get("verdict") or {}
    row["pass"] = verdict.get("pass")
    for k, v in (meta.get("params") or {}).items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            row[f"param_{k}"] = v
    row.update(_gaps(ev))                 # holes in the record, whatever ran
    runs = job_instances(s, ev)
    row["jobs"] = len(runs)
    mine = [r for r in runs if job is None or r[0] == job]
    if len(mine) <= instance:
        row["job"] = job
        return row
    job, start, end_t = mine[instance]
    row["job"] = job
    window_end = end_t + 1e-6  # the end event itself, not the next run of the same id
    js = job_samples(s, job)
    js = js[(js["t"] >= start) & (js["t"] <= window_end)] if not js.empty else js
    evi = ev[(ev["t"] >= start) & (ev["t"] <= window_end)] if not ev.empty else ev
    conv = convergence(js, evi, job, min_duration=stall_min, threshold=stall_threshold)
    ready = time_of(evi, job, (marks.BLOCK_JOB_READY,))
    end = end_t if end_t != float("inf") else None
    cut = time_of(evi, None, (marks.CANCEL, marks.COMPLETE), after=ready) if ready is not None else None
    st = stalls(js, job, min_duration=stall_min, threshold=stall_threshold)
    pa = paused_periods(js, job)
    span = duration(start, end)
    # a job shorter than the window: its rates are over the job itself (else every window
    # would average in time before the job began, and the peak would fall below the mean)
    r = rates(js, job, min(rate_window, span) if span else rate_window)
    ready_len = _event_field(evi, job, (marks.BLOCK_JOB_READY,), "len")
    first_len = int(js["len"].iloc[0]) if not js.empty else (ready_len or 0)
    final_off = int(js["offset"].max()) if not js.empty else 0
    final_len = int(js["len"].max()) if not js.empty else (ready_len or 0)
    end_off = _event_field(evi, job, marks.JOB_ENDED, "offset")
    if end_off is not None:
        final_off = max(final_off, end_off)
    size = _image_len(run)
    gw = guest_write_rate(ops, rate_window)
    mean_rate = final_off / span if span else None
    peak_rate = _nan_stat(np.nanmax, r["copy_rate"])
    if peak_rate is not None and mean_rate is not None:
        peak_rate = max(peak_rate, mean_rate)     # sampling can miss the busiest window
    row.update({
        "convergence": conv["verdict"], "eta_s": conv.get("eta_s"),
        "remaining_slope": conv.get("slope"),
        "time_to_ready_s": duration(start, ready),
        "ready_to_end_s": duration(ready, cut if cut is not None else end),
        "job_duration_s": span,
        "bytes_copied": final_off, "final_len": final_len, "first_len": first_len,
        "image_bytes": size,
        "copy_ratio": final_off / size if size else None,
        "recopied_bytes": max(final_off - first_len, 0),
        "stall_count": len(st), "stall_time_s": float(st["duration"].sum()) if len(st) else 0.0,
        "paused_time_s": float(pa["duration"].sum()) if len(pa) else 0.0,
        "mean_copy_rate": mean_rate,
        "peak_copy_rate": peak_rate,
        "mean_dirty_rate": _nan_stat(np.nanmean, r["dirty_rate"]),
        "guest_write_rate": _nan_stat(np.nanmean, gw["write_rate"]) if len(gw) else None,
        "samples": len(js),
    })
    row.update(_held(run, job, start, window_end, stall_min, stall_threshold))
    return row


def summarize_jobs(run: RunData, **kw: Any) -> pd.DataFrame:
    """:func:`summarize` for every job of the run (its first instance), a row each, side by
    side: a VM with several disks mirrors each in a job of its own."""
    return pd.DataFrame([summarize(run, job, **kw)
                         for job in jobs_by_start(run.samples, run.events)])


def _gaps(events: pd.DataFrame) -> dict[str, Any]:
    """Holes in the record (``sample_gap`` windows): how many, how long in all."""
    g = windows(events, (marks.SAMPLE_GAP,))
    return {"sample_gaps": len(g), "sample_gap_s": float(g["duration"].sum()) if len(g) else 0.0}


def _held(run: RunData, job: str, start: float, end: float, stall_min: float,
          stall_threshold: int) -> dict[str, Any]:
    """Time held up per cause in [start, end] (``held_<cause>_s``), when the first target
    outage began (between ``outage_onset_after_s``, its last answered request, and
    ``outage_onset_before_s``, when its first unanswered one, issued at ``outage_onset_s``,
    would have been answered; seconds since recording started; the width
    ``outage_onset_width_s``), and how many
    trace events the run has."""
    per = causes.classify(run, job, min_duration=stall_min, threshold=stall_threshold)
    if len(per):
        per = per[(per["start"] >= start) & (per["start"] <= end)]
    out: dict[str, Any] = {f"held_{c}_s": v for c, v in causes.time_per_cause(per).items()}
    interval = causes.outage_onset_interval(per)
    out["outage_onset_s"] = causes.outage_onset(per)
    out["outage_onset_after_s"] = None if interval is None else interval[0]
    out["outage_onset_before_s"] = None if interval is None else interval[1]
    out["outage_onset_width_s"] = None if interval is None else round(interval[1] - interval[0], 6)
    out["trace_events"] = len(run.trace)
    return out


def _nan_stat(fn: Any, series: pd.Series) -> float | None:
    vals = series.to_numpy(dtype="float64")
    return float(fn(vals)) if len(vals) and not np.isnan(vals).all() else None


def _event_field(events: pd.DataFrame, job: str, names: tuple[str, ...], field: str) -> int | None:
    for _, e in job_events(events, job, names).iterrows():
        data = event_data(e)
        if field in data:
            return int(data[field])
    return None


def _image_len(run: RunData) -> int | None:
    """The guest disk's size from the run's parameters (``image_mib``), if recorded."""
    p = run.meta.get("params") or {}
    if "image_mib" in p and isinstance(p["image_mib"], (int, float)):
        return int(p["image_mib"] * MIB)
    return None
