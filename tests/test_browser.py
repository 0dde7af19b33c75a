"""The control panel in a real JupyterLab, clicked in a real headless Chromium (Debian's).

The test starts JupyterLab on localhost, opens ``00_control_panel.ipynb``, runs it, clicks
Start, waits for the progress bar to reach ready, clicks Cancel, waits for the summary and
saves a screenshot in ``data/test-artifacts/``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import qemu_pids

from kvmlab import load_run, paths

pytestmark = pytest.mark.qemu  # integration: real QEMU and the guest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "00_control_panel.ipynb"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)",
                allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def jupyterlab(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A JupyterLab server on 127.0.0.1 serving a copy of the notebook; yields (url, runs)."""
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    runs = tmp_path / "runs"
    token, port = secrets.token_hex(16), _free_port()
    env = dict(os.environ, KVMLAB_RUNS=str(runs), KVMLAB_DATA=str(paths.data_dir()),
               JUPYTER_CONFIG_DIR=str(tmp_path / "jcfg"), JUPYTER_RUNTIME_DIR=str(tmp_path / "jrt"))
    log = open(tmp_path / "jupyterlab.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
         f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
         "jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "jupyterlab.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "JupyterLab did not start"
            time.sleep(0.3)
        yield f"{base}/lab/tree/{NOTEBOOK.name}?token={token}", runs
    finally:
        # a clean server shutdown stops the kernel, whose exit stops the lab VM
        try:
            req = urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST")
            urllib.request.urlopen(req, timeout=10).close()
        except OSError:
            pass
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        log.close()


#: images in the panel that the browser shows as broken (an empty PNG)
BROKEN_IMAGES = ("() => [...document.querySelectorAll('.kvmlab-panel img')]"
                 ".filter(i => i.offsetParent !== null && i.naturalWidth === 0).length")
DASHBOARD_WIDTH = ("Math.max(0, ...[...document.querySelectorAll('.kvmlab-panel img')]"
                   ".map(i => i.naturalWidth))")


def _wait_text(page: object, selector: str, text: str, timeout: float = 60_000) -> None:
    page.wait_for_function(  # type: ignore[attr-defined]
        f"() => [...document.querySelectorAll({selector!r})]"
        f".some(e => e.textContent.includes({text!r}))", timeout=timeout)


def test_control_panel_in_jupyterlab(jupyterlab: tuple[str, Path]) -> None:
    url, runs = jupyterlab
    shots = paths.data_dir() / "test-artifacts"
    shots.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(url)
            page.wait_for_selector(".jp-Notebook", timeout=60_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator, #jp-main-statusbar",
                                   timeout=60_000)
            time.sleep(2)                                # let the kernel connect
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_text("Run All Cells", exact=True).click()
            start = page.locator("button.kvmlab-start:not([disabled])")
            start.wait_for(timeout=180_000)              # the lab VM is up and busy
            assert page.evaluate(BROKEN_IMAGES) == 0     # no broken-image icons before a plot
            page.locator("button.kvmlab-stop_vm:not([disabled])").click()   # without a job
            _wait_text(page, ".kvmlab-panel", "VM stopped")
            _wait_text(page, ".kvmlab-status", "VM paused")
            page.locator("button.kvmlab-cont_vm:not([disabled])").click()
            _wait_text(page, ".kvmlab-status", "VM running")
            assert "AssertionError" not in page.locator(".jp-Notebook").inner_text()
            page.locator("button.kvmlab-start").click()
            status = page.locator(".kvmlab-status")
            # the live plot is an interactive ipympl figure (zoom, pan) drawn in a canvas
            page.wait_for_selector(".kvmlab-panel .jupyter-matplotlib canvas", timeout=60_000)
            page.wait_for_function(
                "() => (document.querySelector('.kvmlab-status')||{}).textContent"
                "?.includes('ready')", timeout=180_000)
            # the status follows QEMU's READY event at once, the bar the next sample's
            # numbers (and once ready, a guest write shows as a sliver until it is copied):
            # the whole copy within a few refreshes (99.026% right after READY, once, in
            # [rest]; as test_widgets' panel)
            bar = page.locator(".kvmlab-progress .progress-bar")
            try:
                page.wait_for_function(
                    "() => ['100%', '100.0%'].includes((document.querySelector("
                    "'.kvmlab-progress .progress-bar')||{style: {}}).style.width)",
                    timeout=5_000)
            except playwright_api.TimeoutError:
                pytest.fail(f"the bar not full 5 s after READY: {bar.evaluate('el => el.style.width')}")
            page.locator("button.kvmlab-cancel:not([disabled])").click()
            summary = page.locator(".kvmlab-summary")
            page.wait_for_function(
                "() => (document.querySelector('.kvmlab-summary')||{}).textContent"
                "?.includes('run saved')", timeout=120_000)
            text = summary.inner_text()
            assert "BLOCK_JOB_COMPLETED" in text and "time_to_ready_s" in text
            assert "point-in-time copy" in text               # what a cancel after READY left
            page.wait_for_function(f"() => {DASHBOARD_WIDTH} >= 1000", timeout=30_000)  # 100 dpi
            assert "MiB/s" in text                            # numbers with units
            page.locator(".kvmlab-panel").scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "control_panel.png"), full_page=True)
            page.locator("button.kvmlab-start:not([disabled])").click()     # a second job
            _wait_text(page, ".kvmlab-panel", "started; recording to")
            page.locator("button.kvmlab-cancel:not([disabled])").click()
            _wait_text(page, ".kvmlab-summary", "run saved")
            assert "BLOCK_JOB_COMPLETED" in status.inner_text() or "run saved" in status.inner_text()
            vms = qemu_pids()
            assert len(vms) == 1, vms
            page.get_by_role("menuitem", name="Run", exact=True).click()   # run it all again
            page.get_by_text("Run All Cells", exact=True).click()
            deadline = time.monotonic() + 60                # the first panel's VM goes
            while vms & qemu_pids():
                assert time.monotonic() < deadline, "the first panel's VM is still running"
                time.sleep(0.5)
            page.locator("button.kvmlab-start:not([disabled])").wait_for(timeout=180_000)
            assert len(qemu_pids()) == 1 and not (vms & qemu_pids())   # replaced, not leaked
        finally:
            browser.close()
    run_dirs = sorted(p for p in runs.iterdir() if (p / "run.json").exists())
    assert len(run_dirs) == 2
    run_dir = run_dirs[0]
    run = load_run(run_dir)
    assert run.meta["status"] == "done" and "ready" in set(run.samples["status"])
    assert (run_dir / "dashboard.png").exists()
    assert json.loads((run_dir / "run.json").read_text())["verdict"]["job_end"] == \
        "BLOCK_JOB_COMPLETED"


def test_make_lab_serves_the_notebooks(tmp_path: Path) -> None:
    """README's first step: `make lab` (as root: --allow-root) serves notebooks/."""
    root = Path(__file__).resolve().parent.parent
    token, port = secrets.token_hex(8), _free_port()
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "jcfg"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "jrt"))
    proc = subprocess.Popen(["make", "-s", "lab", f"LAB_ARGS=--port={port} "
                             f"--IdentityProvider.token={token}"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                url = f"http://127.0.0.1:{port}/api/contents?token={token}"
                with urllib.request.urlopen(url, timeout=2) as r:
                    names = {c["name"] for c in json.load(r)["content"]}
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "make lab did not serve"
            time.sleep(0.5)
        assert {"00_control_panel.ipynb", "01_mirror_basic.ipynb"} <= names
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
