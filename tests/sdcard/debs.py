"""Small but real Debian packages (dpkg-deb --build) standing in for the arm64 .debs that
`wzp sdcard prepare --offline` fetches: libopus0 with a placeholder library, and the two
-dev packages with header files where Debian puts them."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path

import pytest

#: the Python the tests' install.sh runs with (install.sh matches the headers to it)
HOST_PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def need_dpkg_deb() -> None:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed (Debian package dpkg)")


@cache
def multiarch() -> str:
    """This host's multiarch triplet, as install.sh finds it."""
    gcc = shutil.which("gcc")
    if gcc is not None:
        out = subprocess.run([gcc, "-dumpmachine"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return f"{platform.machine()}-linux-gnu"


def build_deb(out: Path, name: str, version: str, files: Mapping[str, bytes | Path]) -> Path:
    """``out/NAME_VERSION_arm64.deb`` holding ``files`` (path in the package -> bytes, or a
    file or folder of this host to copy there)."""
    need_dpkg_deb()
    tree = out.parent / f".tree-{name}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: arm64\n"
        "Maintainer: wzp tests <tests@wzp.invalid>\n"
        f"Description: stand-in for {name} (wzp tests)\n"
    )
    for rel, content in files.items():
        dest = tree / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            dest.write_bytes(content)
        elif content.is_dir():
            shutil.copytree(content, dest, symlinks=True)
        else:
            shutil.copy2(content, dest)
    out.mkdir(parents=True, exist_ok=True)
    deb = out / f"{name}_{version}_arm64.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(tree)
    return deb


def card_debs(out: Path, python: str = HOST_PY) -> list[Path]:
    """The three packages of an --offline card, with placeholder contents; the Python
    headers are for ``python`` and its pyconfig.h under this host's multiarch folder."""
    ma = multiarch()
    py = f"python{python}"
    return [
        build_deb(out, "libopus0", "1.5.2-2", {f"usr/lib/{ma}/libopus.so.0.10.1": b"\x7fELF"}),
        build_deb(
            out,
            f"libpython{python}-dev",
            f"{python}.5-2+deb13u1",
            {
                f"usr/include/{py}/Python.h": b"/* Python.h stand-in */\n",
                f"usr/include/{py}/pyconfig.h": f"#include <{ma}/{py}/pyconfig.h>\n".encode(),
                f"usr/include/{ma}/{py}/pyconfig.h": b"/* pyconfig.h stand-in */\n",
            },
        ),
        build_deb(
            out,
            "libasound2-dev",
            "1.2.14-1+deb13u1",
            {"usr/include/alsa/asoundlib.h": b"/* asoundlib.h stand-in */\n"},
        ),
    ]


def run_script(
    cmd: list[str], env: Mapping[str, str], timeout: float
) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run a shell rehearsal that must succeed; (its result, stdout + stderr)."""
    result = subprocess.run(cmd, capture_output=True, text=True, env=dict(env), timeout=timeout)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    return result, out
