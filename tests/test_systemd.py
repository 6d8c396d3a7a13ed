"""systemd/wzp-phone.service: systemd itself parses it, and its sandbox keeps what the
platform needs (PLATFORM.md, systemd section).

``systemd-analyze verify`` checks that every ``Exec*`` program exists, so the unit is
verified inside a staged root (``--root``): the host's own unit files (for the targets it
orders against), the repository's unit file byte for byte at /etc/systemd/system, and an
executable at /opt/wzp/venv/bin/wzp, where install.sh puts the daemon. Nothing in the unit
is rewritten. verify exits 0 even for an unknown key or a bad value (it logs "..., ignoring"),
so any line of its output that names the unit counts as a failure; the typo tests show
that this catches a misspelt directive, a bad value, a misspelt section and a wrong path.

Run this file as a script to rewrite bench/results/systemd-security.txt.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT_NAME = "wzp-phone.service"
UNIT = ROOT / "systemd" / UNIT_NAME
SECURITY_RESULT = ROOT / "bench" / "results" / "systemd-security.txt"
DAEMON = "/opt/wzp/venv/bin/wzp"
ANALYZE = shutil.which("systemd-analyze")
#: exposure score (0 = locked down, 10 = exposed) the unit must stay at or below
MAX_EXPOSURE = 2.5

needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def _system_unit_dir() -> Path:
    for candidate in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if (candidate / "multi-user.target").exists():
            return candidate
    pytest.skip("no system unit directory with multi-user.target on this machine")


def make_root(
    base: Path, unit_text: str, daemon: str | None = DAEMON, unit_name: str = UNIT_NAME
) -> Path:
    """A staging root holding the host's units, ``unit_text`` as the unit and the daemon."""
    root = base / "root"
    units = root / "usr" / "lib" / "systemd" / "system"
    shutil.copytree(_system_unit_dir(), units, symlinks=True)
    # the host's unit symlinks are absolute (/lib/systemd/system/...): inside --root they
    # resolve against the root, so give it the merged-/usr link as well
    (root / "lib").symlink_to("usr/lib")
    etc_units = root / "etc" / "systemd" / "system"
    etc_units.mkdir(parents=True)
    (etc_units / unit_name).write_text(unit_text)
    if daemon is not None:
        exe = root / daemon.lstrip("/")
        exe.parent.mkdir(parents=True)
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(0o755)
    return root


def _env() -> dict[str, str]:
    return {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"}


def verify(root: Path, unit_name: str = UNIT_NAME) -> list[str]:
    """systemd's complaints about the unit (empty = accepted)."""
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "verify", f"--root={root}", "--man=no", unit_name],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    lines = (result.stdout + result.stderr).splitlines()
    problems = [line for line in lines if unit_name.removesuffix(".service") in line]
    if result.returncode != 0:
        problems.append(f"systemd-analyze verify exited {result.returncode}: {lines}")
    return problems


def security(root: Path) -> tuple[float, str]:
    """(overall exposure, the full report) from ``systemd-analyze security --offline``."""
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", f"--root={root}", "--no-pager", UNIT_NAME],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert found, result.stdout
    return float(found.group(1)), result.stdout


def systemd_version() -> str:
    assert ANALYZE is not None
    out = subprocess.run([ANALYZE, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0].strip()


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order (keys may repeat)."""
    out = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {raw!r}"
        out.append((section, key.strip(), value.strip()))
    return out


def values(text: str, section: str, key: str) -> list[str]:
    return [v for s, k, v in directives(text) if s == section and k == key]


# ------------------------------------------------------------------------------ verify


@needs_analyze
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    assert verify(make_root(tmp_path, UNIT.read_text())) == []


MUTATIONS = [
    pytest.param("ProtectSystem=strict", "ProtectSytem=strict", id="misspelt-key"),
    pytest.param("Type=notify", "Type=notfy", id="bad-value"),
    pytest.param("WatchdogSec=30", "WatchdogSec=30x", id="bad-time"),
    pytest.param(
        "RestrictAddressFamilies=AF_UNIX", "RestrictAddressFamilies=AF_UNX", id="bad-family"
    ),
    pytest.param("[Service]", "[Servce]", id="misspelt-section"),
    pytest.param(f"ExecStart={DAEMON} run", f"ExecStart={DAEMON}d run", id="missing-program"),
]


@needs_analyze
@pytest.mark.parametrize(("good", "bad"), MUTATIONS)
def test_a_typo_in_the_unit_fails_verification(tmp_path: Path, good: str, bad: str) -> None:
    text = UNIT.read_text()
    assert good in text
    problems = verify(make_root(tmp_path, text.replace(good, bad, 1)))
    assert problems, f"{bad!r} passed verification"


@needs_analyze
def test_verification_needs_the_daemon_program(tmp_path: Path) -> None:
    problems = verify(make_root(tmp_path, UNIT.read_text(), daemon=None))
    assert any("not executable" in p for p in problems), problems


# ----------------------------------------------------------------------------- content


def test_the_unit_runs_the_daemon_from_the_venv_as_a_notify_service() -> None:
    text = UNIT.read_text()
    assert values(text, "Service", "ExecStart") == [f"{DAEMON} run"]
    # "+": as root outside the sandbox (boot partition, /etc/wzp); "-": never blocks start
    assert values(text, "Service", "ExecStartPre") == [f"+-{DAEMON} config apply-boot"]
    assert values(text, "Service", "ExecStopPost") == [f"-{DAEMON} leds off"]
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "RestartSec": "2",
        "RestartPreventExitStatus": "78",
        "User": "wzp",
        "Group": "wzp",
        "SupplementaryGroups": "audio gpio",
        "StateDirectory": "wzp",
        "StateDirectoryMode": "0700",
        "RuntimeDirectory": "wzp",
        "RuntimeDirectoryMode": "0750",
        "ConfigurationDirectory": "wzp",
        "WorkingDirectory": "/run/wzp",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
        "DevicePolicy": "closed",
    }
    for key, value in expected.items():
        assert values(text, "Service", key) == [value], key
    assert "WZP_IDENTITY=/var/lib/wzp/identity.seed" in values(text, "Service", "Environment")
    assert values(text, "Unit", "After") == ["network-online.target sound.target"]
    assert values(text, "Unit", "Wants") == ["network-online.target"]
    assert values(text, "Install", "WantedBy") == ["multi-user.target"]


def test_the_unit_stops_restarting_on_what_a_restart_cannot_fix() -> None:
    """A refused config and an unusable identity (seed file too open, wrong size, folder
    not writable) exit EXIT_CONFIG; systemd must not restart those every 2 s forever."""
    from wzp.daemon.identity_store import SeedFileError
    from wzp.daemon.startup import EXIT_CONFIG, identity_problem

    text = UNIT.read_text()
    assert values(text, "Service", "Restart") == ["on-failure"]
    assert values(text, "Unit", "StartLimitIntervalSec") == ["0"]  # else it would stop anyway
    prevented = " ".join(values(text, "Service", "RestartPreventExitStatus")).split()
    assert str(EXIT_CONFIG) in prevented
    assert str(identity_problem(SeedFileError("mode 0644"))[1]) in prevented
    assert str(identity_problem(PermissionError(13, "Permission denied"))[1]) in prevented


def test_devices_are_alsa_and_the_gpio_chips_only() -> None:
    text = UNIT.read_text()
    assert sorted(values(text, "Service", "DeviceAllow")) == [
        "char-alsa rw",
        "char-gpiochip rw",
    ]


def test_gpiochip_is_the_kernel_name_of_the_gpio_major_where_there_is_one() -> None:
    """On a machine with GPIO character devices (a Pi), DeviceAllow's group name must be
    the one /proc/devices lists for their major; elsewhere there is nothing to compare."""
    gpio_devs = sorted(Path("/dev").glob("gpiochip*"))
    if not gpio_devs:
        pytest.skip("no /dev/gpiochip* here")
    major = os.major(gpio_devs[0].stat().st_rdev)
    names = {}
    section = ""
    for line in Path("/proc/devices").read_text().splitlines():
        if line.endswith(":"):
            section = line
        elif section.startswith("Character") and line.strip():
            num, name = line.split()
            names[int(num)] = name
    assert names.get(major) == "gpiochip"


def test_the_sandbox_leaves_out_what_breaks_audio() -> None:
    """PrivateDevices hides /dev/snd; ProtectClock's device rule drops /dev/rtc, which kept
    ALSA from registering a USB card; ProcSubset=pid hides /proc/asound; PrivateUsers maps
    the audio and gpio groups away."""
    keys = {(k, v.lower()) for s, k, v in directives(UNIT.read_text()) if s == "Service"}
    for key in ("PrivateDevices", "ProtectClock", "PrivateUsers"):
        assert not any(k == key and v in ("yes", "true", "on", "1") for k, v in keys), key
    assert ("ProcSubset", "pid") not in keys


# ----------------------------------------------------------------------------- security


@needs_analyze
def test_exposure_score_is_low_and_recorded(tmp_path: Path) -> None:
    score, report = security(make_root(tmp_path, UNIT.read_text()))
    assert score <= MAX_EXPOSURE, report
    recorded = SECURITY_RESULT.read_text()
    if systemd_version() not in recorded:
        pytest.skip(f"{SECURITY_RESULT.name} was made with another systemd version")
    assert f"{UNIT_NAME}: {score:.1f}" in recorded, (
        f"{SECURITY_RESULT} is stale: run `.venv/bin/python tests/test_systemd.py`"
    )


def write_security_result(tmp: Path) -> str:
    score, report = security(make_root(tmp, UNIT.read_text()))
    text = (
        f"# systemd-analyze security --offline=yes {UNIT_NAME}\n"
        f"# {systemd_version()}; written by tests/test_systemd.py\n"
        f"# exposure 0.0 = fully locked down .. 10.0 = fully exposed\n"
        f"Overall exposure level for {UNIT_NAME}: {score:.1f}\n\n{report}"
    )
    SECURITY_RESULT.parent.mkdir(parents=True, exist_ok=True)
    SECURITY_RESULT.write_text(text)
    return f"{SECURITY_RESULT}: exposure {score:.1f}"


if __name__ == "__main__":
    import tempfile

    if ANALYZE is None:
        sys.exit("systemd-analyze is not installed")
    with tempfile.TemporaryDirectory() as tmpdir:
        print(write_security_result(Path(tmpdir)))
