"""systemd's notify protocol without a library: READY=1, STATUS=..., WATCHDOG=1.

Each message is one datagram to the Unix socket named by ``$NOTIFY_SOCKET`` (a
leading ``@`` means the abstract namespace). Outside systemd the variable is unset and
every call does nothing. A failed send is logged once and never raised: the daemon's
work matters more than systemd's bookkeeping.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if addr:
            self.address = "\0" + addr[1:] if addr.startswith("@") else addr
        self.sent = 0
        self.failed = 0
        usec = os.environ.get("WATCHDOG_USEC", "")
        #: how often to send WATCHDOG=1 (half the unit's WatchdogSec), None without one
        self.watchdog_interval_s: float | None = (
            int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        )

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str) -> bool:
        """Send ``KEY=value`` lines (``ready="1"`` -> ``READY=1``)."""
        if self.address is None:
            return False
        text = "\n".join(f"{k.upper()}={v}" for k, v in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(text.encode(), self.address)
        except OSError as exc:
            self.failed += 1
            if self.failed == 1:
                log.warning("systemd notify failed: %s", exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str) -> bool:
        return self.send(ready="1", status=status)

    def status(self, status: str) -> bool:
        return self.send(status=status)

    def watchdog(self) -> bool:
        return self.send(watchdog="1")

    def stopping(self) -> bool:
        return self.send(stopping="1")
