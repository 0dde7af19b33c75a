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
# # E5 — two mirrors and two completes in a row
#
# Seed: from E4's state, mirror again to a second file and complete; dd; reboot: only the second
# mirror grows. kvmlab: disk → mirror1 (complete) → mirror2 (complete); after the second pivot the
# first two images must not change (hash), the third must grow, and it must boot and verify.

# %% tags=["parameters"]
# Parameters (papermill injects overrides below this cell); defaults as in the experiment
from typing import Optional

image_mib: int = 64
fill_mib: int = 16
workload_kib: int = 512
post_pivot_writes: int = 4
sample_interval: float = 0.1        # seconds between query-block-jobs samples
cache: str = "none"                 # the seed's cache mode
accel: str = "auto"                 # auto: KVM only if a guest really boots under it, else TCG
workload: str = "files"             # what the guest does: "files" (its file operations), or fio beside them (a profile "name[:KiB/s]" or a .fio job file; see 15_workloads)
qemu: str = "system"                # QEMU build: "system", an installed one ("10.0", see kvmlab qemu list) or a binary's path
backend: str = "qmp"               # "qmp" (kvmlab launches QEMU) or "libvirt" (a transient domain)
libvirt_uri: str = "qemu:///system"
run_path: Optional[str] = None      # kvmlab run sets it, None for data/runs/<run-id>

# %%
from kvmlab import experiments as ex
from kvmlab.lab.notebook import run_experiment, show_run, show_verdict

# %%
result = run_experiment(ex.double_pivot, globals())
show_verdict(result)
show_run(result)
