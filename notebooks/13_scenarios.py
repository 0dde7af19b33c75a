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
# # The scenario catalogue: what QEMU does in the mirror cases its QE suites test
#
# Each row is one case from Red Hat's QE suite for QEMU (tp-qemu's `blockdev_mirror_*.cfg`) or from
# QEMU's iotests, named in the `anchor` column with what that suite asserts (`expected`). kvmlab runs
# it on a busy lab VM, records the job as it does every run, and writes down what happened: how the
# job ended, QEMU's events and errors in its own words, the guest's I/O errors, and whether the copy
# (booted in a verify VM) holds every operation the guest synced. A rule per scenario then says
# whether QEMU did what the anchor expects (`pass`, with `why` in words).
#
# | kind | scenarios |
# |---|---|
# | disks | three disks mirrored together, started and cut at one point (QEMU's `transaction` has no mirror action: the VM is stopped around the starts and around the cancels) |
# | lifecycle | the VM reset (`system_reset`) and the guest rebooting itself (its own `shutdown -r`, through the agent), each before and after READY; a data disk unplugged (`device_del`) under its mirror, as a `-blockdev` node and as a `-drive`; the guest writing as hard as it can; the guest powering off at READY |
# | refused | a second mirror, `block_resize`, a snapshot, a commit, deleting the target node, a disk mirrored into itself, a mirror inside `transaction`, `block-job-complete` before READY |
# | policy | the source's file system full, with `on-source-error` report, stop, ignore |
# | verbs | cancel before READY; force cancel after READY |
# | sync | `sync=none`; `sync=top` over a backing file |
# | target | raw and qcow2 targets; an existing target full of old data, with `unmap` on and off |
# | device | a disk with its own iothread; `filter-node-name`; a read-only disk |
#
# Builds take turns. With one run per build a value that differs is shown pale: a lead, not a
# finding (the counts of events vary from run to run on one build, see `30_qemu_versions`). With
# `runs` of 5 or more, rows that differ in every run are amber.
#
# To run the scenarios side by side, sweep them (each scenario one point) and tabulate the sweep here:
# `kvmlab sweep -f notebooks/sweeps/scenarios.yaml --workers 2`, then run this notebook with
# `from_sweep` set to the sweep's folder.

# %% tags=["parameters"]
# Parameters (papermill injects overrides below this cell); defaults as in the experiment
from typing import Optional

scenarios: Optional[str] = None     # scenario names, comma-separated ("refuse_resize,sync_top"); None: all
builds: str = "system 10.0"         # the QEMU builds to run on (names from kvmlab qemu list, or paths)
runs: int = 1                       # runs of every scenario on each build (5 or more: differences are judged)
from_sweep: Optional[str] = None    # a sweep folder (absolute path) whose points ran the scenarios: tabulate it instead of running
image_mib: int = 64
fill_mib: int = 16                  # data on the guest disk
speed: int = 8388608                # the mirror's speed limit, bytes/s (scenarios that act on a running job cap it lower)
after_ready_s: float = 1.0          # how long the guest works at READY before the cancel
verify: bool = True                 # boot each copy and check the guest's synced operations
sample_interval: float = 0.1        # seconds between query-block-jobs samples
cache: str = "none"                 # the seed's cache mode
accel: str = "auto"                 # auto: KVM only if a guest really boots under it, else TCG
workload: str = "files"             # what the guest does: "files" (its file operations), or fio beside them (a profile "name[:KiB/s]" or a .fio job file; see 15_workloads)
run_path: Optional[str] = None      # kvmlab run sets it, None for data/runs/<run-id>

# %%
from pathlib import Path

import pandas as pd

from kvmlab.experiments.scenarios import SCENARIOS
from kvmlab.lab import compare, suites
from kvmlab.lab.notebook import display
from kvmlab.qemu import builds as qemu_builds

if from_sweep:
    by_build = suites.scenario_results_in(from_sweep)
    if not by_build:
        raise ValueError(f"no scenario runs in {Path(from_sweep).resolve()} (give the sweep folder's absolute path)")
    print(f"{sum(len(r) for reps in by_build.values() for r in reps)} scenario runs in {from_sweep}: "
          + ", ".join(f"{b} ({len(reps)} run{'s' if len(reps) != 1 else ''})" for b, reps in by_build.items()))
else:
    chosen = [qemu_builds.resolve(b) for b in builds.split()]    # a bad name stops here, nothing run
    names = suites.chosen_names(scenarios, SCENARIOS, "scenario")
    if runs < 1:
        raise ValueError(f"runs={runs} must be at least 1")
    by_build = {b.name: [] for b in chosen}
    for k in range(runs):                  # the builds take turns, so drift hits both alike
        for b in chosen:
            print(f"== QEMU {b.name} ({b.version}), run {k + 1} of {runs}")
            done = {}
            for name in names:
                r = suites.scenario_runs(globals(), [name], qemu=b.name)[name]
                done[name] = r
                print(f"  {name:22s} {'PASS' if r.passed else 'FAIL'}  {r.verdict.get('why')}")
            by_build[b.name].append(done)

# %% [markdown]
# ## The catalogue, one table per build

# %%
tables = {}
for build, reps in by_build.items():
    tables[build] = suites.scenario_rows(reps[0])
    print(f"QEMU {build}: {int(tables[build]['pass'].sum())} of {len(tables[build])} scenarios as the anchor expects")
    display(tables[build])

# %% [markdown]
# ## Side by side (values that differ between builds highlighted)

# %%
table = compare.side_by_side({b: [compare.scenario_behaviours(r) for r in reps]
                              for b, reps in by_build.items()})
display(compare.highlight(table))
differ = table[table["why"].isin(["differs in every run"]) | table["why"].str.startswith("not judged")]
print(f"{len(differ)} of {len(table)} values differ between {', '.join(by_build)}; "
      f"{int(table['differs'].sum())} in every run")

# %%
if run_path:
    pd.concat([t.assign(qemu=b) for b, t in tables.items()]).to_csv(Path(run_path) / "scenarios.csv", index=False)
    table.to_csv(Path(run_path) / "scenarios_side_by_side.csv", index=False)
