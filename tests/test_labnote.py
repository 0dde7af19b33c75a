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
    for key in ("E1", "E2", "E3", "E4", "E5", "E6", "E7", "E7b", "C2"):
        assert judged[key].outcome == "agrees", (key, judged[key].findings)
    # the seed saw 'info block' name the original image; both builds name the mirror, as
    # the writes really went there: the seed's display is not reproduced (no disagreement)
    e4b = judged["E4b"]
    assert e4b.outcome == "not reproduced"
    for f in e4b.findings.values():
        assert f.text.count("'info block' names 'drive0 (#block): x-mirror.img (qcow2)'") == 2
        assert "The seed's QEMU build is unknown" in f.text and f.agrees is None
    assert judged["C1"].outcome == "agrees" and judged["C3"].outcome == "agrees"
    # kvmlab's own questions, on the recorded copies: pausing alone lost what the guest had
    # only written (its page cache), a guest sync first or fsfreeze did not
    assert judged["Q1"].outcome == "disagrees"
    assert judged["Q2"].outcome == "agrees" and judged["Q3"].outcome == "agrees"
    # the snapshot methods: with fsfreeze every method's copies were point-in-time
    assert judged["Q4"].outcome == "agrees"
    assert "fsfreeze: mirror 2 of 2 point-in-time" in judged["Q4"].findings["10.0"].text
    q1 = judged["Q1"].findings["system"].text
    assert q1.startswith("0 of 30 (95 % interval 0%-11%) copies cut with stop held every")
    c2 = judged["C2"].findings["system"].text
    assert c2.startswith("cache=none, 40 copies: ") and "cache=directsync, 40 copies" in c2
    # the numbers come from the verdicts
    runs = read_runs(RECORDED)
    v = runs["10.0"]["E7"].verdict
    ratio = v["full_bytes_copied"] / v["shallow_bytes_copied"]
    assert f"({ratio:.1f}x as much)" in judged["E7"].findings["10.0"].text
    assert "not from -n" in judged["E7"].findings["10.0"].text
    seed_claims = [j for j in judged.values() if not j.claim.own]
    own = [j for j in judged.values() if j.claim.own]
    for build in BUILDS:
        assert tally(seed_claims, build) == {"agree": 11, "disagree": 0, "not shown": 0,
                                             "not reproduced": 1}
        assert tally(own, build) == {"agree": 3, "disagree": 1, "not shown": 0,
                                     "not reproduced": 0}


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


def _copies(cut: list[str], **cols: list[object]) -> pd.DataFrame:
    """Constructed copies of the consistency study: by default every synced op intact, one
    written op per copy lost (empty), a journal to replay, clean after it."""
    n = len(cut)
    base: dict[str, list[object]] = {"cut": cut, "cache": ["none"] * n,
                                     "needs_recovery": [c != "fsfreeze" for c in cut],
                                     "fs_clean": [True] * n}
    for cls in ("synced", "flushed", "written", "in_flight"):
        for state in ("n", "intact", "torn", "empty", "missing"):
            base[f"{cls}_{state}"] = [0] * n
    base.update(synced_n=[3] * n, synced_intact=[3] * n, written_n=[1] * n,
                written_intact=[0] * n, written_empty=[1] * n)
    frame = pd.DataFrame({**base, **cols})
    kept = frame.fs_clean & (frame.synced_n == frame.synced_intact) & \
        (frame.flushed_n == frame.flushed_intact)
    frame["promises_kept"] = kept
    frame["point_in_time"] = kept & (frame.written_n == frame.written_intact)
    return frame


def _case(case: str, verdict: dict[str, object], passed: bool = True) -> CaseRun:
    return CaseRun(case, "system", Path("/nonexistent"),
                   {"status": "done", "verdict": {"pass": passed, **verdict}})


def test_conclusion_2_has_each_outcome() -> None:
    lost = labnote.conclusion_2(_copies(["nothing", "stop"]))
    assert lost.word == "agrees" and "6 of 6 checks of synced or flushed operations intact" in lost.text
    assert "of 2 checks of operations only written (not synced), 0 intact, 2 empty" in lost.text
    torn = labnote.conclusion_2(_copies(["nothing"], synced_intact=[2], synced_torn=[1]))
    assert torn.word == "disagrees" and "2 of 3 checks of synced" in torn.text
    # every unsynced write happened to reach the copy: the warning is not shown
    kept = labnote.conclusion_2(_copies(["nothing"], written_intact=[1], written_empty=[0]))
    assert kept.word == "not shown" and "not shown in 1 trials" in kept.text
    # only cache=none decides; another mode is reported beside it
    other = labnote.conclusion_2(_copies(["stop", "stop"], cache=["none", "writeback"],
                                         synced_intact=[3, 0], synced_missing=[0, 3]))
    assert other.word == "agrees" and "cache=writeback, 1 copies: 0 of 3" in other.text
    assert labnote.conclusion_2(pd.DataFrame()).word == "not shown"


def test_conclusion_3_agrees_or_is_not_shown_never_disproved() -> None:
    lost = labnote.conclusion_3(_copies(["nothing", "fsfreeze"]))
    assert lost.word == "agrees" and lost.text.startswith("of 1 copies cut from the running "
                                                          "guest, 1 lacked operations")
    whole = labnote.conclusion_3(_copies(["nothing", "nothing"], written_intact=[1, 1],
                                         written_empty=[0, 0]))
    assert whole.word == "not shown" and "not shown in 2 trials" in whole.text
    assert labnote.conclusion_3(_copies(["stop"])).word == "not shown"


@pytest.mark.parametrize("judge,cut", [(labnote.pause_alone, "stop"),
                                       (labnote.sync_then_pause, "sync_stop"),
                                       (labnote.freeze_quiesces, "fsfreeze")])
def test_kvmlab_own_questions_each_outcome(judge, cut: str) -> None:
    good = _copies([cut, cut], written_n=[0, 0], written_empty=[0, 0],
                   needs_recovery=[False, False])
    assert judge(good).word == "agrees" and "2 of 2 (95 % interval" in judge(good).text
    bad = _copies([cut, cut], synced_intact=[3, 2], synced_torn=[0, 1], written_n=[0, 0],
                  written_empty=[0, 0], needs_recovery=[False, False])
    assert judge(bad).word == "disagrees" and "1 of 2" in judge(bad).text
    assert judge(_copies(["nothing"])).word == "not shown"


def test_pausing_alone_loses_what_the_guest_only_wrote() -> None:
    # stop keeps the synced data but not the page cache: the question's answer is no,
    # while a sync before the stop keeps what was flushed
    f = labnote.pause_alone(_copies(["stop"]))
    assert f.word == "disagrees" and "0 intact, 1 empty" in f.text
    assert labnote.sync_then_pause(_copies(["sync_stop"])).word == "agrees"
    # a frozen copy with a journal to replay is not quiesced
    assert labnote.freeze_quiesces(_copies(["fsfreeze"], written_n=[0], written_empty=[0],
                                           needs_recovery=[True])).word == "disagrees"


def test_conclusion_1_each_outcome() -> None:
    def runs(e1_pass: bool, copies: pd.DataFrame) -> dict[str, CaseRun]:
        got = {"E1": _case("E1", {"verify_pass": e1_pass, "checked": 9, "bad": 0 if e1_pass
                                  else 2}, e1_pass)}
        for c in labnote.CONSISTENCY:
            got[c] = CaseRun(c, "system", Path("/nonexistent"), {"status": "done",
                                                                  "verdict": {"pass": True}})
        return got
    import unittest.mock as mock
    with mock.patch.object(labnote, "consistency_trials", return_value=_copies(["nothing"])):
        assert labnote.conclusion_1(runs(True, pd.DataFrame())).word == "agrees"
        assert labnote.conclusion_1(runs(False, pd.DataFrame())).word == "disagrees"
    unclean = _copies(["nothing"], fs_clean=[False])
    with mock.patch.object(labnote, "consistency_trials", return_value=unclean):
        f = labnote.conclusion_1(runs(True, pd.DataFrame()))
        assert f.word == "disagrees" and "0 of 1" in f.text
    with mock.patch.object(labnote, "consistency_trials", return_value=pd.DataFrame()):
        assert labnote.conclusion_1(runs(True, pd.DataFrame())).word == "not shown"


def _judge(key: str):
    return next(c for c in CLAIMS if c.key == key).judge


E2_OK = {"behaviour": "stalled", "outage": "stop", "outage_window_s": 3.0,
         "outage_stall_s": 2.9, "outage_first_progress_after_s": 0.4, "ops_during_outage": 5}


@pytest.mark.parametrize("key,runs,word", [
    ("E1", {"E1": _case("E1", {"ready": True})}, "agrees"),
    ("E1", {"E1": _case("E1", {"ready": False})}, "disagrees"),
    ("E1", {"E1": _case("E1", {"ready": True}, passed=False)}, "disagrees"),
    ("E2", {"E2 stop": _case("E2 stop", E2_OK), "E2 freeze": _case("E2 freeze", E2_OK)},
     "agrees"),
    ("E2", {"E2 stop": _case("E2 stop", {**E2_OK, "behaviour": "ran on"}),
            "E2 freeze": _case("E2 freeze", E2_OK)}, "disagrees"),
    ("E3", {"E3": _case("E3", {})}, "agrees"),
    ("E3", {"E3": _case("E3", {}, passed=False)}, "disagrees"),
    ("E4", {"E4 paused": _case("E4 paused", {}), "E4 running": _case("E4 running", {})},
     "agrees"),
    ("E4", {"E4 paused": _case("E4 paused", {}),
            "E4 running": _case("E4 running", {}, passed=False)}, "disagrees"),
    ("E5", {"E5": _case("E5", {})}, "agrees"),
    ("E5", {"E5": _case("E5", {}, passed=False)}, "disagrees"),
    ("E6", {"E6": _case("E6", {})}, "agrees"),
    ("E6", {"E6": _case("E6", {}, passed=False)}, "disagrees"),
    ("E7", {"E7": _case("E7", {"seed_claim_least_data": True})}, "agrees"),
    ("E7", {"E7": _case("E7", {"seed_claim_least_data": False})}, "disagrees"),
    ("E7b", {"E7": _case("E7", {"repeats": 5, "shallow_faster_than_full": 5})}, "agrees"),
    ("E7b", {"E7": _case("E7", {"repeats": 5, "shallow_faster_than_full": 0})}, "disagrees"),
    ("E7b", {"E7": _case("E7", {"repeats": 5, "shallow_faster_than_full": 3})}, "not shown"),
])
def test_every_seed_judge_can_come_out_either_way(key: str, runs: dict[str, CaseRun],
                                                  word: str) -> None:
    assert _judge(key)(runs).word == word


def test_e7_says_where_the_saving_comes_from() -> None:
    f = _judge("E7")({"E7": _case("E7", {
        "seed_claim_least_data": True, "repeats": 5, "shallow_bytes_copied": 4 << 20,
        "full_bytes_copied": 20 << 20, "bytes_ratio_full_over_shallow": 5.0,
        "top_bytes_copied": 4 << 20, "bytes_ratio_top_over_shallow": 1.0})})
    assert "over 5 repetitions" in f.text and "not from -n" in f.text


def test_no_judge_is_a_constant() -> None:
    """Each claim's judge is exercised above with at least two outcomes (E4b in its own
    test); a new claim without such a test fails here."""
    tested = {"E1", "E2", "E3", "E4", "E4b", "E5", "E6", "E7", "E7b", "C1", "C2", "C3",
              "Q1", "Q2", "Q3", "Q4"}     # Q4: tests/test_snapshot_methods_logic.py
    assert {c.key for c in CLAIMS} == tested
    assert [c.key for c in CLAIMS if c.own] == ["Q1", "Q2", "Q3", "Q4"]


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
    assert soup.title.get_text().startswith("Is a mirror a good snapshot of a running VM?")
    titles = [h.get_text() for h in soup.select(
        "section.summary > h2, section.claim > h2, section.question > h2")]
    assert titles[0].startswith("1. Summary") and len(titles) == 1 + len(CLAIMS)
    # the seed's claims, then kvmlab's own questions, each in a section of its kind
    assert [t.split(". ", 1)[1].split(":")[0] for t in titles[1:]] == [c.key for c in CLAIMS]
    own = soup.select("section.question")
    assert [q.h2.get_text().split(". ", 1)[1][:2] for q in own] == ["Q1", "Q2", "Q3", "Q4"]
    assert all(q.select_one(".question").get_text().startswith(
        "kvmlab's own question, not the seed's words: ") for q in own)
    assert own[0].select_one(".verdict strong").get_text() == "DOES NOT HOLD"
    # each study's chart once: the consistency runs' in C1 (their first claim), the snapshot
    # methods' in Q4 (with their tables), one per build
    figures = {s.h2.get_text().split(". ", 1)[1][:3]: [i["alt"] for i in s.select("figure img")]
               for s in soup.select("section.claim, section.question")}
    assert [a.split(": ", 1)[1][:22] for a in figures["C1:"]] == ["what copies cut from t"] * 2
    assert [a.split(": ", 1)[1][:22] for a in figures["Q4:"]] == ["what each method and q"] * 2
    assert not figures["C2:"] and not figures["Q1:"]
    header = [th.get_text() for th in soup.select("section.summary table th")]
    assert header == ["claim", "system (QEMU 7.2.22)", "10.0 (QEMU 10.0.2)"]
    summary = soup.select_one("section.summary .verdict").get_text(" ", strip=True)
    assert "of the seed's 12 claims 11 agree" in summary
    assert "kvmlab's own questions: system (QEMU 7.2.22): 4 asked, 3 hold, 1 do not hold" in summary
    # runs whose jobs ended before a sample: one line each, no empty axes
    lines = [li.get_text() for li in soup.select("section li")]
    assert any(t.startswith("E3 on system (QEMU 7.2.22): its jobs ended before the first "
                            "sample") for t in lines)


def test_only_the_claims_whose_cases_were_asked_for() -> None:
    assert labnote.asked_cases(RECORDED) == set(SEED_SUITE)
    assert labnote.claims_for(SEED_SUITE) == list(CLAIMS)
    assert [c.key for c in labnote.claims_for(["E4 running", "C2/3 none"])] == \
        ["E4", "E4b", "C1", "C2", "C3", "Q1", "Q2", "Q3"]


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
