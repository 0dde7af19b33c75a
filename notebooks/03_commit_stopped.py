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
# # E3 — commit an overlay into its base while the VM is stopped
#
# Seed: the VM's disk is a qcow2 overlay (`disk.img`) on a backing file (`base/base.img`); the guest
# writes; `stop`; sizes and `qemu-img info`; `commit drive0`; sizes again; `c`.
#
# kvmlab runs it twice: with the seed's HMP `commit drive0` (synchronous; the overlay stays the
# active image and is emptied) and with the QMP equivalent, `block-commit` of the active layer
# followed by `block-job-complete` (the drive then runs on the base). On a libvirt domain
# (`backend="libvirt"`) QEMU's HMP `commit` cannot name a `-blockdev` disk, so kvmlab carries the
# seed's `commit vda` out as libvirt's `blockCommit` (active) + pivot, synchronously like HMP. The verdict boots a new VM
# on **the base alone** and checks every change the guest made.

# %% tags=["parameters"]
# Parameters (papermill injects overrides below this cell); defaults as in the experiment
from typing import Optional

image_mib: int = 64
fill_mib: int = 8                   # data in the base before the overlay is made
rounds: int = 4                     # guest workload rounds written into the overlay
workload_kib: int = 512
sample_interval: float = 0.1        # seconds between query-block-jobs samples
cache: str = "none"                 # the seed's cache mode
accel: str = "auto"                 # auto: KVM only if a guest really boots under it, else TCG
workload: str = "files"             # what the guest does: "files" (its file operations), or fio beside them (a profile "name[:KiB/s]" or a .fio job file; see 15_workloads)
qemu: str = "system"                # QEMU build: "system", an installed one ("10.0", see kvmlab qemu list) or a binary's path
backend: str = "qmp"                # "qmp" (kvmlab launches QEMU) or "libvirt" (a transient libvirt domain)
libvirt_uri: str = "qemu:///system"
run_path: Optional[str] = None      # kvmlab run sets it, None for data/runs/<run-id>

# %%
import pandas as pd

from kvmlab import experiments as ex
from kvmlab.lab.notebook import display, run_experiment, show_run, show_verdict

# %%
results = {}
for method in ("hmp", "qmp"):
    results[method] = run_experiment(ex.commit_stopped, globals(), many=True, method=method)
    show_verdict(results[method])

# %% [markdown]
# ## Sizes before and after the commit, and the backing chain

# %%
rows = []
for method, r in results.items():
    v = r.verdict
    for when in ("before", "after"):
        for f, s in v[f"sizes_{when}"].items():
            rows.append({"method": method, "when": when, "file": f, "apparent_mib": s["apparent"] / 2**20,
                         "allocated_mib": s["allocated"] / 2**20})
display(pd.DataFrame(rows).round(2))
for method, r in results.items():
    print(method, "chain before:", r.verdict["chain_before"])
    print(method, "chain after: ", r.verdict["chain_after"])

# %%
for r in results.values():
    show_run(r)
