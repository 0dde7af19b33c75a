"""Regenerates the experiment notebooks in notebooks/ (run from the repository root).

The notebooks are data; this script is their source, so they stay consistent:
each one has a papermill ``parameters`` cell, runs one experiment function,
shows the verdict, the analysis summary and the dashboard, and saves PNGs in
the run folder.
"""

from __future__ import annotations

from pathlib import Path

import nbformat as nbf

md = nbf.v4.new_markdown_cell
code = nbf.v4.new_code_cell
OUT = Path("notebooks")

IMPORTS = '''import pandas as pd
import matplotlib.pyplot as plt
from IPython.display import display
from kvmlab import analysis, plots
from kvmlab import experiments as ex

def show_verdict(result):
    v = {k: v for k, v in result.verdict.items() if k not in ("bad_items", "info_block", "in_flight_found")}
    print(result.run_path.name, "->", "PASS" if result.passed else "FAIL")
    display(pd.Series(v, name="value", dtype=object).to_frame())

def show_run(result, log=False):
    run = result.data
    print("accelerator:", run.meta.get("accel"), "| guest kernel:", run.meta.get("guest_kernel"))
    # a job quicker than one sample interval leaves no samples; the events, sizes and
    # the summary still tell the story, so always summarize and plot
    display(pd.Series(analysis.summarize(run), name="value", dtype=object).to_frame())
    plots.save_all(run, log=log)
    plots.dashboard(run, log=log)
    plt.show()'''


def params_cell(text: str) -> nbf.NotebookNode:
    cell = code("# Parameters (papermill injects overrides below this cell)\n" + text.strip()
                + "\nrun_path = None           # kvmlab run sets it, None for data/runs/<run-id>")
    cell.metadata["tags"] = ["parameters"]
    return cell


def notebook(name: str, cells: list[nbf.NotebookNode]) -> None:
    nb = nbf.v4.new_notebook()
    for i, cell in enumerate(cells):
        cell.id = f"{name.split('_')[0]}-{i:02d}"     # stable ids: regenerating changes nothing
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbf.write(nb, OUT / f"{name}.ipynb")


BACKEND = '''
backend = "qmp"           # "qmp" (kvmlab launches QEMU) or "libvirt" (a transient libvirt domain)
libvirt_uri = "qemu:///system"'''
COMMON = '''sample_interval = 0.1     # seconds between query-block-jobs samples
cache = "none"            # the seed's cache mode
accel = "auto"            # auto: KVM only if a guest really boots under it, else TCG'''

# -- control panel --------------------------------------------------------------------------
notebook("00_control_panel", [
    md('''# Mirror control panel

A lab VM starts (its guest busy with the seed's file operations) and the panel below drives
`drive-mirror` on its disk: choose the target, format, sync mode, mode (`existing` is HMP `-n`),
speed, granularity and buffer size, then **Start**. While the job runs the panel shows the
progress bar, remaining bytes and rates, the job's status and io-status, the event log and a live
plot of remaining bytes with stalls shaded, refreshed in the background (this notebook stays
usable). The speed slider changes a running job's limit. **Pause / Resume / Cancel / Complete
(pivot)** steer the job; **Stop VM / Continue VM** pause the guest (the seed's `stop` and `c`).
Buttons are enabled only when the action is valid for the job's state.

Every job is recorded like the experiments: when it ends, the run is saved under
`data/runs/<run-id>/` and the panel shows its analysis summary and dashboard.
For an existing libvirt domain instead: `MirrorPanel.libvirt("qemu:///system", "mydomain")`.'''),
    params_cell('''accel = "auto"            # auto: KVM only if a guest really boots under it, else TCG
fill_mib = 16             # random data on the lab VM's disk
workload_rate_kib_s = 512 # the guest's write rate'''),
    code('''from kvmlab.widgets import MirrorPanel

panel = MirrorPanel.lab(accel=accel, fill_mib=fill_mib, workload_rate_kib_s=workload_rate_kib_s)
panel'''),
    md("When done: `panel.close()` stops the lab VM and removes its scratch images "
       "(shutting the kernel down does the same)."),
])

# -- E1 -------------------------------------------------------------------------------------
notebook("01_mirror_basic", [
    md('''# E1 — basic `drive_mirror`, guest busy, then cancel

The seed's first experiment: on a running VM, `drive_mirror -f drive0 /data/x-mirror.img`, watch
`info block-jobs` while the guest touches files, creates and deletes directories and writes with
`dd`; when the mirror is "as big as the source", `block_job_cancel drive0`; boot a new VM from the
mirror and check that every change is there.

**How this differs from the seed's manual rule.** The seed cancelled when `ls -l` showed the mirror
file as big as the source. File size is a poor signal (qcow2 preallocation, sparse files); the
condition it approximates is the job's *ready* state (source and target in sync, QEMU's
`BLOCK_JOB_READY` event). kvmlab waits for that event, lets the guest keep working for
`after_ready_s` seconds, then cancels. A cancel after ready leaves a point-in-time copy, so the
verification expects exactly the operations the guest had **synced** before the cancel was sent
(each guest line is printed after `sync` returns, and its host arrival time is recorded);
an operation in flight at the cancel may be in either state and is reported, not judged.'''),
    params_cell('''image_mib = 64            # guest disk size
fill_mib = 16             # random data already on the disk (copied by the mirror)
disk_format = "qcow2"     # source image format
workload_kib = 256        # size of each guest dd write (KiB)
workload_rate_kib_s = 1024  # guest write rate (KiB/s): the dirty rate
speed = 8388608           # mirror speed limit, bytes/s (0 for unlimited), 8 MiB/s so progress is visible
sync = "full"             # "full" (HMP -f), "top" or "none"
target_format = None      # None: same as the source
granularity = None        # dirty-bitmap granularity, bytes (power of two, 512 B..64 MiB), None for QEMU's
buf_size = None           # copy buffer, bytes, None for QEMU's default
after_ready_s = 2.0       # guest keeps working this long in the ready state
ready_timeout = 300.0     # give up (verdict "not ready") if the job is not ready by then
''' + COMMON + BACKEND),
    code(IMPORTS),
    code('''result = ex.mirror_basic(image_mib=image_mib, fill_mib=fill_mib, disk_format=disk_format,
                         workload_kib=workload_kib, workload_rate_kib_s=workload_rate_kib_s,
                         speed=speed, sync=sync, target_format=target_format,
                         granularity=granularity, buf_size=buf_size,
                         sample_interval=sample_interval, cache=cache, after_ready_s=after_ready_s,
                         ready_timeout=ready_timeout, accel=accel, run_path=run_path,
                         backend=backend, libvirt_uri=libvirt_uri)
run = result.data
print("run folder:", result.run_path)
print("VERDICT:", "PASS" if result.passed else "FAIL")
show_verdict(result)'''),
    md("## Progress (`info block-jobs`, sampled)"),
    code('''s = run.samples
table = s.assign(offset_mib=s.offset / 2**20, len_mib=s.len / 2**20, remaining_mib=s.remaining / 2**20)
step = max(1, len(table) // 20)
display(table.iloc[::step][["t", "job", "status", "offset_mib", "len_mib", "remaining_mib", "speed", "busy", "ready", "io_status"]].round(2))'''),
    md("## Analysis: convergence, rates, stalls"),
    code('''show_run(result)
display(analysis.stalls(run.samples))'''),
    md("## Guest operations and events"),
    code('''ops = run.guest_ops
display(ops.groupby(["machine", "op"]).size().rename("count").to_frame())
ev = run.events
display(ev[ev.source != "guest"][["t", "source", "name", "job", "status"]].round(3))'''),
])

# -- E2 -------------------------------------------------------------------------------------
notebook("02_mirror_nfs_outage", [
    md('''# E2 — mirror to NFS, stop the NFS server mid-mirror, start it again

Seed: host1 exports `/data/mirror` over NFS, host2 mirrors the VM's disk into it; mid-mirror
`service nfs stop` on host1; `info block-jobs` shows the job no longer progressing while the
guest keeps working; `service nfs start`; after a while the job progresses again; cancel when
synced; boot the copy; all changes present.

Here the NFS server is a real **nfs-ganesha** on 127.0.0.1 (NFSv3, VFS backend, with rpcbind),
and QEMU writes through its own NFS client (libnfs, `nfs://127.0.0.1/<export>/x-mirror.img`).
kvmlab starts and stops the server itself. Two outage modes:

- `stop`: the server process ends (as `service nfs stop`); a new one starts on the same export;
- `freeze`: the server is SIGSTOPped, then SIGCONTed — a hard-mounted server that hangs.

The outage window is shaded on every plot, the stall analysis is applied to it, and the time from
the server's return to the job's first progress is measured. If the job fails or pauses on the
error (depending on `on_target_error`), the documented recovery step is taken and recorded:
`block-job-resume` for a paused job, or a new mirror onto the same image (`mode=existing`).'''),
    params_cell('''outage = "stop"           # "stop" (server process ends, then a new one) or "freeze" (SIGSTOP then SIGCONT)
outage_after_s = 2.0      # seconds after the mirror starts when the server goes away
outage_s = 5.0            # how long the server stays away
on_target_error = "report"  # the mirror's policy: report, ignore, enospc or stop
image_mib = 64
fill_mib = 24
speed = 4194304           # bytes/s, so that the outage falls mid-copy
workload_kib = 256
workload_rate_kib_s = 512
''' + COMMON),
    code(IMPORTS),
    code('''result = ex.mirror_nfs_outage(outage=outage, outage_after_s=outage_after_s, outage_s=outage_s,
                              on_target_error=on_target_error, image_mib=image_mib, fill_mib=fill_mib,
                              speed=speed, workload_kib=workload_kib,
                              workload_rate_kib_s=workload_rate_kib_s, sample_interval=sample_interval,
                              cache=cache, accel=accel, run_path=run_path)
run = result.data
v = result.verdict
print("run folder:", result.run_path)
print("VERDICT:", "PASS" if result.passed else "FAIL")
show_verdict(result)'''),
    md("## The outage window: what QEMU reported"),
    code('''display(analysis.fault_windows(run.events).round(3))
print(f"during the {v['outage_window_s']} s outage ({outage}) the job reported status {v['outage_statuses']} "
      f"and io-status {v['outage_io_statuses']}, copied {v['outage_bytes_copied_in_window']} bytes, "
      f"raised {v['outage_job_errors']} BLOCK_JOB_ERROR events; longest stall {v['outage_stall_s']} s")
print("behaviour:", v["behaviour"], "| recovery steps:", v["recovery_steps"] or "none needed")
print("first progress after the server came back:", v["outage_first_progress_after_s"], "s")
print("guest operations completed during the outage:", v["ops_during_outage"])'''),
    md("## Analysis and dashboard (outage shaded)"),
    code('''show_run(result)
display(analysis.stalls(run.samples))'''),
    md('''## Compared with the seed

The seed saw the job "no longer progressing", then progressing again "after a while", and a copy
holding every change. The verdict above checks the last part by booting the copy; the `behaviour`
line says whether QEMU 7.2 stalled with status `running` (the seed's observation), paused, or failed,
under this run's `on_target_error` policy. The seed's guest also kept working during the outage:
`ops_during_outage` says whether this one did. Measured here: with a frozen server it did (about
5 operations a second), with a stopped one QEMU's NFS client held the guest's own disk I/O as well
(0 to 2 operations in a 5 s outage), although QMP kept answering.'''),
])

# -- E3 -------------------------------------------------------------------------------------
notebook("03_commit_stopped", [
    md('''# E3 — commit an overlay into its base while the VM is stopped

Seed: the VM's disk is a qcow2 overlay (`disk.img`) on a backing file (`base/base.img`); the guest
writes; `stop`; sizes and `qemu-img info`; `commit drive0`; sizes again; `c`.

kvmlab runs it twice: with the seed's HMP `commit drive0` (synchronous; the overlay stays the
active image and is emptied) and with the QMP equivalent, `block-commit` of the active layer
followed by `block-job-complete` (the drive then runs on the base). On a libvirt domain
(`backend="libvirt"`) QEMU's HMP `commit` cannot name a `-blockdev` disk, so kvmlab carries the
seed's `commit vda` out as libvirt's `blockCommit` (active) + pivot, synchronously like HMP. The verdict boots a new VM
on **the base alone** and checks every change the guest made.'''),
    params_cell('''image_mib = 64
fill_mib = 8              # data in the base before the overlay is made
rounds = 4                # guest workload rounds written into the overlay
workload_kib = 512
''' + COMMON + BACKEND),
    code(IMPORTS),
    code('''results = {}
for method in ("hmp", "qmp"):
    results[method] = ex.commit_stopped(method=method, image_mib=image_mib, fill_mib=fill_mib,
                                        rounds=rounds, workload_kib=workload_kib,
                                        sample_interval=sample_interval, cache=cache, accel=accel,
                                        runs_dir=run_path, backend=backend, libvirt_uri=libvirt_uri)
    show_verdict(results[method])'''),
    md("## Sizes before and after the commit, and the backing chain"),
    code('''rows = []
for method, r in results.items():
    v = r.verdict
    for when in ("before", "after"):
        for f, s in v[f"sizes_{when}"].items():
            rows.append({"method": method, "when": when, "file": f, "apparent_mib": s["apparent"] / 2**20,
                         "allocated_mib": s["allocated"] / 2**20})
display(pd.DataFrame(rows).round(2))
for method, r in results.items():
    print(method, "chain before:", r.verdict["chain_before"])
    print(method, "chain after: ", r.verdict["chain_after"])'''),
    code('''for r in results.values():
    show_run(r)'''),
])

# -- E4 -------------------------------------------------------------------------------------
notebook("04_pivot", [
    md('''# E4 — `block_job_complete`: switch the VM's image at run time

Seed: mirror; `stop`; when synced, `block_job_complete drive0`; `c`. `info block-jobs` shows no
job; the notes say `info block` "still points to the original image", yet a dd in the guest grows
the mirror and not the original. Repeated without pausing: same outcome.

kvmlab runs both variants and checks: `query-block` shows drive0 on the mirror; the old image's
size **and content hash** do not change after the pivot while the guest keeps writing; the mirror
grows; a new VM booted from the mirror verifies every change.'''),
    params_cell('''image_mib = 64
fill_mib = 16
workload_kib = 512
post_pivot_writes = 4     # guest dd writes awaited after the pivot
''' + COMMON + BACKEND),
    code(IMPORTS),
    code('''results = {}
for paused in (True, False):
    results[paused] = ex.pivot(paused=paused, image_mib=image_mib, fill_mib=fill_mib,
                               workload_kib=workload_kib, post_pivot_writes=post_pivot_writes,
                               sample_interval=sample_interval, cache=cache, accel=accel,
                               runs_dir=run_path, backend=backend, libvirt_uri=libvirt_uri)
    show_verdict(results[paused])'''),
    md('''## What `info block` reports after the pivot (QEMU 7.2)

The seed wrote that `info block` "still points to the original image". The cell below prints what
this QEMU reports right after `block_job_complete`.'''),
    code('''for paused, r in results.items():
    print(f"paused={paused}:", r.verdict["info_block"].splitlines()[0])
    print("   shows the original image:", r.verdict["info_block_shows_original"])'''),
    code('''for r in results.values():
    show_run(r)'''),
])

# -- E5 -------------------------------------------------------------------------------------
notebook("05_double_pivot", [
    md('''# E5 — two mirrors and two completes in a row

Seed: from E4's state, mirror again to a second file and complete; dd; reboot: only the second
mirror grows. kvmlab: disk → mirror1 (complete) → mirror2 (complete); after the second pivot the
first two images must not change (hash), the third must grow, and it must boot and verify.'''),
    params_cell('''image_mib = 64
fill_mib = 16
workload_kib = 512
post_pivot_writes = 4
''' + COMMON),
    code(IMPORTS),
    code('''result = ex.double_pivot(image_mib=image_mib, fill_mib=fill_mib, workload_kib=workload_kib,
                         post_pivot_writes=post_pivot_writes, sample_interval=sample_interval,
                         cache=cache, accel=accel, run_path=run_path)
show_verdict(result)
show_run(result)'''),
])

# -- E6 -------------------------------------------------------------------------------------
notebook("06_remove_source", [
    md('''# E6 — move (or delete) the old image after the pivot

Seed: after complete, `mv` the old image to another file system. kvmlab moves it (to `move_to`,
default a folder beside it) and, in a variant, deletes it, while the guest keeps writing.
Verdict: the guest keeps working, no I/O error events, the moved file is unchanged, the active
image verifies. (To move across file systems as the seed did, pass a `move_to` on another one.)'''),
    params_cell('''image_mib = 64
fill_mib = 16
move_to = None            # a directory (another file system, as in the seed), None for beside the image
post_remove_writes = 4
''' + COMMON),
    code(IMPORTS),
    code('''results = {}
for action in ("move", "delete"):
    results[action] = ex.remove_source(action=action, move_to=move_to, image_mib=image_mib,
                                       fill_mib=fill_mib, post_remove_writes=post_remove_writes,
                                       sample_interval=sample_interval, cache=cache, accel=accel,
                                       runs_dir=run_path)
    show_verdict(results[action])'''),
    code('''for r in results.values():
    show_run(r)'''),
])

# -- E7 -------------------------------------------------------------------------------------
notebook("07_shallow_existing", [
    md('''# E7 — `drive_mirror -n` onto an existing overlay of the same base

Seed: base.img; two overlays on it (`qemu-img create -f qcow2 -o backing_file=base.img`): the VM's
disk and the future mirror; the guest writes; `drive_mirror -n drive0 mirror.img`; file
operations during the mirror; cancel when synced; boot the mirror. Claim: with `-n` and a shared
base this copies the least data and is created fastest.

kvmlab runs the seed's command line verbatim (`-n`, no `-f`: sync=top, mode=existing), then a full
mirror of the same disk in the same VM, and reports both as ratios.'''),
    params_cell('''image_mib = 64
base_fill_mib = 24        # data in the shared base: what the shallow mirror need not copy
pre_writes = 4            # guest dd writes into the overlay before the mirror
workload_kib = 512
''' + COMMON),
    code(IMPORTS),
    code('''result = ex.shallow_existing(image_mib=image_mib, base_fill_mib=base_fill_mib,
                             pre_writes=pre_writes, workload_kib=workload_kib,
                             sample_interval=sample_interval, cache=cache, accel=accel,
                             run_path=run_path)
show_verdict(result)
v = result.verdict
print(f"full mirror copied {v['bytes_ratio_full_over_shallow']:.1f}x the bytes of the shallow one, "
      f"and took {v['time_ratio_full_over_shallow']:.1f}x as long to be ready")'''),
    code('''show_run(result)'''),
])

# -- target faults --------------------------------------------------------------------------
notebook("09_target_faults", [
    md('''# Target faults: what a mirror does when its target misbehaves

Each case mirrors a busy VM's disk onto a target that fails in one way, records what QEMU reports,
takes the documented recovery step, and (with `verify`) boots the copy to check every operation the
guest synced before the cancel.

| fault | how | recovery if the job fails or pauses |
|---|---|---|
| `nbd_suspend` | target is a `qemu-storage-daemon` NBD export on a unix socket; SIGSTOP, then SIGCONT (tp-qemu's "remote server down") | none needed if it only stalls |
| `nbd_down` | the same daemon killed; a new one starts on the same image after `fault_s` | a new mirror onto the image (`mode=existing`) |
| `eio` | QEMU's `blkdebug` makes the target's first write fail with EIO | `block-job-resume` (policy `stop`) or a new mirror onto the plain image |
| `enospc` | the target sits on a small tmpfs and runs out of space | grow the tmpfs, then resume (policy `enospc`/`stop`) or mirror again |
| `throttle` | `block-job-set-speed` drops to `throttle_speed` for `fault_s` | none |

Every fault window is marked in the recording and shaded on the plots.'''),
    params_cell('''cases = "nbd_suspend:report nbd_down:report eio:report eio:ignore eio:stop enospc:enospc enospc:report throttle:report"  # fault:policy pairs
fault_after_s = 1.0       # when the timed faults start, after the mirror
fault_s = 3.0             # how long the timed faults last
fill_mib = 16             # data on the guest disk
verify = True             # boot each copy and check the guest's synced operations
''' + COMMON),
    code(IMPORTS),
    code('''results = []
for case in cases.split():
    fault, policy = case.split(":")
    r = ex.target_fault(fault=fault, on_target_error=policy, fault_after_s=fault_after_s,
                        fault_s=fault_s, fill_mib=fill_mib, verify=verify,
                        sample_interval=sample_interval, cache=cache, accel=accel, runs_dir=run_path)
    results.append(r)
    print(f"{case:22s} -> {r.verdict['behaviour']:9s} {'PASS' if r.passed else 'FAIL'}  {r.run_path.name}")
cols = ["fault", "on_target_error", "behaviour", "error_events", "error_actions", "paused_io_status",
        "recovery_steps", "fault_window_s", "fault_stall_s", "fault_first_progress_after_s",
        "time_to_ready_s", "job_end", "verify_pass", "checked", "pass"]
table = pd.DataFrame([{c: r.verdict.get(c) for c in cols} for r in results])
display(table)'''),
    md("## Each case: remaining bytes, fault window shaded"),
    code('''fig, axes = plt.subplots(len(results), 1, figsize=(10, 2.8 * len(results)), squeeze=False)
for ax, r in zip(axes[:, 0], results):
    plots.convergence(r.data.samples, r.data.events, ax=ax)
    ax.set_title(f"{r.verdict['fault']} / on-target-error={r.verdict['on_target_error']}: {r.verdict['behaviour']}")
    plots.save_all(r.data)
fig.tight_layout()
import pathlib
if run_path:
    table.to_csv(pathlib.Path(run_path) / "target_faults.csv", index=False)
    fig.savefig(pathlib.Path(run_path) / "target_faults.png", dpi=90)
plt.show()
print(f"{int(table['pass'].sum())} of {len(table)} cases recovered with a verified copy")'''),
])

# -- consistency ----------------------------------------------------------------------------
notebook("10_consistency", [
    md('''# Consistency study: nothing vs pause vs guest-agent fsfreeze

The seed concludes (2) that with the drive's cache mode `none` whatever the guest wrote to disk
reaches the mirror, and (3) that without pausing the guest nothing guarantees a 100 % consistent
copy. This notebook tests both, and offers the counter-case: the real `qemu-guest-agent` runs in
the guest (on a virtio-serial channel `org.qemu.guest_agent.0`) and freezes its file systems
around the cut.

Each trial boots a busy VM, mirrors its disk to a raw image until ready, waits a random moment,
and cuts the copy with `block_job_cancel` using one strategy:

- `nothing` — cancel while the guest writes;
- `pause` — HMP `stop`, cancel, `c`;
- `fsfreeze` — `guest-fsfreeze-freeze`, cancel, `guest-fsfreeze-thaw`.

Then, on the copy: `e2fsck -fn` (clean or not; does the journal need recovery?) and a fresh VM
checks every operation the guest had confirmed as synced before the cut. Operations in flight at
the cut are reported (what was found at their paths), not judged.'''),
    params_cell('''strategies = "nothing pause fsfreeze"   # space separated
cache_modes = "none writeback"          # space separated
trials = 2                # trials per strategy and cache mode
image_mib = 64
fill_mib = 8
workload_kib = 128        # guest dd size (KiB)
workload_rate_kib_s = 1024
seed = 1                  # for the random cut moments
sample_interval = 0.1
accel = "auto"'''),
    code(IMPORTS),
    code('''result = ex.consistency_study(strategies=strategies.split(), cache_modes=cache_modes.split(),
                              trials=trials, image_mib=image_mib, fill_mib=fill_mib,
                              workload_kib=workload_kib, workload_rate_kib_s=workload_rate_kib_s,
                              seed=seed, sample_interval=sample_interval, accel=accel, run_path=run_path)
v = result.verdict
print("run folder:", result.run_path)
print("VERDICT:", "PASS" if result.passed else "FAIL", "-", v["trials"], "trials")
trials_df = pd.read_csv(result.run_path / "trials.csv")
display(trials_df)'''),
    md("## Consistency rate per strategy and cache mode"),
    code('''rates_df = pd.read_csv(result.run_path / "rates.csv")
display(rates_df.round(3))
fig, ax = plt.subplots(figsize=(9, 3.5))
labels = rates_df.strategy + " / " + rates_df.cache
x = range(len(rates_df))
for i, (col, name) in enumerate([("synced_ops_rate", "synced ops present"), ("fs_clean_rate", "e2fsck clean"),
                                  ("quiesced_rate", "no journal recovery needed")]):
    ax.bar([p + i * 0.27 for p in x], rates_df[col], width=0.27, label=name)
ax.set_xticks([p + 0.27 for p in x], labels, rotation=20)
ax.set_ylim(0, 1.05); ax.set_ylabel("share of trials"); ax.legend(fontsize=8); ax.grid(alpha=0.3, axis="y")
ax.set_title("Copy consistency by cut strategy")
fig.tight_layout()
fig.savefig(result.run_path / "consistency.png", dpi=100)
plt.show()'''),
    md("## Compared with the seed's conclusions"),
    code('''none = trials_df[trials_df.cache == "none"]
live = trials_df[trials_df.strategy != "fsfreeze"]
frz = trials_df[trials_df.strategy == "fsfreeze"]
print(f"Conclusion 2 (cache=none: what the guest wrote reaches the mirror): "
      f"{int(none.synced_ops_present.sum())} of {len(none)} cache=none copies held every synced operation"
      + (f"; with cache=writeback {int(trials_df[trials_df.cache == 'writeback'].synced_ops_present.sum())} of "
         f"{int((trials_df.cache == 'writeback').sum())}" if (trials_df.cache == "writeback").any() else "") + ".")
print(f"Conclusion 3 (without pausing, no guarantee of a 100 % consistent copy): "
      f"{int(live.needs_recovery.sum())} of {len(live)} copies cut without fsfreeze (nothing or pause) had a journal "
      f"needing recovery, i.e. were crash-consistent at best; e2fsck -n found problems in {int((~live.fs_clean).sum())} of them.")
if len(frz):
    print(f"Counter-case (fsfreeze): {int((frz.fs_clean & ~frz.needs_recovery).sum())} of {len(frz)} copies were clean "
          f"and quiesced, at a guest I/O pause of {frz.guest_downtime_s.mean():.3f} s on average.")
print(f"Operations in flight at the cut: {int(trials_df.in_flight.sum())}, of which {int(trials_df.in_flight_present.sum())} "
      f"had reached the copy.")'''),
    md('''**Reading the table.** `pause` stops the vCPUs, so no new writes arrive, but the guest's file
system is still mounted with a live journal: the copy is what a power cut would leave, and the next
mount replays the journal. `fsfreeze` asks the guest kernel to flush and checkpoint the journal and to
block writers, so the copy is a clean, quiesced file system. Operations that had not been synced
when the cut came may or may not be in the copy under any strategy: only a sync (or fsfreeze) makes
them durable, which is the seed's point about changes still in the guest's page cache.'''),
])

# -- summary --------------------------------------------------------------------------------
notebook("08_seed_summary", [
    md('''# The seed's experiments, all in one run

Runs E1–E7 at small sizes and prints one table: experiment, verdict, time to ready,
bytes copied, the seed's conclusion and whether this run agrees with it. E2 runs against a real
NFS server (nfs-ganesha on loopback) stopped for 3 s mid-mirror.'''),
    params_cell('''image_mib = 48
fill_mib = 8
''' + COMMON),
    code(IMPORTS),
    code('''common = dict(sample_interval=sample_interval, cache=cache, accel=accel, runs_dir=run_path)
small = dict(image_mib=image_mib, fill_mib=fill_mib)
runs = {
    "E1": lambda: ex.mirror_basic(**small, after_ready_s=1.0, **common),
    "E2": lambda: ex.mirror_nfs_outage(**small, outage="stop", outage_after_s=0.5, outage_s=3.0, **common),
    "E3": lambda: ex.commit_stopped(**small, method="hmp", **common),
    "E4": lambda: ex.pivot(**small, paused=True, **common),
    "E5": lambda: ex.double_pivot(**small, **common),
    "E6": lambda: ex.remove_source(**small, action="move", **common),
    "E7": lambda: ex.shallow_existing(image_mib=image_mib, base_fill_mib=fill_mib * 2, **common),
}
rows = []
for name, fn in runs.items():
    row = {"experiment": name, "seed_conclusion": ex.SEED_CONCLUSIONS[name]}
    if fn is None:
        row.update(verdict="not run", agrees=None)
    else:
        r = fn()
        s = analysis.summarize(r.data)
        row.update(verdict="PASS" if r.passed else "FAIL", agrees=r.passed,
                   time_to_ready_s=s.get("time_to_ready_s"), bytes_copied=s.get("bytes_copied"),
                   run=r.run_path.name)
    rows.append(row)
summary = pd.DataFrame(rows)
pd.set_option("display.max_colwidth", 80)
display(summary)'''),
    code('''import pathlib
out = pathlib.Path(run_path) if run_path else None
if out:
    summary.to_csv(out / "seed_summary.csv", index=False)
ran = summary[summary.verdict != "not run"]
print(f"{(ran.agrees == True).sum()} of {len(ran)} experiments agree with the seed")'''),
])

# -- sweep report ---------------------------------------------------------------------------
report_params = code('''# Parameters (papermill injects overrides below this cell)
sweep_dir = "data/sweeps/latest"   # the sweep folder to report on''')
report_params.metadata["tags"] = ["parameters"]
notebook("20_sweep_report", [
    md('''# Sweep report

Metrics of every run of a sweep against its parameters: time to ready against the speed limit and
the guest's write rate, a convergence map over speed x dirty rate, copy throughput against
buf-size and granularity, and the parameters that made the mirror fastest without diverging.
Run by `kvmlab sweep` at the end of a sweep; its figures are saved in the sweep folder.'''),
    report_params,
    code('''import json
from pathlib import Path
import pandas as pd
import matplotlib.pyplot as plt
from IPython.display import display
from kvmlab import plots
from kvmlab.sweep import collect

folder = Path(sweep_dir)
frame = collect(folder)
meta = json.loads((folder / "sweep.json").read_text())
print(f"{len(frame)} runs from {frame['point'].nunique() if len(frame) else 0} points of {Path(meta['plan']['notebook']).name}")
for s in meta.get("sessions", []):
    print(f"session: {s['points_run']} points, {s['failed']} failed, {s['workers']} worker(s), "
          f"wall {s['wall_s']} s, speed-up over serial {s['speedup_vs_serial']}")
swept = [k for k in (meta["plan"].get("grid") or {})] or [c for c in ("speed", "workload_rate_kib_s", "buf_size", "granularity") if c in frame]
cols = ["point", "point_status"] + swept + [c for c in ("convergence", "time_to_ready_s", "bytes_copied", "mean_copy_rate", "stall_time_s", "pass", "point_error") if c in frame]
display(frame[[c for c in cols if c in frame]])'''),
    md("## Time to ready"),
    code('''MIB = 2**20
ok = frame[frame.get("point_status", pd.Series(dtype=str)) == "done"].copy() if len(frame) else frame
if "speed" in ok:
    ok["speed_mib_s"] = ok["speed"].astype(float) / MIB
figs = {}
if {"speed_mib_s", "time_to_ready_s"} <= set(ok.columns):
    figs["sweep_ttr_vs_speed.png"] = plots.metric_vs_param(ok, "speed_mib_s", "time_to_ready_s",
        hue="workload_rate_kib_s" if "workload_rate_kib_s" in ok else None, ylabel="time to ready (s)")
if {"workload_rate_kib_s", "time_to_ready_s"} <= set(ok.columns):
    figs["sweep_ttr_vs_dirty_rate.png"] = plots.metric_vs_param(ok, "workload_rate_kib_s", "time_to_ready_s",
        hue="speed_mib_s" if "speed_mib_s" in ok else None, ylabel="time to ready (s)")
if {"speed_mib_s", "workload_rate_kib_s", "convergence"} <= set(ok.columns):
    figs["sweep_convergence_map.png"] = plots.convergence_map(ok, "speed_mib_s", "workload_rate_kib_s")
if "mean_copy_rate" in ok:
    ok["copy_mib_s"] = ok["mean_copy_rate"].astype(float) / MIB
    for p in ("buf_size", "granularity"):
        if p in ok and ok[p].nunique() > 1:
            figs[f"sweep_throughput_vs_{p}.png"] = plots.metric_vs_param(
                ok, p, "copy_mib_s", hue=("granularity" if p == "buf_size" else "buf_size") if {"buf_size", "granularity"} <= set(ok.columns) else None,
                xscale="log", ylabel="mean copy rate (MiB/s)")
for name, fig in figs.items():
    fig.savefig(folder / name, dpi=100, bbox_inches="tight")
print("figures:", ", ".join(figs) or "none (no swept metric to plot)")
plt.show()'''),
    md("## Recommendation"),
    code('''good = ok[ok.get("convergence", pd.Series(dtype=str)) == "converged"] if len(ok) else ok
if len(good) and "time_to_ready_s" in good and good["time_to_ready_s"].notna().any():
    best = good.sort_values("time_to_ready_s").iloc[0]
    print("fastest without diverging:", ", ".join(f"{k}={best[k]}" for k in swept if k in best),
          f"-> ready in {best['time_to_ready_s']:.2f} s")
else:
    print("no run converged: no recommendation (raise the speed limit or lower the dirty rate)")
diverging = ok[ok.get("convergence", pd.Series(dtype=str)).isin(["diverging", "stalled"])] if len(ok) else ok
if len(diverging):
    print("did not converge:", "; ".join(", ".join(f"{k}={r[k]}" for k in swept if k in r) for _, r in diverging.iterrows()))'''),
])
