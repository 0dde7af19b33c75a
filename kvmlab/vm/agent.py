"""The QEMU guest agent (``qemu-ga`` in the guest), for fsfreeze around a cut-off.

The agent speaks QMP's wire format over a virtio-serial port
(``org.qemu.guest_agent.0``) but sends no greeting and negotiates nothing,
so this is qemu.qmp's own client with those two steps turned off (as qemu.qmp
documents for QGA), run on kvmlab's private loop thread like the QMP backend.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from qemu.qmp import QMPError
from qemu.qmp.qmp_client import ExecuteError

from kvmlab._aio import LoopThread
from kvmlab.backends.qmp_client import LazyLogQMPClient
from kvmlab.errors import BackendError, StateError, WaitTimeout

#: the virtio-serial port name qemu-ga looks for
PORT_NAME = "org.qemu.guest_agent.0"


class GuestAgent:
    """A connection to the guest agent behind QEMU's chardev socket *socket_path*."""

    def __init__(self, socket_path: str | Path) -> None:
        self.socket_path = Path(socket_path)
        self._aio = LoopThread("kvmlab-qga")
        self._client = LazyLogQMPClient("kvmlab-qga")
        self._client.await_greeting = False
        self._client.negotiate = False
        self._connected = False

    def __enter__(self) -> GuestAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self, timeout: float = 60) -> None:
        """Connect and ``guest-sync`` (discarding anything stale on the channel).

        The agent starts late in the guest's boot; until it runs, syncs go
        unanswered, so this retries until *timeout*.
        """
        try:
            self._aio.run(self._client.connect(str(self.socket_path)), timeout=10)
        except (QMPError, OSError, WaitTimeout) as err:
            self.close()
            raise BackendError(f"cannot connect to the guest agent at {self.socket_path}: "
                               f"{err}") from err
        self._connected = True
        deadline = time.monotonic() + timeout
        while True:
            token = random.randint(1, 2**31)
            try:
                if self.execute("guest-sync", {"id": token}, timeout=2) == token:
                    return
            except (WaitTimeout, BackendError):
                pass
            if time.monotonic() > deadline:
                raise WaitTimeout(f"guest agent did not answer guest-sync in {timeout:g} s")

    def execute(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        """Run one agent command; its errors become BackendError."""
        if not self._connected:
            raise StateError(f"guest agent not connected; cannot run {cmd}")
        try:
            return self._aio.run(self._client.execute(cmd, args), timeout=timeout)
        except ExecuteError as err:
            raise BackendError(f"{cmd}: {err}", command={"execute": cmd, "arguments": args},
                               reply=str(err)) from err
        except (QMPError, EOFError, OSError) as err:
            raise BackendError(f"{cmd}: guest agent connection failed: {err}") from err

    # -- the commands the studies use ---------------------------------------------------
    def ping(self) -> None:
        self.execute("guest-ping")

    def info(self) -> dict[str, Any]:
        return dict(self.execute("guest-info"))

    def fsfreeze_freeze(self) -> int:
        """Freeze every guest file system; returns how many were frozen."""
        return int(self.execute("guest-fsfreeze-freeze", timeout=60))

    def fsfreeze_thaw(self) -> int:
        return int(self.execute("guest-fsfreeze-thaw", timeout=60))

    def fsfreeze_status(self) -> str:
        return str(self.execute("guest-fsfreeze-status"))

    def reboot(self) -> int:
        """Have the guest reboot itself: its own ``/sbin/shutdown -r +0`` (what ``reboot`` in
        its shell and qemu-ga's ``guest-shutdown`` run; it syncs the disks first), started
        with ``guest-exec``.  ``guest-shutdown`` itself never answers on success, so it
        cannot be awaited.  Returns the command's pid in the guest."""
        return int(self.execute("guest-exec", {"path": "/sbin/shutdown",
                                               "arg": ["-r", "+0"]})["pid"])

    def close(self) -> None:
        """Disconnect and stop the loop thread.  Idempotent."""
        if self._aio.alive:
            try:
                self._aio.run(self._client.disconnect(), timeout=5)
            except Exception:  # noqa: BLE001 - QEMU may be gone
                pass
        self._connected = False
        self._aio.close()
