# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Sweep report
#
# Metrics of every run of a sweep against its parameters: time to ready against the speed limit and
# the guest's write rate, a convergence map over speed x dirty rate, copy throughput against
# buf-size and granularity, and the parameters that made the mirror fastest without diverging.
# Run by `kvmlab sweep` at the end of a sweep; its figures are saved in the sweep folder.

# %% tags=["parameters"]
# Parameters (papermill injects overrides below this cell); defaults as in the experiment

sweep_dir: str = "data/sweeps/latest"  # the sweep folder to report on

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from kvmlab import plots
from kvmlab.batch.sweep import collect
from kvmlab.lab.notebook import display

folder = Path(sweep_dir)
frame = collect(folder)
meta = json.loads((folder / "sweep.json").read_text())
print(f"{len(frame)} runs from {frame['point'].nunique() if len(frame) else 0} points of {Path(meta['plan']['notebook']).name}")
for s in meta.get("sessions", []):
    print(f"session: {s['points_run']} points, {s['failed']} failed, {s['workers']} worker(s), "
          f"wall {s['wall_s']} s, speed-up over serial {s['speedup_vs_serial']}")
swept = [k for k in (meta["plan"].get("grid") or {})] or [c for c in ("speed", "workload_rate_kib_s", "buf_size", "granularity") if c in frame]
cols = ["point", "point_status"] + swept + [c for c in ("convergence", "time_to_ready_s", "bytes_copied", "mean_copy_rate", "stall_time_s", "pass", "point_error") if c in frame]
display(frame[[c for c in cols if c in frame]])

# %% [markdown]
# ## Time to ready

# %%
ok = frame[frame.get("point_status", pd.Series(dtype=str)) == "done"].copy() if len(frame) else frame
# raw columns (bytes/s, bytes): the figures show units, and a speed of 0 as "unlimited"
figs = {}
if {"speed", "time_to_ready_s"} <= set(ok.columns):
    figs["sweep_ttr_vs_speed.png"] = plots.metric_vs_param(
        ok, "speed", "time_to_ready_s", hue="workload_rate_kib_s" if "workload_rate_kib_s" in ok else None)
if {"workload_rate_kib_s", "time_to_ready_s"} <= set(ok.columns):
    figs["sweep_ttr_vs_dirty_rate.png"] = plots.metric_vs_param(
        ok, "workload_rate_kib_s", "time_to_ready_s", hue="speed" if "speed" in ok else None)
if {"speed", "workload_rate_kib_s", "convergence"} <= set(ok.columns):
    figs["sweep_convergence_map.png"] = plots.convergence_map(ok, "speed", "workload_rate_kib_s")
if "mean_copy_rate" in ok:
    for p in ("buf_size", "granularity"):
        if p in ok and ok[p].nunique() > 1:
            other = "granularity" if p == "buf_size" else "buf_size"
            figs[f"sweep_throughput_vs_{p}.png"] = plots.metric_vs_param(
                ok, p, "mean_copy_rate", hue=other if {"buf_size", "granularity"} <= set(ok.columns) else None,
                xscale="log")
for name, fig in figs.items():
    fig.savefig(folder / name, dpi=100, bbox_inches="tight")
print("figures:", ", ".join(figs) or "none (no swept metric to plot)")
plt.show()

# %% [markdown]
# ## Recommendation

# %%
good = ok[ok.get("convergence", pd.Series(dtype=str)) == "converged"] if len(ok) else ok
if len(good) and "time_to_ready_s" in good and good["time_to_ready_s"].notna().any():
    best = good.sort_values("time_to_ready_s").iloc[0]
    print("fastest without diverging:", ", ".join(f"{k}={best[k]}" for k in swept if k in best),
          f"-> ready in {best['time_to_ready_s']:.2f} s")
else:
    print("no run converged: no recommendation (raise the speed limit or lower the dirty rate)")
diverging = ok[ok.get("convergence", pd.Series(dtype=str)).isin(["diverging", "stalled"])] if len(ok) else ok
if len(diverging):
    print("did not converge:", "; ".join(", ".join(f"{k}={r[k]}" for k in swept if k in r) for _, r in diverging.iterrows()))
