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

from . import analysis, marks, units
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


def label_groups(times: list[float], labels: list[str], min_gap: float) -> list[tuple[float, str]]:
    """Event labels closer than *min_gap* merged into one (``cancel / completed``), so
    events milliseconds apart do not smear into each other; each group at its first time."""
    groups: list[tuple[float, list[str]]] = []
    for t, label in sorted(zip(times, labels, strict=True), key=lambda p: p[0]):
        if groups and t - groups[-1][0] < min_gap:
            if label not in groups[-1][1]:
                groups[-1][1].append(label)
        else:
            groups.append((t, [label]))
    return [(t, " / ".join(names)) for t, names in groups]


#: the smallest gap between two event labels, as a fraction of the time axis
LABEL_GAP = 0.025


def mark_events(ax: Axes, events: pd.DataFrame | None, label: bool = True) -> None:
    """Vertical lines for the run's milestones, labelled without overlap (labels of
    events close together are merged, neighbours staggered); fault windows shaded."""
    if events is None or events.empty:
        return
    for i, (_, f) in enumerate(analysis.fault_windows(events).iterrows()):
        seen = {h.get_label() for h in ax.patches}
        name = f"fault: {f['name']}"
        ax.axvspan(f["start"], f["end"], color=FAULT_COLOR, alpha=0.12, linewidth=0,
                   label=name if name not in seen and i < 6 else None)
    ev = events[events["name"].isin(list(EVENT_LABELS))]
    if ev.empty:
        return
    alarm_times = set()
    for _, e in ev.iterrows():
        alarm = e["name"] in ALARMS
        ax.axvline(e["t"], color="tab:red" if alarm else "0.35", linestyle=":", linewidth=1)
        if alarm:
            alarm_times.add(float(e["t"]))
    if not label:
        return
    lo, hi = ax.get_xlim()
    lo, hi = min(lo, float(ev["t"].min())), max(hi, float(ev["t"].max()))
    gap = LABEL_GAP * max(hi - lo, 1e-9)
    groups = label_groups([float(t) for t in ev["t"]], [_event_label(e) for _, e in ev.iterrows()],
                          gap)
    previous = None
    level = 0
    for t, text in groups:
        level = 1 - level if previous is not None and t - previous < 3 * gap else 0
        previous = t
        color = "tab:red" if any(abs(t - a) < gap for a in alarm_times) else "0.35"
        ax.annotate(text, (t, 0.98 - 0.45 * level), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right", fontsize=7, color=color)


def say_empty(ax: Axes, events: pd.DataFrame | None, what: str = "job samples") -> None:
    """Write on an empty panel why it is empty (a job that ended before the first
    ``query-block-jobs`` sample, as E4's 36 ms commit does)."""
    span = analysis.job_span(events) if events is not None and not events.empty else None
    why = (f"no {what}: the job took {span * 1000:.0f} ms, less than one sample interval"
           if span is not None else f"no {what} recorded")
    ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", fontsize=9,
            color="0.3", wrap=True)


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
    if not names:
        say_empty(ax, events)
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
    if log and names:
        ax.set_yscale("log")
    if not names:
        say_empty(ax, events)
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
    if not names:
        say_empty(ax, events)
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
    else:
        say_empty(ax, None, "image sizes")
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


def param_axis(values: pd.Series, key: str, log: bool = False) -> tuple[pd.Series, dict[float, str]]:
    """Positions on an axis for a swept parameter's raw values, in its unit (speed in
    MiB/s...), and tick labels for each distinct value: a speed of 0 (no limit) is drawn
    right of the largest one and labelled "unlimited", not at 0."""
    _, div = units.unit_of(key)
    pos = values.astype("float64") / div
    ticks = {float(v): f"{v:g}" for v in pos.dropna().unique()}
    if units.is_speed(key) and (pos == 0).any():
        top = float(pos[pos > 0].max()) if (pos > 0).any() else 1.0
        unlimited = top * (2.0 if log else 1.25)
        pos = pos.where(pos != 0, unlimited)
        ticks.pop(0.0, None)
        ticks[unlimited] = "unlimited"
    return pos, ticks


def _param_ticks(ax: Axes, ticks: dict[float, str]) -> None:
    if 0 < len(ticks) <= 12:
        ax.set_xticks(list(ticks), list(ticks.values()))
        ax.minorticks_off()


def metric_vs_param(frame: pd.DataFrame, x: str, y: str, *, hue: str | None = None,
                    ax: Axes | None = None, xscale: str = "linear",
                    ylabel: str | None = None) -> Figure:
    """Median of *y* against parameter *x* (one line per value of *hue*), points for each
    run.  Columns are raw (bytes, bytes/s); axes show units and readable names."""
    fig, ax = _axes(ax)
    data = frame.dropna(subset=[x, y]) if x in frame and y in frame else frame.iloc[0:0]
    data = data.copy()
    ticks: dict[float, str] = {}
    if len(data):
        data["_x"], ticks = param_axis(data[x], x, log=xscale == "log")
        data["_y"] = data[y].astype("float64") / units.unit_of(y)[1]
    groups = data.groupby(hue, dropna=False) if hue and hue in data else [(None, data)]
    for key, g in groups:
        if g.empty:
            continue
        med = g.groupby("_x")["_y"].median().sort_index()
        shown = units.with_unit(hue, key) if hue and key is not None else None
        label = f"{units.NAMES.get(hue, hue)} {shown}" if hue and shown else units.axis_label(y)
        line, = ax.plot(med.index, med.to_numpy(), marker="o", label=label)
        ax.scatter(g["_x"], g["_y"], color=line.get_color(), alpha=0.35, s=12)
    ax.set_xscale(xscale)
    _param_ticks(ax, ticks)
    ax.set_xlabel(units.axis_label(x))
    ax.set_ylabel(ylabel or units.axis_label(y))
    ax.set_title(f"{ylabel or units.NAMES.get(y, y)} vs {units.NAMES.get(x, x)}")
    if len(data):
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def convergence_map(frame: pd.DataFrame, x: str, y: str, *, ax: Axes | None = None) -> Figure:
    """Each run at (x, y) coloured by its convergence verdict (e.g. speed x dirty rate);
    raw columns, axes in units (an unlimited speed labelled so)."""
    fig, ax = _axes(ax, figsize=(7, 5))
    if x in frame and y in frame and "convergence" in frame and len(frame):
        xs, ticks = param_axis(frame[x], x)
        ys = frame[y].astype("float64") / units.unit_of(y)[1]
        for verdict, idx in frame.groupby("convergence", dropna=False).groups.items():
            ax.scatter(xs[idx], ys[idx], s=120, label=str(verdict), alpha=0.8,
                       color=CONVERGENCE_COLORS.get(str(verdict), "0.3"), edgecolor="k")
        _param_ticks(ax, ticks)
        ax.legend(title="verdict", fontsize=8)
    ax.set_xlabel(units.axis_label(x))
    ax.set_ylabel(units.axis_label(y))
    ax.set_title(f"Convergence map: {units.NAMES.get(x, x)} x {units.NAMES.get(y, y)}")
    ax.grid(alpha=0.3)
    return fig
