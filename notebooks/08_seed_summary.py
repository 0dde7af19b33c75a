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

# %% tags=["parameters"]
# Parameters (papermill injects overrides below this cell); defaults as in the experiment
from typing import Optional

image_mib: int = 48
fill_mib: int = 8
sample_interval: float = 0.1        # seconds between query-block-jobs samples
cache: str = "none"                 # the seed's cache mode
accel: str = "auto"                 # auto: KVM only if a guest really boots under it, else TCG
run_path: Optional[str] = None      # kvmlab run sets it, None for data/runs/<run-id>

# %%
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from kvmlab import analysis
from kvmlab import experiments as ex
from kvmlab.experiments import ExperimentResult
from kvmlab.notebook import display, run_experiment


# %%
def seed(fn: Callable[..., ExperimentResult], **variant: Any) -> Callable[[], ExperimentResult]:
    """E<n> of the seed at this notebook's sizes, a run in a sub-folder of this one."""
    return lambda: run_experiment(fn, globals(), many=True, **variant)


runs = {
    "E1": seed(ex.mirror_basic, after_ready_s=1.0),
    "E2": seed(ex.mirror_nfs_outage, outage="stop", outage_after_s=0.5, outage_s=3.0),
    "E3": seed(ex.commit_stopped, method="hmp"),
    "E4": seed(ex.pivot, paused=True),
    "E5": seed(ex.double_pivot),
    "E6": seed(ex.remove_source, action="move"),
    "E7": seed(ex.shallow_existing, base_fill_mib=fill_mib * 2),
}
rows = []
for name, fn in runs.items():
    r = fn()
    s = analysis.summarize(r.data)
    rows.append({"experiment": name, "seed_conclusion": ex.SEED_CONCLUSIONS[name],
                 "verdict": "PASS" if r.passed else "FAIL", "agrees": r.passed,
                 "time_to_ready_s": s.get("time_to_ready_s"), "bytes_copied": s.get("bytes_copied"),
                 "run": r.run_path.name})
summary = pd.DataFrame(rows)
pd.set_option("display.max_colwidth", 80)
display(summary)

# %%
if run_path:
    summary.to_csv(Path(run_path) / "seed_summary.csv", index=False)
print(f"{int(summary.agrees.sum())} of {len(summary)} experiments agree with the seed")
