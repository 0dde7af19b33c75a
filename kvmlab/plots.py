"""Matplotlib figures of recorded runs: each takes an optional Axes and returns the Figure.

Every panel shades stall periods (red) and paused periods (grey hatched), and
marks the run's milestones (job start, READY, pause/resume, speed change,
fault injected/cleared, cancel/complete, error) with labelled vertical lines.
Plots read saved DataFrames only; they never talk to QEMU.
"""

from __future__ import annotations

import contextvars
import io
import json
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from kvmlab import analysis, marks, units
from kvmlab.analysis import causes
from kvmlab.store.runs import RunData
from kvmlab.units import MIB

#: lines with more points than this are drawn decimated (min and max per column)
MAX_POINTS = 4000
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


_DECIMATE: contextvars.ContextVar[bool] = contextvars.ContextVar("decimate", default=True)


@contextmanager
def every_point() -> Iterator[None]:
    """Draw every point, as kvmlab did before decimation (for comparisons)."""
    token = _DECIMATE.set(False)
    try:
        yield
    finally:
        _DECIMATE.reset(token)


def decimate(t: Any, y: Any, columns: int = MAX_POINTS // 4) -> tuple[np.ndarray, np.ndarray]:
    """At most ~4 points per column of *columns*: each column's first, last, lowest and
    highest point, in time order, so every burst, dip and stall edge stays visible while
    a 10-hour series draws like a short one.  Short series come back unchanged."""
    tt = np.asarray(t, dtype="float64")
    yy = np.asarray(y, dtype="float64")
    if len(tt) <= MAX_POINTS or not _DECIMATE.get():
        return tt, yy
    keep = ~np.isnan(yy) & ~np.isnan(tt)
    tt, yy = tt[keep], yy[keep]
    if len(tt) and np.any(np.diff(tt) < 0):
        order = np.argsort(tt, kind="stable")
        tt, yy = tt[order], yy[order]
    if not len(tt):
        return tt, yy
    lo, hi = float(tt[0]), float(tt[-1])
    col = np.minimum(((tt - lo) / max(hi - lo, 1e-12) * columns).astype(np.int64), columns - 1)
    # time-sorted, so each column is one run of rows: its first and last row are the run's
    # edges, and its lowest and highest the first row equal to the run's min and max
    first = np.flatnonzero(np.concatenate([[True], col[1:] != col[:-1]]))
    last = np.concatenate([first[1:], [len(col)]]) - 1
    run = np.repeat(np.arange(len(first)), last - first + 1)
    picks = [first, last]
    for extreme in (np.minimum.reduceat(yy, first), np.maximum.reduceat(yy, first)):
        hit = np.flatnonzero(yy == extreme[run])
        picks.append(hit[np.unique(run[hit], return_index=True)[1]])
    idx = np.unique(np.concatenate(picks))
    return tt[idx], yy[idx]


def _per_column(times: np.ndarray, columns: int = MAX_POINTS // 3) -> np.ndarray:
    """Times closer than one column of *columns* drawn once (a long run has tens of
    thousands of marks; one line per pixel column looks the same)."""
    if len(times) <= columns or not _DECIMATE.get():
        return times
    lo, hi = float(times.min()), float(times.max())
    width = max(hi - lo, 1e-12) / columns
    return np.unique(np.floor((times - lo) / width)) * width + lo


def _line(ax: Axes, t: Any, y: Any, *args: Any, step: bool = False, **kw: Any) -> None:
    """ax.plot (or ax.step, drawn 'post') of a series, decimated when long."""
    x, v = decimate(t, y)
    if step:
        ax.step(x, v, *args, where="post", **kw)
    else:
        ax.plot(x, v, *args, **kw)


def fmt_rate(bps: float) -> str:
    """Bytes/s for a person: ``4 MiB/s``, ``256 KiB/s``, ``1 B/s``."""
    for unit, size in (("MiB/s", MIB), ("KiB/s", 1024)):
        if bps >= size:
            return f"{bps / size:.3g} {unit}"
    return f"{bps:.3g} B/s"


def _event_label(ev: Any) -> str:
    """An event's label (a row, as a Series or a namedtuple); a speed change says its rate."""
    name = ev["name"] if isinstance(ev, pd.Series) else ev.name
    label = EVENT_LABELS[str(name)]
    if name in (marks.SET_SPEED, marks.COPY_MODE):
        try:
            data = json.loads(ev["data"] if isinstance(ev, pd.Series) else ev.data)
        except (TypeError, ValueError, AttributeError):
            return label
        if name == marks.SET_SPEED:
            speed = data.get("speed")
            label = f"speed {fmt_rate(speed)}" if speed else "speed unlimited"
        elif data.get("copy_mode"):
            label = f"-> {data['copy_mode']}"
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
#: above this many events, labels are the events' names (a speed change's rate not read)
MANY_EVENTS = 2000



def _spans(ax: Axes, spans: list[tuple[float, float]], **kw: Any) -> None:
    """Full-height spans as one artist (a long run has thousands; one axvspan each took
    seconds)."""
    if len(spans) > MAX_POINTS // 4 and _DECIMATE.get():
        spans = _merged(spans, (max(b for _, b in spans) - min(a for a, _ in spans))
                        / (MAX_POINTS // 2))
    if spans:
        ax.broken_barh([(a, max(b - a, 0.0)) for a, b in spans], (0, 1),
                       transform=ax.get_xaxis_transform(), **kw)


def _vlines(ax: Axes, x: Any, y0: Any, y1: Any, *, axes_y: bool = False, **kw: Any) -> None:
    """Vertical lines as ONE Line2D broken by NaNs (``ax.vlines`` makes a path per line:
    a long run's thousands of marks took most of a second per panel).  *axes_y*: y in
    axes fractions (full-height marks)."""
    x = np.asarray(x, dtype="float64")
    if not len(x):
        return
    n = len(x)
    xs = np.repeat(x, 3)
    ys = np.empty(3 * n)
    ys[0::3] = np.broadcast_to(np.asarray(y0, dtype="float64"), n)
    ys[1::3] = np.broadcast_to(np.asarray(y1, dtype="float64"), n)
    ys[2::3] = np.nan
    if axes_y:
        kw["transform"] = ax.get_xaxis_transform()
    ax.plot(xs, ys, **kw)


def _merged(spans: list[tuple[float, float]], gap: float) -> list[tuple[float, float]]:
    """Spans less than *gap* apart joined (less than a pixel column apart on the plot)."""
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a - out[-1][1] < gap:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


_LAST_WINDOWS: list[Any] = [None, None]
#: the legend of a target outage's onset interval (where it began)
ONSET_LABEL = "outage began here"
#: the legend of the record's holes (``sample_gap`` windows)
GAP_LABEL = "no samples (gap)"


def _fault_windows(events: pd.DataFrame) -> pd.DataFrame:
    """analysis.fault_windows, kept for the last events frame (every panel asks)."""
    ref, fw = _LAST_WINDOWS
    if ref is not None and ref() is events:
        return fw  # type: ignore[no-any-return]
    fw = analysis.fault_windows(events)
    _LAST_WINDOWS[:] = [weakref.ref(events), fw]
    return fw


def mark_events(ax: Axes, events: pd.DataFrame | None, label: bool = True) -> None:
    """Vertical lines for the run's milestones, labelled without overlap (labels of
    events close together are merged, neighbours staggered); fault windows shaded."""
    if events is None or events.empty:
        return
    fw = _fault_windows(events)
    seen = {h.get_label() for h in ax.patches} | {h.get_label() for h in ax.collections}
    for i, (name, g) in enumerate(fw.groupby("name", sort=False)):
        legend = f"fault: {name}"
        _spans(ax, list(zip(g["start"], g["end"])), color=FAULT_COLOR, alpha=0.12, linewidth=0,
               label=legend if legend not in seen and i < 6 else None)
    gaps = analysis.windows(events, (marks.SAMPLE_GAP,))
    if len(gaps):                         # holes in the record: nothing is known there
        _spans(ax, list(zip(gaps["start"], gaps["end"])), color="0.5", alpha=0.25,
               linewidth=0, hatch="//",
               label=GAP_LABEL if GAP_LABEL not in seen else None)
    ev = events[events["name"].isin(list(EVENT_LABELS))]
    if ev.empty:
        return
    alarm = ev["name"].isin(list(ALARMS)).to_numpy()
    t = ev["t"].to_numpy(dtype="float64")
    for times, color in ((t[~alarm], "0.35"), (t[alarm], "tab:red")):
        if len(times):
            _vlines(ax, _per_column(times), 0, 1, axes_y=True, color=color,
                    linestyle=":", linewidth=1)
    if not label:
        return
    alarm_times = np.sort(t[alarm])
    lo, hi = ax.get_xlim()
    lo, hi = min(lo, float(t.min())), max(hi, float(t.max()))
    gap = LABEL_GAP * max(hi - lo, 1e-9)
    labels = [_event_label(e) for e in ev.itertuples(index=False)] if len(ev) <= MANY_EVENTS \
        else [EVENT_LABELS[str(n)] for n in ev["name"]]
    groups = label_groups([float(x) for x in t], labels, gap)
    previous = None
    level = 0
    for when, text in groups:
        level = 1 - level if previous is not None and when - previous < 3 * gap else 0
        previous = when
        k = np.searchsorted(alarm_times, when - gap)
        near = k < len(alarm_times) and abs(alarm_times[k] - when) < gap
        ax.annotate(text, (when, 0.98 - 0.45 * level), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right", fontsize=7,
                    color="tab:red" if near else "0.35")


def say_empty(ax: Axes, events: pd.DataFrame | None, what: str = "job samples") -> None:
    """Write on an empty panel why it is empty (a job that ended before the first
    ``query-block-jobs`` sample, as E4's 36 ms commit does)."""
    span = analysis.job_span(events) if events is not None and not events.empty else None
    why = (f"no {what}: the job took {span * 1000:.0f} ms, less than one sample interval"
           if span is not None else f"no {what} recorded")
    ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", fontsize=9,
            color="0.3", wrap=True)


def shade_periods(ax: Axes, samples: pd.DataFrame, job: str | None = None,
                  held: pd.DataFrame | None = None, **stall_kw: Any) -> list[Patch]:
    """Shade hold-ups and paused periods; returns legend handles for what was drawn.

    :param held: hold-ups classified by cause (:func:`kvmlab.analysis.causes.classify`): each cause
        in its colour.  Without it, stalls are red and paused periods grey hatched."""
    handles: list[Patch] = []
    if held is not None and len(held):
        for cause, g in held.groupby("cause", sort=False):
            color = causes.COLORS[str(cause)]
            _spans(ax, list(zip(g["start"], g["end"])), color=color, alpha=0.18, linewidth=0)
            handles.append(Patch(color=color, alpha=0.18, label=causes.LABELS[str(cause)]))
        interval = causes.outage_onset_interval(held)
        if interval is not None:          # where the outage began: between these two
            lo, hi = interval
            _spans(ax, [(lo, max(hi, lo + 1e-3))], color=causes.COLORS["target"], alpha=0.6,
                   linewidth=0)
            handles.append(Patch(color=causes.COLORS["target"], alpha=0.6,
                                 label=ONSET_LABEL + f" ({(hi - lo) * 1000:.0f} ms wide)"))
        return handles
    if samples is None or samples.empty:
        return handles
    st = analysis.stalls(samples, job, **stall_kw)
    _spans(ax, list(zip(st["start"], st["end"])), color=STALL_COLOR, alpha=0.15, linewidth=0)
    if len(st):
        handles.append(Patch(color=STALL_COLOR, alpha=0.15, label="stall"))
    pa = analysis.paused_periods(samples, job)
    _spans(ax, list(zip(pa["start"], pa["end"])), facecolor="none", edgecolor=PAUSE_COLOR,
           hatch="//", linewidth=0)
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
        # "best" tests every point against every place: seconds on a long run
        points = sum(np.size(line.get_xdata()) for line in ax.get_lines())
        crowded = points + sum(len(c.get_paths()) for c in ax.collections) > MAX_POINTS // 4
        ax.legend(handles=list(handles) + extra, loc="upper left" if crowded else "best",
                  fontsize=8)
    ax.grid(alpha=0.3)


def progress(samples: pd.DataFrame, events: pd.DataFrame | None = None, *,
             ax: Axes | None = None, job: str | None = None, xlabel: bool = True,
             held: pd.DataFrame | None = None) -> Figure:
    """Offset and len (MiB) against time: ``info block-jobs`` as curves; hold-ups shaded
    by cause when *held* (:func:`kvmlab.analysis.causes.classify`) is given."""
    fig, ax = _axes(ax)
    names = [job] if job else analysis.jobs(samples)
    for name in names:
        g = analysis.job_samples(samples, name)
        _line(ax, g["t"], g["offset"] / MIB, label=f"{name} offset")
        _line(ax, g["t"], g["len"] / MIB, linestyle="--", label=f"{name} len")
    if not names:
        say_empty(ax, events)
    extra = shade_periods(ax, samples, job, held)
    mark_events(ax, events)
    _finish(ax, "Mirror progress: offset and len", "MiB", extra, xlabel)
    return fig


def convergence(samples: pd.DataFrame, events: pd.DataFrame | None = None, *,
                ax: Axes | None = None, job: str | None = None, log: bool = False,
                xlabel: bool = True, held: pd.DataFrame | None = None) -> Figure:
    """Remaining bytes (len - offset, MiB): the dirty backlog; zero means in sync."""
    fig, ax = _axes(ax)
    names = [job] if job else analysis.jobs(samples)
    for name in names:
        r = analysis.remaining(samples, name)
        y = r / MIB
        if log:
            y = y.clip(lower=1 / 1024)  # 1 KiB floor so zeros stay on a log axis
        _line(ax, r.index, y, label=f"{name} remaining")
    if log and names:
        ax.set_yscale("log")
    if not names:
        say_empty(ax, events)
    extra = shade_periods(ax, samples, job, held)
    mark_events(ax, events)
    _finish(ax, "Convergence: remaining bytes", "MiB" + (" (log)" if log else ""), extra, xlabel)
    return fig


def rates(samples: pd.DataFrame, events: pd.DataFrame | None = None,
          guest_ops: pd.DataFrame | None = None, *, ax: Axes | None = None,
          job: str | None = None, window: float = 2.0, xlabel: bool = True,
          held: pd.DataFrame | None = None) -> Figure:
    """Copy rate and dirtying rate (MiB/s), and the guest's own write rate if recorded."""
    fig, ax = _axes(ax)
    names = [job] if job else analysis.jobs(samples)
    for name in names:
        r = analysis.rates(samples, name, window)
        _line(ax, r["t"], r["copy_rate"] / MIB, label=f"{name} copy rate")
        _line(ax, r["t"], r["dirty_rate"] / MIB, linestyle="--",
              label=f"{name} dirtying (d len/dt)")
        limit = analysis.job_samples(samples, name)
        if len(limit) and (limit["speed"] > 0).any():
            speed = limit["speed"].astype("float64").where(limit["speed"] > 0)
            _line(ax, limit["t"], speed / MIB, step=True, color="0.3", linestyle=":",
                    label=f"{name} speed limit")
    if guest_ops is not None and not guest_ops.empty:
        g = analysis.guest_write_rate(guest_ops, window)
        if len(g):
            _line(ax, g["t"], g["write_rate"] / MIB, step=True, color="tab:green", alpha=0.7,
                    label="guest dd write rate")
    if not names:
        say_empty(ax, events)
    extra = shade_periods(ax, samples, job, held)
    mark_events(ax, events)
    _finish(ax, f"Rates (averaged over {window:g} s; QEMU copies in chunks, so the copy rate "
                "swings around the limit)", "MiB/s", extra, xlabel)
    return fig


def guest_io(frame: pd.DataFrame, events: pd.DataFrame | None = None,
             samples: pd.DataFrame | None = None, *, ax: Axes | None = None,
             xlabel: bool = True, held: pd.DataFrame | None = None) -> Figure:
    """What the guest's fio did each second (``guest_io.parquet``): read and write MiB/s,
    and on a second axis the completion latency (p50 solid, p99 dashed, ms): the mirror's
    cost to the guest, on the mirror's time axis."""
    fig, ax = _axes(ax)
    if frame is None or frame.empty:
        say_empty(ax, None, "fio results (workload=files)")
    else:
        lat = ax.twinx()
        for i, d in enumerate(("read", "write")):
            if not (frame[f"{d}_iops"] > 0).any():
                continue
            _line(ax, frame["t"], frame[f"{d}_bw"] / MIB, step=True, color=f"C{i}",
                  label=f"guest {d} MiB/s")
            _line(lat, frame["t"], frame[f"{d}_p50_us"] / 1000, color=f"C{i + 2}",
                  label=f"{d} latency p50")
            _line(lat, frame["t"], frame[f"{d}_p99_us"] / 1000, color=f"C{i + 2}",
                  linestyle="--", label=f"{d} latency p99")
        ax.set_ylim(bottom=0)
        lat.set_ylabel("latency (ms)")
        lat.set_ylim(bottom=0)
        lines, labels = lat.get_legend_handles_labels()
        if lines:
            lat.legend(lines, labels, loc="upper right", fontsize=8)
    extra = shade_periods(ax, samples, None, held) if samples is not None else []
    mark_events(ax, events)
    _finish(ax, "The guest's I/O (fio, per second)", "MiB/s", extra, xlabel)
    return fig


def image_sizes(sizes: pd.DataFrame, events: pd.DataFrame | None = None,
                samples: pd.DataFrame | None = None, *, ax: Axes | None = None,
                xlabel: bool = True, held: pd.DataFrame | None = None) -> Figure:
    """Apparent (solid) and allocated (dashed) size of each tracked image: the seed's ``ll``."""
    fig, ax = _axes(ax)
    if sizes is not None and not sizes.empty:
        for i, (label, g) in enumerate(sizes.groupby("label", sort=False)):
            color = f"C{i}"
            g = g.sort_values("t")
            _line(ax, g["t"], g["apparent"].astype("float64") / MIB, step=True, color=color,
                    label=f"{label} apparent")
            _line(ax, g["t"], g["allocated"].astype("float64") / MIB, step=True, color=color,
                    linestyle="--", label=f"{label} allocated")
    else:
        say_empty(ax, None, "image sizes")
    extra = shade_periods(ax, samples, None, held) if samples is not None else []
    mark_events(ax, events)
    _finish(ax, "Image file sizes", "MiB", extra, xlabel)
    return fig


def trace_lanes(trace: pd.DataFrame, events: pd.DataFrame | None, axes: Any, *,
                job: str | None = None, xlabel: bool = False) -> None:
    """Four lanes from QEMU's trace (:mod:`kvmlab.qemu.trace`) on *axes*: requests in flight,
    the dirty count QEMU reports (MiB), each throttle sleep (s), and the size of each
    request the mirror issued (KiB: how its iterations split the work)."""
    jt = causes.job_trace(trace, events if events is not None else pd.DataFrame(), job)
    lanes = causes.lanes(jt)
    spec = (("in_flight", "requests\nin flight", 1.0, "tab:blue"),
            ("dirty", "dirty count\n(MiB)", MIB, "tab:olive"),
            ("sleep", "throttle\nsleep (s)", 1.0, "tab:orange"),
            ("size", "request\nsize (KiB)", 1024.0, "tab:purple"))
    for ax, (key, label, scale, color) in zip(axes, spec, strict=True):
        lane = lanes[key]
        if len(lane):
            if key == "sleep":
                # three points per line (see _vlines): a quarter of the columns
                x, v = decimate(lane["t"], lane["value"], columns=MAX_POINTS // 12)
                _vlines(ax, x, 0, v, color=color, linewidth=1.5)
                ax.set_ylim(bottom=0)
            elif key == "size":
                _line(ax, lane["t"], lane["value"] / scale, ".", color=color, markersize=2)
                ax.set_ylim(bottom=0)
            else:
                _line(ax, lane["t"], lane["value"] / scale, step=True, color=color,
                      linewidth=1)
        else:
            why = "no trace recorded" if jt is None or jt.empty else (
                "no sleep traced (this QEMU sleeps in its rate limiter without a trace "
                "point; a limited job with nothing in flight is sleeping)"
                if key == "sleep" else f"no {key.replace('_', ' ')} traced")
            ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center",
                    fontsize=8, color="0.3")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        mark_events(ax, events, label=False)
    if xlabel:
        axes[-1].set_xlabel("time since recording started (s)")


def in_flight_lane(trace: pd.DataFrame | None, events: pd.DataFrame | None, *,
                   ax: Axes, job: str | None = None) -> None:
    """One lane for the panel: requests in flight (a step) with each traced throttle sleep
    shaded orange; says so when there is no trace."""
    jt = causes.job_trace(trace, events if events is not None else pd.DataFrame(), job) \
        if trace is not None and len(trace) else None
    if jt is None or jt.empty:
        ax.text(0.5, 0.5, "no QEMU trace for this job", transform=ax.transAxes, ha="center",
                va="center", fontsize=8, color="0.3")
    else:
        lanes = causes.lanes(jt)
        _line(ax, lanes["in_flight"]["t"], lanes["in_flight"]["value"], step=True,
              color="tab:blue", linewidth=1)
        sl = lanes["sleep"]
        _spans(ax, list(zip(sl["t"], sl["t"] + sl["value"])), color="tab:orange", alpha=0.3,
               linewidth=0)
    ax.set_ylabel("in flight", fontsize=8)
    ax.set_xlabel("time since recording started (s)")
    ax.grid(alpha=0.3)


def dashboard(run: RunData, *, job: str | None = None, window: float = 2.0,
              log: bool = False, trace: bool = True) -> Figure:
    """Progress, QEMU's trace lanes (in flight, dirty count, throttle sleep, request size),
    convergence,
    rates and image sizes stacked on one time axis; hold-ups shaded by cause.

    :param trace: draw the trace lanes and colour hold-ups by cause (when the run has a
        trace); False draws the samples only, stalls in red."""
    job = job or next(iter(analysis.jobs_by_start(run.samples, run.events)), None)
    tr = run.trace if trace else None
    traced = tr is not None and not tr.empty
    held = causes.classify(run, job) if traced else None
    io = run.guest_io
    heights = [3, 1, 1, 1, 1, 3, 3, 3] if traced else [1, 1, 1, 1]
    if not io.empty:                       # the guest ran fio: its I/O beside the mirror's
        heights.append(heights[-1])
    fig, axes = plt.subplots(len(heights), 1, sharex=True, gridspec_kw={"height_ratios": heights},
                             figsize=(10, (17 if traced else 13) * len(heights) / (8 if traced else 4)))
    top, rest = axes[0], list(axes[5:] if traced else axes[1:])
    progress(run.samples, run.events, ax=top, job=job, xlabel=False, held=held)
    if traced:
        trace_lanes(run.trace, run.events, axes[1:5], job=job)
    convergence(run.samples, run.events, ax=rest[0], job=job, log=log, xlabel=False, held=held)
    rates(run.samples, run.events, run.guest_ops, ax=rest[1], job=job, window=window,
          xlabel=False, held=held)
    image_sizes(run.sizes, run.events, run.samples, ax=rest[2], held=held,
                xlabel=io.empty)
    if not io.empty:
        guest_io(io, run.events, run.samples, ax=rest[3], held=held)
    meta = run.meta
    verdict = (meta.get("verdict") or {}).get("pass")
    fig.suptitle(f"{meta.get('experiment', '')} {meta.get('run_id', '')}  "
                 f"accel={meta.get('accel', '?')}  verdict="
                 f"{'PASS' if verdict else 'FAIL' if verdict is not None else '-'}", fontsize=10)
    # fixed margins: the axes share x and their labels have a known size; tight_layout
    # measured every tick label of every panel (a third of a second on a long run)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.04 if traced else 0.05,
                        top=0.95 if traced else 0.93, hspace=0.2)
    return fig


def jobs_side_by_side(run: RunData, *, log: bool = False) -> Figure:
    """A column per job (a VM with several disks mirrors each in its own job): progress
    above, remaining bytes below, on one shared time axis."""
    names: list[str | None] = [*analysis.jobs_by_start(run.samples, run.events)] or [None]
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names) + 1, 6), sharex=True,
                             squeeze=False)
    for col, name in enumerate(names):
        progress(run.samples, run.events, ax=axes[0, col], job=name, xlabel=False)
        convergence(run.samples, run.events, ax=axes[1, col], job=name, log=log)
        axes[0, col].set_title(f"{name or 'no job'}: progress", fontsize=9)
        axes[1, col].set_title(f"{name or 'no job'}: remaining", fontsize=9)
    fig.tight_layout()
    return fig


def migration(frame: pd.DataFrame, events: pd.DataFrame | None = None, *,
              ax: Axes | None = None, xlabel: bool = True) -> Figure:
    """A live migration's RAM (``query-migrate``): transferred and remaining MiB over time,
    the expected downtime on a second axis; kvmlab's steps marked."""
    fig, ax = _axes(ax)
    if frame.empty or "ram_transferred" not in frame:
        say_empty(ax, events, "migration samples")
    else:
        _line(ax, frame["t"], frame["ram_transferred"].astype(float) / MIB,
              label="RAM transferred")
        _line(ax, frame["t"], frame["ram_remaining"].astype(float) / MIB, linestyle="--",
              label="RAM remaining")
        if "expected_downtime" in frame and frame["expected_downtime"].notna().any():
            twin = ax.twinx()
            _line(twin, frame["t"], frame["expected_downtime"].astype(float), color="tab:red",
                  linestyle=":", label="expected downtime")
            twin.set_ylabel("expected downtime (ms)", color="tab:red")
    mark_events(ax, events)
    _finish(ax, "Migration: RAM and device state", "MiB", [], xlabel)
    return fig


def save_all(run: RunData, **kw: Any) -> list[str]:
    """Write dashboard.png (and the single panels) into the run's folder; return the names.
    A run with several jobs also gets ``jobs.png`` (side by side) and a dashboard per job."""
    out = []
    figs = {"dashboard.png": dashboard(run, **kw),
            "progress.png": progress(run.samples, run.events),
            "convergence.png": convergence(run.samples, run.events),
            "rates.png": rates(run.samples, run.events, run.guest_ops),
            "image_sizes.png": image_sizes(run.sizes, run.events, run.samples)}
    names = analysis.jobs_by_start(run.samples, run.events)
    if len(names) > 1:
        figs["jobs.png"] = jobs_side_by_side(run)
        figs.update({f"dashboard-{name}.png": dashboard(run, **{**kw, "job": name})
                     for name in names})
    for name, fig in figs.items():
        save_png(fig, run.path / name)
        plt.close(fig)
        out.append(name)
    return out


def save_png(fig: Figure, path: Path, dpi: int = 100) -> Path:
    """*fig* written to *path* as PNG, trimmed to what it draws (a run folder's figures)."""
    fig.savefig(path, format="png", dpi=dpi, bbox_inches="tight")
    return path


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


#: the consistency study's per-copy shares drawn, and their legend names
CONSISTENCY_RATES = {"promises_kept": "synced ops intact, clean after replay",
                     "point_in_time": "every finished op intact (point-in-time)",
                     "needs_replay": "journal to replay"}
#: the states of the operations that were only written, and their colours
WRITTEN_STATES = {"intact": "tab:green", "empty": "tab:orange", "missing": "tab:red",
                  "torn": "tab:purple"}


def consistency(trials: pd.DataFrame, title: str = "What copies cut from a live VM hold"
                ) -> Figure:
    """The consistency study (:mod:`kvmlab.experiments.consistency`): left, per cut and
    cache mode the share of copies that kept the guest's promises, were point-in-time and
    needed a journal replay (with 95 % intervals); right, per cut what the copies held of
    the operations that were only written, not synced."""
    from kvmlab.experiments.consistency import counts, rates
    table, ops = rates(trials), counts(trials)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.8), width_ratios=(2, 1))
    x = np.arange(len(table))
    width = 0.8 / len(CONSISTENCY_RATES)
    for i, (col, name) in enumerate(CONSISTENCY_RATES.items()):
        rate = table[f"{col}_rate"].astype(float)
        err = np.vstack([rate - table[f"{col}_low"], table[f"{col}_high"] - rate]).clip(0)
        ax.bar(x + i * width, rate, width=width, label=name, yerr=err, capsize=2)
    ax.set_xticks(x + width, table.cut + "\n" + table.cache, fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("share of copies")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title, fontsize=10)
    written = ops[ops["class"] == "written"].groupby("cut", sort=False)[
        list(WRITTEN_STATES)].sum()
    bottom = np.zeros(len(written))
    for state, colour in WRITTEN_STATES.items():
        bx.bar(written.index, written[state], bottom=bottom, color=colour, label=state)
        bottom += written[state].to_numpy()
    bx.set_ylabel("operations only written")
    bx.set_title("Unsynced writes in the copy", fontsize=10)
    bx.legend(fontsize=7)
    bx.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig


def snapshot_methods(table: pd.DataFrame,
                     title: str = "Snapshot methods: what each costs the guest and the host"
                     ) -> Figure:
    """The snapshot-methods summary (:func:`kvmlab.experiments.snapshot_methods.summary`):
    per method and quiesce, the guest's p95 write latency during the copy against before,
    its downtime, and the MiB the host wrote; each bar group is labelled with how many of
    its copies were point-in-time."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    labels = table.method + "\n" + table.quiesce
    x = np.arange(len(table))
    lat, down, host = axes
    lat.bar(x - 0.2, table.latency_p95_before_ms.astype(float), 0.4, label="before",
            color="tab:gray")
    lat.bar(x + 0.2, table.latency_p95_ms.astype(float), 0.4, label="during",
            color="tab:blue")
    lat.set_ylabel("guest p95 write latency (ms)")
    lat.legend(fontsize=7)
    down.bar(x, table.guest_downtime_s.astype(float) * 1000, color="tab:orange")
    down.set_ylabel("guest downtime (ms)")
    host.bar(x, table.host_mib_written.astype(float), color="tab:green")
    host.set_ylabel("written on the host (MiB)")
    for ax in axes:
        ax.set_xticks(x, labels, fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    for i, r in enumerate(table.to_dict(orient="records")):
        host.annotate(f"{r['point_in_time']}/{r['copies']}", (i, float(r["host_mib_written"])),
                      ha="center", va="bottom", fontsize=7)
    host.set_title("labels: point-in-time copies", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def png(fig: Figure, dpi: int = 100, close: bool = False) -> bytes:
    """*fig* as PNG bytes (an Agg canvas, so any figure renders outside a notebook too);
    *close* releases it from pyplot afterwards."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=dpi)
    if close:
        plt.close(fig)
    return buf.getvalue()
