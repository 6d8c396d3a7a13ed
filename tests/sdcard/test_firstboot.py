"""First-boot rehearsal: the hook a prepared card carries (its wzp/firstboot.sh) runs from
the card's own boot partition against a staging root, the way ``install.sh --root`` stages
an install, and without a network for an ``--offline`` card. It ends with the unit
installed, the identity created (0600) and the boot config renamed ``.applied``; a bad
config ends as ``.error`` with the reason inside; no network (and no wheels) is logged and
retried at the next boot. An ``--offline`` card's Debian packages (real .debs built here)
stand in for what apt-get cannot fetch: libopus0 installed with dpkg, the -dev packages only
unpacked for pyalsaaudio's build."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from tests.sdcard.cards import SPECS, build_image, extract_boot
from tests.sdcard.debs import HOST_PY, card_debs, multiarch
from wzp.sdcard.prepare import Options, prepare

VENV = "/opt/wzp/venv"
FIRSTBOOT_UNIT = "etc/systemd/system/wzp-firstboot.service"
FIRSTBOOT_WANTS = "etc/systemd/system/multi-user.target.wants/wzp-firstboot.service"


@cache
def no_network_prefix() -> list[str] | None:
    """A command prefix that runs without any network (a fresh network namespace)."""
    exe = shutil.which("unshare")
    if exe is None:
        return None
    for prefix in ([exe, "-n"], [exe, "-rn"]):
        if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return None


def prepared_card(
    tmp_path: Path, wheel: Path, config: Path, *, kind: str = "trixie", offline: bool
) -> Path:
    """A prepared image's boot partition, as the Pi mounts it (here: extracted)."""
    image = build_image(SPECS[kind], tmp_path / "build")
    house = debs = None
    if offline:
        # the Python headers for the Python the rehearsal's install.sh runs with
        debs = tmp_path / "debs"
        card_debs(debs, python=HOST_PY)
        house = tmp_path / "house"
        house.mkdir()
        for name in (
            "numpy-2.1.0-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
            "numpy-2.1.0-cp313-cp313-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
            "setuptools-75.0.0-py3-none-any.whl",
        ):
            (house / name).write_bytes(b"wheel")
    prepare(
        Options(image, config, offline=offline, wheel=wheel, wheelhouse=house, debs=debs), print
    )
    return extract_boot(image, tmp_path / "boot")


def fake_leds(tmp_path: Path) -> Path:
    leds = tmp_path / "leds"
    (leds / "ACT").mkdir(parents=True)
    (leds / "ACT" / "trigger").write_text("none [mmc0] timer heartbeat\n")
    (leds / "ACT" / "brightness").write_text("0\n")
    return leds


def hook(
    boot: Path,
    root: Path,
    leds: Path,
    *args: str,
    offline_net: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    prefix: list[str] = []
    if offline_net:
        found = no_network_prefix()
        if found is None:
            pytest.skip("cannot make a network namespace here (unshare -n)")
        prefix = found
    full_env = {
        **os.environ,
        # install.sh checks this interpreter's version (the Pi's /usr/bin/python3)
        "PYTHON": sys.executable,
        "WZP_FIRSTBOOT_ROOT": str(root),
        "WZP_FIRSTBOOT_PYTHON": sys.executable,
        "WZP_FIRSTBOOT_LEDS": str(leds),
        "WZP_FIRSTBOOT_NET_WAIT": "0",
        **(env or {}),
    }
    full_env.pop("SUDO_USER", None)
    full_env.pop("PYTHONPATH", None)
    return subprocess.run(
        [*prefix, "bash", str(boot / "wzp" / "firstboot.sh"), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        cwd=boot,
    )


def staging_root(tmp_path: Path, release: str) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text(SPECS[release].os_release)
    # Raspberry Pi OS Lite has the ALSA library (package libasound2), not its -dev package
    lib = root / "usr/lib" / multiarch()
    lib.mkdir(parents=True)
    (lib / "libasound.so.2").write_bytes(b"\x7fELF")
    return root


def test_offline_first_boot_installs_from_the_card_with_no_network(
    tmp_path: Path, wheel: Path, config: Path
) -> None:
    boot = prepared_card(tmp_path, wheel, config, offline=True)
    root = staging_root(tmp_path, "trixie")
    leds = fake_leds(tmp_path)

    # cloud-init's runcmd step: installs and starts the one-shot service
    setup = hook(boot, root, leds, "setup", "--now")
    assert setup.returncode == 0, setup.stdout + setup.stderr
    unit = (root / FIRSTBOOT_UNIT).read_text()
    assert f"ExecStart=/bin/bash {boot}/wzp/firstboot.sh run\n" in unit
    assert "After=network-online.target" in unit
    assert os.readlink(root / FIRSTBOOT_WANTS) == "/etc/systemd/system/wzp-firstboot.service"
    assert "would run: systemctl start --no-block wzp-firstboot.service" in setup.stdout

    # the service, with no network at all
    result = hook(boot, root, leds, "run", offline_net=True)
    log = (boot / "wzp-firstboot.log").read_text()
    assert result.returncode == 0, log + result.stderr

    # the handset's unit, from the card's wzp/ folder
    unit_path = root / "etc/systemd/system/wzp-phone.service"
    assert unit_path.read_bytes() == (boot / "wzp/systemd/wzp-phone.service").read_bytes()
    assert stat.S_IMODE(unit_path.stat().st_mode) == 0o644
    # the identity, made once as the service does, private
    seed = root / "var/lib/wzp/identity.seed"
    assert stat.S_IMODE(seed.stat().st_mode) == 0o600
    assert seed.stat().st_size > 0
    # the boot config applied and renamed
    assert not (boot / "wzp.toml").exists()
    assert (boot / "wzp.toml.applied").read_bytes() == config.read_bytes()
    assert (root / "etc/wzp/boot.toml").read_bytes() == config.read_bytes()
    assert (root / "etc/wzp/wzp.toml").read_bytes() == (boot / "wzp/wzp.toml.template").read_bytes()

    # pip was told to use the card's wheel and wheels only
    whl = next((boot / "wzp").glob("wzp-*.whl"))
    assert (
        f"would run: {VENV}/bin/python -m pip install -q --disable-pip-version-check "
        f"--no-index --find-links {boot}/wzp/wheels {whl}"
    ) in log
    assert "offline install: 3 files from" in log

    # no network: libopus0 from the card's .deb; the -dev packages only unpacked (their
    # headers for pyalsaaudio's build), never installed
    lines = log.splitlines()
    assert f"offline Debian packages: 3 from {boot}/wzp/debs" in log
    dpkg = f"would run: dpkg -i {boot}/wzp/debs/libopus0_1.5.2-2_arm64.deb"
    assert dpkg in lines
    assert not [line for line in lines if "dpkg -i" in line and "-dev_" in line]
    note = re.search(
        rf"^build headers: unpacked libasound2-dev, libpython{re.escape(HOST_PY)}-dev "
        r"into (\S+) for pyalsaaudio$",
        log,
        re.M,
    )
    assert note, log
    assert not Path(note.group(1)).exists()  # removed when install.sh ended
    pip = next(i for i, line in enumerate(lines) if " -m pip install " in line)
    assert lines.index(dpkg) < pip
    assert "wzp.toml: applied" in log and "done: the handset is installed" in log
    assert "identity: " in log
    # the one-shot service removed itself; the ACT LED is back to its trigger
    assert not (root / FIRSTBOOT_UNIT).exists() and not (root / FIRSTBOOT_WANTS).is_symlink()
    assert "ACT LED: blinking" in log
    assert (leds / "ACT/trigger").read_text().strip() == "mmc0"
    assert (leds / "ACT/brightness").read_text().strip() == "0"


def test_a_bad_boot_config_ends_as_error_with_the_reason(
    tmp_path: Path, wheel: Path, config: Path
) -> None:
    boot = prepared_card(tmp_path, wheel, config, kind="bookworm", offline=True)
    # edited on the card after prepare (prepare itself refuses a bad config)
    (boot / "wzp.toml").write_text('[audio]\nvolume_db = "loud"\n')
    root = staging_root(tmp_path, "bookworm")
    leds = fake_leds(tmp_path)
    assert hook(boot, root, leds, "setup").returncode == 0
    result = hook(boot, root, leds, "run", offline_net=True)
    log = (boot / "wzp-firstboot.log").read_text()
    assert result.returncode == 0, log + result.stderr

    assert not (boot / "wzp.toml").exists() and not (boot / "wzp.toml.applied").exists()
    error = (boot / "wzp.toml.error").read_text()
    assert error.startswith("# wzp: this file was not applied")
    assert "volume_db" in error and "loud" in error
    assert 'volume_db = "loud"' in error  # the user's lines are kept below the reasons
    assert "wzp.toml: REFUSED" in log and "volume_db" in log
    assert not (root / "etc/wzp/boot.toml").exists()
    assert stat.S_IMODE((root / "var/lib/wzp/identity.seed").stat().st_mode) == 0o600


def test_without_network_or_wheels_the_log_says_so_and_it_retries(
    tmp_path: Path, wheel: Path, config: Path
) -> None:
    boot = prepared_card(tmp_path, wheel, config, offline=False)
    root = staging_root(tmp_path, "trixie")
    leds = fake_leds(tmp_path)
    assert hook(boot, root, leds, "setup", "--now").returncode == 0
    result = hook(boot, root, leds, "run", offline_net=True)
    log = (boot / "wzp-firstboot.log").read_text()
    assert result.returncode == 1, log
    assert "NO NETWORK" in log and "--offline" in log and "next boot" in log
    # nothing installed, the service stays for the next boot, the config waits
    assert not (root / "etc/systemd/system/wzp-phone.service").exists()
    assert (root / FIRSTBOOT_UNIT).exists() and (root / FIRSTBOOT_WANTS).is_symlink()
    assert (boot / "wzp.toml").read_bytes() == config.read_bytes()
    assert (leds / "ACT/trigger").read_text().startswith("none [mmc0]")  # never touched


def test_online_first_boot_installs_the_wheel_from_the_index(
    tmp_path: Path, wheel: Path, config: Path
) -> None:
    boot = prepared_card(tmp_path, wheel, config, kind="plain", offline=False)
    root = staging_root(tmp_path, "bookworm")
    leds = fake_leds(tmp_path)
    assert hook(boot, root, leds, "setup").returncode == 0
    # "online" = this name resolves; localhost does without any network
    result = hook(boot, root, leds, "run", env={"WZP_FIRSTBOOT_NET_HOST": "localhost"})
    log = (boot / "wzp-firstboot.log").read_text()
    assert result.returncode == 0, log + result.stderr
    whl = next((boot / "wzp").glob("wzp-*.whl"))
    assert (
        f"would run: {VENV}/bin/python -m pip install -q --disable-pip-version-check {whl}\n" in log
    )
    assert "--no-index" not in log
    assert (boot / "wzp.toml.applied").exists()
    assert not (root / FIRSTBOOT_UNIT).exists()


def test_the_hook_script_is_clean_and_refuses_unknown_modes(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[2] / "device/wzp/sdcard/firstboot.sh"
    exe = shutil.which("shellcheck")
    if exe is not None:
        result = subprocess.run([exe, str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout
    folder = tmp_path / "boot" / "wzp"
    folder.mkdir(parents=True)
    shutil.copy(script, folder / "firstboot.sh")
    result = subprocess.run(
        ["bash", str(folder / "firstboot.sh"), "bogus"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "usage:" in result.stderr
