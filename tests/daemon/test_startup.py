"""`wzp run` refusing to start: which port is taken, another daemon on the control socket,
identity problems that a restart cannot fix (exit 78: the unit does not restart on it)."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from wzp.daemon import commands
from wzp.daemon.identity_store import SeedFileError
from wzp.daemon.startup import EXIT_CONFIG, identity_problem, listen_error

WZP = [sys.executable, "-m", "wzp.cli"]


def _config(tmp: Path, port: int, ident: Path | None = None) -> Path:
    cfg = tmp / "wzp.toml"
    cfg.write_text(
        f"""
[identity]
path = "{ident or tmp / "state" / "identity.seed"}"
[board]
pin_factory = "mock"
[audio]
capture = "null"
playback = "null"
[call]
listen_port = {port}
listen_hosts = ["127.0.0.1"]
[control]
socket = "{tmp / "c.sock"}"
group = ""
"""
    )
    return cfg


def _run(cfg: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    return subprocess.run(
        [*WZP, "run", "--config", str(cfg)], capture_output=True, text=True, timeout=60, env=env
    )


@pytest.fixture
def busy_udp() -> Any:
    """A UDP port on 127.0.0.1 that another program holds."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def test_a_taken_udp_port_is_named(tmp_path: Path, busy_udp: int) -> None:
    res = _run(_config(tmp_path, busy_udp))
    assert res.returncode == 1, res.stderr
    assert (
        f"wzp: cannot start: UDP port {busy_udp} on 127.0.0.1 is in use "
        "(another wzp daemon, or another program)"
    ) in res.stderr
    assert "Errno" not in res.stderr


def test_a_second_daemon_is_told_another_one_runs(tmp_path: Path, busy_udp: int) -> None:
    """As a second `wzp run` on the same config: the control socket answers and the UDP
    port is taken; the control socket is what is reported, and it is left alone."""
    cfg = _config(tmp_path, busy_udp)
    sock = tmp_path / "c.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as first:
        first.bind(str(sock))
        first.listen()
        res = _run(cfg)
        assert sock.exists()
    assert res.returncode == 1, res.stderr
    assert f"wzp: another wzp daemon is running (control socket {sock} answers)" in res.stderr
    assert "UDP" not in res.stderr


def _ident_case(tmp: Path, case: str) -> Path:
    seed = tmp / "state" / "identity.seed"
    seed.parent.mkdir()
    if case == "mode 0644":
        seed.write_bytes(os.urandom(32))
        seed.chmod(0o644)
    elif case == "wrong size":
        seed.write_bytes(os.urandom(10))
        seed.chmod(0o600)
    elif case == "folder is a file":
        (tmp / "state" / "file").write_text("")
        seed = tmp / "state" / "file" / "identity.seed"
    return seed


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("mode 0644", "chmod 600"),
        ("wrong size", "32 bytes, not 10"),
        ("folder is a file", "Not a directory"),
    ],
)
def test_identity_problems_exit_78(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    expected: str,
) -> None:
    monkeypatch.setattr(commands, "setup_logging", lambda verbose: None)
    cfg = _config(tmp_path, 4433, _ident_case(tmp_path, case))
    status = commands.cmd_run(argparse.Namespace(config=str(cfg), verbose=False))
    assert status == EXIT_CONFIG == 78
    err = capsys.readouterr().err
    assert err.startswith("wzp: identity ") and expected in err, err


def _failing_mkstemp(code: int) -> Any:
    def mkstemp(*args: Any, **kw: Any) -> Any:
        raise OSError(code, os.strerror(code), str(kw.get("dir")))

    return mkstemp


@pytest.mark.parametrize(
    ("code", "status"), [(errno.EROFS, 78), (errno.EACCES, 78), (errno.ENOSPC, 1)]
)
def test_an_identity_that_cannot_be_created(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    status: int,
) -> None:
    """A read-only or forbidden folder stays so (78); a full disk may not (1: restarted)."""
    monkeypatch.setattr(commands, "setup_logging", lambda verbose: None)
    monkeypatch.setattr(tempfile, "mkstemp", _failing_mkstemp(code))
    seed = tmp_path / "state" / "identity.seed"
    cfg = _config(tmp_path, 4433, seed)
    assert commands.cmd_run(argparse.Namespace(config=str(cfg), verbose=False)) == status
    err = capsys.readouterr().err
    assert f"wzp: identity {seed}: cannot create it: {os.strerror(code)}" in err


def test_identity_problem_statuses() -> None:
    assert identity_problem(SeedFileError("x: too open")) == ("x: too open", EXIT_CONFIG)
    assert identity_problem(PermissionError(errno.EACCES, "Permission denied"))[1] == 78
    assert identity_problem(OSError(errno.EIO, "Input/output error"))[1] == 1


def test_listen_error_texts(busy_udp: int) -> None:
    in_use = OSError(errno.EADDRINUSE, "Address already in use")
    assert listen_error(in_use, ["127.0.0.1"], busy_udp, "someone") == (
        f"UDP port {busy_udp} on 127.0.0.1 is in use (someone, or another program)"
    )
    # 192.0.2.1 (TEST-NET-1) is no address of this machine
    gone = OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
    assert listen_error(gone, ["192.0.2.1"], 4433, "x") == (
        "cannot listen on UDP port 4433 on 192.0.2.1: this machine has no such address"
    )
    # not a bind error, port 0, or nothing fails again: no text (the caller shows exc)
    assert listen_error(OSError(errno.EIO, "I/O"), ["127.0.0.1"], busy_udp, "x") is None
    assert listen_error(in_use, ["127.0.0.1"], 0, "x") is None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        free = int(s.getsockname()[1])
    assert listen_error(in_use, ["127.0.0.1"], free, "x") is None
