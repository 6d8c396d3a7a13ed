"""install.sh's options for a card's first boot: ``--wheel FILE`` installs a built wheel
instead of the checkout, ``--offline DIR`` takes every dependency from a folder of wheels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    ],
)
def test_bad_wheel_options_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "w.whl").write_bytes(b"wheel")
    (tmp_path / "notes.txt").write_text("x")
    result = install(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert result.stdout == ""
