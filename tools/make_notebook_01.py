"""Regenerates notebooks/01_mirror_basic.ipynb (run from the repository root)."""
import nbformat as nbf
nb = nbf.v4.new_notebook()
md = nbf.v4.new_markdown_cell
code = nbf.v4.new_code_cell
params = code('''# Parameters (papermill injects overrides below this cell)
image_mib = 64            # guest disk size
fill_mib = 16             # random data already on the disk (copied by the mirror)
disk_format = "qcow2"     # source image format
workload_kib = 256        # size of each guest dd write (KiB)
workload_rate_kib_s = 1024  # guest write rate (KiB/s): the dirty rate
speed = 8 * 1024 * 1024   # mirror speed limit, bytes/s (0 = unlimited); limited so progress is visible
sync = "full"             # HMP -f = full; top; none
target_format = None      # None: same as the source
sample_interval = 0.1     # seconds between query-block-jobs samples
cache = "none"            # the seed's cache mode
after_ready_s = 2.0       # guest keeps working this long in the ready state
accel = "auto"            # auto: KVM only if a guest really boots under it, else TCG
run_path = None           # where the run goes (kvmlab run sets it); None: data/runs/<run-id>''')
params.metadata["tags"] = ["parameters"]
nb.cells = [
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
(each guest line is printed after `sync` returns, and its host arrival time is recorded).'''),
params,
code('''import pandas as pd
import matplotlib
import matplotlib.pyplot as plt
from IPython.display import display
from kvmlab.experiments import mirror_basic
from kvmlab import analysis, plots'''),
code('''result = mirror_basic(image_mib=image_mib, fill_mib=fill_mib, disk_format=disk_format,
                      workload_kib=workload_kib, workload_rate_kib_s=workload_rate_kib_s,
                      speed=speed, sync=sync, target_format=target_format,
                      sample_interval=sample_interval, cache=cache, after_ready_s=after_ready_s,
                      accel=accel, run_path=run_path)
run = result.data
print("run folder:", result.run_path)
print("accelerator:", run.meta.get("accel"), "| guest kernel:", run.meta.get("guest_kernel"))
print("VERDICT:", "PASS" if result.passed else "FAIL")'''),
md("## Verdict"),
code('''display(pd.Series({k: v for k, v in result.verdict.items() if k != "bad_items"}, name="value").to_frame())'''),
md("## Progress (`info block-jobs`, sampled)"),
code('''s = run.samples
table = s.assign(offset_mib=s.offset / 2**20, len_mib=s.len / 2**20, remaining_mib=s.remaining / 2**20)
step = max(1, len(table) // 20)
display(table.iloc[::step][["t", "job", "status", "offset_mib", "len_mib", "remaining_mib", "speed", "busy", "ready", "io_status"]].round(2))'''),
md("## Analysis: convergence, rates, stalls"),
code('''summary = analysis.summarize(run)
display(pd.Series(summary, name="value").to_frame())
display(analysis.stalls(run.samples))'''),
code('''saved = plots.save_all(run)          # dashboard.png and single panels, in the run folder
print("saved:", ", ".join(saved))
fig = plots.dashboard(run)
plt.show()'''),
md("## Guest operations and events"),
code('''ops = run.guest_ops
display(ops.groupby(["machine", "op"]).size().rename("count").to_frame())
ev = run.events
display(ev[ev.source != "guest"][["t", "source", "name", "job", "status"]].round(3))'''),
]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, "notebooks/01_mirror_basic.ipynb")
