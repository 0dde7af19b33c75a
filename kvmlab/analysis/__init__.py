"""Analysis of recorded runs: pure functions over the recorder's DataFrames.

Why a mirror took long, or never became ready: the series functions (remaining, rates,
stalls, paused periods, the convergence verdict; :mod:`kvmlab.analysis.series`), the causes of
hold-ups from QEMU's trace (:mod:`kvmlab.analysis.causes`), and :func:`summarize`, one flat row of
both for a run (sweep tables, ``kvmlab analyze``).  Everything of :mod:`kvmlab.analysis.series` is
reached here too.

Nothing here talks to QEMU; everything works on a saved run (:func:`kvmlab.load_run`).
"""

from __future__ import annotations

from kvmlab.analysis.series import (  # the series' functions, reached here as they always were
    ACTIVE_STATUSES,
    PAUSED_STATUSES,
    Period,
    convergence,
    duration,
    during,
    event_data,
    fault_effect,
    fault_windows,
    flat_stretches,
    guest_write_rate,
    is_paused,
    job_error,
    job_events,
    job_instances,
    job_samples,
    job_span,
    job_start,
    jobs,
    jobs_by_start,
    paused_periods,
    progress_after,
    rates,
    remaining,
    stalls,
    time_of,
    windows,
)
from kvmlab.analysis.summary import summarize, summarize_jobs

__all__ = [
    "ACTIVE_STATUSES", "MIB", "PAUSED_STATUSES", "Period", "convergence", "duration",
    "during", "event_data", "fault_effect", "fault_windows", "flat_stretches",
    "guest_write_rate", "is_paused", "job_error", "job_events", "job_instances",
    "job_samples", "job_span", "job_start", "jobs", "jobs_by_start", "paused_periods", "progress_after",
    "rates", "remaining", "stalls", "time_of", "windows", "summarize", "summarize_jobs",
]
