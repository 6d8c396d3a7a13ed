"""`wzp relay` refusing to start (which port is taken, another relay, identity problems
that exit 78) and how its log names members' fingerprints."""

from __future__ import annotations

import asyncio
import logging
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.test_startup import _ident_case
from tests.relay.test_server import HOST, running_relay
from wzp.relay.room import RoomPolicy
from wzp.relay.server import run_relay


@pytest.fixture
def short() -> Iterator[Path]:
    """A folder with a short path (a Unix socket path has at most 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="wzpr-", dir="/tmp") as d:
        yield Path(d)


def _config(folder: Path, port: int, extra: str = "", seed: Path | None = None) -> Path:
    cfg = folder / "relay.toml"
    cfg.write_text(
        f'listen = ["{HOST}"]\nport = {port}\nidentity = "{seed or folder / "id.seed"}"\n'
        f'control_socket = "{folder}/c.sock"\n{extra}[rooms.porch]\nallow = "open"\n'
    )
    return cfg


@pytest.fixture
def busy_udp() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        yield int(s.getsockname()[1])


async def test_a_taken_udp_port_is_named(
    short: Path, busy_udp: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_relay(_config(short, busy_udp)) == 1
    err = capsys.readouterr().err
    assert err == (
        f"wzp relay: cannot start: UDP port {busy_udp} on {HOST} is in use "
        "(another wzp relay, or another program)\n"
    )


async def test_a_taken_metrics_port_is_named(
    short: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        port = int(s.getsockname()[1])
    blocker = await asyncio.start_server(lambda r, w: None, HOST, 0)
    taken = blocker.sockets[0].getsockname()[1]
    try:
        cfg = _config(short, port, f'metrics = "{HOST}:{taken}"\n')
        assert await run_relay(cfg) == 1
    finally:
        blocker.close()
        await blocker.wait_closed()
    err = capsys.readouterr().err
    assert err == (
        f"wzp relay: cannot start: metrics: TCP port {taken} on {HOST} is in use "
        "(another program)\n"
    )
    assert not (short / "c.sock").exists()


async def test_a_second_relay_is_told_another_one_runs(
    short: Path, busy_udp: int, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = short / "c.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as first:
        first.bind(str(sock))
        first.listen()
        assert await run_relay(_config(short, busy_udp)) == 1
        assert sock.exists()
    err = capsys.readouterr().err
    assert err == f"wzp relay: another wzp relay is running (control socket {sock} answers)\n"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("mode 0644", "chmod 600"),
        ("wrong size", "32 bytes, not 10"),
        ("folder is a file", "Not a directory"),
    ],
)
async def test_identity_problems_exit_78(
    short: Path, capsys: pytest.CaptureFixture[str], case: str, expected: str
) -> None:
    cfg = _config(short, 4433, seed=_ident_case(short, case))
    assert await run_relay(cfg) == 78
    err = capsys.readouterr().err
    assert err.startswith("wzp relay: identity ") and expected in err, err


async def test_the_log_shows_fingerprints_grouped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wzp.relay.server")
    async with running_relay({"porch": RoomPolicy()}) as relay:
        member = await relay.join("porch")
        fp = member.ident.fingerprint_text
        assert fp.count(":") == 7
    lines = [r.getMessage() for r in caplog.records if "for room" in r.getMessage()]
    assert lines == [f"connection 1 for room 'porch' from {fp}"]
    assert member.ident.fingerprint.hex() not in caplog.text
