"""Paths with spaces and other odd characters, everywhere kvmlab puts files: the scratch
images (debugfs, qemu-img, QEMU's options), the NFS export and its URL, the run folder."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmlab import paths
from kvmlab.experiments import mirror_basic, mirror_nfs_outage
from kvmlab.experiments.options import RunOptions
from kvmlab.qemu import images

pytestmark = pytest.mark.qemu  # integration: real QEMU and the guest

ODD = "my scratch 'q' $x ü"


@pytest.fixture
def odd_scratch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # inside this session's own scratch folder: another worker's test uses the same name
    d = paths.scratch_dir() / ODD
    d.mkdir(parents=True)
    monkeypatch.setenv("KVMLAB_SCRATCH", str(d))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def odd_opts(tmp_path: Path) -> RunOptions:
    runs = tmp_path / f"runs {ODD}"
    runs.mkdir()
    return RunOptions(runs_dir=runs, accel="tcg")


def test_guest_disk_fill_lands_in_a_folder_with_spaces(odd_scratch: Path) -> None:
    disk = odd_scratch / "disk one.raw"
    manifest = images.make_guest_disk(disk, 32, fmt="raw", fill_mib=4)
    assert "/fill.bin" in manifest.files
    out = subprocess.run(["debugfs", "-R", "dump /fill.bin /dev/stdout", str(disk)],
                         capture_output=True, check=True).stdout
    assert len(out) == 4 * 1024 * 1024
    assert hashlib.sha256(out).hexdigest() == manifest.files["/fill.bin"]


def test_e1_with_odd_scratch_and_run_folder(odd_scratch: Path, odd_opts: RunOptions) -> None:
    res = mirror_basic(image_mib=48, fill_mib=8, after_ready_s=2.0, options=odd_opts)
    assert res.passed, res.verdict
    assert res.verdict["checked"] >= 5 and res.verdict["bad"] == 0
    assert not any(odd_scratch.iterdir())              # scratch images removed


@pytest.mark.nfs
def test_e2_nfs_export_in_an_odd_folder(odd_scratch: Path, odd_opts: RunOptions) -> None:
    r = mirror_nfs_outage(outage="stop", on_target_error="report", outage_after_s=1.5,
                          outage_s=3.0, fill_mib=8, options=odd_opts)
    assert r.passed, r.verdict
    assert "%20" in r.data.meta["nfs"]["url"]
    assert not any(odd_scratch.iterdir())
