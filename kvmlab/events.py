"""A thread-safe, append-only log of timestamped records with waiters and subscribers.

Used for QMP events (from a backend) and guest console records (from the
serial reader).  Waits are driven by arrivals, never by polling sleeps; every
record stays in the history, so a wait can look back from an index taken
*before* the command that causes the record was sent (no lost-wakeup race).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kvmlab.errors import ConnectionLost, WaitTimeout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One timestamped item: a QMP event or a guest console record.

    :ivar name: event name (``BLOCK_JOB_READY``) or guest record kind (``op``).
    :ivar data: the payload.
    :ivar mono: host ``time.monotonic()`` when it arrived.
    :ivar wall: host wall-clock time (Unix seconds) when it arrived.
    :ivar source: time stamp given by the emitter (QEMU's event timestamp), if any.
    """

    name: str
    data: Mapping[str, Any] = field(default_factory=dict)
    mono: float = field(default_factory=time.monotonic)
    wall: float = field(default_factory=time.time)
    source: float | None = None


def matches(data: Mapping[str, Any], match: Mapping[str, Any] | None) -> bool:
    """Partial-dict match (as QEMUMachine's ``event_wait``): every key in *match* equal in *data*."""
    if not match:
        return True
    for key, want in match.items():
        if key not in data:
            return False
        got = data[key]
        if isinstance(want, Mapping) and isinstance(got, Mapping):
            if not matches(got, want):
                return False
        elif got != want:
            return False
    return True


Subscriber = Callable[[Record], None]


class RecordLog:
    """History of records, waits on arrivals, and subscriber callbacks."""

    def __init__(self) -> None:
        self._items: list[Record] = []
        self._cond = threading.Condition()
        self._subs: list[Subscriber] = []
        self.closed = False
        #: why the producer went away unexpectedly (None: closed on purpose, or still open)
        self.lost: str | None = None

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def snapshot(self, since: int = 0) -> list[Record]:
        with self._cond:
            return list(self._items[since:])

    def append(self, rec: Record) -> None:
        with self._cond:
            self._items.append(rec)
            subs = list(self._subs)
            self._cond.notify_all()
        for sub in subs:
            try:
                sub(rec)
            except Exception:  # noqa: BLE001 - a subscriber must not break the producer
                log.exception("record subscriber %r failed", sub)

    def close(self, lost: str | None = None) -> None:
        """Mark the producer finished (wakes waiters, which then time out early); *lost*
        says why it went away unexpectedly, and waiters raise ConnectionLost with it."""
        with self._cond:
            if lost and not self.closed:
                self.lost = lost
            self.closed = True
            self._cond.notify_all()

    def subscribe(self, fn: Subscriber, *, replay_since: int | None = None) -> None:
        """Call *fn* for every new record (and first for history from *replay_since*)."""
        with self._cond:
            past = list(self._items[replay_since:]) if replay_since is not None else []
            self._subs.append(fn)
        for rec in past:
            fn(rec)

    def unsubscribe(self, fn: Subscriber) -> None:
        with self._cond:
            if fn in self._subs:
                self._subs.remove(fn)

    def find(self, names: str | tuple[str, ...], match: Mapping[str, Any] | None = None,
             since: int = 0) -> Record | None:
        names_t = (names,) if isinstance(names, str) else names
        with self._cond:
            for rec in self._items[since:]:
                if rec.name in names_t and matches(rec.data, match):
                    return rec
        return None

    def wait(self, names: str | tuple[str, ...], match: Mapping[str, Any] | None = None, *,
             since: int = 0, timeout: float | None = 60.0,
             abort: Callable[[], str | None] | None = None) -> Record:
        """Block until a record named one of *names* matching *match* arrives at or after *since*.

        :param abort: polled on every arrival and each second; a non-None string
            raises WaitTimeout with that reason (e.g. "QEMU exited").
        :raise WaitTimeout: nothing matched in *timeout* seconds, or *abort* fired,
            or the log was closed.
        :raise ConnectionLost: the producer went away (QEMU exited), at once.
        """
        names_t = (names,) if isinstance(names, str) else names
        deadline = None if timeout is None else time.monotonic() + timeout
        idx = since
        with self._cond:
            while True:
                for i in range(idx, len(self._items)):
                    rec = self._items[i]
                    if rec.name in names_t and matches(rec.data, match):
                        return rec
                idx = len(self._items)
                why = abort() if abort else None
                if why:
                    raise WaitTimeout(f"gave up waiting for {'/'.join(names_t)}: {why}")
                if self.closed:
                    if self.lost:
                        raise ConnectionLost(f"{self.lost} (while waiting for "
                                             f"{'/'.join(names_t)})")
                    raise WaitTimeout(f"gave up waiting for {'/'.join(names_t)}: source closed")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise WaitTimeout(f"no {'/'.join(names_t)} within {timeout:.1f} s")
                self._cond.wait(1.0 if left is None else min(left, 1.0))
