"""Snapshot methods on real QEMU (TCG) and the real guest: the notebook runs to PASS, each
copy holds what its point in time says, a booted copy verifies; bad input is one line."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from kvmlab.batch.notebooks import run_notebook
from kvmlab.errors import BadInput
from kvmlab.experiments import snapshot_methods
from kvmlab.experiments.options import RunOptions

pytestmark = pytest.mark.qemu  # integration: real QEMU and the guest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def test_snapshot_methods_bad_input(opts: RunOptions) -> None:
    with pytest.raises(BadInput, match="method 'clone'"):
        snapshot_methods(methods=["clone"], options=opts)
    with pytest.raises(BadInput, match="quiesce 'pray'"):
        snapshot_methods(quiesce=["pray"], options=opts)
    with pytest.raises(BadInput, match="give each method once"):
        snapshot_methods(methods=["mirror", "mirror"], options=opts)
    with pytest.raises(BadInput, match="give at least one quiesce"):
        snapshot_methods(quiesce=[], options=opts)
    with pytest.raises(BadInput, match="trials"):
        snapshot_methods(trials=0, options=opts)
    with pytest.raises(BadInput, match="libvirt"):
        snapshot_methods(options=opts.replace(backend="libvirt"))
    assert opts.runs_dir is not None and list(opts.runs_dir.iterdir()) == []


@pytest.mark.long
def test_snapshot_methods_notebook(tmp_path: Path) -> None:
    """Backup and external snapshot (the mirror runs in kvmlab seed's test, both builds):
    a frozen point in time keeps every finished operation and nothing after it."""
    out = run_notebook(NOTEBOOKS / "12_snapshot_methods.ipynb",
                       {"methods": "backup snapshot", "quiesce": "fsfreeze", "trials": 1,
                        "accel": "tcg"}, out=tmp_path / "sm")
    (run_dir,) = [p.parent for p in out.rglob("run.json")]
    copies = pd.read_csv(run_dir / "copies.csv")
    assert len(copies) == 2 and set(copies.method) == {"backup", "snapshot"}
    # what the guest synced before the point in time is in every copy, whole
    assert (copies.synced_n > 0).all() and (copies.synced_n == copies.synced_intact).all()
    assert (copies.after_leaked == 0).all() and copies.fs_clean.all()
    # the backup copied on while the guest wrote (copy-before-write kept those out)
    backup = copies[copies.method == "backup"]
    assert (backup.after_n > 0).all() and (backup.host_bytes_written == 48 << 20).all()
    frozen = copies[copies.quiesce == "fsfreeze"]
    assert (~frozen.needs_recovery).all() and frozen.point_in_time.all()
    assert copies.booted.dropna().astype(bool).all() and copies.booted.notna().sum() == 2
    table = pd.read_csv(run_dir / "methods.csv")
    assert len(table) == 2 and table.latency_p95_before_ms.notna().all()
    html = (out / "12_snapshot_methods.html").read_text()
    assert "data disk (its application syncs): " in html and "system disk" in html
    assert (run_dir / "snapshot_methods.png").exists()
