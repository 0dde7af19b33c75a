"""Direct QMP backend, on qemu.qmp's asyncio client run in a private loop thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener, QMPError, Runstate
from qemu.qmp.qmp_client import ExecuteError

from kvmlab._aio import LoopThread
from kvmlab.backends.base import JobsCallback
from kvmlab.backends.qmp_client import JobSampler, LazyLogQMPClient
from kvmlab.errors import BackendError, ConnectionLost, LaunchError, StateError
from kvmlab.events import Record, RecordLog
from kvmlab.model import DriveInfo, JobInfo, MirrorSpec

log = logging.getLogger(__name__)


class QMPBackend:
    """A QMP connection to one QEMU.

    Either :meth:`listen` on a socket QEMU will connect to (the embedded lab,
    as QEMUMachine does, so there is no connect race), or :meth:`connect` to
    the QMP socket of a QEMU someone else started.
    """

    name = "qmp"

    def __init__(self) -> None:
        self._aio = LoopThread("kvmlab-qmp")
        self._qmp = LazyLogQMPClient("kvmlab")
        self._listener = EventListener()
        self._qmp.register_listener(self._listener)
        self._pump: concurrent.futures.Future[Any] | None = None
        self.events = RecordLog()
        self._closed = False
        #: asked (off the loop thread) why the connection was lost: the launcher's answer,
        #: e.g. "QEMU exited: killed by signal 9"; waits on :attr:`events` then fail with it
        self.lost_reason: Callable[[], str | None] | None = None

    # -- connection ---------------------------------------------------------------
    @classmethod
    def listen(cls, socket_path: Path) -> QMPBackend:
        """Bind *socket_path* and return; call :meth:`accept` after starting QEMU."""
        be = cls()
        try:
            be._aio.run(be._qmp.start_server(str(socket_path)), timeout=10)
        except BaseException:
            be.close()
            raise
        return be

    def accept(self, timeout: float, abort: Callable[[], str | None]) -> None:
        """Wait for QEMU to connect; give up early when *abort* returns a reason."""
        fut = self._aio.spawn(self._qmp.accept())
        deadline = time.monotonic() + timeout
        while True:
            try:
                fut.result(0.1)
                break
            except concurrent.futures.TimeoutError:
                why = abort()
                if why or time.monotonic() > deadline:
                    fut.cancel()
                    raise LaunchError(f"QMP connection not made: {why or 'timed out'}") from None
            except QMPError as err:
                raise LaunchError(f"QMP handshake failed: {err}") from err
        self._start_pump()

    @classmethod
    def connect(cls, socket_path: str | Path, timeout: float = 10) -> QMPBackend:
        """Connect to an existing QEMU's QMP socket."""
        be = cls()
        try:
            be._aio.run(be._qmp.connect(str(socket_path)), timeout=timeout)
        except (QMPError, OSError) as err:
            be.close()
            raise BackendError(f"cannot connect to QMP at {socket_path}: {err}") from err
        except BaseException:
            be.close()
            raise
        be._start_pump()
        return be

    def _start_pump(self) -> None:
        async def pump() -> None:
            async for msg in self._listener:
                ev: dict[str, Any] = dict(msg)
                ts = ev.get("timestamp") or {}
                src = ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6 if ts else None
                self.events.append(Record(str(ev["event"]), dict(ev.get("data", {})),
                                          source=src))

        async def watch() -> None:
            """A lost connection ends every wait at once, with the cause."""
            while self._qmp.runstate == Runstate.RUNNING:
                await self._qmp.runstate_changed()
            if self._closed:
                return
            why = None
            if self.lost_reason is not None:
                why = await asyncio.get_running_loop().run_in_executor(None, self.lost_reason)
            self.events.close(lost=why or "QMP connection lost")

        self._pump = self._aio.spawn(pump())
        self._watch = self._aio.spawn(watch())

    def close(self) -> None:
        """Disconnect and stop the loop thread.  Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._aio.alive:
                self._aio.run(self._qmp.disconnect(), timeout=5)
        except Exception:  # noqa: BLE001 - QEMU may already be gone
            log.debug("QMP disconnect failed", exc_info=True)
        self._aio.close()
        self.events.close()

    # -- commands -----------------------------------------------------------------
    def execute(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 60) -> Any:
        """Run one QMP command; QMP errors become BackendError (one line), a monitor gone
        ConnectionLost (saying how QEMU died, when it did)."""
        if self._closed:
            raise StateError(f"QMP connection closed; cannot run {cmd}")
        try:
            run = self._qmp.execute_short(cmd) if args is None else self._qmp.execute(cmd, args)
            return self._aio.run(run, timeout=timeout)
        except ExecuteError as err:
            raise BackendError(f"{cmd}: {err}", command={"execute": cmd, "arguments": args},
                               reply=str(err)) from err
        except (QMPError, asyncio.CancelledError, EOFError, OSError) as err:
            why = self._lost_why()
            raise ConnectionLost(f"{cmd}: connection lost ({err.__class__.__name__})"
                                 + (f": {why}" if why else ""),
                                 command={"execute": cmd, "arguments": args}) from err

    def _lost_why(self) -> str | None:
        """Why the connection went (QEMU's exit and last words, from :attr:`lost_reason`),
        or None when nobody can say."""
        if self.lost_reason is None:
            return None
        try:
            return self.lost_reason()
        except Exception:  # noqa: BLE001 - the cause is a courtesy; the error stands
            log.debug("lost_reason failed", exc_info=True)
            return None

    def block_jobs(self) -> list[JobInfo]:
        return [JobInfo.from_qmp(d) for d in self.execute("query-block-jobs")]

    def block_info(self) -> list[DriveInfo]:
        return [DriveInfo.from_qmp(d) for d in self.execute("query-block")]

    def start_sampler(self, interval: float, on_jobs: JobsCallback,
                      on_error: Callable[[str], None]) -> Callable[[], None]:
        """Poll ``query-block-jobs`` every *interval* s from inside the QMP loop thread
        (:class:`~kvmlab.backends.qmp_client.JobSampler`).

        Each reply goes to ``on_jobs(monotonic, wall, jobs, late)`` on that thread;
        no thread hand-off per sample (the recorder's cheap path).  Returns a
        function that stops the sampler; no *on_jobs* call follows its return.
        """
        async def start() -> JobSampler:
            sampler = JobSampler(self._qmp, interval, on_jobs, on_error)
            sampler.start()
            return sampler

        sampler = self._aio.run(start(), timeout=5)

        def stop() -> None:
            async def halt() -> None:
                sampler.stop()

            if self._aio.alive:
                self._aio.run(halt(), timeout=5)
            else:
                sampler.stopped = True
        return stop

    def start_mirror(self, spec: MirrorSpec) -> str:
        self.execute("drive-mirror", spec.qmp_arguments())
        return spec.job_id or spec.device

    def start_commit(self, device: str, *, top: str | None = None, base: str | None = None,
                     speed: int = 0, job_id: str | None = None) -> str:
        """QMP ``block-commit``: merge *top* (default: the active layer) down into *base*."""
        args: dict[str, Any] = {"device": device, "speed": speed}
        if job_id:
            args["job-id"] = job_id
        if top:
            args["top"] = top
        if base:
            args["base"] = base
        self.execute("block-commit", args)
        return job_id or device

    def start_backup(self, device: str, target: str, *, job_id: str, speed: int = 0) -> str:
        """QMP ``blockdev-backup sync=full`` of *device* into the raw file *target*, which
        must exist at the disk's size; it becomes node ``<job_id>-target`` until
        :meth:`drop_backup_target`.  Copy-before-write: the copy is the disk as it was when
        the job started."""
        node = f"{job_id}-target"
        self.execute("blockdev-add", {"driver": "raw", "node-name": node,
                                      "file": {"driver": "file", "filename": target}})
        try:
            self.execute("blockdev-backup", {"job-id": job_id, "device": device,
                                             "target": node, "sync": "full", "speed": speed})
        except BackendError:
            self.execute("blockdev-del", {"node-name": node})
            raise
        return job_id

    def drop_backup_target(self, job_id: str) -> None:
        """Remove the target node of the ended backup job *job_id*."""
        self.execute("blockdev-del", {"node-name": f"{job_id}-target"})

    def snapshot(self, device: str, overlay: str) -> None:
        """QMP ``blockdev-snapshot-sync``: QEMU creates the qcow2 *overlay* over *device*'s
        image, which from now on stays as it was (the point in time)."""
        self.execute("blockdev-snapshot-sync", {"device": device, "snapshot-file": overlay,
                                                "format": "qcow2"})

    def job_cancel(self, job_id: str, force: bool = False) -> None:
        self.execute("block-job-cancel", {"device": job_id, "force": force})

    def job_complete(self, job_id: str) -> None:
        self.execute("block-job-complete", {"device": job_id})

    def job_pause(self, job_id: str) -> None:
        self.execute("block-job-pause", {"device": job_id})

    def job_resume(self, job_id: str) -> None:
        self.execute("block-job-resume", {"device": job_id})

    def job_set_speed(self, job_id: str, speed: int) -> None:
        self.execute("block-job-set-speed", {"device": job_id, "speed": speed})

    def job_change(self, job_id: str, copy_mode: str) -> None:
        """QMP ``block-job-change`` (QEMU 8.2+): switch a running mirror's copy mode."""
        self.execute("block-job-change", {"id": job_id, "type": "mirror",
                                          "copy-mode": copy_mode})

    def stop(self) -> None:
        self.execute("stop")

    def cont(self) -> None:
        self.execute("cont")

    def run_state(self) -> str:
        return str(self.execute("query-status")["status"])

    def hmp(self, command_line: str) -> str:
        """Run an HMP command line verbatim (as ``virsh qemu-monitor-command --hmp``)."""
        return str(self.execute("human-monitor-command", {"command-line": command_line}))

    def versions(self) -> dict[str, str]:
        v = self.execute("query-version")
        q = v["qemu"]
        return {"qemu": f"{q['major']}.{q['minor']}.{q['micro']}",
                "qemu_package": v.get("package", "").strip()}
