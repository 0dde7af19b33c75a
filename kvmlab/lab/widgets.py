"""The notebook control panel (ipywidgets 8): start and steer a mirror, watch it live.

``MirrorPanel.lab()`` opens the panel on a lab VM that kvmlab starts;
``MirrorPanel.libvirt(uri, domain)`` on an existing libvirt domain; or build
the panel empty and use its connect row.  ``MirrorPanels.lab(data_disks=2)`` opens
one panel per disk of one VM, side by side, each with its own job and run.  Display only: every action goes to
a :class:`kvmlab.lab.session.Session`, which records each job in
``data/runs/<run-id>/`` on its own threads.  The live view refreshes from a
background thread (the kernel stays free for other cells) every
*refresh* seconds, and a failing refresh is counted and shown, never allowed
to touch the recording.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as w
from matplotlib.figure import Figure

from kvmlab import analysis, plots
from kvmlab.analysis import causes
from kvmlab.analysis.converge import Outlook, Predictor
from kvmlab.errors import BadInput, KvmlabError
from kvmlab.lab.session import Finished, Session
from kvmlab.model import MIRROR_MODES, SYNC_MODES, MirrorSpec
from kvmlab.store.runs import RunData
from kvmlab.units import MIB, with_unit

log = logging.getLogger(__name__)
SIZES = [("QEMU default", 0), ("64 KiB", 64 << 10), ("256 KiB", 256 << 10),
         ("1 MiB", 1 << 20), ("8 MiB", 8 << 20)]


#: the speed slider's stops: 8 MiB/s in the middle, no limit at the right end
SPEEDS = [(f"{v:g} MiB/s", int(v * MIB)) for v in (0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128,
                                                    256)] + [("unlimited", 0)]
#: what the panel says after Stop VM / Continue VM (and the other plain actions)
SAID = {"stop_vm": "VM stopped (HMP stop): the guest's vCPUs are paused",
        "cont_vm": "VM continues (HMP cont)",
        "active_mode": "switched to write-blocking (active mode): guest writes now reach the "
                       "target before they complete"}


def _show_image(image: w.Image, png: bytes) -> None:
    """Set an image widget, hidden while empty (no broken-image icon before a plot)."""
    image.value = png
    image.layout.display = None if png else "none"


class LivePlot:
    """The panel's live plot of remaining bytes (stalls shaded, events marked).

    With ipympl (Jupyter's widget backend for matplotlib) it is an interactive figure: zoom
    into a stall or pan while the job runs, and the view chosen is kept across refreshes
    (the home button returns to the whole run).  Each refresh redraws the axes and asks
    the browser to fetch the new image; the kernel renders only what the browser asks for.
    Without ipympl (or with ``interactive=False``) it is a 100-dpi PNG image.
    """

    def __init__(self, interactive: bool | None = None) -> None:
        self.fig = Figure(figsize=(8, 3.6))
        self._lock = threading.Lock()
        self.ax, self.lane = self.fig.subplots(2, 1, sharex=True,
                                               gridspec_kw={"height_ratios": [3, 1]})
        self.fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.13, hspace=0.1)
        self._auto: tuple[tuple[float, float], tuple[float, float]] | None = None
        self.canvas: Any = None
        if interactive is not False:
            try:
                from ipympl.backend_nbagg import Canvas, FigureManager
            except ImportError:
                if interactive:
                    raise
            else:
                self.canvas = Canvas(self.fig)
                render = self.canvas.draw           # the browser's requests render here:
                self.canvas.draw = lambda: self._locked(render)   # never mid-refresh
                self.canvas.header_visible = False
                self.canvas.toolbar_position = "left"
                self.canvas.layout = w.Layout(width="820px", display="none")
                FigureManager(self.canvas, 0)
        self.interactive = self.canvas is not None
        self.widget: w.DOMWidget = self.canvas if self.canvas is not None else \
            w.Image(format="png", layout=w.Layout(width="800px", display="none"))

    @property
    def zoomed(self) -> bool:
        """The user moved the view away from where the last refresh put it."""
        return self._auto is not None and (self.ax.get_xlim(), self.ax.get_ylim()) != self._auto

    def _locked(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            return fn()

    def draw(self, samples: Any, events: Any, trace: Any = None,
             job: str | None = None) -> None:
        """Redraw with *samples*, *events* and QEMU's *trace* (hold-ups coloured by cause,
        a lane of requests in flight and throttle sleeps), keeping a view the user zoomed
        to."""
        self._locked(lambda: self._redraw(samples, events, trace, job))
        if self.canvas is not None:
            self.canvas.layout.display = None
            self.canvas.draw_idle()
        else:
            _show_image(self.widget, self._locked(lambda: plots.png(self.fig)))

    def _redraw(self, samples: Any, events: Any, trace: Any = None,
                job: str | None = None) -> None:
        view = (self.ax.get_xlim(), self.ax.get_ylim()) if self.zoomed else None
        self.ax.clear()
        self.lane.clear()
        held = None
        if trace is not None and len(trace):
            held = causes.classify(RunData(Path("."), {}, {"samples": samples, "events": events,
                                                           "trace": trace}))
        plots.convergence(samples, events, ax=self.ax, xlabel=False, held=held, job=job)
        plots.in_flight_lane(trace, events, ax=self.lane)
        self._auto = (self.ax.get_xlim(), self.ax.get_ylim())
        if view is not None:
            self.ax.set_xlim(view[0])
            self.ax.set_ylim(view[1])

    @property
    def value(self) -> bytes:
        """The plot as PNG (what the image shows; a render of the figure when interactive)."""
        if self.canvas is None:
            return bytes(self.widget.value)
        return self._locked(lambda: plots.png(self.fig)) if self._auto is not None else b""

    def close(self) -> None:
        if self.canvas is not None:
            self.canvas.close()


class MirrorPanel(w.VBox):
    """The panel.  ``display(panel)`` shows it; :meth:`close` stops what it started."""

    BUTTONS = (("start", "Start", "play", "success"), ("pause", "Pause", "pause", ""),
               ("resume", "Resume", "play", ""), ("cancel", "Cancel", "stop", "warning"),
               ("complete", "Complete (pivot)", "exchange", "info"),
               ("active_mode", "Active mode", "bolt", "danger"),
               ("stop_vm", "Stop VM", "pause-circle", ""),
               ("cont_vm", "Continue VM", "play-circle", ""))

    #: the panel (or row of panels) open in this kernel: running its cell again replaces
    #: it (and closes its VM) instead of leaving a second VM running
    current: MirrorPanel | MirrorPanels | None = None

    def __init__(self, session: Session | None = None, *, refresh: float = 0.4,
                 lab_options: dict[str, Any] | None = None,
                 interactive: bool | None = None, replace: bool = True) -> None:
        """:param replace: close the panel open before in this kernel, and become the
            current one (a row of panels manages that for the panels it holds)."""
        if replace:
            MirrorPanel.close_current()
        self.session = session
        self._predictor = Predictor()
        #: the convergence predictor's latest answer for the running job
        self.outlook: Outlook | None = None
        self._last_outcome: str | None = None      #: how the last job ended
        self.interactive = interactive
        self.refresh = refresh
        self.lab_options = dict(lab_options or {})
        self.display_errors = 0
        self.last_display_error = ""
        self.updates = 0
        self.update_times: list[float] = []
        self.plot_times: list[float] = []
        self._threads: list[threading.Thread] = []
        self._plotted = -1
        self._stop = threading.Event()
        self._shown_finish: Finished | None = None
        self._build()
        super().__init__([self.connect_row, self.form, self.button_row, self.message,
                          self.live_box, self.result_box],
                         layout=w.Layout(width="100%"))
        self.add_class("kvmlab-panel")
        if session is not None:
            self._attach(session)
        self._start_refresh()
        if replace:
            MirrorPanel.current = self

    @classmethod
    def close_current(cls) -> None:
        """Close the panel opened before in this kernel (its job's run is saved, its lab
        VM stopped)."""
        old, cls.current = cls.current, None
        if old is not None:
            old._say("closed: a new panel replaced this one", error=True)
            old.close()

    # -- construction --------------------------------------------------------------------
    @classmethod
    def lab(cls, **kw: Any) -> MirrorPanel:
        """Launch a lab VM (see :meth:`Session.lab` for the options) and open the panel."""
        cls.close_current()                        # before a second VM is launched
        refresh = kw.pop("refresh", 0.4)
        interactive = kw.pop("interactive", None)
        return cls(Session.lab(**kw), refresh=refresh, interactive=interactive)

    @classmethod
    def libvirt(cls, uri: str, domain: str, drive: str = "vda", **kw: Any) -> MirrorPanel:
        refresh = kw.pop("refresh", 0.4)
        return cls(Session.libvirt(uri, domain, drive, **kw), refresh=refresh)

    def _build(self) -> None:
        style = {"description_width": "110px"}
        wide = w.Layout(width="420px")
        self.backend = w.ToggleButtons(options=[("lab VM", "lab"), ("libvirt", "libvirt")],
                                       description="backend", style=style)
        self.uri = w.Text(value="qemu:///system", description="libvirt URI", style=style)
        self.domain = w.Text(description="domain", style=style, placeholder="name or UUID")
        self.connect = w.Button(description="Connect", icon="plug")
        self.connect.on_click(lambda _b: self._act(self._connect))
        self.connect_row = w.HBox([self.backend, self.uri, self.domain, self.connect])
        self.drive = w.Combobox(description="drive", style=style, ensure_option=False,
                                placeholder="drive0, data1...")
        self.target = w.Text(description="target", style=style, layout=wide)
        self.format = w.Dropdown(options=[("qcow2", "qcow2"), ("raw", "raw"),
                                          ("same as source", "")], description="format",
                                 style=style)
        self.sync = w.Dropdown(options=list(SYNC_MODES), description="sync", style=style)
        self.mode = w.Dropdown(options=list(MIRROR_MODES), description="mode", style=style)
        self.speed = w.SelectionSlider(options=SPEEDS, value=8 * MIB, description="speed",
                                       style=style, continuous_update=False, layout=wide)
        self.speed.observe(self._speed_changed, names="value")
        self.granularity = w.Dropdown(options=SIZES, description="granularity", style=style)
        self.buf_size = w.Dropdown(options=SIZES, description="buf-size", style=style)
        self.form = w.VBox([w.HBox([self.drive, self.target]),
                            w.HBox([self.format, self.sync, self.mode]),
                            w.HBox([self.speed, w.HTML("<small>changes apply to a running "
                                                       "job</small>")]),
                            w.HBox([self.granularity, self.buf_size])])
        self.buttons: dict[str, w.Button] = {}
        for key, label, icon, style_name in self.BUTTONS:
            b = w.Button(description=label, icon=icon, button_style=style_name,
                         disabled=True, layout=w.Layout(width="auto"))
            b.add_class(f"kvmlab-{key}")
            b.on_click(lambda _b, k=key: self._act(lambda: self._do(k)))
            self.buttons[key] = b
        self.button_row = w.HBox(list(self.buttons.values()))
        self.message = w.HTML()
        self.progress = w.FloatProgress(value=0, min=0, max=1, description="copied",
                                        bar_style="info", layout=w.Layout(width="60%"))
        self.progress.add_class("kvmlab-progress")
        self.numbers = w.HTML()
        self.numbers.add_class("kvmlab-numbers")
        self.status = w.HTML("status: no job")
        self.status.add_class("kvmlab-status")
        self.log_view = w.HTML()
        self.plot = LivePlot(self.interactive)
        self.live_box = w.VBox([w.HBox([self.progress, self.status]), self.numbers,
                                self.plot.widget,
                                w.HTML("<b>events</b>"), self.log_view])
        self.summary = w.HTML()
        self.summary.add_class("kvmlab-summary")
        self.dashboard = w.Image(format="png", layout=w.Layout(width="800px", display="none"))
        self.result_box = w.VBox([self.summary, self.dashboard])

    def _attach(self, session: Session) -> None:
        self.session = session
        session.on_finish.append(self._on_finish)
        self.drive.options = tuple(session.drives)    # a VM with data disks: any of them
        self.drive.value = session.drive
        self.target.value = str(session.default_target(self.format.value or None))
        self.connect_row.layout.display = "none"
        self._predictor = Predictor()
        self.buttons["active_mode"].tooltip = (
            "switch the running mirror to write-blocking (block-job-change)"
            if session.can_change else f"QEMU {session.qemu_version} cannot switch a running "
            "job (block-job-change came in QEMU 8.2)")
        self._say(f"connected: {html.escape(session.label)} ({session.backend.name}), "
                  f"drive {html.escape(session.drive)}" + (
                      f" (disks: {html.escape(', '.join(session.drives))})"
                      if len(session.drives) > 1 else ""))

    # -- actions -------------------------------------------------------------------------
    def _act(self, fn: Callable[[], None]) -> None:
        """Run a button's action; kvmlab errors become the one-line message."""
        try:
            fn()
        except KvmlabError as err:
            self._say(str(err), error=True)
        self._update_buttons()

    def _say(self, text: str, error: bool = False) -> None:
        color = "#b00020" if error else "#333"
        self.message.value = f"<span style='color:{color}'>{html.escape(text)}</span>"

    def _connect(self) -> None:
        if self.backend.value == "lab":
            self._say("launching a lab VM ...")
            self._attach(Session.lab(**self.lab_options))
        else:
            self._attach(Session.libvirt(self.uri.value.strip(), self.domain.value.strip()))

    def spec(self) -> MirrorSpec:
        """The mirror the form describes (BadInput if it is not valid)."""
        return MirrorSpec(self.drive.value.strip(), self.target.value.strip(),
                          self.format.value or None,
                          sync=self.sync.value, mode=self.mode.value,
                          speed=int(self.speed.value),
                          granularity=self.granularity.value or None,
                          buf_size=self.buf_size.value or None)

    def _do(self, key: str) -> None:
        s = self._require_session()
        if key == "start":
            job = s.start(self.spec())
            self._shown_finish = None
            self.summary.value = ""
            _show_image(self.dashboard, b"")
            self._predictor = Predictor()
            self._say(f"job {job.id} started; recording to {s.run.path if s.run else '?'}")
        else:
            getattr(s, key)()
            self._say(SAID.get(key, f"{key.replace('_', ' ')} sent"))

    def _require_session(self) -> Session:
        if self.session is None:
            raise KvmlabError("connect to a VM first")
        return self.session

    def _speed_changed(self, change: dict[str, Any]) -> None:
        s = self.session
        if s is not None and s.active:
            self._act(lambda: s.set_speed(int(change["new"])))

    def click(self, key: str) -> None:
        """Press a button from Python (as a user would; disabled buttons do nothing)."""
        b = self.buttons[key]
        if not b.disabled:
            b.click()

    # -- live view -----------------------------------------------------------------------
    def _start_refresh(self) -> None:
        self._threads = [
            threading.Thread(target=self._every, args=(self.refresh, self.update,
                                                       self.update_times),
                             name="kvmlab-panel", daemon=True),
            threading.Thread(target=self._every, args=(max(self.refresh, 0.45),
                                                       self.update_plot, self.plot_times),
                             name="kvmlab-panel-plot", daemon=True)]
        for t in self._threads:
            t.start()

    def _every(self, period: float, fn: Callable[[], None], times: list[float]) -> None:
        """Call *fn* at a fixed rate: ticks are due every *period* s from the start, so
        the time *fn* takes does not stretch the period (a late tick is skipped).  A
        failing call is counted and shown, never raised: display is best effort."""
        t0 = time.monotonic()
        k = 0
        while True:
            k += 1
            left = t0 + k * period - time.monotonic()
            if left < 0:
                k = int((time.monotonic() - t0) / period) + 1
                left = t0 + k * period - time.monotonic()
            if self._stop.wait(max(left, 0)):
                return
            try:
                fn()
            except Exception as err:  # noqa: BLE001 - display is best effort
                self.display_errors += 1
                self.last_display_error = f"{type(err).__name__}: {err}"
                log.debug("panel refresh failed", exc_info=True)
            times.append(time.monotonic())
            del times[:-200]

    def _update_buttons(self, allowed: set[str] | None = None) -> None:
        s = self.session
        try:
            allowed = allowed if allowed is not None else (s.allowed() if s else set())
        except KvmlabError:
            allowed = set()
        for key, b in self.buttons.items():
            b.disabled = key not in allowed

    def update(self) -> None:
        """One refresh of the live view (the refresh thread calls this)."""
        s = self.session
        if s is None:
            return
        info = s.info()
        vm_state = s.backend.run_state()
        self._update_buttons(s.allowed(info, vm_state))
        if info is not None:
            frac = info.offset / info.len if info.len else 0.0
            self.progress.value = frac
            self.progress.bar_style = "success" if info.ready else \
                "warning" if info.paused else "info"
            self.status.value = (f"status: <b>{info.status}</b> io-status: {info.io_status} "
                                 f"| VM {vm_state} | QEMU {s.qemu_version}")
        elif self._shown_finish is None:
            # the last job's end stays said (the refresh used to wipe it within 0.4 s)
            last = f" (last: <b>{self._last_outcome}</b>, run saved)" if self._last_outcome else ""
            self.status.value = (f"status: no job{last} | VM {vm_state} | "
                                 f"QEMU {s.qemu_version}")
        rec = s.recorder
        if rec is not None and (s.active or self._shown_finish is None):
            frames = rec.live_frames()
            samples, events = frames["samples"], frames["events"]
            self._numbers(info, samples)
            self._events(events, self._job())
        fin = s.finished
        if fin is not None and fin is not self._shown_finish:
            self._show_finish(fin)
        self.updates += 1
        if self.display_errors:
            self.status.value += (f" <small>(display errors: {self.display_errors}; "
                                  "recording unaffected)</small>")

    def update_plot(self) -> None:
        """Redraw the live plot of remaining bytes (stalls shaded) if new samples came."""
        s = self.session
        rec = s.recorder if s is not None else None
        if rec is None or s is None or not s.active:
            return
        frames = rec.live_frames()
        samples, events = frames["samples"], frames["events"]
        if len(samples) < 2 or len(samples) == self._plotted:
            return
        self._plotted = len(samples)
        self.plot.draw(samples, events, frames.get("trace"), self._job())

    def _job(self) -> str | None:
        """The session's job id: a VM may run other jobs beside it, which this panel's
        numbers, plot and events leave out."""
        s = self.session
        return s.job.id if s is not None and s.job is not None else None

    def _numbers(self, info: Any, samples: Any) -> None:
        r = analysis.rates(samples, self._job(), 2.0) if len(samples) >= 2 else None
        copy = float(r["copy_rate"].iloc[-1]) if r is not None and len(r) else 0.0
        dirty = float(r["dirty_rate"].iloc[-1]) if r is not None and len(r) else 0.0
        if info is None:
            return
        job = self.session.job if self.session is not None else None
        out = self._predictor.add(time.monotonic(), info.offset, info.len, ready=info.ready,
                                  paused=info.paused, status=info.status,
                                  speed=info.speed, active=job is not None and job.active)
        self.outlook = out
        self.numbers.value = (
            f"offset {info.offset / MIB:.1f} / len {info.len / MIB:.1f} MiB &nbsp;|&nbsp; "
            f"remaining <b>{info.remaining / MIB:.2f} MiB</b> &nbsp;|&nbsp; "
            f"copy {copy / MIB:.2f} MiB/s &nbsp;|&nbsp; dirtying {dirty / MIB:.2f} MiB/s "
            f"&nbsp;|&nbsp; limit {plots.fmt_rate(info.speed) if info.speed else 'none'}"
            f"<br><span class='kvmlab-outlook'>{html.escape(out.text())}</span>")

    def _events(self, events: Any, job: str | None = None) -> None:
        ev = events[events["source"] != "guest"]
        if job is not None:                         # the VM's events and this job's
            ev = ev[ev["job"].isna() | (ev["job"] == job)]
        ev = ev.tail(12)
        lines = [f"{row.t:8.2f}s {row.source:7s} {row.name} {_text(row.job)} {_text(row.status)}"
                 for row in ev.itertuples()]
        self.log_view.value = "<pre style='font-size:11px;margin:0'>" + \
            html.escape("\n".join(lines)) + "</pre>"

    def _on_finish(self, fin: Finished) -> None:
        """Called by the session's watcher when a run is saved: draw the dashboard."""
        import matplotlib.pyplot as plt
        fig = plots.dashboard(fin.data, job=fin.job)
        try:
            self._dashboard_png = plots.png(fig)
            plots.save_png(fig, fin.run_path / "dashboard.png")
        finally:
            plt.close(fig)

    def _show_finish(self, fin: Finished) -> None:
        """The finished run in the panel.  The summary is written last: whoever sees it
        (a user, a test polling from another thread) sees the dashboard and the next
        target already in place."""
        self._shown_finish = fin
        png = getattr(self, "_dashboard_png", None)
        if png:
            _show_image(self.dashboard, png)
        if self.session is not None:                # the next Start needs a new file
            self.target.value = str(self.session.default_target(self.format.value or None))
        self.progress.bar_style = "success" if not fin.error else "danger"
        self._last_outcome = fin.outcome
        self.status.value = f"status: <b>{fin.outcome}</b> (run saved)"
        keys = ("time_to_ready_s", "bytes_copied", "mean_copy_rate", "convergence",
                "stall_count", "stall_time_s", "jobs", "samples")
        rows = "".join(f"<tr><td>{k}</td><td>{html.escape(with_unit(k, fin.summary.get(k)))}"
                       "</td></tr>" for k in keys if k in fin.summary)
        self.summary.value = (
            f"<h4>Summary: job {html.escape(fin.outcome)}"
            f"{' (' + html.escape(fin.error) + ')' if fin.error else ''}</h4>"
            f"<p class='kvmlab-meaning'>{html.escape(fin.meaning)}</p>"
            f"<p>run saved to <code>{html.escape(str(fin.run_path))}</code></p>"
            f"<table>{rows}</table>")

    # -- teardown ------------------------------------------------------------------------
    def close(self) -> None:
        """Stop refreshing, close the session (saves a running job's run), close widgets."""
        self._stop.set()
        for t in self._threads:
            t.join(5)
        if self.session is not None:
            self.session.close()
        if MirrorPanel.current is self:
            MirrorPanel.current = None
        self.plot.close()
        super().close()



class MirrorPanels(w.VBox):
    """One :class:`MirrorPanel` per disk of one VM, side by side: a job on every disk at
    once, each started, steered and recorded on its own (its own run folder and summary;
    :meth:`Session.beside`).  ``display(panels)``; :meth:`close` stops what they started."""

    def __init__(self, session: Session, drives: Sequence[str] | None = None, *,
                 refresh: float = 0.4, interactive: bool | None = None) -> None:
        drives = list(drives) if drives is not None else list(session.drives)
        unknown = [d for d in drives if d not in session.drives]
        if not drives or unknown or len(set(drives)) != len(drives):
            raise BadInput(f"one panel per disk of this VM ({', '.join(session.drives)}), "
                           f"not {', '.join(drives) or 'none'}")
        MirrorPanel.close_current()
        self.session = session
        first, rest = drives[0], drives[1:]
        session.drive = first
        sessions = [session] + [session.beside(d) for d in rest]
        self.panels = [MirrorPanel(s, refresh=refresh, interactive=interactive,
                                   replace=False) for s in sessions]
        for p, d in zip(self.panels, drives, strict=True):
            p.drive.options = (d,)              # each panel keeps to its own disk
            p.drive.value = d
            p.drive.disabled = True
            p.layout = w.Layout(width=f"{100 // len(drives)}%", min_width="560px",
                                border="1px solid #ddd", padding="4px")
        super().__init__([w.HTML(f"<b>{html.escape(session.label)}</b>: one job per disk "
                                 f"({html.escape(', '.join(drives))})"),
                          w.HBox(self.panels, layout=w.Layout(overflow="auto",
                                                              width="100%"))])
        self.add_class("kvmlab-panels")
        MirrorPanel.current = self

    @classmethod
    def lab(cls, *, data_disks: int = 1, **kw: Any) -> MirrorPanels:
        """Launch a lab VM with *data_disks* data disks (see :meth:`Session.lab`) and open
        a panel for each of its disks."""
        MirrorPanel.close_current()                # before a second VM is launched
        refresh = kw.pop("refresh", 0.4)
        interactive = kw.pop("interactive", None)
        session = Session.lab(data_disks=data_disks, **kw)
        try:
            return cls(session, refresh=refresh, interactive=interactive)
        except BaseException:
            session.close()                        # its VM and scratch go with it
            raise

    def __getitem__(self, drive: str) -> MirrorPanel:
        """The panel of *drive*."""
        for p in self.panels:
            if p.session is not None and p.session.drive == drive:
                return p
        raise KeyError(drive)

    def close(self) -> None:
        """Close every panel (each saves its running job's run), the others before the one
        that owns the VM, which then stops it.  (A row refused in its constructor, before it
        had panels, is closed too when ipywidgets collects it.)"""
        for p in reversed(getattr(self, "panels", [])):
            p.close()
        if MirrorPanel.current is self:
            MirrorPanel.current = None
        super().close()


def _text(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and v != v) else str(v)
