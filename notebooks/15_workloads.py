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
# # Where mirrors struggle, by access pattern
#
# The guest runs fio (Debian's 3.33, from its tools disk) with one of five profiles on a 16 MiB file
# of the disk being mirrored (written whole first, as a database's preallocated file; nothing else
# in the guest writes), at the same rate each (`rate_kib_s`): 1 MiB sequential writes, 4 KiB
# random writes, 4 KiB random I/O with 70 % reads, a database's 8 KiB random writes each followed by
# fsync, and bursts of 64 KiB writes (2 s on, 3 s off). After `baseline_s` seconds without a mirror,
# `drive-mirror` starts with a bitmap `granularity` and a `speed` limit; kvmlab waits for READY at most
# `ready_timeout` seconds while the convergence predictor watches (it does not stop the wait: the
# table shows whether its call was right), then cancels.
#
# For each profile x granularity x speed the table says:
# - **write amplification**: how much the job's length grew (what it had to copy again) over what fio
#   wrote during the job. Each guest write marks a whole granularity-sized cluster dirty;
# - **time to READY**, or not READY within the timeout, and when the predictor first said "will not
#   converge";
# - **what the mirror cost the guest**: fio's IOPS and completion latency p50/p99 before the mirror
#   and during it (percentiles of every completion in the window, from fio's latency buckets).
#
# To run the grid side by side: `kvmlab sweep -f notebooks/sweeps/workloads.yaml --workers 2`, then
# run this notebook with `from_sweep` set to the sweep's folder.

# %% tags=["parameters"]
# Parameters (papermill injects overrides below this cell); defaults as in the experiment
from typing import Optional

profiles: str = "seq-write-1m rand-write-4k rand-rw-70-30 db-like bursty"   # fio profiles, space-separated
granularities: str = "65536 1048576"   # the mirror's bitmap granularities (bytes), space-separated
speeds: str = "4194304 33554432"       # the mirror's speed limits (bytes/s), space-separated
from_sweep: Optional[str] = None    # a sweep folder (absolute path) whose points ran workload_cost: tabulate it instead of running
rate_kib_s: int = 256               # every profile's rate (KiB/s; the mixed one shares it 70/30)
image_mib: int = 64
fill_mib: int = 8                   # data on the guest disk before fio's file
fio_mib: int = 16                   # fio's file: the region its writes dirty
baseline_s: float = 5.0             # fio without a mirror: the latency to compare with
ready_timeout: float = 40.0         # give up waiting for READY after this long
after_ready_s: float = 5.0          # the guest works this long at READY before the cancel (in the "during" window)
sample_interval: float = 0.1        # seconds between query-block-jobs samples
cache: str = "none"                 # the seed's cache mode
accel: str = "auto"                 # auto: KVM only if a guest really boots under it, else TCG
qemu: str = "system"                # QEMU build: "system", an installed one ("10.0") or a binary's path
run_path: Optional[str] = None      # kvmlab run sets it, None for data/runs/<run-id>

# %%
from pathlib import Path

import matplotlib.pyplot as plt

from kvmlab.lab import suites
from kvmlab.lab.notebook import display

if from_sweep:
    table = suites.workload_rows(from_sweep)
    if table.empty:
        raise ValueError(f"no workload_cost runs in {Path(from_sweep).resolve()} (give the sweep folder's absolute path)")
    print(f"{len(table)} runs in {from_sweep}")
else:
    results = suites.workload_grid(globals(), profiles, granularities, speeds)
    for r in results:
        v = r.verdict
        print(f"{v['profile']:14s} granularity {v['granularity'] >> 10:5d} KiB  speed "
              f"{v['speed'] >> 20:3d} MiB/s  {'PASS' if r.passed else 'FAIL'}  {v['outcome']}, "
              f"amplification {v['write_amplification']}")
    table = suites.workload_rows(results)

# %% [markdown]
# ## The table

# %%
display(table)
print(f"{int(table['pass'].sum())} of {len(table)} runs measured whole (both windows of fio, a sampled job)")

# %% [markdown]
# ## Write amplification and READY, by profile and granularity

# %%
view = table.assign(granularity_kib=table["granularity"] // 1024, speed_mib_s=table["speed"] // 2**20)
display(view.pivot_table(index="profile", columns=["granularity_kib", "speed_mib_s"],
                         values="write_amplification", aggfunc="first"))
display(view.pivot_table(index="profile", columns=["granularity_kib", "speed_mib_s"],
                         values="outcome", aggfunc="first"))

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for ax, (g, part) in zip(axes, view.groupby("granularity_kib")):
    wide = part.pivot_table(index="profile", columns="speed_mib_s", values="write_amplification")
    wide.plot.bar(ax=ax, rot=20)
    ax.set_title(f"granularity {g} KiB: bytes copied again / bytes the guest wrote")
    ax.set_ylabel("write amplification")
    ax.legend(title="speed (MiB/s)")
fig.tight_layout()

# %% [markdown]
# ## What the mirror cost the guest (fio's write latency, ms)

# %%
display(view[["profile", "granularity_kib", "speed_mib_s", "iops_before", "iops_during",
              "write_p50_ms_before", "write_p50_ms_during", "write_p99_ms_before",
              "write_p99_ms_during"]])

# %%
if run_path:
    table.to_csv(Path(run_path) / "workloads.csv", index=False)
