"""qemu.qmp's client with two lean paths: an id-less short form, and a paced sampler.

Both ride on qemu.qmp itself: its reader task, message parsing, reply routing through
the pending-execution table, disconnect handling and the ``_cb_outbound`` hook.  What
they leave out is qemu.qmp's per-command machinery (an asyncio queue per reply, a
queue and a task hop per send), which is most of a 100 Hz watch's CPU on our side.

**This module is the only place that touches qemu.qmp's private members** (``_pending``,
``_writer``, ``_do_send``; qemu.qmp is 0.0.x and promises nothing about them).  The lean
path is taken only when the installed qemu.qmp is a version kvmlab's tests ran on
(:data:`TESTED_QMP_VERSIONS`, checked at import) and still has those members; otherwise
:data:`FAST_PATH` is False and every command, the sampler's included, goes through
qemu.qmp's public ``execute`` -- slower (about twice the CPU per sample, see
``benchmarks/RESULTS.md``), never wrong.  ``KVMLAB_QMP_PUBLIC=1`` forces the public path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Union, cast

from qemu.qmp import Message, QMPClient, Runstate
from qemu.qmp.models import ErrorResponse
from qemu.qmp.qmp_client import ExecInterruptedError, ExecuteError

from kvmlab.backends.base import JobsCallback
from kvmlab.model import JobInfo
from kvmlab.pacing import Pacer

log = logging.getLogger(__name__)

#: qemu.qmp releases whose private members the lean path was tested against
TESTED_QMP_VERSIONS = ("0.0.6",)


def _qmp_version() -> str:
    try:
        return version("qemu.qmp")
    except PackageNotFoundError:
        return "unknown"


def _private_members_present() -> bool:
    probe = QMPClient("kvmlab-probe")
    return all(hasattr(probe, name) for name in ("_pending", "_writer", "_do_send"))


QMP_VERSION = _qmp_version()
#: True: the id-less short form and the callback sampler; False: qemu.qmp's public path only
FAST_PATH = (QMP_VERSION in TESTED_QMP_VERSIONS and _private_members_present()
             and os.environ.get("KVMLAB_QMP_PUBLIC") != "1")
if not FAST_PATH:
    log.info("qemu.qmp %s: using its public execute() only (lean path tested on %s)",
             QMP_VERSION, ", ".join(TESTED_QMP_VERSIONS))

#: what the id-less slot receives: QEMU's reply, or qemu.qmp's disconnect error
Reply = Union[Message, ExecInterruptedError]



class LazyLogQMPClient(QMPClient):
    """qemu.qmp's client, with its message hooks logging lazily and a short form for
    argument-less commands (:meth:`send_short`, :meth:`execute_short`).

    The base hooks (``_cb_outbound``/``_cb_inbound``, documented as the place for
    subclasses to hook message I/O) pretty-print every message with ``str(msg)``
    even when debug logging is off: two indented JSON dumps per command, most of
    the CPU cost of a 100 Hz ``query-block-jobs`` watch.  These log the same
    text, only when debug logging is on.
    """

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self._short: dict[str, Message] = {}

    def _cb_outbound(self, msg: Message) -> Message:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("--> %s", str(msg))
        return msg

    def _cb_inbound(self, msg: Message) -> Message:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("<-- %s", str(msg))
        return msg

    def send_short(self, cmd: str, deliver: Callable[[Reply], None]) -> bool:
        """Send the argument-less command *cmd* now, as the shortest message QEMU takes;
        *deliver* gets the reply (or qemu.qmp's disconnect error) on the loop thread.

        QEMU 7.2's monitor reads a command one byte per event-loop cycle (about
        6 µs a byte on the lab machines, see benchmarks/), and the ``"id"``
        qemu.qmp adds to every command is 19 of the 50 bytes of a
        ``query-block-jobs``; sent without it, the command comes back sooner and
        costs QEMU less.  The message is written at once through ``_cb_outbound``
        and ``_do_send`` (pre-serialized, cached per command) and its reply is taken
        from qemu.qmp's reader through the pending table's id-less slot.  Replies
        are matched by id, so skipping the writer's queue cannot mix them up.

        Returns False, having sent nothing, when the id-less slot is taken (qemu.qmp
        allows one id-less command at a time), the session is not running, or
        :data:`FAST_PATH` is off: the caller then takes qemu.qmp's public path.
        *deliver* must not raise: it runs inside qemu.qmp's reader task.
        """
        if (not FAST_PATH or None in self._pending or self._writer is None
                or self.runstate != Runstate.RUNNING):
            return False
        msg = self._short.get(cmd)
        if msg is None:
            msg = self._short[cmd] = Message({"execute": cmd})      # eager: bytes cached
        self._pending[None] = cast(Any, _Slot(self, deliver))
        self._do_send(self._cb_outbound(msg))
        return True

    async def execute_short(self, cmd: str) -> object:
        """:meth:`send_short` as a coroutine returning the command's value (a concurrent
        one, or one before the session runs, takes qemu.qmp's normal path)."""
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

        def deliver(reply: Reply) -> None:
            if fut.done():                          # the caller was cancelled
                return
            if isinstance(reply, ExecInterruptedError):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)

        if not self.send_short(cmd, deliver):
            return await self.execute(cmd)
        reply = await fut
        if "error" in reply:
            raise ExecuteError(ErrorResponse(reply), self._short[cmd], reply)
        return reply["return"]


class _Slot:
    """The id-less entry of qemu.qmp's pending table, in the shape its reader
    (``await put``) and its disconnect (``put_nowait``, while iterating the table)
    expect of a per-execution queue, without a queue's cost."""

    __slots__ = ("client", "deliver")

    def __init__(self, client: QMPClient, deliver: Callable[[Reply], None]) -> None:
        self.client = client
        self.deliver = deliver

    def _done(self, reply: Reply) -> None:
        pending = cast(dict[Any, object], self.client._pending)  # pylint: disable=protected-access
        if pending.get(None) is self:
            del pending[None]
        self.deliver(reply)

    async def put(self, msg: Message) -> None:
        self._done(msg)

    def put_nowait(self, reply: Reply) -> None:
        asyncio.get_running_loop().call_soon(self._done, reply)     # not while iterating


class JobSampler:
    """``query-block-jobs`` every *interval* s on the QMP loop thread, as plain loop
    callbacks: a timer sends, the reply is parsed and handed to *on_jobs* where qemu.qmp's
    reader delivers it, and the next timer is set.  No task, future or queue per sample.

    Ticks are due every *interval* from the start; a late tick is skipped and counted.
    A failed query goes to *on_error* and sampling goes on; a lost connection goes to
    *on_error* and ends it.  Call :meth:`start` and :meth:`stop` on the loop thread.
    """

    CMD = "query-block-jobs"

    def __init__(self, client: LazyLogQMPClient, interval: float, on_jobs: JobsCallback,
                 on_error: Callable[[str], None]) -> None:
        self.client = client
        self.on_jobs = on_jobs
        self.on_error = on_error
        self.loop = asyncio.get_running_loop()
        self.pacer = Pacer(interval, self.loop.time())
        self.timer: asyncio.TimerHandle | None = None
        self.stopped = False

    def start(self) -> None:
        self._next()

    def stop(self) -> None:
        """No *on_jobs* call happens after this returns (a reply in flight is dropped)."""
        self.stopped = True
        if self.timer is not None:
            self.timer.cancel()

    def _next(self) -> None:
        self.timer = self.loop.call_at(self.pacer.next(self.loop.time()), self._tick)

    def _tick(self) -> None:
        self.timer = None
        if self.stopped:
            return
        if not self.client.send_short(self.CMD, self._on_reply):
            # the id-less slot is busy (another short command): qemu.qmp's normal path
            task = asyncio.ensure_future(self.client.execute(self.CMD))
            task.add_done_callback(self._on_task)

    def _on_task(self, task: asyncio.Future[object]) -> None:
        if task.cancelled():
            return
        err = task.exception()
        if err is None:
            self._on_value(task.result())
        elif isinstance(err, ExecuteError):
            self._failed(f"{self.CMD}: {err}")
        else:
            self._lost(err)

    def _on_reply(self, reply: Reply) -> None:
        if isinstance(reply, ExecInterruptedError):
            self._lost(reply)
        elif "error" in reply:
            self._failed(f"{self.CMD}: {ErrorResponse(reply).error.desc}")
        else:
            self._on_value(reply["return"])

    def _on_value(self, value: object) -> None:
        if self.stopped:
            return
        try:
            jobs = [JobInfo.from_qmp(d) for d in cast(list[dict[str, Any]], value)]
            self.on_jobs(time.monotonic(), time.time(), jobs, self.pacer.late)
        except Exception as err:                    # pylint: disable=broad-except
            # never into qemu.qmp's reader: a raise there would drop the connection
            self._failed(f"{self.CMD}: {err.__class__.__name__}: {err}")
            return
        self._next()

    def _failed(self, error: str) -> None:
        if self.stopped:
            return
        self._report(error)
        self._next()

    def _lost(self, err: BaseException) -> None:
        if not self.stopped:
            self.stopped = True
            self._report(f"{self.CMD}: connection lost ({err.__class__.__name__})")

    def _report(self, error: str) -> None:
        try:
            self.on_error(error)
        except Exception:                           # pylint: disable=broad-except
            log.exception("job sampler's error callback failed on %r", error)
