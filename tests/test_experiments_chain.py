"""Seed experiments 3-7 against the real lab, at small sizes; each asserts its verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from kvmlab import experiments as ex
from kvmlab.errors import BadInput
from kvmlab.experiments.options import RunOptions

pytestmark = pytest.mark.qemu  # integration: real QEMU and the guest

SMALL = dict(image_mib=48, fill_mib=8)


@pytest.mark.parametrize("method", ["hmp", "qmp"])
def test_e3_commit_while_stopped(method: str, opts: RunOptions) -> None:
    r = ex.commit_stopped(method=method, rounds=3, options=opts, **SMALL)
    v = r.verdict
    assert r.passed, v
    assert v["vm_state_during_commit"] == "paused" and v["vm_state_after_c"] == "running"
    assert v["base_allocated_growth"] >= v["guest_bytes_written"] > 0
    assert v["verify_pass"] and v["checked"] >= 10
    assert len(v["chain_before"]) == 2
    if method == "qmp":  # active commit + complete: the drive now runs on the base
        assert v["drive_after"].endswith("base/base.img") and len(v["chain_after"]) == 1
    else:                # HMP commit: the overlay stays active, emptied
        assert v["drive_after"].endswith("disk.img")
        assert v["sizes_after"]["overlay"]["allocated"] < v["sizes_before"]["overlay"]["allocated"]
    assert json.loads((r.run_path / "chain_before.json").read_text())[1]["filename"].endswith("base.img")


@pytest.mark.parametrize("paused", [True, False])
def test_e4_pivot(paused: bool, opts: RunOptions) -> None:
    r = ex.pivot(paused=paused, options=opts, **SMALL)
    v = r.verdict
    assert r.passed, v
    assert v["on_target"] and v["drive_file_after"].endswith("x-mirror.img")
    assert v["vm_state_at_complete"] == ("paused" if paused else "running")
    assert v["source_unchanged_after_pivot"] and v["target_allocated_growth"] > 0
    assert v["info_block_shows_original"] is False  # what QEMU 7.2 reports, unlike the seed's note
    sizes = r.data.sizes
    assert {"vm:drive0", "x-mirror"} <= set(sizes.label)


def test_e5_double_pivot(opts: RunOptions) -> None:
    r = ex.double_pivot(options=opts, **SMALL)
    v = r.verdict
    assert r.passed, v
    assert v["drive_file_after"].endswith("mirror2.img")
    assert v["first_unchanged_since_pivot1"] and v["second_unchanged_since_pivot2"]
    assert v["third_allocated_growth"] > 0
    ready = r.data.events[r.data.events.name == "BLOCK_JOB_READY"]
    assert len(ready) == 2


@pytest.mark.parametrize("action", ["move", "delete"])
def test_e6_remove_source(action: str, opts: RunOptions, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    kwargs = {"move_to": elsewhere} if action == "move" else {}
    r = ex.remove_source(action=action, options=opts, **kwargs, **SMALL)  # type: ignore[arg-type]
    v = r.verdict
    assert r.passed, v
    assert v["io_error_events"] == 0 and v["vm_state_after"] == "running"
    assert v["writes_after_remove"] >= 4
    if action == "move":
        assert v["moved_file_unchanged"] is True
        assert not list(elsewhere.iterdir()), "moved image outside scratch left behind"


def test_e6_bad_input_creates_nothing(opts: RunOptions) -> None:
    with pytest.raises(BadInput, match="action"):
        ex.remove_source(action="shred", options=opts)
    with pytest.raises(BadInput, match="not a directory"):
        ex.remove_source(move_to="/nonexistent/dir", options=opts)
    assert not opts.runs_dir or not list(opts.runs_dir.iterdir())


def test_e7_shallow_mirror_copies_least(opts: RunOptions) -> None:
    r = ex.shallow_existing(image_mib=48, base_fill_mib=16, pre_writes=3, repeats=2,
                            options=opts)
    v = r.verdict
    assert r.passed, v
    assert v["seed_claim_least_data"]
    assert v["bytes_ratio_full_over_shallow"] > 1.5
    assert v["full_bytes_copied"] >= 16 * 1024 * 1024 > v["shallow_bytes_copied"]
    # the control: sync=top onto a new overlay copies the top layer too, about as -n does
    assert v["top_bytes_copied"] < 16 * 1024 * 1024
    variants = pd.read_csv(r.run_path / "variants.csv")
    assert len(variants) == 6 and set(variants.variant) == {"-n", "top", "full"}
    assert v["time_ratio_full_over_shallow_min"] <= v["time_ratio_full_over_shallow"] \
        <= v["time_ratio_full_over_shallow_max"]
    with pytest.raises(BadInput, match="repeats"):
        ex.shallow_existing(repeats=0, options=opts)
