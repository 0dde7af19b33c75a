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
# # Target faults: what a mirror does when its target misbehaves
#
# Each case mirrors a busy VM's disk onto a target that fails in one way, records what QEMU reports,
# takes the documented recovery step, and (with `verify`) boots the copy to check every operation the
# guest synced before the cancel.
#
# | fault | how | recovery if the job fails or pauses |
# |---|---|---|
# | `nbd_suspend` | target is a `qemu-storage-daemon` NBD export on a unix socket; SIGSTOP, then SIGCONT (tp-qemu's "remote server down") | none needed if it only stalls |
# | `nbd_down` | the same daemon killed; a new one starts on the same image after `fault_s` | a new mirror onto the image (`mode=existing`) |
# | `eio` | QEMU's `blkdebug` makes the target's first write fail with EIO | `block-job-resume` (policy `stop`) or a new mirror onto the plain image |
# | `enospc` | the target sits on a small tmpfs and runs out of space | grow the tmpfs, then resume (policy `enospc`/`stop`) or mirror again |
# | `throttle` | `block-job-set-speed` drops to `throttle_speed` for `fault_s`; QEMU's first sleep at the new limit also pays for what it sent at the old one in its current 100 ms slice (from 8 MiB/s to 256 KiB/s up to about 4 s), so a short window can read `stalled` | none |
# | `nbdkit_delay` | the export behind nbdkit (the field's tool for storage faults): its `delay` filter makes every write `delay_ms` late, the whole copy | none |
# | `nbdkit_error` | nbdkit's `error` filter fails a share `error_rate` of the writes with EIO, switched on for the window (at least until QEMU has seen one) | as `eio` |
# | `nbdkit_rate` | nbdkit's `rate` filter caps the link to `throttle_speed` for `fault_s` (set while it runs, through its rate file) | none |
# | `nbdkit_pause` | nbdkit's `pause` filter holds every request for `fault_s`, then lets them go | none |
#
# Every fault window is marked in the recording and shaded on the plots.

# %% tags=["parameters"]
# Parameters (papermill injects overrides below this cell); defaults as in the experiment
from typing import Optional

cases: str = "nbd_suspend:report nbd_down:report eio:report eio:ignore eio:stop enospc:enospc enospc:report throttle:report nbdkit_delay:report nbdkit_error:report nbdkit_error:ignore nbdkit_error:stop nbdkit_rate:report nbdkit_pause:report"  # fault:policy pairs
fault_after_s: float = 1.0          # when the timed faults start, after the mirror
fault_s: float = 3.0                # how long the timed faults last
throttle_speed: int = 262144        # the limit of throttle, the link of nbdkit_rate (bytes/s)
delay_ms: int = 50                  # how late every write is, for nbdkit_delay
error_rate: float = 0.01            # the share of writes that fail, for nbdkit_error
fill_mib: int = 16                  # data on the guest disk
verify: bool = True                 # boot each copy and check the guest's synced operations
sample_interval: float = 0.1        # seconds between query-block-jobs samples
cache: str = "none"                 # the seed's cache mode
accel: str = "auto"                 # auto: KVM only if a guest really boots under it, else TCG
workload: str = "files"             # what the guest does: "files" (its file operations), or fio beside them (a profile "name[:KiB/s]" or a .fio job file; see 15_workloads)
qemu: str = "system"                # QEMU build: "system", an installed one ("10.0", see kvmlab qemu list) or a binary's path
backend: str = "qmp"               # "qmp" (kvmlab launches QEMU) or "libvirt" (a transient domain)
libvirt_uri: str = "qemu:///system"
run_path: Optional[str] = None      # kvmlab run sets it, None for data/runs/<run-id>

# %%

import matplotlib.pyplot as plt

from kvmlab import plots
from kvmlab.lab import suites
from kvmlab.lab.notebook import display, save_table_figure

# %%
runs = suites.fault_table(globals(), cases)
results = list(runs.values())
for case, r in runs.items():
    print(f"{case:22s} -> {r.verdict['behaviour']:9s} {'PASS' if r.passed else 'FAIL'}  {r.run_path.name}")
table = suites.fault_rows(runs)
display(table)

# %% [markdown]
# ## Each case: remaining bytes, fault window shaded

# %%
fig, axes = plt.subplots(len(results), 1, figsize=(10, 2.8 * len(results)), squeeze=False)
for ax, r in zip(axes[:, 0], results):
    plots.convergence(r.data.samples, r.data.events, ax=ax)
    v = r.verdict
    ax.set_title(f"{v['fault']} / on-target-error={v['on_target_error']}: {v['behaviour']}")
    plots.save_all(r.data)
save_table_figure(run_path, "target_faults", table, fig)
print(f"{int(table['pass'].sum())} of {len(table)} cases recovered with a verified copy")
