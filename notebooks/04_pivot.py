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
# # E4 — `block_job_complete`: switch the VM's image at run time
#
# Seed: mirror; `stop`; when synced, `block_job_complete drive0`; `c`. `info block-jobs` shows no
# job; the notes say `info block` "still points to the original image", yet a dd in the guest grows
# the mirror and not the original. Repeated without pausing: same outcome.
#
# kvmlab runs both variants and checks: `query-block` shows drive0 on the mirror; the old image's
# size **and content hash** do not change after the pivot while the guest keeps writing; the mirror
# grows; a new VM booted from the mirror verifies every change.

# %% tags=["parameters"]
# Parameters (papermill injects overrides below this cell); defaults as in the experiment
from typing import Optional

image_mib: int = 64
fill_mib: int = 16
workload_kib: int = 512
post_pivot_writes: int = 4          # guest dd writes awaited after the pivot
sample_interval: float = 0.1        # seconds between query-block-jobs samples
cache: str = "none"                 # the seed's cache mode
accel: str = "auto"                 # auto: KVM only if a guest really boots under it, else TCG
workload: str = "files"             # what the guest does: "files" (its file operations), or fio beside them (a profile "name[:KiB/s]" or a .fio job file; see 15_workloads)
qemu: str = "system"                # QEMU build: "system", an installed one ("10.0", see kvmlab qemu list) or a binary's path
backend: str = "qmp"                # "qmp" (kvmlab launches QEMU) or "libvirt" (a transient libvirt domain)
libvirt_uri: str = "qemu:///system"
run_path: Optional[str] = None      # kvmlab run sets it, None for data/runs/<run-id>

# %%
from kvmlab import experiments as ex
from kvmlab.lab.notebook import run_experiment, show_run, show_verdict

# %%
results = {}
for paused in (True, False):
    results[paused] = run_experiment(ex.pivot, globals(), many=True, paused=paused)
    show_verdict(results[paused])

# %% [markdown]
# ## What `info block` reports after the pivot (QEMU 7.2)
#
# The seed wrote that `info block` "still points to the original image". The cell below prints what
# this QEMU reports right after `block_job_complete`.

# %%
for paused, r in results.items():
    print(f"paused={paused}:", r.verdict["info_block"].splitlines()[0])
    print("   shows the original image:", r.verdict["info_block_shows_original"])

# %%
for r in results.values():
    show_run(r)
