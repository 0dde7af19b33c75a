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
# # E6 — move (or delete) the old image after the pivot
#
# Seed: after complete, `mv` the old image to another file system. kvmlab moves it (to `move_to`,
# default a folder beside it) and, in a variant, deletes it, while the guest keeps writing.
# Verdict: the guest keeps working, no I/O error events, the moved file is unchanged, the active
# image verifies. (To move across file systems as the seed did, pass a `move_to` on another one.)

# %% tags=["parameters"]
# Parameters (papermill injects overrides below this cell); defaults as in the experiment
from typing import Optional

image_mib: int = 64
fill_mib: int = 16
move_to: Optional[str] = None       # a directory (another file system, as in the seed), None for beside the image
post_remove_writes: int = 4
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
results = {}
for action in ("move", "delete"):
    results[action] = run_experiment(ex.remove_source, globals(), many=True, action=action)
    show_verdict(results[action])

# %%
for r in results.values():
    show_run(r)
