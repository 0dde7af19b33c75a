"""What every experiment notebook does, so the notebooks hold only their own story.

A notebook's ``parameters`` cell names its parameters once (with types and defaults equal
to the experiment function's: ``tests/test_notebook_sources.py`` checks it);
:func:`run_experiment` calls the experiment with those of them it takes, plus the run
options (:class:`~kvmlab.experiments.options.RunOptions`) built from the same cell.  The ``show_*``
helpers print and draw a result the same way in every notebook.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Image
from IPython.display import display as _display

from kvmlab import analysis, plots
from kvmlab.experiments.common import ExperimentResult
from kvmlab.experiments.options import RunOptions
from kvmlab.store.runs import RunData

#: verdict fields too long for the verdict table (they stay in run.json)
LONG_FIELDS = ("bad_items", "info_block", "in_flight_found")


def display(obj: object) -> None:
    """IPython's ``display`` with a type (the notebooks are type-checked)."""
    _display(obj)


def experiment_args(fn: Callable[..., ExperimentResult],
                    namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The names in *namespace* (a notebook's ``globals()``) that *fn* takes as keywords."""
    names = [p for p in inspect.signature(fn).parameters if p != "options"]
    return {n: namespace[n] for n in names if n in namespace}


def run_experiment(fn: Callable[..., ExperimentResult], namespace: Mapping[str, Any], *,
                   many: bool = False, **overrides: Any) -> ExperimentResult:
    """Call *fn* with its parameters and run options taken from *namespace*.

    :param many: the notebook records several runs: each goes into a sub-folder of the
        notebook's ``run_path`` instead of being the run folder itself.
    :param overrides: keywords that win over *namespace* (a variant: ``paused=True``); run
        options among them (``qemu="10.0"``) go to the options.
    """
    options = RunOptions.from_params(namespace, **{k: overrides.pop(k) for k in list(overrides)
                                                   if k in RunOptions.names()})
    if many:
        options = options.replace(runs_dir=options.run_path, run_path=None)
    kwargs = {**experiment_args(fn, namespace), **overrides}
    return fn(**kwargs, options=options)


def show_verdict(result: ExperimentResult) -> None:
    """One line PASS/FAIL with the run folder, then the verdict as a table."""
    v = {k: val for k, val in result.verdict.items() if k not in LONG_FIELDS}
    print(result.run_path.name, "->", "PASS" if result.passed else "FAIL")
    display(pd.Series(v, name="value", dtype=object).to_frame())


def show_run(result: ExperimentResult, log: bool = False) -> None:
    """Accelerator and guest, the analysis summary and the dashboard (PNGs saved in the run).

    A job quicker than one sample interval leaves no samples; the events, sizes and the
    summary still tell the story, so this always summarizes and plots.
    """
    run = result.data
    print("accelerator:", run.meta.get("accel"), "| guest kernel:", run.meta.get("guest_kernel"))
    display(pd.Series(analysis.summarize(run), name="value", dtype=object).to_frame())
    plots.save_all(run, log=log)
    if "inline" in matplotlib.get_backend():
        # the inline backend would draw the dashboard again, into the PNG save_all has just
        # written (the same 100 dpi, trimmed): shown from the file, it is drawn once
        display(Image(filename=str(run.path / "dashboard.png")))
    else:                                    # an interactive figure (ipympl), a script
        plots.dashboard(run, log=log)
        plt.show()


def show_progress(run: RunData, rows: int = 20) -> None:
    """About *rows* samples of the job, as ``info block-jobs`` would show them, in MiB."""
    s = run.samples
    mib = 2.0 ** 20
    table = s.assign(offset_mib=s.offset / mib, len_mib=s.len / mib,
                     remaining_mib=s.remaining / mib)
    step = max(1, len(table) // rows)
    display(table.iloc[::step][["t", "job", "status", "offset_mib", "len_mib", "remaining_mib",
                                "speed", "busy", "ready", "io_status"]].round(2))


def show_ops_and_events(run: RunData) -> None:
    """The guest's operations by kind, and every non-guest event."""
    ops = run.guest_ops
    display(ops.groupby(["machine", "op"]).size().rename("count").to_frame())
    ev = run.events
    display(ev[ev.source != "guest"][["t", "source", "name", "job", "status"]].round(3))


def save_table_figure(run_path: str | None, name: str, table: pd.DataFrame, fig: Any) -> None:
    """A notebook's result table (``<name>.csv``) and figure (``<name>.png``) into its run
    folder when ``kvmlab run`` gave it one (none when run by hand), then the figure shown."""
    fig.tight_layout()
    if run_path:
        table.to_csv(Path(run_path) / f"{name}.csv", index=False)
        plots.save_png(fig, Path(run_path) / f"{name}.png")
    plt.show()
