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
# # Did it change between QEMU versions? The seed suite and the target faults on two builds
#
# Runs the seed's experiments (E1, E2 with the NFS server stopped and frozen, E3, E4 paused and
# running, E5–E7), the target-fault table (NBD suspend and kill, EIO with each error policy,
# ENOSPC, throttle) and a throttled mirror on every QEMU build in `builds`, each build's programs
# throughout (the VMs, `qemu-img`, the NBD server). Then one table puts the builds side by side:
# verdict, time to ready, bytes copied, what QEMU reported during each fault, `info block` after the
# pivot, how each error policy ended, and how closely the copy rate keeps to the speed limit. Rows
# that differ are highlighted, and each difference gets a figure from the runs behind it.
#
# Everything varies from run to run (times, and even how many `BLOCK_JOB_ERROR` events a full
# target gives, which depends on the requests in flight), so every case runs `runs` times on each
# build and every value is kept. A behaviour **differs** only when each build has at least 5 runs
# and no value of one build meets the other's (numbers also a noise floor apart): with 5 runs a
# side, that is what a two-sided Mann-Whitney rank test calls different at p = 0.008. A behaviour
# that spreads within a build is shown as varying ("8–24 (n=5)"), never as a difference.
# `kvmlab qemu list` shows the builds installed; `kvmlab qemu add 10.0` installs 10.0.
#
# The repetitions can run side by side: `kvmlab sweep notebooks/sweeps/qemu_versions.yaml
# --workers 2` runs each build's suite once per point (5 repetitions, the builds taking turns),
# each point keeping its rows in `behaviours.json`; then run this notebook with `from_sweep` set
# to the sweep's folder to put every repetition in one table.

# %% tags=["parameters"]
# Parameters (papermill injects overrides below this cell); defaults as in the experiment
from typing import Optional

builds: str = "system 10.0"         # the QEMU builds to compare (names from kvmlab qemu list, or paths)
runs: int = 5                       # runs of every case on each build (fewer than 5: nothing is judged)
from_sweep: Optional[str] = None    # a sweep folder (absolute path) whose points ran this notebook: tabulate their rows instead of running
experiments: Optional[str] = None   # seed experiments to run, comma-separated ("E1,E4 paused"); None: all
cases: str = "nbd_suspend:report nbd_down:report eio:report eio:ignore eio:stop enospc:enospc enospc:report throttle:report"  # fault:policy pairs
throttle_speed: int = 2097152       # speed limit of the throttled mirror, bytes/s (2 MiB/s)
throttle_timeout: float = 30.0      # the throttled mirror's verdict is "not ready" after this long
image_mib: int = 48
fill_mib: int = 16                  # data on the guest disk (the ENOSPC case needs more than its 8 MiB tmpfs)
fault_after_s: float = 1.0          # when the timed faults start, after the mirror
fault_s: float = 3.0                # how long the timed faults last
verify: bool = True                 # boot each fault case's copy and check the guest's synced operations
sample_interval: float = 0.1        # seconds between query-block-jobs samples
cache: str = "none"                 # the seed's cache mode
accel: str = "auto"                 # auto: KVM only if a guest really boots under it, else TCG
run_path: Optional[str] = None      # kvmlab run sets it, None for data/runs/<run-id>

# %%
from pathlib import Path

import matplotlib.pyplot as plt

from kvmlab.lab import compare, suites
from kvmlab.lab.notebook import display
from kvmlab.qemu import builds as qemu_builds
from kvmlab.vm import qemu_probe

chosen = [] if from_sweep else [qemu_builds.resolve(b) for b in builds.split()]   # a bad name stops here, nothing run
for b in chosen:
    c = qemu_probe.capabilities(b)
    print(f"{b.name}: QEMU {c.version}; copy modes {'/'.join(c.copy_modes)}; "
          f"block-job-change {'yes' if c.block_job_change else 'no'}; "
          f"actively-synced {'yes' if c.actively_synced else 'no'}")

# %%
if runs < 1:
    raise ValueError(f"runs={runs} must be at least 1")
by_build: dict[str, list[list[compare.Row]]] = {b.name: [] for b in chosen}
if from_sweep:
    by_build = compare.rows_in(from_sweep)
    if not by_build:
        raise ValueError(f"no behaviour rows in {Path(from_sweep).resolve()} (give the sweep folder's absolute path)")
    runs = min(len(reps) for reps in by_build.values())
    print(f"rows of {sum(len(reps) for reps in by_build.values())} suite runs in {from_sweep}: "
          + ", ".join(f"{b} ({len(reps)} run{'s' if len(reps) != 1 else ''})" for b, reps in by_build.items()))
for k in range(0 if from_sweep else runs):   # the builds take turns, so drift hits both alike
    for b in chosen:
        print(f"== QEMU {b.name} ({b.version}), run {k + 1} of {runs}")
        seed = suites.seed_suite(globals(), experiments, qemu=b.name)
        for name, r in seed.items():
            print(f"  {name:12s} {'PASS' if r.passed else 'FAIL'}  {r.run_path.name}")
        faults = suites.fault_table(globals(), cases, qemu=b.name) if cases.strip() else {}
        for name, r in faults.items():
            print(f"  {name:22s} -> {r.verdict['behaviour']:9s} {'PASS' if r.passed else 'FAIL'}")
        throttled = suites.throttled(globals(), throttle_speed, throttle_timeout, qemu=b.name)
        print(f"  throttled mirror {'PASS' if throttled.passed else 'FAIL'}  {throttled.run_path.name}")
        by_build[b.name].append(compare.behaviours(seed, faults, throttled))
if run_path and not from_sweep:
    compare.save_rows(by_build, run_path)   # behaviours.json: a sweep's points are tabulated from it

# %% [markdown]
# ## Side by side (differences highlighted)

# %%
table = compare.side_by_side(by_build)
display(compare.highlight(table))
diff = compare.differences(table)
varies = table[table["why"] == "varies within a build"]
print(f"{len(diff)} of {len(table)} behaviours differ between {', '.join(by_build)} "
      f"({runs} run{'s' if runs != 1 else ''} each); {len(varies)} vary within a build")

# %% [markdown]
# ## One figure for each difference

# %%
for _, row in diff.iterrows():
    fig = compare.figure(row["case"], row["measure"], by_build)
    if run_path:
        safe = "".join(c if c.isalnum() else "-" for c in f"{row['case']}-{row['measure']}")
        fig.savefig(Path(run_path) / f"diff-{safe}.png", dpi=90)
    plt.show()

# %%
if run_path:
    table.to_csv(Path(run_path) / "qemu_versions.csv", index=False)
    diff.to_markdown(Path(run_path) / "qemu_differences.md", index=False)
