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
# # Consistency study: nothing vs pause vs guest-agent fsfreeze
#
# The seed concludes (2) that with the drive's cache mode `none` whatever the guest wrote to disk
# reaches the mirror, and (3) that without pausing the guest nothing guarantees a 100 % consistent
# copy. This notebook tests both, and offers the counter-case: the real `qemu-guest-agent` runs in
# the guest (on a virtio-serial channel `org.qemu.guest_agent.0`) and freezes its file systems
# around the cut.
#
# Each trial boots a busy VM, mirrors its disk to a raw image until ready, waits a random moment,
# and cuts the copy with `block_job_cancel` using one strategy:
#
# - `nothing` — cancel while the guest writes;
# - `pause` — HMP `stop`, cancel, `c`;
# - `fsfreeze` — `guest-fsfreeze-freeze`, cancel, `guest-fsfreeze-thaw`.
#
# Then, on the copy: `e2fsck -fn` (clean or not; does the journal need recovery?) and a fresh VM
# checks every operation the guest had confirmed as synced before the cut. Operations in flight at
# the cut are reported (what was found at their paths), not judged.

# %% tags=["parameters"]
# Parameters (papermill injects overrides below this cell); defaults as in the experiment
from typing import Optional

strategies: str = "nothing pause fsfreeze"  # space separated
cache_modes: str = "none writeback"  # space separated
trials: int = 2                     # trials per strategy and cache mode
image_mib: int = 64
fill_mib: int = 8
workload_kib: int = 128             # guest dd size (KiB)
workload_rate_kib_s: float = 1024
seed: int = 1                       # for the random cut moments
sample_interval: float = 0.1
accel: str = "auto"
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
result = run_experiment(ex.consistency_study, globals(), strategies=strategies.split(),
                        cache_modes=cache_modes.split())
v = result.verdict
print("run folder:", result.run_path)
print("VERDICT:", "PASS" if result.passed else "FAIL", "-", v["trials"], "trials")
trials_df = pd.read_csv(result.run_path / "trials.csv")
display(trials_df)

# %% [markdown]
# ## Consistency rate per strategy and cache mode

# %%
rates_df = pd.read_csv(result.run_path / "rates.csv")
display(rates_df.round(3))
fig = plots.consistency_rates(rates_df)
fig.savefig(result.run_path / "consistency.png", dpi=100)
plt.show()

# %% [markdown]
# ## Compared with the seed's conclusions

# %%
# the same judges as the lab note of `kvmlab seed` (kvmlab.report.labnote)
for name, finding in [("Conclusion 2 (cache=none: what the guest wrote reaches the copy)",
                       labnote.conclusion_2(trials_df)),
                      ("Conclusion 3 (without pausing, no guarantee of a consistent copy)",
                       labnote.conclusion_3(trials_df)),
                      ("Its other side (pausing gives a copy that needs no recovery)",
                       labnote.pause_is_enough(trials_df))]:
    verdict = {True: "agrees", False: "disagrees", None: "not shown"}[finding.agrees]
    print(f"{name}: {verdict}. {finding.text}.")

# %% [markdown]
# **Reading the table.** `pause` stops the vCPUs, so no new writes arrive, but the guest's file
# system is still mounted with a live journal: the copy is what a power cut would leave, and the next
# mount replays the journal. `fsfreeze` asks the guest kernel to flush and checkpoint the journal and to
# block writers, so the copy is a clean, quiesced file system. Operations that had not been synced
# when the cut came may or may not be in the copy under any strategy: only a sync (or fsfreeze) makes
# them durable, which is the seed's point about changes still in the guest's page cache.
