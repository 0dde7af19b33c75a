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
# # E7 — `drive_mirror -n` onto an existing overlay of the same base
#
# Seed: base.img; two overlays on it (`qemu-img create -f qcow2 -o backing_file=base.img`): the VM's
# disk and the future mirror; the guest writes; `drive_mirror -n drive0 mirror.img`; file
# operations during the mirror; cancel when synced; boot the mirror. Claim: with `-n` and a shared
# base this copies the least data and is created fastest.
#
# kvmlab runs the seed's command line verbatim (`-n`, no `-f`: sync=top, mode=existing), then a full
# mirror of the same disk in the same VM, and reports both as ratios.

# %% tags=["parameters"]
# Parameters (papermill injects overrides below this cell); defaults as in the experiment
from typing import Optional

image_mib: int = 64
base_fill_mib: int = 24             # data in the shared base: what the shallow mirror need not copy
pre_writes: int = 4                 # guest dd writes into the overlay before the mirror
workload_kib: int = 512
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
result = run_experiment(ex.shallow_existing, globals())
show_verdict(result)
v = result.verdict
print(f"full mirror copied {v['bytes_ratio_full_over_shallow']:.1f}x the bytes of the shallow one, "
      f"and took {v['time_ratio_full_over_shallow']:.1f}x as long to be ready")

# %%
show_run(result)
