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
# # E2 — mirror to NFS, stop the NFS server mid-mirror, start it again
#
# Seed: host1 exports `/data/mirror` over NFS, host2 mirrors the VM's disk into it; mid-mirror
# `service nfs stop` on host1; `info block-jobs` shows the job no longer progressing while the
# guest keeps working; `service nfs start`; after a while the job progresses again; cancel when
# synced; boot the copy; all changes present.
#
# Here the NFS server is a real **nfs-ganesha** on 127.0.0.1 (NFSv3, VFS backend, with rpcbind),
# and QEMU writes through its own NFS client (libnfs, `nfs://127.0.0.1/<export>/x-mirror.img`).
# kvmlab starts and stops the server itself. Two outage modes:
#
# - `stop`: the server process ends (as `service nfs stop`); a new one starts on the same export;
# - `freeze`: the server is SIGSTOPped, then SIGCONTed — a hard-mounted server that hangs.
#
# The outage window is shaded on every plot, the stall analysis is applied to it, and the time from
# the server's return to the job's first progress is measured. If the job fails or pauses on the
# error (depending on `on_target_error`), the documented recovery step is taken and recorded:
# `block-job-resume` for a paused job, or a new mirror onto the same image (`mode=existing`).

# %% tags=["parameters"]
# Parameters (papermill injects overrides below this cell); defaults as in the experiment
from typing import Optional

outage: str = "stop"                # "stop" (server process ends, then a new one) or "freeze" (SIGSTOP then SIGCONT)
outage_after_s: float = 2.0         # seconds after the mirror starts when the server goes away
outage_s: float = 5.0               # how long the server stays away
on_target_error: str = "report"     # the mirror's policy: report, ignore, enospc or stop
image_mib: int = 64
fill_mib: int = 24
speed: int = 4194304                # bytes/s, so that the outage falls mid-copy
workload_kib: int = 256
workload_rate_kib_s: float = 512
sample_interval: float = 0.1        # seconds between query-block-jobs samples
cache: str = "none"                 # the seed's cache mode
accel: str = "auto"                 # auto: KVM only if a guest really boots under it, else TCG
workload: str = "files"             # what the guest does: "files" (its file operations), or fio beside them (a profile "name[:KiB/s]" or a .fio job file; see 15_workloads)
qemu: str = "system"                # QEMU build: "system", an installed one ("10.0", see kvmlab qemu list) or a binary's path
backend: str = "qmp"               # "qmp" (kvmlab launches QEMU) or "libvirt" (a transient domain)
libvirt_uri: str = "qemu:///system"
run_path: Optional[str] = None      # kvmlab run sets it, None for data/runs/<run-id>

# %%
from kvmlab import analysis
from kvmlab import experiments as ex
from kvmlab.lab.notebook import display, run_experiment, show_run, show_verdict

# %%
result = run_experiment(ex.mirror_nfs_outage, globals())
run = result.data
v = result.verdict
print("run folder:", result.run_path)
print("VERDICT:", "PASS" if result.passed else "FAIL")
show_verdict(result)

# %% [markdown]
# ## The outage window: what QEMU reported

# %%
display(analysis.fault_windows(run.events).round(3))
print(f"during the {v['outage_window_s']} s outage ({outage}) the job reported status {v['outage_statuses']} "
      f"and io-status {v['outage_io_statuses']}, copied {v['outage_bytes_copied_in_window']} bytes, "
      f"raised {v['outage_job_errors']} BLOCK_JOB_ERROR events; longest stall {v['outage_stall_s']} s")
print("behaviour:", v["behaviour"], "| recovery steps:", v["recovery_steps"] or "none needed")
print("first progress after the server came back:", v["outage_first_progress_after_s"], "s")
print("guest operations completed during the outage:", v["ops_during_outage"])

# %% [markdown]
# ## Analysis and dashboard (outage shaded)

# %%
show_run(result)
display(analysis.stalls(run.samples))

# %% [markdown]
# ## Compared with the seed
#
# The seed saw the job "no longer progressing", then progressing again "after a while", and a copy
# holding every change. The verdict above checks the last part by booting the copy; the `behaviour`
# line says whether QEMU 7.2 stalled with status `running` (the seed's observation), paused, or failed,
# under this run's `on_target_error` policy. The seed's guest also kept working during the outage:
# `ops_during_outage` says whether this one did. Measured here: with a frozen server it did (about
# 5 operations a second), with a stopped one QEMU's NFS client held the guest's own disk I/O as well
# (0 to 2 operations in a 5 s outage), although QMP kept answering.
