"""The control socket: commands, errors, hostile clients, streaming, permissions."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
from pathlib import Path

import pytest

from wzp.daemon.config import ConfigError
from wzp.daemon.control import ControlError, ControlServer, NotRunning, request
from wzp.daemon.notify import Notifier


@pytest.fixture
async def server(tmp_path: Path):
    srv = ControlServer(tmp_path / "run" / "control.sock")

    async def echo(req):
        return {"you_said": req.get("text")}

    async def refuse(req):
        raise ControlError("nothing is ringing")

    async def boom(req):
        raise RuntimeError("bug")

    async def readonly(req):
        raise OSError(errno.EROFS, "Read-only file system", "/var/lib/wzp/.contacts.toml.x")

    async def bad_value(req):
        raise ConfigError(Path("/var/lib/wzp/contacts.toml"), 3, "name", "not a name")

    async def unencodable(req):
        return {"x": object()}

    async def count(req):
        for i in range(int(req.get("n", 3))):
            yield {"i": i}

    srv.handle("echo", echo)
    srv.handle("refuse", refuse)
    srv.handle("boom", boom)
    srv.handle("readonly", readonly)
    srv.handle("bad_value", bad_value)
    srv.handle("unencodable", unencodable)
    srv.handle_stream("count", count)
    await srv.start()
    yield srv
    await srv.close()


def _raw(path: Path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


async def test_commands_answer(server: ControlServer) -> None:
    result = await asyncio.to_thread(request, server.path, "echo", text="hi")
    assert result == {"you_said": "hi"}
    with pytest.raises(ControlError, match="nothing is ringing"):
        await asyncio.to_thread(request, server.path, "refuse")
    with pytest.raises(ControlError, match="unknown command 'nope'"):
        await asyncio.to_thread(request, server.path, "nope")
    # a handler's bug is an error answer, and the server goes on
    with pytest.raises(ControlError, match="internal error: bug"):
        await asyncio.to_thread(request, server.path, "boom")
    assert await asyncio.to_thread(request, server.path, "echo", text="still") == {
        "you_said": "still"
    }


async def test_streaming_command(server: ControlServer) -> None:
    seen: list[dict] = []
    result = await asyncio.to_thread(request, server.path, "count", n=4, on_event=seen.append)
    assert result is None
    assert seen == [{"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}]


async def test_hostile_input_is_answered_and_counted(server: ControlServer) -> None:
    out = await asyncio.to_thread(_raw, server.path, b"\xff\xfe not json\n")
    assert b'"not JSON"' in out
    out = await asyncio.to_thread(_raw, server.path, b"[1,2,3]\n")
    assert b"expected" in out
    out = await asyncio.to_thread(_raw, server.path, b'{"cmd": 5}\n')
    assert b"expected" in out
    out = await asyncio.to_thread(_raw, server.path, b"x" * (200 * 1024) + b"\n")
    assert b"too long" in out
    assert server.bad_requests == 4
    # several requests on one connection
    out = await asyncio.to_thread(
        _raw, server.path, b'{"cmd":"echo","text":1}\n{"cmd":"echo","text":2}\n'
    )
    assert out.count(b'"ok":true') == 2
    assert await asyncio.to_thread(request, server.path, "echo", text="alive") == {
        "you_said": "alive"
    }


async def test_json_nested_too_deeply_is_answered_and_counted(
    server: ControlServer, caplog: pytest.LogCaptureFixture
) -> None:
    """~60 KB of [[[[...]]]] (valid JSON under the line cap) overflows json's recursion: it
    is answered and counted like any other bad request, and nothing is logged."""
    caplog.set_level(logging.DEBUG)
    line = b"[" * 30_000 + b"]" * 30_000 + b"\n"
    assert len(line) < 64 * 1024
    out = await asyncio.to_thread(_raw, server.path, line)
    assert out == b'{"ok":false,"error":"not JSON"}\n'
    assert server.bad_requests == 1
    nested = b'{"cmd":"echo","text":' + b"[" * 30_000 + b"]" * 30_000 + b"}\n"
    out = await asyncio.to_thread(_raw, server.path, nested)
    assert b'"not JSON"' in out
    assert server.bad_requests == 2
    assert caplog.records == []
    assert await asyncio.to_thread(request, server.path, "echo", text="alive") == {
        "you_said": "alive"
    }


async def test_expected_faults_are_refusals_and_bugs_keep_their_traceback(
    server: ControlServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="wzp.daemon.control")
    # a file system that refuses: its text, one warning line without a traceback
    with pytest.raises(ControlError) as refused:
        await asyncio.to_thread(request, server.path, "readonly")
    assert str(refused.value) == "/var/lib/wzp/.contacts.toml.x: Read-only file system"
    assert [(r.levelno, r.exc_info) for r in caplog.records] == [(logging.WARNING, None)]
    assert "Read-only file system" in caplog.records[0].getMessage()
    caplog.clear()
    # a ConfigError (bad value, unreadable or unsavable file): its text, nothing logged
    with pytest.raises(ControlError) as refused:
        await asyncio.to_thread(request, server.path, "bad_value")
    assert str(refused.value) == "/var/lib/wzp/contacts.toml line 3: name: not a name"
    assert caplog.records == []
    # a bug is still an ERROR with its traceback
    with pytest.raises(ControlError, match="internal error: bug"):
        await asyncio.to_thread(request, server.path, "boom")
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    caplog.clear()
    # so is a result that is not JSON: answered, not an unhandled exception
    with pytest.raises(ControlError, match="internal error"):
        await asyncio.to_thread(request, server.path, "unencodable")
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert server.bad_requests == 0


async def test_socket_mode_and_stale_socket(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    # a stale socket file from a crashed daemon is replaced
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    srv = ControlServer(path)
    await srv.start()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        # a second daemon on the same socket is refused
        second = ControlServer(path)
        with pytest.raises(
            OSError, match=rf"another wzp daemon is running \(control socket {path} answers\)"
        ):
            await second.start()
        # the refused one's close leaves the running daemon's socket alone
        await second.close()
        assert path.exists()
        with pytest.raises(ControlError, match="unknown command"):
            await asyncio.to_thread(request, path, "status")
    finally:
        await srv.close()
    assert not path.exists()
    with pytest.raises(NotRunning, match="not running"):
        request(path, "status")


def test_notifier_sends_datagrams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock_path = tmp_path / "notify"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(str(sock_path))
    rx.settimeout(2)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    n = Notifier(str(sock_path))
    assert n.enabled and n.watchdog_interval_s == 15.0
    assert n.ready("idle")
    assert rx.recv(1024) == b"READY=1\nSTATUS=idle"
    assert n.watchdog()
    assert rx.recv(1024) == b"WATCHDOG=1"
    rx.close()
    # the socket is gone: counted, never raised
    assert not n.status("x")
    assert n.failed == 1
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not Notifier().enabled and not Notifier().ready("x")


def test_notifier_abstract_namespace() -> None:
    name = f"wzp-test-{os.getpid()}"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind("\0" + name)
    rx.settimeout(2)
    try:
        assert Notifier("@" + name).status("in call")
        assert rx.recv(1024) == b"STATUS=in call"
    finally:
        rx.close()
