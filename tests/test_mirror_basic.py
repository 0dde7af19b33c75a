"""Seed experiment 1 end to end: mirror during the guest's workload, cancel, boot the copy."""

from __future__ import annotations

import json
import stat

import pytest

from kvmlab import paths
from kvmlab.experiments import mirror_basic
from kvmlab.experiments.common import LabRun, verify_image
from kvmlab.experiments.options import RunOptions
from kvmlab.guest.workload import Manifest
from kvmlab.qemu import images

pytestmark = pytest.mark.qemu  # integration: real QEMU and the guest


def test_e1_mirror_during_workload_verifies(opts: RunOptions) -> None:
    res = mirror_basic(image_mib=64, fill_mib=16, workload_kib=256, workload_rate_kib_s=1024,
                       speed=8 * 1024 * 1024, after_ready_s=2.0, options=opts)
    v = res.verdict
    assert res.passed, v
    assert v["verify_pass"] and v["bad"] == 0
    assert v["job_end"] == "BLOCK_JOB_COMPLETED"
    assert v["ops_during_mirror"] >= 4, "the guest was not busy while the mirror ran"
    assert v["checked"] == v["manifest_entries"] >= 5
    meta = json.loads((res.run_path / "run.json").read_text())
    assert meta["status"] == "done" and meta["accel"] == "tcg"
    assert meta["params"]["speed"] == 8 * 1024 * 1024
    assert meta["provenance"]["qemu_version"].startswith("QEMU emulator version")
    assert meta["guest_kernel"] and meta["verdict"]["pass"] is True
    d = res.data
    assert not d.samples.empty and d.samples.ready.any()
    assert set(d.guest_ops.op) >= {"touch", "mkdir", "dd", "rmdir"}
    assert (d.guest_ops.machine == "source").all()
    assert "BLOCK_JOB_READY" in set(d.events.name)
    assert (res.run_path / "console-verify.log").read_text().count("KVMLAB verdict=pass") == 1
    # scratch images removed (no QEMU left: checked by the autouse fixture)
    assert not (paths.scratch_dir() / meta["run_id"]).exists()
    # run data can hold whatever the guest wrote: no file of the run is open to others
    opened = [p for p in [res.run_path, *res.run_path.rglob("*")]
              if p.stat().st_mode & 0o077]
    assert not opened, opened


def test_verifier_detects_a_missing_change(opts: RunOptions) -> None:
    """Negative control: the same verification fails when the manifest names a lost write."""
    with LabRun("verify_negative", {}, opts.replace(trace="off")) as lab:
        disk = lab.workdir / "disk.qcow2"
        base = images.make_guest_disk(disk, 32, fill_mib=2)
        # the guest's disk and its folders are ours alone (umask 077, 0700 dirs)
        assert stat.S_IMODE(disk.stat().st_mode) == 0o600
        assert stat.S_IMODE(lab.workdir.stat().st_mode) == 0o700
        assert stat.S_IMODE(lab.workdir.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(lab.run.path.stat().st_mode) == 0o700
        m = Manifest.from_ops([{"op": "dd", "path": "/wl/w99.bin", "sha256": "0" * 64},
                               {"op": "mkdir", "path": "/wl/d1"}], base=base)
        m.add_file("/fill.bin", "f" * 64)
        out = verify_image(lab, disk, m)
        lab.verdict = {"pass": out["verify_pass"]}
    assert not out["verify_pass"]
    assert out["bad"] == 3 and out["checked"] == 3
    whys = {(b["path"], b["why"]) for b in out["bad_items"]}
    assert whys == {("/wl/w99.bin", "missing"), ("/wl/d1", "missing"), ("/fill.bin", "checksum")}
    # trace=off: QEMU got no trace arguments and the run holds no trace
    command = json.loads((lab.run.path / "run.json").read_text())["machines"]["verify"]["command"]
    assert "-trace" not in command and "-D" not in command
    assert not list(lab.run.path.glob("trace*")) and lab.result().data.trace.empty
