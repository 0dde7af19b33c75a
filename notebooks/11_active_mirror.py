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
# # Convergence under pressure: background vs active mirror
#
# The guest writes faster than the mirror may copy (a speed limit below its write rate). In
# QEMU's default **background** mode the job never gets READY: whatever it copies, the guest
# dirties again. In **write-blocking** (active) mode every guest write reaches the target
# before it completes, so the job converges, and the guest pays in write latency. On QEMU 8.2+
# a running background job can be **switched** (`block-job-change`), which is what Proxmox
# does when a job will not converge.
#
# kvmlab's convergence predictor watches each job (copy rate, dirty rate, remaining bytes) and
# says "will not converge at current rates" with the numbers behind it; the background run
# gives up on that verdict instead of waiting for a timeout. The guest times every `dd` (with
# its fsync), before and during the mirror: that is the cost of the active mode.
#
# In write-blocking mode QEMU counts each mirrored guest write in both of its counters, so the
# copied bytes grow even while the background copy waits (a limit's first burst is slept off
# for seconds). The predictor knows the mode and judges such a job by its backlog alone: one
# that holds still is "stalled", one that grows "will not converge".
#
# With `slow_target_bps` the target is a *slow target*: an NBD export of `qemu-storage-daemon`
# whose writes pass a throttle group. In the active mode every guest write waits for it, so
# the guest's achieved write rate is bounded by what the target takes.

# %% tags=["parameters"]
# Parameters (papermill injects overrides below this cell); defaults as in the experiment
from typing import Optional

modes: str = "background write-blocking switch"  # runs: background, write-blocking, switch (8.2+)
speed: int = 1048576                # mirror speed limit, bytes/s (below the guest's rate)
workload_kib: int = 256             # size of each guest dd write (KiB)
workload_rate_kib_s: float = 3072   # guest write rate asked for (KiB/s)
workload_then_rate_kib_s: float = 0.0  # > 0: the guest changes to this rate...
workload_change_after_s: int = 0    # ...this many seconds after it began writing
image_mib: int = 64                 # guest disk size
fill_mib: int = 4                   # data already on the disk
baseline_s: float = 3.0             # guest writes timed before the mirror starts
after_ready_s: float = 2.0          # guest keeps writing this long once in sync
ready_timeout: float = 60.0         # give up waiting for READY after this long
stall_timeout: Optional[float] = 20.0  # give up after this long without progress
slow_target_bps: int = 0            # > 0: NBD target whose writes are limited to this (bytes/s)
give_up_when: Optional[str] = "diverging"  # background run: stop on "will not converge" (None: wait)
raise_speed_to: Optional[int] = None  # on "will not converge", raise the limit to this (0: none) and wait on
sample_interval: float = 0.1        # seconds between query-block-jobs samples
cache: str = "none"                 # the seed's cache mode
accel: str = "auto"                 # auto: KVM only if a guest really boots under it, else TCG
workload: str = "files"             # what the guest does: "files" (its file operations), or fio beside them (a profile "name[:KiB/s]" or a .fio job file; see 15_workloads)
qemu: str = "system"                # QEMU build: "system", an installed one ("10.0") or a binary's path
backend: str = "qmp"                # "qmp" (kvmlab launches QEMU) or "libvirt" (a transient domain)
libvirt_uri: str = "qemu:///system"
run_path: Optional[str] = None      # kvmlab run sets it, None for data/runs/<run-id>

# %%
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from kvmlab import experiments as ex
from kvmlab import plots
from kvmlab.analysis import converge
from kvmlab.lab.notebook import display, run_experiment, save_table_figure
from kvmlab.qemu import builds
from kvmlab.vm import qemu_probe

VARIANTS: dict[str, dict[str, Any]] = {"background": {"copy_mode": "background", "give_up_when": give_up_when},
            "write-blocking": {"copy_mode": "write-blocking", "give_up_when": None},
            "switch": {"copy_mode": "background", "switch_when": "diverging",
                       "give_up_when": None, "ready_timeout": 2 * ready_timeout}}
caps = qemu_probe.capabilities(builds.resolve(qemu))
wanted = modes.split()
if "switch" in wanted and not caps.block_job_change:
    print(f"QEMU {caps.version} cannot switch a running job (block-job-change came in 8.2): "
          "the switch run is left out")
    wanted.remove("switch")

# %%
results = {m: run_experiment(ex.convergence_pressure, globals(), many=True, **VARIANTS[m])
           for m in wanted}
rows = []
for mode, r in results.items():
    v = r.verdict
    cost = v["guest_write_cost"]
    rows.append({"run": mode, "target": v["target"], "converged": v["converged"],
                 "time to ready (s)": v["time_to_ready_s"],
                 "said diverging after (s)": v["diverging_after_s"],
                 "switched after (s)": v["switched_after_s"],
                 "copy (MiB/s)": (v["rates"] or {}).get("copy_mib_s"),
                 "guest dirtying (MiB/s)": (v["rates"] or {}).get("dirty_mib_s"),
                 "write latency before (ms)": (cost["before"] or {}).get("latency_median_ms"),
                 "write latency during (ms)": (cost["mirror"] or {}).get("latency_median_ms"),
                 "p95 latency during (ms)": (cost["mirror"] or {}).get("latency_p95_ms"),
                 "latency ratio": v["latency_ratio"],
                 "guest wrote before (MiB/s)": (cost["before"] or {}).get("written_mib_s"),
                 "guest wrote during (MiB/s)": (cost["mirror"] or {}).get("written_mib_s"),
                 "run folder": r.run_path.name})
table = pd.DataFrame(rows)
display(table)

# %% [markdown]
# ## Remaining bytes and the predictor's verdict over time

# %%
fig, axes = plt.subplots(len(results), 1, figsize=(10, 3 * len(results)), squeeze=False)
for ax, (mode, r) in zip(axes[:, 0], results.items()):
    plots.convergence(r.data.samples, r.data.events, ax=ax)
    pred = converge.predict(r.data.samples, events=r.data.events)
    said = converge.first_verdict(pred)
    if said is not None:
        ax.axvline(said, color="tab:red", linestyle="--", linewidth=1)
    ax.set_title(f"{mode}: {'converged' if r.verdict['converged'] else 'did not converge'}"
                 + (f", predictor said 'will not converge' at {said:.1f} s" if said else ""))
    plots.save_all(r.data)
save_table_figure(run_path, "active_mirror", table, fig)
for mode, r in results.items():
    print(f"{mode:15s} {'converged' if r.verdict['converged'] else 'gave up: ' + str(r.verdict['gave_up'])}")
