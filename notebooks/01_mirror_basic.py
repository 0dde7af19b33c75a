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
# # E1 — basic `drive_mirror`, guest busy, then cancel
#
# The seed's first experiment: on a running VM, `drive_mirror -f drive0 /data/x-mirror.img`, watch
# `info block-jobs` while the guest touches files, creates and deletes directories and writes with
# `dd`; when the mirror is "as big as the source", `block_job_cancel drive0`; boot a new VM from the
# mirror and check that every change is there.
#
# **How this differs from the seed's manual rule.** The seed cancelled when `ls -l` showed the mirror
# file as big as the source. File size is a poor signal (qcow2 preallocation, sparse files); the
# condition it approximates is the job's *ready* state (source and target in sync, QEMU's
# `BLOCK_JOB_READY` event). kvmlab waits for that event, lets the guest keep working for
# `after_ready_s` seconds, then cancels. A cancel after ready leaves a point-in-time copy, so the
# verification expects exactly the operations the guest had **synced** before the cancel was sent
# (each guest line is printed after `sync` returns, and its host arrival time is recorded);
# an operation in flight at the cancel may be in either state and is reported, not judged.

# %% tags=["parameters"]
# Parameters (papermill injects overrides below this cell); defaults as in the experiment
from typing import Optional

image_mib: int = 64                 # guest disk size
fill_mib: int = 16                  # random data already on the disk (copied by the mirror)
disk_format: str = "qcow2"          # source image format
workload_kib: int = 256             # size of each guest dd write (KiB)
workload_rate_kib_s: float = 1024   # guest write rate (KiB/s): the dirty rate
speed: int = 8388608                # mirror speed limit, bytes/s (0 for unlimited), 8 MiB/s so progress is visible
sync: str = "full"                  # "full" (HMP -f), "top" or "none"
target_format: Optional[str] = None  # None: same as the source
granularity: Optional[int] = None   # dirty-bitmap granularity, bytes (power of two, 512 B..64 MiB), None for QEMU's
buf_size: Optional[int] = None      # copy buffer, bytes, None for QEMU's default
after_ready_s: float = 2.0          # guest keeps working this long in the ready state
ready_timeout: float = 300.0        # give up (verdict "not ready") if the job is not ready by then
data_disks: int = 0                 # data disks beside the system disk (0-3): all mirrored, cut together at READY
data_mib: int = 32                  # size of each data disk
workload: str = "files"             # "files" (the guest's file operations), or fio beside them: a profile (rand-write-4k, seq-write-1m, rand-rw-70-30, db-like, bursty; "name:KiB/s") or a .fio job file
sample_interval: float = 0.1        # seconds between query-block-jobs samples
cache: str = "none"                 # the seed's cache mode
accel: str = "auto"                 # auto: KVM only if a guest really boots under it, else TCG
qemu: str = "system"                # QEMU build: "system", an installed one ("10.0", see kvmlab qemu list) or a binary's path
backend: str = "qmp"                # "qmp" (kvmlab launches QEMU) or "libvirt" (a transient libvirt domain)
libvirt_uri: str = "qemu:///system"
run_path: Optional[str] = None      # kvmlab run sets it, None for data/runs/<run-id>

# %%
from kvmlab import analysis
from kvmlab import experiments as ex
from kvmlab.lab.notebook import (
    display,
    run_experiment,
    show_ops_and_events,
    show_progress,
    show_run,
    show_verdict,
)

# %%
result = run_experiment(ex.mirror_basic, globals())
run = result.data
print("run folder:", result.run_path)
print("VERDICT:", "PASS" if result.passed else "FAIL")
show_verdict(result)

# %% [markdown]
# ## Progress (`info block-jobs`, sampled)

# %%
show_progress(run)

# %% [markdown]
# ## Analysis: convergence, rates, stalls

# %%
show_run(result)
display(analysis.stalls(run.samples))

# %% [markdown]
# ## Guest operations and events

# %%
show_ops_and_events(run)
