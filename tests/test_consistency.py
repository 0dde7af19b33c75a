"""The guest agent in the real guest, and the consistency study (nothing / pause / fsfreeze)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from kvmlab.batch.notebooks import run_notebook
from kvmlab.errors import BadInput, StateError
from kvmlab.experiments import consistency_study
from kvmlab.experiments.options import RunOptions
from kvmlab.qemu.images import fsck, make_guest_disk
from kvmlab.vm.machine import Machine

pytestmark = pytest.mark.qemu  # integration: real QEMU and the guest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def test_guest_agent_freezes_and_thaws(scratch: Path) -> None:
    disk = scratch / "d.raw"
    make_guest_disk(disk, 32, "raw", 0)
    fresh = fsck(disk)                            # never mounted: clean, nothing to replay
    assert fresh["clean"] and not fresh["needs_recovery"]
    with Machine(disk, agent=True, accel="tcg") as vm:
        vm.wait_guest("ready", timeout=90)
        ga = vm.agent()
        assert ga.info()["version"].startswith("7.2")
        assert ga.fsfreeze_freeze() == 1          # the guest's ext4 on /dev/vda
        assert ga.fsfreeze_status() == "frozen"
        assert ga.fsfreeze_thaw() == 1
        assert ga.fsfreeze_status() == "thawed"
    with Machine(disk, accel="tcg") as vm:
        with pytest.raises(StateError, match="agent=True"):
            vm.agent()
    # QEMU quit under a mounted file system: what a power cut leaves, a journal to replay
    after = fsck(disk)
    assert after["needs_recovery"]


def test_consistency_bad_input(opts: RunOptions) -> None:
    with pytest.raises(BadInput, match="strategy"):
        consistency_study(strategies=["hope"], options=opts)
    with pytest.raises(BadInput, match="cache mode"):
        consistency_study(cache_modes=["fast"], options=opts)
    with pytest.raises(BadInput, match="trials"):
        consistency_study(trials=0, options=opts)
    assert opts.runs_dir is not None and list(opts.runs_dir.iterdir()) == []


def test_consistency_notebook(tmp_path: Path) -> None:
    out = run_notebook(NOTEBOOKS / "10_consistency.ipynb",
                       {"trials": 1, "cache_modes": "none", "accel": "tcg"},
                       out=tmp_path / "cs")
    (run_dir,) = [p.parent for p in out.rglob("run.json")]
    trials = pd.read_csv(run_dir / "trials.csv")
    assert len(trials) == 3 and set(trials.strategy) == {"nothing", "pause", "fsfreeze"}
    assert trials.synced_ops_present.all()              # the seed's conclusion 2
    frz = trials[trials.strategy == "fsfreeze"]
    assert (frz.fs_clean & ~frz.needs_recovery).all() and (frz.frozen_filesystems == 1).all()
    live = trials[trials.strategy != "fsfreeze"]
    assert live.needs_recovery.all()                    # cut with a live journal
    rates = pd.read_csv(run_dir / "rates.csv")
    assert set(rates.columns) >= {"strategy", "cache", "consistent_rate", "quiesced_rate"}
    html = (out / "10_consistency.html").read_text()
    assert "Conclusion 2 (cache=none: what the guest wrote reaches the copy): agrees" in html
    assert "Conclusion 3 (without pausing, no guarantee of a consistent copy): agrees" in html
    assert (run_dir / "consistency.png").exists()
