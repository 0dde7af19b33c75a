"""Matplotlib figures of recorded runs: each takes an optional Axes and returns the Figure.

Plots read saved DataFrames only; they never talk to QEMU.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

MIB = 1024 * 1024
_EVENT_MARKS = {"mirror_start": "job start", "BLOCK_JOB_READY": "READY", "cancel": "cancel",
                "complete": "complete", "BLOCK_JOB_COMPLETED": "completed",
                "BLOCK_JOB_CANCELLED": "cancelled", "BLOCK_JOB_ERROR": "error"}


def _axes(ax: Axes | None, **fig_kw: Any) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    fig, new_ax = plt.subplots(**({"figsize": (9, 4)} | fig_kw))
    return fig, new_ax


def mark_events(ax: Axes, events: pd.DataFrame) -> None:
    """Labelled vertical lines for the job's milestones."""
    if events is None or events.empty:
        return
    for _, ev in events[events["name"].isin(list(_EVENT_MARKS))].iterrows():
        ax.axvline(ev["t"], color="0.4", linestyle=":", linewidth=1)
        ax.annotate(_EVENT_MARKS[ev["name"]], (ev["t"], 1.0), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right", fontsize=8, color="0.3")


def progress(samples: pd.DataFrame, events: pd.DataFrame | None = None, *,
             ax: Axes | None = None, job: str | None = None) -> Figure:
    """Offset and len of the job (MiB) against time (s): ``info block-jobs`` as a curve."""
    fig, ax = _axes(ax)
    df = samples if job is None else samples[samples["job"] == job]
    for name, g in df.groupby("job"):
        ax.plot(g["t"], g["offset"] / MIB, label=f"{name} offset")
        ax.plot(g["t"], g["len"] / MIB, linestyle="--", label=f"{name} len")
    mark_events(ax, events if events is not None else pd.DataFrame())
    ax.set_xlabel("time since recording started (s)")
    ax.set_ylabel("MiB")
    ax.set_title("Mirror progress (offset and len)")
    if not df.empty:
        ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return fig
