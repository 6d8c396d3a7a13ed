"""The daemon's control socket: ``wzp status``, ``call``, ``answer``, ``hangup``, ``ptt``...

A Unix stream socket (default ``/run/wzp/control.sock``, mode 0660, group from the
config) carrying one JSON object per line. A request is ``{"cmd": NAME, ...args}``;
the answer is one line ``{"ok": true, "result": ...}`` or ``{"ok": false, "error":
TEXT}``. A streaming command (``test_buttons``) first sends ``{"event": ...}`` lines,
then its answer. Hostile input (not JSON, JSON nested too deeply to parse, not an object,
an unknown command, a line over 64 KiB, a client that never finishes its line) is answered
with an error or dropped and counted; the daemon goes on.

A handler refuses with :class:`ControlError`. A :class:`~wzp.daemon.config.ConfigError`
(a bad value, a file that cannot be read or saved) is refused with its text as well, and
an ``OSError`` (a full or read-only disk) with its text and one warning line: these are
faults of the machine or of the request, not of the daemon. Any other exception is a bug:
logged with its traceback and answered ``internal error: ...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024
READ_TIMEOUT_S = 5.0
MAX_CLIENTS = 16

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
StreamHandler = Callable[[dict[str, Any]], AsyncIterator[dict[str, Any]]]


class ControlError(Exception):
    """A request the daemon refuses: the text goes back to the client."""


class ControlServer:
    def __init__(self, path: Path, group: str | None = None) -> None:
        self.path = path
        self.group = group
        self.handlers: dict[str, Handler] = {}
        self.streams: dict[str, StreamHandler] = {}
        self.requests = 0
        self.bad_requests = 0
        self.refused_clients = 0
        self._clients = 0
        self._server: asyncio.base_events.Server | None = None

    def handle(self, name: str, fn: Handler) -> None:
        self.handlers[name] = fn

    def handle_stream(self, name: str, fn: StreamHandler) -> None:
        self.streams[name] = fn

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if someone_listens(self.path):
                raise OSError(another_daemon_text(self.path))
            self.path.unlink()
        self._server = await asyncio.start_unix_server(
            self._client, path=str(self.path), limit=MAX_LINE
        )
        os.chmod(self.path, 0o660)
        if self.group:
            try:
                os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)
            except (KeyError, PermissionError) as exc:
                log.warning("control socket: cannot give it to group %s: %s", self.group, exc)

    async def close(self) -> None:
        if self._server is None:
            return  # not started (or closed): a socket at the path is another daemon's
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
        self._server = None
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(self.path.lstat().st_mode):
                self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= MAX_CLIENTS:
            self.refused_clients += 1
            writer.close()
            return
        self._clients += 1
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S)
                except (asyncio.LimitOverrunError, ValueError):
                    self.bad_requests += 1
                    await _send(writer, {"ok": False, "error": "request line too long"})
                    return
                except (TimeoutError, ConnectionError):
                    return
                if not line:
                    return
                await self._one(line, writer)
        except ConnectionError:
            return
        finally:
            self._clients -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one(self, line: bytes, writer: asyncio.StreamWriter) -> None:
        # here, not at the top: the `wzp` client imports this module and needs no config
        from .config import ConfigError

        self.requests += 1
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError):
            # RecursionError: a line of [[[[... (valid JSON, too deep for the parser)
            self.bad_requests += 1
            await _send(writer, {"ok": False, "error": "not JSON"})
            return
        cmd = req.get("cmd") if isinstance(req, dict) else None
        if not isinstance(cmd, str):
            self.bad_requests += 1
            await _send(writer, {"ok": False, "error": 'expected {"cmd": NAME, ...}'})
            return
        try:
            if cmd in self.streams:
                async for event in self.streams[cmd](req):
                    await _send(writer, {"event": event})
                await _send(writer, {"ok": True, "result": None})
                return
            fn = self.handlers.get(cmd)
            if fn is None:
                self.bad_requests += 1
                await _send(writer, {"ok": False, "error": f"unknown command {cmd[:40]!r}"})
                return
            answer = _encode({"ok": True, "result": await fn(req)})
        except (ControlError, ConfigError) as exc:
            await _send(writer, {"ok": False, "error": str(exc)})
            return
        except ConnectionError:
            raise
        except OSError as exc:  # the machine's fault (a read-only disk...), not a bug
            text = _os_error_text(exc)
            log.warning("control command %s refused: %s", cmd, text)
            await _send(writer, {"ok": False, "error": text})
            return
        except Exception as exc:  # a bug in one handler never takes the daemon down
            log.exception("control command %s failed", cmd)
            await _send(writer, {"ok": False, "error": f"internal error: {exc}"})
            return
        writer.write(answer)
        await writer.drain()


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def _os_error_text(exc: OSError) -> str:
    """``PATH: Read-only file system`` rather than ``[Errno 30] Read-only ...: PATH``."""
    if exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    return exc.strerror or str(exc)


async def _send(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    writer.write(_encode(obj))
    await writer.drain()


def another_daemon_text(path: Path) -> str:
    """Why a second daemon on ``path`` does not start."""
    return f"another wzp daemon is running (control socket {path} answers)"


def someone_listens(path: Path) -> bool:
    """Whether a process accepts connections on the Unix socket ``path`` (a daemon runs)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


class NotRunning(Exception):
    """No daemon answers on the control socket."""


def request(
    path: Path,
    cmd: str,
    *,
    timeout: float = 5.0,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    **args: Any,
) -> Any:
    """Send one command and return its result (blocking; for the ``wzp`` command).

    Raises :class:`NotRunning` when nobody listens, :class:`ControlError` with the
    daemon's text when it refuses, ``PermissionError`` when the socket is not ours.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NotRunning(f"the wzp daemon is not running (no answer on {path})") from exc
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        buf = b""
        while True:
            while b"\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    raise ControlError("the daemon closed the connection without an answer")
                buf += chunk
            line, buf = buf.split(b"\n", 1)
            msg = json.loads(line)
            if "event" in msg:
                if on_event is not None:
                    on_event(msg["event"])
                continue
            if msg.get("ok"):
                return msg.get("result")
            raise ControlError(str(msg.get("error", "refused")))
