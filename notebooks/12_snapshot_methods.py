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
# # Snapshot methods side by side: is a mirror a good way to take a snapshot?
#
# The seed asked whether a mirror can serve as a snapshot of a running VM. Today's QEMU has other
# ways to get a point-in-time copy of a running disk. This notebook runs three of them on the same
# guest and workload (files whose 4 KiB blocks name the operation, odd ones synced, even ones only
# written), each with three ways to quiesce the guest around its point in time:
#
# | method | QMP | point in time |
# | --- | --- | --- |
# | `mirror` | `drive-mirror` to ready, `block-job-cancel` | the cancel |
# | `backup` | `blockdev-backup sync=full` (copy-before-write) | the job's start |
# | `snapshot` | `blockdev-snapshot-sync`, the frozen image copied on the host, `block-commit` back | the snapshot |
#
# Quiesce: `none`, `stop` (HMP, the vCPUs paused) or `fsfreeze` (guest agent). Every copy runs at
# the same rate limit (`speed`; the host's copy with `qemu-img convert -r`), so times compare.
#
# Per copy: what it holds relative to its point in time (every operation by class; `after` =
# begun past the point in time, which it must not hold), `e2fsck` after its journal is replayed, a
# boot of the first copy per quiesce in a fresh VM that verifies it, the guest's synced-write
# latency and rate during the operation against the 3 s before, downtime, wall time and the bytes
# the host wrote. These are kvmlab's own measurements, not the seed's claims.

# %% tags=["parameters"]
# Parameters (papermill injects overrides below this cell); defaults as in the experiment
from typing import Optional

methods: str = "mirror backup snapshot"  # space separated
quiesce: str = "none stop fsfreeze"  # space separated
trials: int = 3                     # copies per method and quiesce
cache: str = "none"                 # the source drive's cache mode
image_mib: int = 48
fill_mib: int = 16                  # data on the disk before the guest starts
speed: int = 16777216               # bytes/s for every copy (0: no limit)
blocks: int = 4                     # 4 KiB blocks per guest file
workload_rate_kib_s: float = 80
seed: int = 1                       # for the quiesce order and the moments
sample_interval: float = 0.1
accel: str = "auto"
workload: str = "files"             # what the guest does: "files" (its file operations), or fio beside them (a profile "name[:KiB/s]" or a .fio job file; see 15_workloads)
qemu: str = "system"                # QEMU build: "system", an installed one ("10.0", see kvmlab qemu list) or a binary's path
backend: str = "qmp"               # "qmp" only: the guest agent and blockdev-backup
libvirt_uri: str = "qemu:///system"
run_path: Optional[str] = None      # kvmlab run sets it, None for data/runs/<run-id>

# %%
import matplotlib.pyplot as plt
import pandas as pd

from kvmlab import experiments as ex
from kvmlab import plots
from kvmlab.lab.notebook import display, run_experiment

# %%
result = run_experiment(ex.snapshot_methods, globals(), methods=methods.split(),
                        quiesce=quiesce.split())
v = result.verdict
print("run folder:", result.run_path)
print("VERDICT:", "PASS" if result.passed else "FAIL", "-", v["copies"], "copies,",
      v["booted"], "booted")

# %% [markdown]
# ## Per method and quiesce

# %%
table = pd.read_csv(result.run_path / "methods.csv")
display(table)
fig = plots.snapshot_methods(table)
fig.savefig(result.run_path / "snapshot_methods.png", dpi=100)
plt.show()

# %% [markdown]
# ## What the numbers recommend

# %%
print(v["recommendation"])

# %% [markdown]
# **Reading the table.** `point_in_time` counts copies holding every operation the guest had
# finished before the point in time; `after_leaked` counts operations begun after it that a copy
# held anyway (a point-in-time copy holds none). Without a guest flush (`none`, `stop`) what the
# guest had only written is still in its page cache, so no method catches it: the quiesce decides
# the consistency, the method decides the cost. `backup` copies the whole disk (its host bytes are
# the disk's size) and the guest runs on while it copies; `snapshot` moves the VM to an overlay and
# back (a commit); `mirror` copies the allocated data and cuts at the cancel.
