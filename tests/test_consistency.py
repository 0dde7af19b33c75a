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
    with pytest.raises(BadInput, match="cut 'hope'"):
        consistency_study(cuts=["hope"], options=opts)
    with pytest.raises(BadInput, match="cache mode"):
        consistency_study(cache_modes=["fast"], options=opts)
    with pytest.raises(BadInput, match="trials"):
        consistency_study(trials=0, options=opts)
    with pytest.raises(BadInput, match="give each cut once: stop stop"):
        consistency_study(cuts=["stop", "stop"], options=opts)
    with pytest.raises(BadInput, match="give at least one cache mode"):
        consistency_study(cache_modes=[], options=opts)
    with pytest.raises(BadInput, match="blocks"):
        consistency_study(blocks=0, options=opts)
    assert opts.runs_dir is not None and list(opts.runs_dir.iterdir()) == []


def test_consistency_notebook(tmp_path: Path) -> None:
    out = run_notebook(NOTEBOOKS / "10_consistency.ipynb",
                       {"trials": 1, "cache_modes": "none", "accel": "tcg"},
                       out=tmp_path / "cs")
    (run_dir,) = [p.parent for p in out.rglob("run.json")]
    trials = pd.read_csv(run_dir / "trials.csv")
    assert len(trials) == 4 and set(trials.cut) == {"nothing", "stop", "sync_stop", "fsfreeze"}
    # what the guest synced is in every copy, whole, and every copy replays clean
    assert (trials.synced_n > 0).all() and (trials.synced_n == trials.synced_intact).all()
    assert (trials.flushed_n == trials.flushed_intact).all() and trials.fs_clean.all()
    # a frozen guest leaves no journal to replay; a live or paused one does
    frz = trials[trials.cut == "fsfreeze"]
    assert (~frz.needs_recovery).all() and (frz.frozen_filesystems == 1).all()
    assert trials[trials.cut != "fsfreeze"].needs_recovery.all()
    # every operation confirmed before a cut is counted in one class and one state
    for cls in ("synced", "flushed", "written", "in_flight"):
        states = sum(trials[f"{cls}_{s}"] for s in ("intact", "torn", "empty", "missing"))
        assert (states == trials[f"{cls}_n"]).all()
    counts = pd.read_csv(run_dir / "counts.csv")
    assert set(counts["class"]) == {"synced", "flushed", "written", "in_flight"}
    rates = pd.read_csv(run_dir / "rates.csv")
    assert set(rates.columns) >= {"cut", "cache", "point_in_time", "point_in_time_low"}
    html = (out / "10_consistency.html").read_text()
    assert "Conclusion 2 (cache=none: what the guest wrote reaches the copy): " in html
    assert "kvmlab&#x27;s question - Guest-agent fsfreeze? holds" in html or \
        "kvmlab's question - Guest-agent fsfreeze? holds" in html
    assert (run_dir / "consistency.png").exists()
