"""The guest's serial console: read it live, keep the raw text, parse KVMLAB lines.

The guest prints ``KVMLAB <word> k=v ...`` or ``KVMLAB k=v ...`` lines.  Each
becomes a :class:`~kvmlab.events.Record` named by the bare word or by the
first key (``op``, ``verdict``, ``check``), stamped with the host time of
arrival.  An ``op`` line is printed only after the guest's ``sync``
returned, so its host arrival time bounds when the data was on the image.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import IO, Any

from kvmlab.events import Record, RecordLog

PREFIX = "KVMLAB "
_TEXT_KEYS = {"path", "sha256", "op", "mode", "why", "kind", "verdict", "error", "reason", "dev",
              "check", "disk", "data", "r_lat", "w_lat"}


def _value(key: str, raw: str) -> Any:
    if key in _TEXT_KEYS:
        return raw
    for conv in (int, float):
        try:
            return conv(raw)
        except ValueError:
            pass
    return raw


def parse_line(line: str) -> tuple[str, dict[str, Any]] | None:
    """``"KVMLAB op=dd path=/wl/w1.bin ..."`` -> ``("op", {...})``; None for other lines."""
    idx = line.find(PREFIX)
    if idx < 0:
        return None
    tokens = line[idx + len(PREFIX):].split()
    if not tokens:
        return None
    name = None
    data: dict[str, Any] = {}
    for tok in tokens:
        key, eq, raw = tok.partition("=")
        if not eq:
            name = name or key
            continue
        data[key] = _value(key, raw)
        if name is None:
            name = key
    return (name or "line", data)


class Console:
    """Reads a QEMU serial stream in a thread; records go to :attr:`records`."""

    def __init__(self, stream: IO[bytes], log_path: Path | None = None) -> None:
        self.records = RecordLog()
        self.lines: list[tuple[float, str]] = []
        self._stream = stream
        #: why the console log stopped (a full disk), or None
        self.log_error: OSError | None = None
        self._log = open(log_path, "a", encoding="utf-8") if log_path else None
        self._thread = threading.Thread(target=self._read, name="kvmlab-console", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for raw in iter(self._stream.readline, b""):
                now = time.monotonic()
                text = raw.decode(errors="replace").rstrip("\r\n")
                self.lines.append((now, text))
                if self._log:
                    self._write_log(text)
                # a line cut off when QEMU stopped has no newline: keep it as text only
                parsed = parse_line(text) if raw.endswith(b"\n") else None
                if parsed:
                    self.records.append(Record(parsed[0], parsed[1], mono=now))
        except (OSError, ValueError):
            pass
        finally:
            self.records.close()

    def _write_log(self, text: str) -> None:
        """Keep the console log; a full disk stops the log, never the reading (a guest
        whose console is not drained blocks)."""
        assert self._log is not None
        try:
            self._log.write(text + "\n")
            self._log.flush()
        except OSError as err:
            self.log_error = err
            try:
                self._log.close()
            except OSError:
                pass
            self._log = None

    def join(self, timeout: float = 5) -> None:
        self._thread.join(timeout)
        if self._log:
            try:
                self._log.close()
            except OSError as err:
                self.log_error = err
            self._log = None
