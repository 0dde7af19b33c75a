"""The scenario catalogue and VMs with several disks, on real QEMU: one scenario of each kind
(lifecycle, refused action, policy, target kind) and a three-disk E1 cut at one point."""

from __future__ import annotations

import pytest

from kvmlab import analysis, load_run, plots
from kvmlab.experiments import mirror_basic, scenario
from kvmlab.experiments.options import RunOptions

pytestmark = pytest.mark.qemu  # integration: real QEMU and the guest


def test_three_disks_mirrored_and_cut_at_one_point(opts: RunOptions) -> None:
    res = mirror_basic(data_disks=2, after_ready_s=1.0, options=opts)
    v = res.verdict
    assert res.passed, v
    disks = v["disks"]
    assert [d["disk"] for d in disks] == ["vda", "vdb", "vdc"]
    assert [d["job"] for d in disks] == ["drive0", "data1", "data2"]
    for d in disks:
        assert d["job_end"] == "BLOCK_JOB_COMPLETED" and d["verify_pass"], d
        # the data disks were written during the job: fill plus the guest's files
        assert d["checked"] >= 2, d
        # and written after the cut too: those writes are checked absent from each copy
        assert d["absent_checked"] >= 1, d
    assert v["same_point"] and v["cut_stopped_s"] < 30
    # QEMU's transaction has no mirror: the three start at one point, the VM stopped
    assert 0 < v["start_stopped_s"] < 30
    # every disk's guest writes are in the record, one job per disk, side by side
    run = load_run(res.run_path)
    assert set(run.guest_ops["disk"].dropna()) >= {"vdb", "vdc"}
    assert analysis.jobs_by_start(run.samples, run.events) == ["drive0", "data1", "data2"]
    table = analysis.summarize_jobs(run)
    assert list(table["job"]) == ["drive0", "data1", "data2"]
    assert (table["time_to_ready_s"] > 0).all() and (table["bytes_copied"] > 0).all()
    names = plots.save_all(run)
    assert {"jobs.png", "dashboard-data1.png", "dashboard-data2.png"} <= set(names)
    for name in names:
        assert (res.run_path / name).stat().st_size > 10_000


@pytest.mark.parametrize("name,kind", [
    ("guest_reboot_after_ready", "lifecycle"),
    ("refuse_resize", "refused"),
    ("source_enospc_stop", "policy"),
    ("existing_no_unmap", "target"),
])
def test_a_scenario_of_each_kind_runs_and_is_judged(name: str, kind: str,
                                                    opts: RunOptions) -> None:
    res = scenario(name=name, options=opts)
    v = res.verdict
    assert v["scenario"] == name and v["kind"] == kind and v["anchor"]
    assert res.passed, v
    assert v["ready"] and v["job_end"] == "BLOCK_JOB_COMPLETED"
    # the paths checked are those the guest had synced by the cut and not begun again;
    # the reboot cuts its workload short, by as much as the host's load lets the rebooted
    # guest begin again before the cut (4 paths in one full run, 2 in another): the copy
    # must verify on at least one, never vacuously
    assert v["copy_verifies"] is True and v["bad"] == 0
    assert v["checked"] >= (1 if kind == "lifecycle" else 5)
    if kind == "lifecycle":
        assert v["rebooted"] and v["reset_at"] == "ready" and v["guest_ops_after_action"] >= 1
        assert v["guest_shutdown_said"]            # the guest's own shutdown -r ran
        run = load_run(res.run_path)
        assert (run.events["name"] == "guest_boot").sum() >= 2     # it booted twice
    elif kind == "refused":
        assert v["refused"] and "is in use" in v["qemu_error"]
        assert v["job_running_after"] and v["guest_ops_after_action"] >= 1
    elif kind == "policy":
        assert v["io_error_reason"] == "No space left on device" and v["guest_io_errors"] >= 1
        assert v["vm_status"] == "io-error"        # the guest's write error paused the VM
    else:
        assert v["target_allocated"] >= 0.9 * v["virtual_size"]   # zeroes written, not unmapped
