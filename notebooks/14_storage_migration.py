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

# %%

# %% [markdown]
# # Live storage migration: a busy VM and its disks moved to a second QEMU
#
# The flow of `virsh migrate --copy-storage-all` and of QEMU's iotest 194, between two lab QEMUs on
# this host. The destination starts paused with `-incoming defer` and serves its empty disks over NBD
# (a unix socket or 127.0.0.1, `nbd`); the source mirrors every disk into those exports while its
# guest works; once every job is READY the source migrates RAM and device state (`migrate`, its
# progress sampled from `query-migrate` as a time series of its own); at completion the source
# cancels its mirrors (each a last sync), the destination stops serving and continues. The guest
# then proves it has its data: it keeps working on the destination, and the destination's disks,
# booted in a verify VM, hold every operation it synced on either side of the switchover.

# %% tags=["parameters"]
# Parameters (papermill injects overrides below this cell); defaults as in the experiment
from typing import Optional

image_mib: int = 64                 # the system disk's size
fill_mib: int = 16                  # random data already on it
data_disks: int = 0                 # data disks beside it (0-3), each mirrored too
nbd: str = "unix"                   # the destination's NBD server: "unix" socket or "tcp" on 127.0.0.1
speed: int = 0                      # each mirror's speed limit, bytes/s (0 for unlimited)
copy_mode: str = "background"       # "background" or "write-blocking" (active) mirrors
link_delay_ms: int = 0              # latency added to every write on the NBD link (an nbdkit proxy per disk), 0: direct
link_rate_bps: int = 0              # the NBD link's bandwidth cap, bytes/s (nbdkit's rate filter), 0: none
link_error_rate: float = 0.0        # share of writes on the NBD link failing with EIO (nbdkit's error filter), 0: none
on_target_error: str = "report"     # the mirrors' policy when a write to the destination fails
max_bandwidth: int = 0              # the migration's max-bandwidth, bytes/s (0: QEMU's default)
downtime_limit_ms: int = 0          # the migration's downtime-limit (0: QEMU's default)
workload_kib: int = 256             # size of each guest dd write (KiB)
workload_rate_kib_s: float = 512    # guest write rate (KiB/s)
ram_mib_s: float = 0.0              # the guest also rewrites this many MiB/s of its RAM (what the migration must outpace)
ready_s: float = 2.0                # how long the guest writes with every mirror READY before the migration
after_s: float = 2.0                # how long the destination runs on its own before it is checked
ready_timeout: float = 120.0        # the mirrors must be READY by then
give_up_when: Optional[str] = None  # "diverging": stop waiting for READY when the predictor says a mirror will not converge
stall_timeout: float = 30.0         # stop waiting for READY after this long without progress
migrate_timeout: float = 120.0      # the migration must end by then (else it is cancelled)
sample_interval: float = 0.1        # seconds between query-block-jobs and query-migrate samples
cache: str = "none"                 # the seed's cache mode
accel: str = "auto"                 # auto: KVM only if a guest really boots under it, else TCG
workload: str = "files"             # what the guest does: "files" (its file operations), or fio beside them (a profile "name[:KiB/s]" or a .fio job file; see 15_workloads)
qemu: str = "system"                # QEMU build: "system", an installed one ("10.0", see kvmlab qemu list) or a binary's path
run_path: Optional[str] = None      # kvmlab run sets it, None for data/runs/<run-id>

# %%
import matplotlib.pyplot as plt
import pandas as pd

from kvmlab import experiments as ex
from kvmlab import plots
from kvmlab.lab.notebook import display, run_experiment, show_verdict
from kvmlab.store.runs import MIGRATION_FILE

# %%
result = run_experiment(ex.storage_migration, globals())
run = result.data
print("run folder:", result.run_path)
print("VERDICT:", "PASS" if result.passed else "FAIL")
show_verdict(result)

# %% [markdown]
# ## The mirrors and the migration on one time axis

# %%
migration = pd.read_parquet(result.run_path / MIGRATION_FILE) if (result.run_path / MIGRATION_FILE).exists() else pd.DataFrame()
fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
plots.convergence(run.samples, run.events, ax=top, xlabel=False)
plots.migration(migration, run.events, ax=bottom)
fig.tight_layout()
plots.save_png(fig, result.run_path / "migration.png")
plots.save_all(run)
plt.show()
v = result.verdict
print(f"mirrors READY after {v.get('time_to_ready_s')} s; migration {v.get('migration_status')} in "
      f"{v.get('migration_s')} s, {v.get('ram_transferred_mib')} MiB of RAM, downtime {v.get('downtime_ms')} ms "
      f"(expected at most {v.get('expected_downtime_ms')} ms); handover {v.get('handover_s')} s; "
      f"the destination's guest made {v.get('dest_ops_after')} operations on its own")
if v.get("outcome"):
    print(f"outcome: {v['outcome']}" + (f" ({v['disk_outlook']})" if v.get("disk_outlook") else ""))
if v.get("ram_outlook"):
    said = v.get("ram_said_diverging_s")
    print(f"RAM stream: {v['ram_outlook']}" + (f"; said 'will not converge' {said} s into the migration" if said is not None else ""))
if v.get("job_error_events"):
    print(f"the mirrors reported {v['job_error_events']} target error(s), action {', '.join(v.get('error_actions') or [])}")
display(migration.tail(5))
