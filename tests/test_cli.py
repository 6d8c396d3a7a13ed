"""The console script: ``wzp --version`` and ``wzp identity``."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

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
