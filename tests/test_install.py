"""install.sh's Raspberry Pi mode, staged with ``--root DIR``: files land under DIR with
their real modes, commands that would change this machine are only printed ("would run:"),
a second run changes nothing, and a user's config and identity survive everything but
``--uninstall --purge``. (``--dev`` is what the rest of the suite runs in.)
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / "install.sh"
UNIT = ROOT / "systemd" / "wzp-phone.service"
TEMPLATE = ROOT / "device" / "wzp" / "daemon" / "wzp.toml.template"
VENV = "/opt/wzp/venv"
SEED = "var/lib/wzp/identity.seed"
CONFIG = "etc/wzp/wzp.toml"
UNIT_PATH = "etc/systemd/system/wzp-phone.service"
#: what a live install would create on this machine; a staged run must not touch them
LIVE_PATHS = [
    Path("/opt/wzp"),
    Path("/etc/wzp"),
    Path("/var/lib/wzp"),
    Path("/etc/systemd/system/wzp-phone.service"),
    Path("/usr/local/bin/wzp"),
]
BASH = shutil.which("bash") or "/bin/bash"


def install(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # PYTHON: the interpreter whose version the installer checks and whose `-m venv` it
    # would run; this one is known to be >= 3.11
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("SUDO_USER", None)
    result = subprocess.run(
        [BASH, str(INSTALL), *args], capture_output=True, text=True, env=env, timeout=60
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def would_run(out: str) -> list[str]:
    return [
        line.removeprefix("would run: ")
        for line in out.splitlines()
        if line.startswith("would run: ")
    ]


def tree(root: Path) -> dict[str, tuple[int, str, int]]:
    """path -> (mode, sha256 or link target, mtime): any rewrite or chmod shows."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            what = "-> " + os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            what = "dir"
        out[str(path.relative_to(root))] = (st.st_mode, what, st.st_mtime_ns)
    return out


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def write_users(root: Path, passwd: str, group: str) -> None:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "passwd").write_text(passwd)
    (root / "etc" / "group").write_text(group)


@pytest.fixture
def staged(tmp_path: Path) -> Path:
    assert TEMPLATE.exists(), "the config template ships in the package"
    return tmp_path / "root"


# ------------------------------------------------------------------------------ script


def test_the_script_parses() -> None:
    result = subprocess.run([BASH, "-n", str(INSTALL)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_shellcheck_is_clean() -> None:
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run([exe, str(INSTALL)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["--purge"],
        ["--root"],
        ["--root", "/"],
        ["--dev", "--root", "x"],
        ["--uninstall", "--now"],
    ],
    ids=lambda a: " ".join(a),
)
def test_bad_options_exit_2_with_usage(args: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [BASH, str(INSTALL), *args], capture_output=True, text=True, cwd=tmp_path, timeout=30
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "usage:" in result.stderr or "--root /" in result.stderr
    assert result.stdout == ""


def test_help_exits_0() -> None:
    result = install("--help")
    assert "--uninstall" in result.stderr and "--root DIR" in result.stderr


def test_a_live_install_refuses_to_run_without_root() -> None:
    cmd = [BASH, str(INSTALL)]
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("root without runuser: cannot try as an unprivileged user")
        cmd = [runuser, "-u", "nobody", "--", *cmd]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd="/", timeout=30)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "needs root" in result.stderr
    assert result.stdout == ""


# ------------------------------------------------------------------------------ install


def test_staged_install_places_the_files_and_only_prints_commands(staged: Path) -> None:
    before = [p.exists() or p.is_symlink() for p in LIVE_PATHS]
    out = install("--root", str(staged)).stdout

    unit = staged / UNIT_PATH
    assert unit.read_bytes() == UNIT.read_bytes()
    assert mode(unit) == 0o644
    assert f"ExecStart={VENV}/bin/wzp run\n" in unit.read_text()
    config = staged / CONFIG
    assert config.read_bytes() == TEMPLATE.read_bytes()
    assert mode(config) == 0o640
    assert mode(staged / "etc/wzp") == 0o755
    assert mode(staged / "var/lib/wzp") == 0o700
    assert mode(staged / "opt/wzp") == 0o755
    link = staged / "usr/local/bin/wzp"
    assert link.is_symlink() and os.readlink(link) == f"{VENV}/bin/wzp"
    # the identity is made on the device, by the daemon's user: never by a staged run
    assert not (staged / SEED).exists()

    assert would_run(out) == [
        "apt-get update",
        "apt-get install -y --no-install-recommends libopus0 python3-venv python3-dev gcc "
        "libasound2-dev python3-lgpio alsa-utils",
        "groupadd --system audio",
        "groupadd --system gpio",
        "useradd --system --user-group --home-dir /var/lib/wzp --no-create-home "
        "--shell /usr/sbin/nologin --comment 'wzp handset daemon' --groups audio,gpio wzp",
        "chown root:wzp /etc/wzp",
        "chown -R wzp:wzp /var/lib/wzp",
        f"{sys.executable} -m venv --system-site-packages {VENV}",
        f"{VENV}/bin/python -m pip install --disable-pip-version-check {ROOT}",
        "chown root:wzp /etc/wzp/wzp.toml",
        f"runuser -u wzp -- {VENV}/bin/wzp identity --path /var/lib/wzp/identity.seed",
        f"runuser -u wzp -- {VENV}/bin/wzp config check",
        "systemctl daemon-reload",
        "systemctl enable --quiet wzp-phone.service",
        "systemctl restart wzp-phone.service",
    ]
    # nothing was executed for real, and this machine is as it was
    assert not [line for line in out.splitlines() if line.startswith("run: ")]
    assert [p.exists() or p.is_symlink() for p in LIVE_PATHS] == before


def test_a_second_run_changes_nothing(staged: Path) -> None:
    install("--root", str(staged))
    first = tree(staged)
    out = install("--root", str(staged)).stdout
    assert tree(staged) == first
    # no file report says it wrote anything ("creating" lines are would-run steps)
    reports = [line for line in out.splitlines() if re.match(r"/\S+: ", line)]
    assert len(reports) >= 6, out
    changed = re.compile(r": (installed|updated|created|mode set to|removed)\b")
    assert [line for line in reports if changed.search(line)] == []
    for path in ("/etc/systemd/system/wzp-phone.service", "/etc/wzp/wzp.toml", "/var/lib/wzp"):
        assert f"{path}: unchanged" in out
    # the unit did not change: no daemon-reload
    assert "systemctl daemon-reload" not in would_run(out)


def test_existing_config_and_identity_are_kept_byte_for_byte(staged: Path) -> None:
    config = staged / CONFIG
    seed = staged / SEED
    config.parent.mkdir(parents=True)
    config.write_text('[call]\ndefault_contact = "kitchen"\n')
    config.chmod(0o600)
    seed.parent.mkdir(parents=True)
    seed.write_bytes(bytes(range(32)))
    seed.chmod(0o600)
    kept = {p: (p.read_bytes(), mode(p)) for p in (config, seed)}

    for _ in range(2):
        out = install("--root", str(staged)).stdout
        assert {p: (p.read_bytes(), mode(p)) for p in (config, seed)} == kept
    assert "/etc/wzp/wzp.toml: kept" in out
    assert "/var/lib/wzp/identity.seed: kept" in out


def test_a_stale_unit_is_replaced_and_its_mode_fixed(staged: Path) -> None:
    unit = staged / UNIT_PATH
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/usr/bin/old\n")
    out = install("--root", str(staged)).stdout
    assert "/etc/systemd/system/wzp-phone.service: updated" in out
    assert unit.read_bytes() == UNIT.read_bytes()
    unit.chmod(0o600)
    out = install("--root", str(staged)).stdout
    assert "/etc/systemd/system/wzp-phone.service: mode set to 0644" in out
    assert mode(unit) == 0o644
    assert "systemctl daemon-reload" in would_run(out)


def test_users_and_groups_come_from_the_staged_root(staged: Path) -> None:
    write_users(
        staged,
        "root:x:0:0::/root:/bin/bash\nwzp:x:999:999::/var/lib/wzp:/usr/sbin/nologin\n",
        "root:x:0:\naudio:x:29:wzp\ngpio:x:997:pi\nwzp:x:999:\n",
    )
    out = install("--root", str(staged)).stdout
    cmds = would_run(out)
    assert "usermod -a -G gpio wzp" in cmds
    assert not [c for c in cmds if c.startswith(("useradd", "groupadd"))]
    assert "group gpio: unchanged" in out


# ---------------------------------------------------------------------------- uninstall


def _installed_with_placeholders(staged: Path) -> None:
    write_users(
        staged,
        "wzp:x:999:999::/var/lib/wzp:/usr/sbin/nologin\n",
        "audio:x:29:wzp\ngpio:x:997:wzp\nwzp:x:999:\n",
    )
    install("--root", str(staged))
    # what the live install would also have made: the venv, the boot overlay, the socket
    venv_wzp = staged / VENV.lstrip("/") / "bin" / "wzp"
    venv_wzp.parent.mkdir(parents=True)
    venv_wzp.write_text("#!/bin/sh\n")
    (staged / "etc/wzp/boot.toml").write_text("[audio]\n")
    (staged / "run/wzp").mkdir(parents=True)
    (staged / "run/wzp/control.sock").write_text("")
    (staged / SEED).write_bytes(b"\x01" * 32)
    (staged / SEED).chmod(0o600)


def test_uninstall_removes_the_install_but_keeps_identity_and_config(staged: Path) -> None:
    _installed_with_placeholders(staged)
    config_bytes = (staged / CONFIG).read_bytes()
    out = install("--uninstall", "--root", str(staged)).stdout
    for gone in (UNIT_PATH, "opt/wzp", "usr/local/bin/wzp", "etc/wzp/boot.toml", "run/wzp"):
        assert not (staged / gone).exists() and not (staged / gone).is_symlink(), gone
    assert (staged / SEED).read_bytes() == b"\x01" * 32
    assert mode(staged / SEED) == 0o600
    assert (staged / CONFIG).read_bytes() == config_bytes
    assert would_run(out) == [
        "systemctl disable --now --quiet wzp-phone.service",
        "systemctl daemon-reload",
        "userdel wzp",
        "groupdel wzp",
    ]
    assert "--purge removes them" in out


def test_uninstall_purge_removes_identity_and_config(staged: Path) -> None:
    _installed_with_placeholders(staged)
    out = install("--uninstall", "--purge", "--root", str(staged)).stdout
    assert not (staged / "var/lib/wzp").exists()
    assert not (staged / "etc/wzp").exists()
    assert not (staged / UNIT_PATH).exists()
    assert "/var/lib/wzp: removed (purge" in out


def test_uninstall_twice_is_harmless(staged: Path) -> None:
    install("--root", str(staged))
    install("--uninstall", "--root", str(staged))
    out = install("--uninstall", "--root", str(staged)).stdout
    assert "/etc/systemd/system/wzp-phone.service: absent" in out
    assert "/opt/wzp: absent" in out
