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
RELAY_UNIT = ROOT / "systemd" / "wzp-relay.service"
RELAY_TEMPLATE = ROOT / "device" / "wzp" / "relay" / "relay.toml.template"
RELAY_SEED = "var/lib/wzp-relay/identity.seed"
RELAY_CONFIG = "etc/wzp/relay.toml"
RELAY_UNIT_PATH = "etc/systemd/system/wzp-relay.service"
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
        ["--relay", "--purge"],
        ["--relay", "--dev"],
        ["--dev", "--relay"],
        ["--relay", "--offline", "."],
        ["--relay", "--root"],
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
    assert "--relay" in result.stderr


@pytest.mark.parametrize("args", [[], ["--relay"]], ids=["handset", "relay"])
def test_a_live_install_refuses_to_run_without_root(args: list[str]) -> None:
    cmd = [BASH, str(INSTALL), *args]
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


def assert_staged(
    staged: Path, unit_path: str, unit_src: Path, exec_args: str, config: str,
    template: Path, state_dir: str, seed: str,
) -> None:  # fmt: skip
    """The files a staged install places, with their modes; no identity (the device makes
    it, as the service's user: never a staged run)."""
    unit = staged / unit_path
    assert unit.read_bytes() == unit_src.read_bytes()
    assert mode(unit) == 0o644
    assert f"ExecStart={VENV}/bin/wzp {exec_args}\n" in unit.read_text()
    assert (staged / config).read_bytes() == template.read_bytes()
    assert mode(staged / config) == 0o640
    assert mode(staged / "etc/wzp") == 0o755
    assert mode(staged / state_dir) == 0o700
    assert mode(staged / "opt/wzp") == 0o755
    link = staged / "usr/local/bin/wzp"
    assert link.is_symlink() and os.readlink(link) == f"{VENV}/bin/wzp"
    assert not (staged / seed).exists()


def test_staged_install_places_the_files_and_only_prints_commands(staged: Path) -> None:
    before = [p.exists() or p.is_symlink() for p in LIVE_PATHS]
    out = install("--root", str(staged)).stdout

    assert_staged(staged, UNIT_PATH, UNIT, "run", CONFIG, TEMPLATE, "var/lib/wzp", SEED)

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


# -------------------------------------------------------------------------------- relay
#
# --relay: the relay's user, config, identity and unit beside the handset's (one host may
# run both), sharing /opt/wzp/venv and /usr/local/bin/wzp.

RELAY_COMMANDS = [
    "apt-get update",
    "apt-get install -y --no-install-recommends libopus0 python3-venv python3-dev gcc "
    "libasound2-dev",
    "useradd --system --user-group --home-dir /var/lib/wzp-relay --no-create-home "
    "--shell /usr/sbin/nologin --comment 'wzp relay' wzp-relay",
    "chown -R wzp-relay:wzp-relay /var/lib/wzp-relay",
    f"{sys.executable} -m venv --system-site-packages {VENV}",
    f"{VENV}/bin/python -m pip install --disable-pip-version-check {ROOT}",
    "chown root:wzp-relay /etc/wzp/relay.toml",
    f"runuser -u wzp-relay -- {VENV}/bin/wzp identity --path /var/lib/wzp-relay/identity.seed",
    f"runuser -u wzp-relay -- {VENV}/bin/wzp relay --check-config --config /etc/wzp/relay.toml",
    "systemctl daemon-reload",
    "systemctl enable --quiet wzp-relay.service",
    "systemctl restart wzp-relay.service",
]
RELAY_LIVE_PATHS = [
    *LIVE_PATHS,
    Path("/etc/systemd/system/wzp-relay.service"),
    Path("/var/lib/wzp-relay"),
]


def test_staged_relay_install_places_the_files_and_only_prints_commands(staged: Path) -> None:
    before = [p.exists() or p.is_symlink() for p in RELAY_LIVE_PATHS]
    out = install("--relay", "--root", str(staged)).stdout

    assert_staged(
        staged, RELAY_UNIT_PATH, RELAY_UNIT, "relay --config /etc/wzp/relay.toml",
        RELAY_CONFIG, RELAY_TEMPLATE, "var/lib/wzp-relay", RELAY_SEED,
    )  # fmt: skip
    # nothing of the handset's
    for path in (CONFIG, UNIT_PATH, "var/lib/wzp"):
        assert not (staged / path).exists(), path

    assert would_run(out) == RELAY_COMMANDS
    assert not [line for line in out.splitlines() if line.startswith("run: ")]
    assert [p.exists() or p.is_symlink() for p in RELAY_LIVE_PATHS] == before
    # the summary: where the fingerprint comes from, and what to do next
    assert "wzp relay installed (staged under" in out
    assert f"sudo -u wzp-relay {VENV}/bin/wzp identity --path /var/lib/wzp-relay/" in out
    assert "[rooms.NAME]" in out and "open UDP port 4433" in out


def test_a_second_relay_run_changes_nothing(staged: Path) -> None:
    install("--relay", "--root", str(staged))
    first = tree(staged)
    out = install("--relay", "--root", str(staged)).stdout
    assert tree(staged) == first
    reports = [line for line in out.splitlines() if re.match(r"/\S+: ", line)]
    assert len(reports) >= 6, out
    changed = re.compile(r": (installed|updated|created|mode set to|removed)\b")
    assert [line for line in reports if changed.search(line)] == []
    for path in (
        "/etc/systemd/system/wzp-relay.service",
        "/etc/wzp/relay.toml",
        "/var/lib/wzp-relay",
        "/usr/local/bin/wzp",
    ):
        assert f"{path}: unchanged" in out
    # the same commands but the daemon-reload (the unit did not change)
    assert would_run(out) == [c for c in RELAY_COMMANDS if c != "systemctl daemon-reload"]


def test_relay_keeps_an_existing_config_and_identity_byte_for_byte(staged: Path) -> None:
    config = staged / RELAY_CONFIG
    seed = staged / RELAY_SEED
    config.parent.mkdir(parents=True)
    config.write_text('port = 5000\n[rooms.porch]\nallow = "open"\n')
    config.chmod(0o600)
    seed.parent.mkdir(parents=True)
    seed.write_bytes(bytes(range(32)))
    seed.chmod(0o600)
    kept = {p: (p.read_bytes(), mode(p)) for p in (config, seed)}

    for _ in range(2):
        out = install("--relay", "--root", str(staged)).stdout
        assert {p: (p.read_bytes(), mode(p)) for p in (config, seed)} == kept
    assert "/etc/wzp/relay.toml: kept" in out
    assert "/var/lib/wzp-relay/identity.seed: kept" in out
    # the kept seed still goes to the relay's user (a reinstall may give it a new uid)
    assert "chown -R wzp-relay:wzp-relay /var/lib/wzp-relay" in would_run(out)


def test_relay_user_and_group_come_from_the_staged_root(staged: Path) -> None:
    write_users(
        staged,
        "wzp-relay:x:998:998::/var/lib/wzp-relay:/usr/sbin/nologin\n",
        "wzp-relay:x:998:\n",
    )
    out = install("--relay", "--root", str(staged)).stdout
    assert not [c for c in would_run(out) if c.startswith(("useradd", "groupadd", "usermod"))]
    assert "user wzp-relay: unchanged" in out
    # a group left behind without its user: the new user joins it
    write_users(staged, "root:x:0:0::/root:/bin/bash\n", "wzp-relay:x:998:\n")
    out = install("--relay", "--root", str(staged)).stdout
    assert [c for c in would_run(out) if c.startswith("useradd")] == [
        "useradd --system --gid wzp-relay --home-dir /var/lib/wzp-relay --no-create-home "
        "--shell /usr/sbin/nologin --comment 'wzp relay' wzp-relay"
    ]


def test_relay_from_a_wheel_with_offline_dependencies(staged: Path, tmp_path: Path) -> None:
    wheel = tmp_path / "wzp-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    out = install("--relay", "--wheel", str(wheel), "--offline", str(wheels), "--root", str(staged))
    pip = [c for c in would_run(out.stdout) if " -m pip " in c]
    assert pip == [
        f"{VENV}/bin/python -m pip install -q --disable-pip-version-check --no-index "
        f"--find-links {wheels} {wheel}"
    ]
    assert (staged / RELAY_CONFIG).read_bytes() == RELAY_TEMPLATE.read_bytes()


def _relay_installed_with_placeholders(staged: Path) -> None:
    write_users(
        staged,
        "wzp-relay:x:998:998::/var/lib/wzp-relay:/usr/sbin/nologin\n",
        "wzp-relay:x:998:\n",
    )
    install("--relay", "--root", str(staged))
    venv_wzp = staged / VENV.lstrip("/") / "bin" / "wzp"
    venv_wzp.parent.mkdir(parents=True, exist_ok=True)
    venv_wzp.write_text("#!/bin/sh\n")
    (staged / "run/wzp-relay").mkdir(parents=True)
    (staged / "run/wzp-relay/control.sock").write_text("")
    (staged / RELAY_SEED).write_bytes(b"\x02" * 32)
    (staged / RELAY_SEED).chmod(0o600)


def test_relay_uninstall_keeps_identity_and_config(staged: Path) -> None:
    _relay_installed_with_placeholders(staged)
    config_bytes = (staged / RELAY_CONFIG).read_bytes()
    out = install("--relay", "--uninstall", "--root", str(staged)).stdout
    for gone in (RELAY_UNIT_PATH, "opt/wzp", "usr/local/bin/wzp", "run/wzp-relay"):
        assert not (staged / gone).exists() and not (staged / gone).is_symlink(), gone
    assert (staged / RELAY_SEED).read_bytes() == b"\x02" * 32
    assert mode(staged / RELAY_SEED) == 0o600
    assert (staged / RELAY_CONFIG).read_bytes() == config_bytes
    assert would_run(out) == [
        "systemctl disable --now --quiet wzp-relay.service",
        "systemctl daemon-reload",
        "userdel wzp-relay",
        "groupdel wzp-relay",
    ]
    assert "--relay --uninstall --purge removes them" in out
    # twice is harmless
    out = install("--relay", "--uninstall", "--root", str(staged)).stdout
    assert "/etc/systemd/system/wzp-relay.service: absent" in out


def test_relay_uninstall_purge_removes_identity_and_config(staged: Path) -> None:
    _relay_installed_with_placeholders(staged)
    out = install("--relay", "--uninstall", "--purge", "--root", str(staged)).stdout
    assert not (staged / "var/lib/wzp-relay").exists()
    assert not (staged / RELAY_CONFIG).exists()
    assert not (staged / "etc/wzp").exists()  # it was left empty
    assert "/var/lib/wzp-relay: removed (purge" in out
    assert "/etc/wzp: removed (empty)" in out


def _files(root: Path, without: str = "") -> dict[str, tuple[int, str, int]]:
    """tree() without the folders' mtimes (adding a file beside others changes them)."""
    return {
        k: v if v[1] != "dir" else (v[0], v[1], 0)
        for k, v in tree(root).items()
        if without == "" or without not in k
    }


def test_a_handset_and_a_relay_on_one_host_leave_each_other_alone(staged: Path) -> None:
    write_users(
        staged,
        "wzp:x:999:999::/var/lib/wzp:/usr/sbin/nologin\n"
        "wzp-relay:x:998:998::/var/lib/wzp-relay:/usr/sbin/nologin\n",
        "audio:x:29:wzp\ngpio:x:997:wzp\nwzp:x:999:\nwzp-relay:x:998:\n",
    )
    install("--root", str(staged))
    handset = _files(staged)
    install("--relay", "--root", str(staged))
    # the relay added its files and changed none of the handset's
    both = _files(staged)
    assert {k: v for k, v in both.items() if k in handset} == handset
    (staged / SEED).write_bytes(b"\x01" * 32)
    (staged / RELAY_SEED).write_bytes(b"\x02" * 32)

    # the handset goes, the relay and the venv it runs from stay
    out = install("--uninstall", "--purge", "--root", str(staged)).stdout
    assert would_run(out) == [
        "systemctl disable --now --quiet wzp-phone.service",
        "systemctl daemon-reload",
        "userdel wzp",
        "groupdel wzp",
    ]
    for gone in (UNIT_PATH, CONFIG, "var/lib/wzp"):
        assert not (staged / gone).exists(), gone
    for kept in (RELAY_UNIT_PATH, RELAY_CONFIG, RELAY_SEED, "opt/wzp", "usr/local/bin/wzp"):
        assert (staged / kept).exists() or (staged / kept).is_symlink(), kept
    assert (staged / RELAY_CONFIG).read_bytes() == RELAY_TEMPLATE.read_bytes()
    assert "/opt/wzp: kept (wzp-relay is installed here" in out

    # and the other way round: the relay goes, the handset stays
    install("--root", str(staged))
    (staged / SEED).write_bytes(b"\x01" * 32)
    before = _files(staged, without="relay")
    out = install("--relay", "--uninstall", "--purge", "--root", str(staged)).stdout
    assert _files(staged, without="relay") == before
    assert not [c for c in would_run(out) if "wzp-phone" in c or c.endswith(" wzp")]
    for gone in (RELAY_UNIT_PATH, RELAY_CONFIG, "var/lib/wzp-relay"):
        assert not (staged / gone).exists(), gone
    assert "/opt/wzp: kept (wzp-phone is installed here" in out
