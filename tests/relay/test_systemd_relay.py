"""systemd/wzp-relay.service: systemd itself parses it (as tests/test_systemd.py does for
the phone unit, with its helpers), and its sandbox is tight."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.test_systemd import ANALYZE, DAEMON, _env, directives, values
from tests.test_systemd import make_root as _make_root
from tests.test_systemd import verify as _verify

ROOT = Path(__file__).resolve().parent.parent.parent
UNIT_NAME = "wzp-relay.service"
UNIT = ROOT / "systemd" / UNIT_NAME
MAX_EXPOSURE = 1.5

needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def make_root(base: Path, unit_text: str, daemon: str | None = DAEMON) -> Path:
    """A staging root: the host's units, ``unit_text`` as the relay unit, the program."""
    return _make_root(base, unit_text, daemon, UNIT_NAME)


def verify(root: Path) -> list[str]:
    return _verify(root, UNIT_NAME)


@needs_analyze
def test_systemd_accepts_the_relay_unit(tmp_path: Path) -> None:
    assert verify(make_root(tmp_path, UNIT.read_text())) == []


@needs_analyze
@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ("PrivateDevices=yes", "PrivateDevice=yes"),
        ("Type=notify", "Type=notfy"),
        (f"ExecStart={DAEMON} relay", f"ExecStart={DAEMON}d relay"),
    ],
)
def test_a_typo_in_the_relay_unit_fails_verification(tmp_path: Path, good: str, bad: str) -> None:
    text = UNIT.read_text()
    assert good in text
    assert verify(make_root(tmp_path, text.replace(good, bad, 1)))


@needs_analyze
def test_relay_exposure_score_is_low(tmp_path: Path) -> None:
    assert ANALYZE is not None
    result = subprocess.run(
        [
            ANALYZE,
            "security",
            "--offline=yes",
            f"--root={make_root(tmp_path, UNIT.read_text())}",
            "--no-pager",
            UNIT_NAME,
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if "Overall exposure level" in x)
    score = float(line.split(":")[1].split()[0])
    assert score <= MAX_EXPOSURE, result.stdout


def test_the_relay_unit_runs_wzp_relay_as_its_own_user_under_notify() -> None:
    text = UNIT.read_text()
    assert values(text, "Service", "ExecStart") == [f"{DAEMON} relay --config /etc/wzp/relay.toml"]
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "RestartPreventExitStatus": "78",
        "User": "wzp-relay",
        "Group": "wzp-relay",
        "StateDirectory": "wzp-relay",
        "StateDirectoryMode": "0700",
        "RuntimeDirectory": "wzp-relay",
        "PrivateDevices": "yes",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallFilter": "@system-service",
    }
    for key, value in expected.items():
        assert values(text, "Service", key) == [value], key
    # no sound or GPIO for a relay
    assert values(text, "Service", "SupplementaryGroups") == []
    assert values(text, "Service", "DeviceAllow") == []
    assert not any(k == "SupplementaryGroups" for _, k, _ in directives(text))


def test_the_relay_unit_stops_restarting_on_what_a_restart_cannot_fix() -> None:
    from wzp.daemon.identity_store import SeedFileError
    from wzp.daemon.startup import identity_problem
    from wzp.relay.config import EXIT_CONFIG

    text = UNIT.read_text()
    assert values(text, "Service", "Restart") == ["on-failure"]
    prevented = " ".join(values(text, "Service", "RestartPreventExitStatus")).split()
    assert str(EXIT_CONFIG) in prevented
    assert str(identity_problem(SeedFileError("mode 0644"))[1]) in prevented


def test_relay_unit_paths_match_the_config_defaults() -> None:
    from wzp.relay.config import DEFAULT_CONFIG_PATH, DEFAULT_CONTROL_SOCKET, DEFAULT_IDENTITY

    text = UNIT.read_text()
    state = values(text, "Service", "StateDirectory")[0]
    runtime = values(text, "Service", "RuntimeDirectory")[0]
    assert DEFAULT_IDENTITY.parent == Path("/var/lib") / state
    assert DEFAULT_CONTROL_SOCKET.parent == Path("/run") / runtime
    assert str(DEFAULT_CONFIG_PATH) in values(text, "Service", "ExecStart")[0]
