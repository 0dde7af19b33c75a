"""The lab note's judges on a recorded ``kvmlab seed`` run (both builds, real QEMU): its
``point.json``, ``run.json`` and ``trials.csv`` files, kept in ``tests/data/seed``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from kvmlab.lab.suites import SEED_SUITE
from kvmlab.report import labnote
from kvmlab.report.labnote import CLAIMS, CaseRun, Finding, Judgement, judge_all, read_runs, tally

RECORDED = Path(__file__).parent / "data" / "seed" / "two-builds"
BUILDS = ["system", "10.0"]


@pytest.fixture
def seed(tmp_path: Path) -> Path:
    shutil.copytree(RECORDED, tmp_path / "seed")
    return tmp_path / "seed"


def _by_key(judged: list[Judgement]) -> dict[str, Judgement]:
    return {j.claim.key: j for j in judged}


def test_every_case_of_the_suite_is_read_on_both_builds() -> None:
    runs = read_runs(RECORDED)
    assert set(runs) == set(BUILDS)
    for build in BUILDS:
        assert set(runs[build]) == set(SEED_SUITE)
        assert all(r.failed is None for r in runs[build].values())


def test_claims_judged_as_recorded() -> None:
    judged = _by_key(judge_all(read_runs(RECORDED), BUILDS))
    assert set(judged) == {c.key for c in CLAIMS}
    for key in ("E1", "E2", "E3", "E4", "E5", "E6", "E7", "C2"):
        assert judged[key].outcome == "agrees", (key, judged[key].findings)
    # the seed saw 'info block' name the original image; both builds name the mirror, as
    # the writes really went there: the seed's display is not reproduced (no disagreement)
    e4b = judged["E4b"]
    assert e4b.outcome == "not reproduced"
    for f in e4b.findings.values():
        assert f.text.count("'info block' names 'drive0 (#block): x-mirror.img (qcow2)'") == 2
        assert "The seed's QEMU build is unknown" in f.text and f.agrees is None
    # pausing alone leaves the guest's journal to recover: only fsfreeze made clean copies
    assert judged["C3b"].outcome == "disagrees"
    assert "with fsfreeze instead, 2 of 2" in judged["C3b"].findings["system"].text
    # the numbers come from the verdicts
    runs = read_runs(RECORDED)
    v = runs["10.0"]["E7"].verdict
    ratio = v["full_bytes_copied"] / v["shallow_bytes_copied"]
    assert f"({ratio:.1f}x as much)" in judged["E7"].findings["10.0"].text
    for build in BUILDS:
        assert tally(list(judged.values()), build) == {"agree": 10, "disagree": 1,
                                                       "not shown": 0, "not reproduced": 1}


def test_a_failed_or_missing_run_is_not_measured_never_a_disagreement(seed: Path) -> None:
    runs = read_runs(seed)
    failed = runs["system"]["E2 stop"].path / "run.json"
    meta = json.loads(failed.read_text())
    meta.update(status="failed", error="LaunchError: the NFS server did not start", verdict={})
    failed.write_text(json.dumps(meta))
    missing = runs["10.0"]["E1"].path.parent
    shutil.rmtree(missing)
    judged = _by_key(judge_all(read_runs(seed), BUILDS))
    e2 = judged["E2"].findings["system"]
    assert e2 == Finding("not measured: E2 stop failed (LaunchError: the NFS server did not "
                         "start)", None)
    assert judged["E2"].outcome == "agrees where shown"
    assert judged["E1"].findings["10.0"] == Finding("not measured: no run of E1", None)
    assert tally(list(judged.values()), "system")["not shown"] == 1


def _trials(**cols: list[object]) -> pd.DataFrame:
    n = len(next(iter(cols.values())))
    base: dict[str, list[object]] = {"strategy": ["nothing"] * n, "cache": ["none"] * n,
                                     "needs_recovery": [False] * n, "fs_clean": [True] * n,
                                     "synced_ops_present": [True] * n, "in_flight": [0] * n,
                                     "in_flight_present": [0] * n}
    return pd.DataFrame({**base, **cols})


def test_consistency_conclusions_three_ways() -> None:
    # every live copy came out clean: no guarantee cannot be shown by a few trials
    clean = labnote.conclusion_3(_trials(strategy=["nothing", "nothing"]))
    assert clean.agrees is None and "cannot show" in clean.text
    dirty = labnote.conclusion_3(_trials(strategy=["nothing", "pause"],
                                         needs_recovery=[True, False]))
    assert dirty.agrees is True and "nothing: 1 of 1 copies had a journal" in dirty.text
    lost = labnote.conclusion_2(_trials(synced_ops_present=[True, False]))
    assert lost.agrees is False and lost.text.startswith("1 of 2 copies cut with cache=none")
    assert labnote.conclusion_2(pd.DataFrame()).agrees is None
    assert labnote.pause_is_enough(_trials(strategy=["pause"])).agrees is True


def test_outcome_of_a_claim_across_builds() -> None:
    claim = CLAIMS[0]
    assert Judgement(claim, {"a": Finding("", True), "b": Finding("", False)}).outcome == \
        "differs between builds"
    assert Judgement(claim, {"a": Finding("", None)}).outcome == "not shown"


def test_kvmlab_report_reads_a_seed_folder_as_its_lab_note(tmp_path: Path) -> None:
    from bs4 import BeautifulSoup

    from kvmlab.report.document import kind_of, make_report
    assert kind_of(RECORDED) == "seed"
    lines: list[str] = []
    make_report([RECORDED], tmp_path / "r.html", progress=lines.append)
    assert lines[0].endswith("(seed)")
    soup = BeautifulSoup((tmp_path / "r.html").read_text(), "html.parser")
    titles = [h.get_text() for h in soup.select("section.summary > h2, section.claim > h2")]
    assert titles[0].startswith("1. Summary") and len(titles) == 1 + len(CLAIMS)
    assert [t.split(". ", 1)[1].split(":")[0] for t in titles[1:]] == [c.key for c in CLAIMS]
    header = [th.get_text() for th in soup.select("section.summary table th")]
    assert header == ["claim", "system (QEMU 7.2.22)", "10.0 (QEMU 10.0.2)"]


def test_only_the_claims_whose_cases_were_asked_for() -> None:
    assert labnote.asked_cases(RECORDED) == set(SEED_SUITE)
    assert labnote.claims_for(SEED_SUITE) == list(CLAIMS)
    assert [c.key for c in labnote.claims_for(["E4 running", "C2/3 pause"])] == \
        ["E4", "E4b", "C2", "C3", "C3b"]


def _pivot(shows_original: bool, switched: bool = True) -> CaseRun:
    v = {"pass": True, "paused": False, "info_block": "drive0 (#block1): /x/" +
         ("disk.qcow2" if shows_original else "x-mirror.img") + " (qcow2)",
         "info_block_shows_original": shows_original,
         "source_unchanged_after_pivot": switched,
         "target_allocated_growth": (8 << 20) if switched else 0}
    return CaseRun("E4 running", "system", Path("/nonexistent"), {"status": "done", "verdict": v})


@pytest.mark.parametrize("shows_original,switched,word", [
    (True, True, "agrees"),             # the seed's display, and the writes really moved
    (False, True, "not reproduced"),    # this build shows the mirror the writes went to
    (True, False, "disagrees"),         # the writes never moved: the display was right
    (False, False, "disagrees")])
def test_the_info_block_judge_has_each_outcome(shows_original: bool, switched: bool,
                                               word: str) -> None:
    judge = next(c for c in CLAIMS if c.key == "E4b").judge
    run = _pivot(shows_original, switched)
    f = judge({"E4 paused": run, "E4 running": run})
    assert f.word == word, f


def test_a_judgement_over_builds_with_a_display_not_reproduced() -> None:
    claim = next(c for c in CLAIMS if c.key == "E4b")
    j = Judgement(claim, {"a": Finding("x", None, reproduced=False),
                          "b": Finding("y", None, reproduced=False)})
    assert j.outcome == "not reproduced"
    j.findings["b"] = Finding("y", True)
    assert j.outcome == "agrees where shown"
    j.findings["b"] = Finding("y", False)
    assert j.outcome == "disagrees where shown"
