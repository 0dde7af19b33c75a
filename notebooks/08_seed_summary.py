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
# # The seed's experiments, all in one run
#
# Runs E1–E7 at small sizes and prints one table: experiment, verdict, time to ready,
# bytes copied, the seed's conclusion and whether this run agrees with it. E2 runs against a real
# NFS server (nfs-ganesha on loopback) stopped for 3 s mid-mirror.
#
# `kvmlab seed` runs this notebook once per case and QEMU build (the cases include E2 frozen,
# E4 running and the consistency study, `C2/3 <cache mode>`) and writes the lab note: each of the
# seed's claims beside what was measured, agree or disagree, then kvmlab's own questions.

# %% tags=["parameters"]
# Parameters (papermill injects overrides below this cell); defaults as in the experiment
from typing import Optional

experiments: str = "E1,E2 stop,E3,E4 paused,E5,E6,E7"  # from kvmlab.lab.suites.SEED_SUITE, comma-separated
image_mib: int = 48
fill_mib: int = 8
trials: int = 10                    # the consistency study: copies per cut and cache mode
repeats: int = 5                    # E7: each mirror variant this many times
method_trials: int = 2              # snapshot methods (S ...): copies per quiesce mode
sample_interval: float = 0.1        # seconds between query-block-jobs samples
cache: str = "none"                 # the seed's cache mode
accel: str = "auto"                 # auto: KVM only if a guest really boots under it, else TCG
qemu: str = "system"                # QEMU build: "system", an installed one ("10.0", see kvmlab qemu list) or a binary's path
run_path: Optional[str] = None      # kvmlab run sets it, None for data/runs/<run-id>

# %%
from pathlib import Path

import pandas as pd

from kvmlab.lab import suites
from kvmlab.lab.notebook import display

# %%
# each experiment is a run in a sub-folder of this one (the suite: kvmlab.lab.suites.SEED_SUITE)
results = suites.seed_suite(globals(), experiments)
summary = suites.seed_rows(results)
pd.set_option("display.max_colwidth", 80)
display(summary)

# %%
if run_path:
    summary.to_csv(Path(run_path) / "seed_summary.csv", index=False)
print(f"{int(summary.agrees.sum())} of {len(summary)} experiments agree with the seed")
