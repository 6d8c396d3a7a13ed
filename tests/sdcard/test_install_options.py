"""install.sh's options for a card's first boot: ``--wheel FILE`` installs a built wheel
instead of the checkout, ``--offline DIR`` takes every dependency from a folder of wheels,
``--debs DIR`` the Debian packages apt-get cannot fetch with no network."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sdcard.debs import HOST_PY, card_debs, multiarch, run_script

INSTALL = Path(__file__).resolve().parents[2] / "install.sh"
VENV = "/opt/wzp/venv"


def install(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("SUDO_USER", None)
    return subprocess.run(
        ["bash", str(INSTALL), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )


def test_a_staged_install_from_a_wheel_and_a_wheelhouse(tmp_path: Path) -> None:
    wheel = tmp_path / "wzp-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    house = tmp_path / "wheels"
    house.mkdir()
    result = install("--root", "stage", "--wheel", wheel.name, "--offline", "wheels", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # relative paths become absolute ones; pip never looks at an index
    assert (
        f"would run: {VENV}/bin/python -m pip install -q --disable-pip-version-check "
        f"--no-index --find-links {house} {wheel}\n"
    ) in result.stdout
    assert "would run: systemctl restart wzp-phone.service" in result.stdout
    assert (tmp_path / "stage/etc/systemd/system/wzp-phone.service").is_file()
    online = install("--root", "stage", "--wheel", str(wheel), cwd=tmp_path)
    assert online.returncode == 0, online.stderr
    assert f"pip install -q --disable-pip-version-check {wheel}\n" in online.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--offline", "."], "--offline goes with --wheel"),
        (["--wheel", "missing.whl"], "no such wheel file"),
        (["--wheel", "notes.txt"], "no such wheel file"),
        (["--wheel", "w.whl", "--offline", "nowhere"], "no such folder"),
        (["--wheel", "w.whl", "--uninstall"], "--wheel goes with an install"),
        (["--wheel"], "--wheel needs a path"),
        (["--wheel", "w.whl", "--debs", "."], "--debs goes with --offline"),
        (["--wheel", "w.whl", "--offline", ".", "--debs", "nowhere"], "--debs nowhere: no such"),
        (["--wheel", "w.whl", "--offline", ".", "--debs"], "--debs needs a path"),
    ],
)
def test_bad_wheel_options_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "w.whl").write_bytes(b"wheel")
    (tmp_path / "notes.txt").write_text("x")
    result = install(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert result.stdout == ""


def staged_with_debs(
    tmp_path: Path, *, python: str = HOST_PY, libasound: bool = True
) -> tuple[subprocess.CompletedProcess[str], Path]:
    wheel = tmp_path / "wzp-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    (tmp_path / "wheels").mkdir()
    card_debs(tmp_path / "debs", python=python)
    stage = tmp_path / "stage"
    if libasound:
        lib = stage / "usr/lib" / multiarch()
        lib.mkdir(parents=True)
        (lib / "libasound.so.2").write_bytes(b"\x7fELF")
    args = ["--root", "stage", "--wheel", wheel.name, "--offline", "wheels", "--debs", "debs"]
    return install(*args, cwd=tmp_path), tmp_path / "debs"


def headers_folder(out: str) -> Path:
    found = re.search(r"^build headers: unpacked .* into (\S+) for pyalsaaudio$", out, re.M)
    assert found, out
    return Path(found.group(1))


def test_a_staged_offline_install_takes_the_missing_packages_from_debs(tmp_path: Path) -> None:
    result, debs = staged_with_debs(tmp_path)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    lines = out.splitlines()
    # the library is installed from its .deb, after apt-get and before pip
    dpkg = f"would run: dpkg -i {debs}/libopus0_1.5.2-2_arm64.deb"
    assert dpkg in lines
    pip = next(i for i, line in enumerate(lines) if " -m pip install " in line)
    assert lines.index("would run: apt-get update") < lines.index(dpkg) < pip
    # the -dev packages are unpacked for the build, never installed
    assert not [line for line in lines if "dpkg -i" in line and "-dev_" in line]
    assert (
        f"build headers: unpacked libasound2-dev, libpython{HOST_PY}-dev into "
        f"{headers_folder(out)} for pyalsaaudio"
    ) in lines
    assert f"/usr/include/python{HOST_PY}" in out and "LIBRARY_PATH=" in out
    # what the image itself must have
    assert "staged: not in " in out and "python3-venv gcc python3-lgpio alsa-utils" in out
    assert "python3-dev" not in out.split("staged: not in ", 1)[1].splitlines()[0]
    # the unpacked folder is gone once install.sh is done
    assert not headers_folder(out).exists()


def test_headers_for_another_python_or_no_libasound_leave_the_dev_packages_missing(
    tmp_path: Path,
) -> None:
    other = "3.13" if HOST_PY != "3.13" else "3.11"
    result, _ = staged_with_debs(tmp_path, python=other, libasound=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"no python{HOST_PY}/Python.h in " in result.stderr
    assert f"(only: python{other})" in result.stderr
    assert "libasound.so.2 (package libasound2) is not in" in result.stderr
    missing = result.stdout.split("staged: not in ", 1)[1].splitlines()[0]
    assert "python3-dev" in missing and "libasound2-dev" in missing
    assert "build headers:" not in result.stdout


LIVE_NO_NETWORK = r"""
. "$1"
STAGED=0 WHEELHOUSE=/nonexistent/wheels DEBS=$2 FAIL=$3
# this host's packages and commands stay untouched: what a fresh Lite lacks, and a `run`
# that only reports (apt-get fails as with no network, at the step FAIL names)
missing_debs() { printf '%s\n' libopus0 python3-dev libasound2-dev; }
run() {
    printf 'RUN: %s\n' "$*"
    case "$*" in
        "apt-get -o APT::Update::Error-Mode=any update -qq") [ "$FAIL" != update ] ;;
        "apt-get install"*) [ "$FAIL" != install ] ;;
    esac
}
pi_apt "${PI_APT[@]}"
echo "CPATH=$CPATH"
"""


@pytest.mark.parametrize("fail", ["update", "install"])
def test_a_live_install_without_network_falls_back_to_debs(fail: str, tmp_path: Path) -> None:
    card_debs(tmp_path / "debs")
    libasound = Path("/usr/lib", multiarch(), "libasound.so.2")
    if not libasound.exists():
        pytest.skip(f"{libasound} is not on this host (package libasound2)")
    env = {**os.environ, "PYTHON": sys.executable}
    result, out = run_script(
        ["bash", "-c", LIVE_NO_NETWORK, "live", str(INSTALL), str(tmp_path / "debs"), fail],
        env,
        60,
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "RUN: apt-get -o APT::Update::Error-Mode=any update -qq"
    assert f"RUN: dpkg -i {tmp_path}/debs/libopus0_1.5.2-2_arm64.deb" in lines
    assert not [line for line in lines if "dpkg -i" in line and "-dev_" in line]
    assert f"build headers: unpacked libasound2-dev, libpython{HOST_PY}-dev into " in out
    assert "/usr/include/python" in next(line for line in lines if line.startswith("CPATH="))
    assert f"apt-get {fail} failed (no network?); {tmp_path}/debs had what was missing" in out
    assert "warning" not in out
