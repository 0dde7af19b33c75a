"""Matplotlib figures of recorded runs: each takes an optional Axes and returns the Figure.

Every panel shades stall periods (red) and paused periods (grey hatched), and
marks the run's milestones (job start, READY, pause/resume, speed change,
fault injected/cleared, cancel/complete, error) with labelled vertical lines.
Plots read saved DataFrames only; they never talk to QEMU.
"""

from __future__ import annotations

import json
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from . import analysis, marks
from .runs import RunData

MIB = 1024 * 1024
#: event name -> label drawn on the plots
EVENT_LABELS = marks.LABELS
#: events drawn in red
ALARMS = {marks.BLOCK_JOB_ERROR, *(marks.start(w) for w in marks.FAULT_WINDOWS)}
STALL_COLOR = "tab:red"
FAULT_COLOR = "tab:purple"
PAUSE_COLOR = "0.6"


def _axes(ax: Axes | None, **fig_kw: Any) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.get_figure(), ax  # type: ignore[return-value]
    fig, new_ax = plt.subplots(**({"figsize": (9, 4)} | fig_kw))
    return fig, new_ax


def fmt_rate(bps: float) -> str:
    """Bytes/s for a person: ``4 MiB/s``, ``256 KiB/s``, ``1 B/s``."""
    for unit, size in (("MiB/s", MIB), ("KiB/s", 1024)):
        if bps >= size:
            return f"{bps / size:.3g} {unit}"
    return f"{bps:.3g} B/s"


def _event_label(ev: pd.Series) -> str:
    label = EVENT_LABELS[str(ev["name"])]
    if ev["name"] == "set_speed":
        try:
            speed = json.loads(ev["data"]).get("speed")
            label = f"speed {fmt_rate(speed)}" if speed else "speed unlimited"
        except (TypeError, ValueError, AttributeError):
            pass
    return label


def mark_events(ax: Axes, events: pd.DataFrame | None, label: bool = True) -> None:
    """Labelled vertical lines for the run's milestones; fault windows shaded."""
    if events is None or events.empty:
        return
    for i, (_, f) in enumerate(analysis.fault_windows(events).iterrows()):
        seen = {h.get_label() for h in ax.patches}
        name = f"fault: {f['name']}"
        ax.axvspan(f["start"], f["end"], color=FAULT_COLOR, alpha=0.12, linewidth=0,
                   label=name if name not in seen and i < 6 else None)
    ev = events[events["name"].isin(list(EVENT_LABELS))]
    for _, e in ev.iterrows():
        color = "tab:red" if e["name"] in ALARMS else "0.35"
        ax.axvline(e["t"], color=color, linestyle=":", linewidth=1)
        if label:
            ax.annotate(_event_label(e), (e["t"], 0.98), xycoords=("data", "axes fraction"),
                        rotation=90, va="top", ha="right", fontsize=7, color=color)


def shade_periods(ax: Axes, samples: pd.DataFrame, job: str | None = None,
                  **stall_kw: Any) -> list[Patch]:
    """Shade stalls and paused periods; returns legend handles for what was drawn."""
    handles: list[Patch] = []
    if samples is None or samples.empty:
        return handles
    st = analysis.stalls(samples, job, **stall_kw)
    for _, p in st.iterrows():
        ax.axvspan(p["start"], p["end"], color=STALL_COLOR, alpha=0.15, linewidth=0)
    if len(st):
        handles.append(Patch(color=STALL_COLOR, alpha=0.15, label="stall"))
    pa = analysis.paused_periods(samples, job)
    for _, p in pa.iterrows():
        ax.axvspan(p["start"], p["end"], facecolor="none", edgecolor=PAUSE_COLOR, hatch="//",
                   linewidth=0)
    if len(pa):
        handles.append(Patch(facecolor="none", edgecolor=PAUSE_COLOR, hatch="//",
                             label="paused"))
    return handles


def _finish(ax: Axes, title: str, ylabel: str, extra: list[Patch], xlabel: bool = True) -> None:
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel("time since recording started (s)")
    handles, labels = ax.get_legend_handles_labels()
    if handles or extra:
        ax.legend(handles=list(handles) + extra, loc="best", fontsize=8)
    ax.grid(alpha=0.3)


def progress(samples: pd.DataFrame, events: pd.DataFrame | None = None, *,
             ax: Axes | None = None, job: str | None = None, xlabel: bool = True) -> Figure:
    """Offset and len (MiB) against time: ``info block-jobs`` as curves."""
    fig, ax = _axes(ax)
    names = [job] if job else analysis.jobs(samples)
    for name in names:
        g = analysis.job_samples(samples, name)
        ax.plot(g["t"], g["offset"] / MIB, label=f"{name} offset")
        ax.plot(g["t"], g["len"] / MIB, linestyle="--", label=f"{name} len")
    extra = shade_periods(ax, samples, job)
    mark_events(ax, events)
    _finish(ax, "Mirror progress: offset and len", "MiB", extra, xlabel)
    return fig


def convergence(samples: pd.DataFrame, events: pd.DataFrame | None = None, *,
                ax: Axes | None = None, job: str | None = None, log: bool = False,
                xlabel: bool = True) -> Figure:
    """Remaining bytes (len - offset, MiB): the dirty backlog; zero means in sync."""
    fig, ax = _axes(ax)
    names = [job] if job else analysis.jobs(samples)
    for name in names:
        r = analysis.remaining(samples, name)
        y = r / MIB
        if log:
            y = y.clip(lower=1 / 1024)  # 1 KiB floor so zeros stay on a log axis
        ax.plot(r.index, y, label=f"{name} remaining")
    if log:
        ax.set_yscale("log")
    extra = shade_periods(ax, samples, job)
    mark_events(ax, events)
    _finish(ax, "Convergence: remaining bytes", "MiB" + (" (log)" if log else ""), extra, xlabel)
    return fig


def rates(samples: pd.DataFrame, events: pd.DataFrame | None = None,
          guest_ops: pd.DataFrame | None = None, *, ax: Axes | None = None,
          job: str | None = None, window: float = 2.0, xlabel: bool = True) -> Figure:
    """Copy rate and dirtying rate (MiB/s), and the guest's own write rate if recorded."""
    fig, ax = _axes(ax)
    names = [job] if job else analysis.jobs(samples)
    for name in names:
        r = analysis.rates(samples, name, window)
        ax.plot(r["t"], r["copy_rate"] / MIB, label=f"{name} copy rate")
        ax.plot(r["t"], r["dirty_rate"] / MIB, linestyle="--", label=f"{name} dirtying (d len/dt)")
        limit = analysis.job_samples(samples, name)
        if len(limit) and (limit["speed"] > 0).any():
            speed = limit["speed"].astype("float64").where(limit["speed"] > 0)
            ax.step(limit["t"], speed / MIB, where="post", color="0.3", linestyle=":",
                    label=f"{name} speed limit")
    if guest_ops is not None and not guest_ops.empty:
        g = analysis.guest_write_rate(guest_ops, window)
        if len(g):
            ax.step(g["t"], g["write_rate"] / MIB, where="post", color="tab:green", alpha=0.7,
                    label="guest dd write rate")
    extra = shade_periods(ax, samples, job)
    mark_events(ax, events)
    _finish(ax, f"Rates (averaged over {window:g} s; QEMU copies in chunks, so the copy rate "
                "swings around the limit)", "MiB/s", extra, xlabel)
    return fig


def image_sizes(sizes: pd.DataFrame, events: pd.DataFrame | None = None,
                samples: pd.DataFrame | None = None, *, ax: Axes | None = None,
                xlabel: bool = True) -> Figure:
    """Apparent (solid) and allocated (dashed) size of each tracked image: the seed's ``ll``."""
    fig, ax = _axes(ax)
    if sizes is not None and not sizes.empty:
        for i, (label, g) in enumerate(sizes.groupby("label", sort=False)):
            color = f"C{i}"
            g = g.sort_values("t")
            ax.step(g["t"], g["apparent"].astype("float64") / MIB, where="post", color=color,
                    label=f"{label} apparent")
            ax.step(g["t"], g["allocated"].astype("float64") / MIB, where="post", color=color,
                    linestyle="--", label=f"{label} allocated")
    extra = shade_periods(ax, samples, None) if samples is not None else []
    mark_events(ax, events)
    _finish(ax, "Image file sizes", "MiB", extra, xlabel)
    return fig


def dashboard(run: RunData, *, job: str | None = None, window: float = 2.0,
              log: bool = False) -> Figure:
    """Progress, convergence, rates and image sizes stacked on one time axis."""
    fig, axes = plt.subplots(4, 1, figsize=(10, 13), sharex=True)
    progress(run.samples, run.events, ax=axes[0], job=job, xlabel=False)
    convergence(run.samples, run.events, ax=axes[1], job=job, log=log, xlabel=False)
    rates(run.samples, run.events, run.guest_ops, ax=axes[2], job=job, window=window,
          xlabel=False)
    image_sizes(run.sizes, run.events, run.samples, ax=axes[3])
    meta = run.meta
    verdict = (meta.get("verdict") or {}).get("pass")
    fig.suptitle(f"{meta.get('experiment', '')} {meta.get('run_id', '')}  "
                 f"accel={meta.get('accel', '?')}  verdict="
                 f"{'PASS' if verdict else 'FAIL' if verdict is not None else '-'}", fontsize=10)
    fig.tight_layout()
    return fig


def save_all(run: RunData, **kw: Any) -> list[str]:
    """Write dashboard.png (and the single panels) into the run's folder; return the names."""
    out = []
    figs = {"dashboard.png": dashboard(run, **kw),
            "progress.png": progress(run.samples, run.events),
            "convergence.png": convergence(run.samples, run.events),
            "rates.png": rates(run.samples, run.events, run.guest_ops),
            "image_sizes.png": image_sizes(run.sizes, run.events, run.samples)}
    for name, fig in figs.items():
        fig.savefig(run.path / name, dpi=100, bbox_inches="tight")
        plt.close(fig)
        out.append(name)
    return out


# -- sweep figures -------------------------------------------------------------------------
CONVERGENCE_COLORS = {"converged": "tab:green", "converging": "tab:olive",
                      "diverging": "tab:red", "stalled": "tab:orange", "failed": "black",
                      "unknown": "0.6"}


def metric_vs_param(frame: pd.DataFrame, x: str, y: str, *, hue: str | None = None,
                    ax: Axes | None = None, xscale: str = "linear",
                    ylabel: str | None = None) -> Figure:
    """Median of *y* against parameter *x* (one line per value of *hue*), points for each run."""
    fig, ax = _axes(ax)
    data = frame.dropna(subset=[x, y]) if x in frame and y in frame else frame.iloc[0:0]
    groups = data.groupby(hue, dropna=False) if hue and hue in data else [(None, data)]
    for key, g in groups:
        med = g.groupby(x)[y].median().sort_index()
        label = f"{hue}={key!s}" if hue and key is not None else y
        line, = ax.plot(med.index, med.to_numpy(), marker="o", label=label)
        ax.scatter(g[x], g[y], color=line.get_color(), alpha=0.35, s=12)
    ax.set_xscale(xscale)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or y)
    ax.set_title(f"{ylabel or y} vs {x}")
    if len(data):
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def convergence_map(frame: pd.DataFrame, x: str, y: str, *, ax: Axes | None = None) -> Figure:
    """Each run at (x, y) coloured by its convergence verdict (e.g. speed x dirty rate)."""
    fig, ax = _axes(ax, figsize=(7, 5))
    if x in frame and y in frame and "convergence" in frame:
        for verdict, g in frame.groupby("convergence", dropna=False):
            ax.scatter(g[x], g[y], s=120, label=str(verdict), alpha=0.8,
                       color=CONVERGENCE_COLORS.get(str(verdict), "0.3"), edgecolor="k")
        ax.legend(title="verdict", fontsize=8)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"Convergence map: {x} x {y}")
    ax.grid(alpha=0.3)
    return fig
