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
# # Consistency study: what does a copy cut from a live VM hold?
#
# The seed concludes (2) that with the drive's cache mode `none` whatever the guest wrote to disk
# reaches the mirror, but changes still in the guest's page cache are not guaranteed, and (3) that
# without pausing the guest nothing guarantees a 100 % consistent copy. This notebook measures both.
#
# One busy VM per cache mode writes files whose 4 KiB blocks name the operation and the block:
# odd operations are **synced** (the file's fsync returned), even ones only **written** (the data
# sits in the guest's page cache). The VM is mirrored again and again; each copy is cut
# (`block_job_cancel` after ready, a random moment later) with one of four cuts, interleaved:
#
# - `nothing` — cancel while the guest writes;
# - `stop` — HMP `stop`, cancel, `c`;
# - `sync_stop` — the guest agent runs `sync` in the guest, then `stop`, cancel, `c`;
# - `fsfreeze` — `guest-fsfreeze-freeze`, cancel, `guest-fsfreeze-thaw` (the real
#   `qemu-guest-agent` runs in the guest).
#
# Each copy is checked on the host without a mount: the journal's state as cut, then on a scratch
# copy the journal replayed and `e2fsck -fn`, then every operation's file read back as intact,
# torn, empty or missing. An operation written but not synced counts as **flushed** when a guest
# sync or freeze began after it.

# %% tags=["parameters"]
# Parameters (papermill injects overrides below this cell); defaults as in the experiment
from typing import Optional

cuts: str = "nothing stop sync_stop fsfreeze"  # space separated
cache_modes: str = "none writeback directsync"  # space separated
trials: int = 10                    # copies per cut and cache mode
image_mib: int = 32
blocks: int = 4                     # 4 KiB blocks per guest file
workload_rate_kib_s: float = 80
seed: int = 1                       # for the random cut moments and the cuts' order
sample_interval: float = 0.1
accel: str = "auto"
workload: str = "files"             # what the guest does: "files" (its file operations), or fio beside them (a profile "name[:KiB/s]" or a .fio job file; see 15_workloads)
qemu: str = "system"                # QEMU build: "system", an installed one ("10.0", see kvmlab qemu list) or a binary's path
backend: str = "qmp"               # "qmp" (kvmlab launches QEMU) or "libvirt" (a transient domain)
libvirt_uri: str = "qemu:///system"
run_path: Optional[str] = None      # kvmlab run sets it, None for data/runs/<run-id>

# %%
import matplotlib.pyplot as plt
import pandas as pd

from kvmlab import experiments as ex
from kvmlab import plots
from kvmlab.lab.notebook import display, run_experiment
from kvmlab.report import labnote

# %%
result = run_experiment(ex.consistency_study, globals(), cuts=cuts.split(),
                        cache_modes=cache_modes.split())
v = result.verdict
print("run folder:", result.run_path)
print("VERDICT:", "PASS" if result.passed else "FAIL", "-", v["trials"], "copies")
trials_df = pd.read_csv(result.run_path / "trials.csv")
display(trials_df)

# %% [markdown]
# ## What the copies held, per cut, cache mode and class of operation

# %%
display(pd.read_csv(result.run_path / "counts.csv"))
rates_df = pd.read_csv(result.run_path / "rates.csv")
display(rates_df[["cut", "cache", "copies", "needs_replay", "clean_after_replay",
                  "promises_kept", "point_in_time", "written_intact_rate"]])
fig = plots.consistency(trials_df)
fig.savefig(result.run_path / "consistency.png", dpi=100)
plt.show()

# %% [markdown]
# ## Compared with the seed's conclusions, then kvmlab's own questions

# %%
# the same judges as the lab note of `kvmlab seed` (kvmlab.report.labnote)
for name, finding in [("Conclusion 2 (cache=none: what the guest wrote reaches the copy)",
                       labnote.conclusion_2(trials_df)),
                      ("Conclusion 3 (without pausing, no guarantee of a consistent copy)",
                       labnote.conclusion_3(trials_df))]:
    print(f"{name}: {finding.word}. {finding.text}.")
for name, finding in [("Is pausing alone enough?", labnote.pause_alone(trials_df)),
                      ("A guest sync, then a pause?", labnote.sync_then_pause(trials_df)),
                      ("Guest-agent fsfreeze?", labnote.freeze_quiesces(trials_df))]:
    word = {True: "holds", False: "does not hold", None: "not shown"}[finding.agrees]
    print(f"kvmlab's question - {name} {word}. {finding.text}.")

# %% [markdown]
# **Reading the table.** `stop` pauses the vCPUs, so no new writes arrive, but what the guest only
# wrote is still in its page cache, not on the disk: the copy is what a power cut would leave, and
# the next mount replays the journal. A file written but not synced typically comes back *empty*
# (ext4 allocates its blocks only at writeback, while another file's fsync already committed its
# name) or *missing*. A guest `sync` before the pause, or `fsfreeze` (which flushes and blocks the
# writers), puts them on the disk. ext4's `needs_recovery` flag is set on every read-write mount,
# so it tells a live file system from a frozen one, not a good copy from a bad one: the counts
# of operations are what the verdicts rest on.
