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
# # Mirror control panel
#
# A lab VM starts (its guest busy with the seed's file operations) and the panel below drives
# `drive-mirror` on its disk: choose the target, format, sync mode, mode (`existing` is HMP `-n`),
# speed, granularity and buffer size, then **Start**. While the job runs the panel shows the
# progress bar, remaining bytes and rates, the job's status and io-status, the event log and a live
# plot of remaining bytes with stalls shaded, refreshed in the background (this notebook stays
# usable). The speed slider changes a running job's limit. **Pause / Resume / Cancel / Complete
# (pivot)** steer the job; **Stop VM / Continue VM** pause the guest (the seed's `stop` and `c`).
# Buttons are enabled only when the action is valid for the job's state.
#
# Every job is recorded like the experiments: when it ends, the run is saved under
# `data/runs/<run-id>/` and the panel shows its analysis summary and dashboard.
# For an existing libvirt domain instead: `MirrorPanel.libvirt("qemu:///system", "mydomain")`.
#
# With `data_disks` of 1 to 3 the VM gets that many data disks and the cell shows one panel per
# disk, side by side (`MirrorPanels`): a job on every disk at once, each steered and recorded on
# its own.

# %% tags=["parameters"]
# Parameters (papermill injects overrides below this cell); defaults as in the experiment
from typing import Optional

accel: str = "auto"                 # auto: KVM only if a guest really boots under it, else TCG
qemu: str = "system"                # QEMU build: "system", an installed one ("10.0", see kvmlab qemu list) or a binary's path
fill_mib: int = 16                  # random data on the lab VM's disk
workload_rate_kib_s: int = 512      # the guest's write rate
data_disks: int = 0                 # 1 to 3: data disks too, and one panel per disk side by side
run_path: Optional[str] = None      # kvmlab run sets it, None for data/runs/<run-id>

# %%
from kvmlab.lab.widgets import MirrorPanel, MirrorPanels

vm_options = dict(accel=accel, qemu=qemu, fill_mib=fill_mib, workload_rate_kib_s=workload_rate_kib_s)
panel = (MirrorPanels.lab(data_disks=data_disks, **vm_options) if data_disks
         else MirrorPanel.lab(**vm_options))
panel  # noqa: B018 - the cell's value is the panel Jupyter displays

# %% [markdown]
# When done: `panel.close()` stops the lab VM and removes its scratch images (shutting the kernel down does the same).
