"""``kvmlab seed``: the seed's suite on both QEMU builds with real QEMU (TCG), real guests
and a real NFS server, then the lab note read back (HTML parsed, PDF through poppler)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bs4 import BeautifulSoup
from conftest import qemu_pids

from kvmlab.faults.nfs import lock_path
from kvmlab.lab.suites import SEED_SUITE
from kvmlab.qemu import builds
from kvmlab.report import labnote

# integration: real QEMU and the guest; a test that runs E2 needs the host's one NFS server
# (marked to share its worker)
pytestmark = pytest.mark.qemu

KVMLAB = [sys.executable, "-m", "kvmlab"]


def _lock_is_free() -> bool:
    import fcntl
    if not lock_path().exists():
        return True
    fd = os.open(lock_path(), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@pytest.mark.long(1.5)
@pytest.mark.skipif("10.0" not in builds.names(), reason="make qemu-builds installs 10.0")
def test_seed_on_two_builds_writes_the_lab_note(tmp_path: Path) -> None:
    out = tmp_path / "seed"
    # a case for each way the note shows a claim: a copy with its dashboard (E1), a pivot
    # and its display (E4, E4b: a claim the seed's build saw otherwise).  Each other case
    # (E6, the consistency study, the snapshot methods...) runs in its own experiment's test,
    # and every claim's judge and kvmlab's own questions (Q4 with a table and a chart per
    # build) are read on recorded runs of the whole suite on both builds in the pure tier
    # (tests/test_labnote.py).
    cases = ["E1", "E4 paused", "E4 running"]
    assert set(cases) <= set(SEED_SUITE)
    asked = labnote.claims_for(cases)
    res = subprocess.run([*KVMLAB, "seed", "--qemu", "system,10.0", "--workers", "2",
                          "--size", "small", "--accel", "tcg", "--out", str(out),
                          "--only", ",".join(cases), "--pdf", str(tmp_path / "note.pdf")],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    # it talks: what it runs, then a verdict per build
    n_seed = len([c for c in asked if not c.own])
    assert "kvmlab seed: 6 runs (3 cases on system (QEMU 7.2" in res.stderr
    assert "QEMU 10.0: " in res.stderr and f"of the seed's {n_seed} claims agree" in res.stderr
    assert "kvmlab's own questions" not in res.stderr        # none asked
    assert f"lab note: {out / 'labnote.html'}" in res.stdout
    points = [json.loads(p.read_text()) for p in out.glob("points/*/point.json")]
    assert len(points) == 6 and all(p["status"] == "done" for p in points)

    soup = BeautifulSoup((out / "labnote.html").read_text(), "html.parser")
    assert not soup.select(".jp-InputArea, .input_area, pre code")       # no code
    claims = soup.select("section.claim")
    assert len(claims) == n_seed
    assert not [c for c in asked if c.own] and not soup.select("section.question")
    by_key = {c.h2.get_text().split(". ", 1)[1].split(":")[0]: c for c in claims}
    assert set(by_key) == {c.key for c in asked if not c.own}
    for key, sec in by_key.items():
        verdict = sec.select_one(".verdict").get_text(" ", strip=True)
        assert "On system (QEMU 7.2" in verdict and "On 10.0 (QEMU 10.0" in verdict, key
        assert "not measured" not in verdict, (key, verdict)
        assert sec.select_one(".question").get_text().startswith("The seed: ")
    badge = {k: s.select_one(".verdict strong").get_text() for k, s in by_key.items()}
    # what both builds did, as measured on these machines (see README, "The seed, reproduced")
    for key in ("E1", "E4"):
        assert badge[key] == "AGREES", (key, badge[key])
    # the seed saw 'info block' name the original image; 7.2 and 10.0 name the mirror the
    # writes went to: a display of the seed's own build, not reproduced (not a failure)
    assert badge["E4b"] == "NOT REPRODUCED"
    assert "names 'drive0 (#block): x-mirror.img (qcow2)'" in \
        by_key["E4b"].select_one(".verdict").get_text()
    # every run's dashboard, or one line for a run whose jobs ended before the first sample
    imgs = soup.select("section.claim figure img")
    assert imgs and all(i["src"].startswith("data:image/png;base64,") for i in imgs)
    no_samples = [li for li in soup.select("section.claim li")
                  if "ended before the first sample" in li.get_text()]
    assert len(imgs) + len(no_samples) == 2 * 3
    summary = soup.select_one("section.summary table").get_text(" ")
    assert "E4b" in summary and "not reproduced" in summary

    text = subprocess.run(["pdftotext", str(tmp_path / "note.pdf"), "-"], capture_output=True,
                          text=True, check=True).stdout
    text = " ".join(text.split())               # the PDF's lines wrap where its layout does
    assert "Is a mirror a good snapshot of a running VM?" in text and "E4b: after complete" in text


@pytest.mark.nfs
def test_seed_interrupted_stops_every_run_and_resumes(tmp_path: Path) -> None:
    """Ctrl-C mid-suite: one line, exit 130, no QEMU or NFS server left (the autouse
    fixture checks QEMU and temp dirs), the NFS lock free; the same command resumes."""
    out = tmp_path / "seed"
    cmd = [*KVMLAB, "seed", "--only", "E2 stop,E1", "--workers", "2", "--size", "small",
           "--accel", "tcg", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(out.glob("points/*/*/run.json")):
        time.sleep(0.2)
    assert list(out.glob("points/*/*/run.json")), "no run started"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == ("kvmlab: interrupted; finished runs are kept, run "
                                            "the same command with --out to resume")
    assert not qemu_pids(("ganesha.nfsd",))      # this session's: its workers' are its own
    assert _lock_is_free()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len([p for p in out.glob("points/*/point.json")
                if json.loads(p.read_text())["status"] == "done"]) == 2
