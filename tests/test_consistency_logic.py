"""The consistency study's pure parts: the guest's block content, what a copy's file is
(intact, torn, empty, missing), each operation's class at the cut, the counts, rates and
verdict, and the host-side check of an image (e2fsprogs, no QEMU)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from kvmlab import _proc
from kvmlab.counts import k_of_n, wilson
from kvmlab.errors import BadInput
from kvmlab.experiments.consistency import classify, counts, rates, verdict
from kvmlab.guest.workload import BLOCK, Workload, block_content, file_state
from kvmlab.qemu.images import check_replayed, make_guest_disk


def _file(op: int, blocks: int) -> bytes:
    return b"".join(block_content(op, k) for k in range(blocks))


def test_a_file_is_intact_torn_empty_or_missing() -> None:
    whole = _file(7, 4)
    assert len(whole) == 4 * BLOCK and block_content(7, 2).startswith(b"kvmlab op 7 block 2 ")
    assert file_state(whole, 7, 4) == "intact"
    assert file_state(None, 7, 4) == "missing"
    assert file_state(b"", 7, 4) == "empty"
    assert file_state(whole[:BLOCK] + bytes(3 * BLOCK), 7, 4) == "torn"    # zeros after
    assert file_state(whole[:2 * BLOCK], 7, 4) == "torn"                   # short
    assert file_state(_file(8, 4), 7, 4) == "torn"                         # another op's


def test_the_consistency_workload_is_told_on_the_kernel_line() -> None:
    w = Workload(style="consistency", blocks=4, rate_kib_s=80)
    assert w.write_kib == 16 and w.pause_ms == 200
    assert {"kvmlab.style=consistency", "kvmlab.blocks=4"} <= set(w.kernel_args())
    assert not any(a.startswith("kvmlab.style") for a in Workload().kernel_args())
    with pytest.raises(BadInput, match="style"):
        Workload(style="chaos")
    with pytest.raises(BadInput, match="blocks"):
        Workload(style="consistency", blocks=0)


def _line(name: str, n: int, mono: float, cls: str = "synced") -> SimpleNamespace:
    return SimpleNamespace(name=name, mono=mono, data={"op": "write", "path": f"/c/o{n}",
                                                       "n": n, "cls": cls})


def test_each_operation_has_a_class_at_the_cut() -> None:
    lines = [_line("begin", 1, 1.0), _line("op", 1, 1.1),
             _line("begin", 2, 2.0, "written"), _line("op", 2, 2.1, "written"),
             _line("begin", 3, 3.0, "written"), _line("op", 3, 3.1, "written"),
             _line("begin", 4, 4.0), _line("op", 4, 4.6),          # confirmed after the cut
             _line("begin", 5, 4.7)]                                # begun after the cut
    got = classify(lines, t_cut=4.5, flushes=[2.5, 9.0])
    assert {n: c for n, (c, _age) in got.items()} == {
        1: "synced", 2: "flushed", 3: "written", 4: "in_flight"}
    assert got[3][1] == pytest.approx(1.4)


def _trial(cut: str, **kw: object) -> dict[str, object]:
    row: dict[str, object] = {"cut": cut, "cache": "none", "needs_recovery": cut != "fsfreeze",
                              "fs_clean": True, "guest_downtime_s": 0.0}
    for cls in ("synced", "flushed", "written", "in_flight"):
        for s in ("n", "intact", "torn", "empty", "missing"):
            row[f"{cls}_{s}"] = 0
    row.update(synced_n=2, synced_intact=2, written_n=1, written_empty=1)
    row.update(kw)
    row["promises_kept"] = bool(row["fs_clean"]) and row["synced_n"] == row["synced_intact"]
    row["point_in_time"] = row["promises_kept"] and row["written_n"] == row["written_intact"]
    return row


def test_counts_rates_and_a_verdict_that_can_fail() -> None:
    good = pd.DataFrame([_trial("nothing"), _trial("fsfreeze", written_n=0, written_empty=0)])
    v = verdict(good)
    assert v["pass"] and v["written_ops"] == 1 and v["written_intact"] == 0
    c = counts(good)
    row = c[(c.cut == "nothing") & (c["class"] == "written")].iloc[0]
    assert (row["ops"], row["empty"], row["intact"]) == (1, 1, 0)
    r = rates(good).set_index("cut")
    assert r.loc["nothing", "point_in_time"] == 0 and r.loc["fsfreeze", "point_in_time"] == 1
    assert r.loc["fsfreeze", "needs_replay"] == 0
    assert 0 < r.loc["fsfreeze", "point_in_time_low"] < 1 == r.loc["fsfreeze", "point_in_time_high"]
    lost = pd.DataFrame([_trial("stop", synced_intact=1, synced_torn=1)])
    assert not verdict(lost)["pass"] and not verdict(lost)["synced_and_flushed_intact"]
    unclean = pd.DataFrame([_trial("stop", fs_clean=False)])
    assert not verdict(unclean)["pass"]
    thawed = pd.DataFrame([_trial("fsfreeze", needs_recovery=True)])
    assert not verdict(thawed)["pass"] and verdict(thawed)["fsfreeze_needs_no_replay"] is False


def test_k_of_n_says_its_interval() -> None:
    assert k_of_n(10, 10) == "10 of 10 (95 % interval 72%-100%)"
    assert k_of_n(0, 0) == "0 of 0"
    lo, hi = wilson(5, 10)
    assert lo < 0.5 < hi and wilson(0, 0) == (0.0, 1.0)


def test_an_image_is_checked_after_its_journal_is_replayed(tmp_path: Path) -> None:
    image = tmp_path / "d.raw"
    make_guest_disk(image, 16, "raw", 0)
    (tmp_path / "o1").write_bytes(_file(1, 2))
    _proc.run(["debugfs", "-w", "-R", "mkdir /c", str(image)])
    _proc.run(["debugfs", "-w", "-R", f"write {tmp_path / 'o1'} /c/o1", str(image)])
    (tmp_path / "empty").write_bytes(b"")
    _proc.run(["debugfs", "-w", "-R", f"write {tmp_path / 'empty'} /c/o2", str(image)])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    got = check_replayed(image, scratch, ["/c/o1", "/c/o2", "/c/o3"])
    assert got["clean"] and got["fsck_rc"] == 0 and not got["needs_recovery"]
    assert file_state(got["files"]["/c/o1"], 1, 2) == "intact"
    assert got["files"]["/c/o2"] == b"" and got["files"]["/c/o3"] is None
    assert list(scratch.iterdir()) == []                     # its scratch copy removed
    with pytest.raises(BadInput, match="plain"):
        check_replayed(image, scratch, ["/c/../../etc/passwd x"])
    with pytest.raises(BadInput, match="does not exist"):
        check_replayed(tmp_path / "nope.raw", scratch, [])
