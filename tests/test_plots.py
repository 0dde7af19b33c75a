"""Plots that do not mislead: event labels that do not overlap, empty panels that say
why, sweep axes with units and an "unlimited" speed.  On runs recorded from real QEMU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from kvmlab import plots  # noqa: E402
from kvmlab.store.runs import load_run  # noqa: E402

DATA = Path(__file__).parent / "data" / "runs"


def _labels(ax: plt.Axes) -> list[tuple[float, float, str]]:
    return [(a.xy[0], a.xy[1], a.get_text()) for a in ax.texts
            if isinstance(a, matplotlib.text.Annotation)]


def test_close_event_labels_are_merged() -> None:
    groups = plots.label_groups([10.0, 10.004, 10.01, 30.0], ["cancel", "completed",
                                                              "completed", "READY"], 0.5)
    assert groups == [(10.0, "cancel / completed"), (30.0, "READY")]


def test_labels_on_a_real_run_keep_apart() -> None:
    run = load_run(DATA / "stall-set-speed")
    fig = plots.progress(run.samples, run.events)
    ax = fig.axes[0]
    labels = _labels(ax)
    lo, hi = ax.get_xlim()
    gap = plots.LABEL_GAP * (hi - lo)
    for (x1, y1, t1), (x2, y2, t2) in zip(labels, labels[1:]):
        assert x2 - x1 >= gap or y1 != y2, (t1, t2)      # apart, or on another level
    names = {n for *_, text in labels for n in text.split(" / ")}
    assert "READY" in names and any(" / " in text for *_, text in labels)  # merged
    plt.close(fig)


def test_panels_of_a_job_quicker_than_a_sample_say_why() -> None:
    """E4's HMP commit (16 ms here) ended before the first sample: the panels say so."""
    run = load_run(DATA / "commit-stopped")
    assert run.samples.empty
    fig = plots.dashboard(run)
    texts = [t.get_text() for ax in fig.axes[:3] for t in ax.texts]
    assert sum("no job samples: the job took 16 ms" in t for t in texts) == 3, texts
    plt.close(fig)


def test_sweep_axes_have_units_and_unlimited_speed() -> None:
    frame = pd.DataFrame({"speed": [0, 4 << 20, 16 << 20, 0], "time_to_ready_s": [2, 9, 4, 3],
                          "workload_rate_kib_s": [512, 512, 512, 2048],
                          "convergence": ["converged"] * 3 + ["diverging"]})
    fig = plots.metric_vs_param(frame, "speed", "time_to_ready_s", hue="workload_rate_kib_s")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "speed limit (MiB/s)"
    assert ax.get_ylabel() == "time to READY (s)"
    ticks = {t.get_text(): t.get_position()[0] for t in ax.get_xticklabels()}
    assert set(ticks) == {"4", "16", "unlimited"} and ticks["unlimited"] > ticks["16"]
    assert "guest write rate 512 KiB/s" in [t.get_text() for t in ax.get_legend().texts]
    cmap = plots.convergence_map(frame, "speed", "workload_rate_kib_s")
    assert cmap.axes[0].get_xlabel() == "speed limit (MiB/s)"
    assert "unlimited" in [t.get_text() for t in cmap.axes[0].get_xticklabels()]
    plt.close("all")


def test_live_plot_keeps_the_users_zoom_across_refreshes() -> None:
    """The panel's interactive plot (ipympl): a refresh with new samples keeps the view
    the user zoomed to; without a zoom it follows the run."""
    from kvmlab.lab.widgets import LivePlot
    run = load_run(DATA / "stall-set-speed")
    s, e = run.samples, run.events
    half = s[s["t"] <= s["t"].median()]
    live = LivePlot(interactive=True)
    assert live.interactive
    live.draw(half, e[e["t"] <= s["t"].median()])
    first = live.ax.get_xlim()
    live.draw(s, e)                                       # follows the run
    assert live.ax.get_xlim()[1] > first[1]
    live.ax.set_xlim(2.0, 4.0)                            # the user zooms into the stall
    live.draw(s, e)
    assert live.ax.get_xlim() == (2.0, 4.0) and live.zoomed
    assert live.value[:4] == b"\x89PNG"
    live.close()


def test_a_notebook_shows_the_dashboard_it_saved_without_drawing_it_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the inline backend (papermill, nbconvert) show_run displays dashboard.png as
    written (the inline backend would render the same 100 dpi trimmed PNG again); under
    any other backend (ipympl's interactive figure, a script) it draws the figure."""
    import shutil
    from types import SimpleNamespace

    from kvmlab.lab import notebook

    shutil.copytree(DATA / "stall-set-speed", tmp_path / "r")
    result: Any = SimpleNamespace(data=load_run(tmp_path / "r"))
    drawn: list[object] = []
    shown: list[object] = []
    real = plots.dashboard

    def counted(*args: object, **kw: object) -> object:
        drawn.append(args)
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(plots, "dashboard", counted)
    monkeypatch.setattr(notebook, "_display", shown.append)
    monkeypatch.setattr(matplotlib, "get_backend",
                        lambda: "module://matplotlib_inline.backend_inline")
    notebook.show_run(result)
    images: list[Any] = [o for o in shown if type(o).__name__ == "Image"]
    assert len(drawn) == 1 and len(images) == 1
    assert images[0].data == (tmp_path / "r" / "dashboard.png").read_bytes()
    assert not plt.get_fignums()

    monkeypatch.setattr(matplotlib, "get_backend", lambda: "agg")
    drawn.clear()
    shown.clear()
    notebook.show_run(result)
    assert len(drawn) == 2 and not [o for o in shown if type(o).__name__ == "Image"]
    plt.close("all")
