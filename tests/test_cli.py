"""The console script: ``wzp --version`` and ``wzp identity``."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import wzp
from wzp.crypto.identity import Identity
from wzp.daemon.identity_store import write_seed

from .vectors import load


def _wzp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("wzp")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "wzp.cli"]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=60, env=env or dict(os.environ)
    )


def test_version() -> None:
    result = _wzp("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"wzp {wzp.__version__}"


def test_identity_created_once_then_stable(tmp_path: Path) -> None:
    path = tmp_path / "id" / "identity.seed"
    first = _wzp("identity", "--path", str(path))
    assert first.returncode == 0, first.stderr
    assert re.fullmatch(r"([0-9a-f]{4}:){7}[0-9a-f]{4}\n", first.stdout)
    assert "created" in first.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = _wzp("identity", "--path", str(path))
    assert second.returncode == 0
    assert second.stdout == first.stdout
    assert "created" not in second.stderr
    # the secret seed never appears in any output
    seed = path.read_bytes()
    for out in (first.stdout, first.stderr, second.stdout, second.stderr):
        assert seed.hex() not in out


def test_identity_prints_the_vector_fingerprint(tmp_path: Path) -> None:
    case = load("identity")["cases"][0]
    path = tmp_path / "identity.seed"
    write_seed(path, bytes.fromhex(case["seed"]))
    result = _wzp("identity", "--path", str(path), "--no-create")
    assert result.returncode == 0
    assert result.stdout.strip() == case["fingerprint_text"]
    assert Identity.from_seed(path.read_bytes()).fingerprint_text == case["fingerprint_text"]


def test_identity_errors_are_clear(tmp_path: Path) -> None:
    missing = _wzp("identity", "--path", str(tmp_path / "none"), "--no-create")
    assert missing.returncode == 1
    assert "no identity at" in missing.stderr
    bad = tmp_path / "bad.seed"
    bad.write_bytes(b"too short")
    os.chmod(bad, 0o600)
    result = _wzp("identity", "--path", str(bad))
    assert result.returncode == 2
    assert "32 bytes" in result.stderr
    assert "Traceback" not in result.stderr
    os.chmod(bad, 0o644)
    result = _wzp("identity", "--path", str(bad))
    assert result.returncode == 2 and "chmod 600" in result.stderr


def test_identity_uses_env_path(tmp_path: Path) -> None:
    env = dict(os.environ, WZP_IDENTITY=str(tmp_path / "env.seed"))
    result = _wzp("identity", env=env)
    assert result.returncode == 0
    assert (tmp_path / "env.seed").exists()


def test_no_command_prints_help() -> None:
    result = _wzp()
    assert result.returncode == 2
    assert "identity" in result.stderr


def test_an_installed_handset_means_its_identity_for_every_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user other than root on a handset: the daemon's state folder (0700) exists, and
    the identity meant is the handset's, never a new one of the user's own."""
    from wzp import cli

    system = tmp_path / "var/lib/wzp/identity.seed"
    monkeypatch.setattr(cli, "SYSTEM_IDENTITY", system)
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    monkeypatch.delenv("WZP_IDENTITY", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "home"))
    assert cli.default_identity_path() == tmp_path / "home/wzp/identity.seed"  # not installed
    system.parent.mkdir(parents=True)
    system.parent.chmod(0o700)
    assert cli.default_identity_path() == system


@pytest.mark.parametrize("daemon_fp", [None, "2081:9d7d:864a:95b6:7d22:fd20:70f0:9790"])
def test_an_unreadable_handset_identity_asks_the_daemon_or_says_sudo(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    daemon_fp: str | None,
) -> None:
    from wzp import cli
    from wzp.daemon import identity_store

    def denied(path: Path) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(identity_store, "load_or_create_seed", denied)
    monkeypatch.setattr(cli, "_daemon_fingerprint", lambda: daemon_fp)
    args = cli.build_parser().parse_args(["identity", "--path", str(tmp_path / "id.seed")])
    rc = args.func(args)
    out, err = capsys.readouterr()
    if daemon_fp is None:
        assert rc == 2 and "sudo wzp identity" in err and "Traceback" not in err
        assert out == ""
    else:
        assert rc == 0 and out.strip() == daemon_fp


def test_dial_and_listen_say_why_in_words() -> None:
    """A connect timeout has no text of its own ("cannot reach host:port: " said nothing),
    and a connection that ended before any call is not "call ended: no call ()"."""
    from types import SimpleNamespace

    from wzp import cli
    from wzp.proto.session import EndReason

    assert cli._why(TimeoutError()) == "no answer (timed out)"
    assert cli._why(ConnectionRefusedError(111, "Connection refused")) == (
        "[Errno 111] Connection refused"
    )
    engine = SimpleNamespace(
        session=SimpleNamespace(end_detail=""), stats=SimpleNamespace(rekeys=2)
    )
    conn = SimpleNamespace(close_reason="peer fingerprint mismatch")
    assert cli._ended(None, engine, conn) == (
        "connection closed with no call (peer fingerprint mismatch)"
    )
    engine.session.end_detail = "peer hung up"
    assert cli._ended(EndReason.NORMAL, engine, conn) == (
        "call ended: Normal (peer hung up); rekeys 2"
    )
