"""What goes into the card's ``wzp/`` folder: this checkout's wheel, install.sh, the unit,
the config template, the first-boot hook and, for ``--offline``, the aarch64 wheels for
Python 3.11 (Bookworm) and 3.13 (Trixie) that the install needs.
"""

from __future__ import annotations

import email.parser
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from . import SdcardError

#: the card's Python versions: Bookworm has 3.11, Trixie 3.13
PYTHONS = ("3.11", "3.13")
#: manylinux tags a 64-bit Raspberry Pi OS (glibc 2.36 / 2.41) runs
AARCH64_PLATFORMS = (
    "manylinux2014_aarch64",
    "manylinux_2_17_aarch64",
    "manylinux_2_28_aarch64",
    "manylinux_2_34_aarch64",
)
#: dependencies PyPI has no aarch64 wheel for (checked with pip download, November 2026):
#: fetched as source and built on the Pi. opuslib is pure Python (sdist only, no compiler);
#: pyalsaaudio needs gcc, python3-dev and libasound2-dev from apt (PLATFORM.md)
SOURCE_ONLY = ("pyalsaaudio", "opuslib")
#: what pip needs to build those sources with no index (build isolation)
BUILD_TOOLS = ("setuptools>=68", "wheel")

Runner = Callable[[Sequence[str]], None]


def checkout_root() -> Path:
    """The checkout this package runs from (the wheel is built from it). SdcardError when
    wzp is installed from a wheel rather than run from a checkout."""
    root = Path(__file__).resolve().parents[3]
    if not ((root / "pyproject.toml").is_file() and (root / "install.sh").is_file()):
        raise SdcardError(
            "wzp sdcard prepare builds the card's wheel from a checkout: run it from one "
            "(git clone, ./install.sh --dev, then .venv/bin/wzp sdcard prepare ...)"
        )
    return root


def _source_files(root: Path) -> list[Path]:
    """What pip builds the package from, as install.sh lists it."""
    files = [
        root / name
        for name in ("pyproject.toml", "README.md", "LICENSE", "LICENSE.txt", "setup.cfg")
        if (root / name).is_file()
    ]
    for path in sorted((root / "device").rglob("*")):
        rel = path.relative_to(root)
        if any(p == "__pycache__" or p.endswith(".egg-info") for p in rel.parts):
            continue
        if path.is_file() and path.suffix != ".pyc":
            files.append(path)
    return files


def build_wheel(root: Path, out_dir: Path) -> Path:
    """This checkout's wheel, built from a copy (no build/ or egg-info in the tree)."""
    with tempfile.TemporaryDirectory(prefix="wzp-wheel-") as tmp:
        src = Path(tmp) / "src"
        for path in _source_files(root):
            dest = src / path.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        out = Path(tmp) / "out"
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=600,
        )
        wheels = sorted(out.glob("wzp-*.whl"))
        if result.returncode != 0 or len(wheels) != 1:
            raise SdcardError(
                f"could not build the wzp wheel from {root}:\n"
                f"{(result.stderr or result.stdout).strip()}"
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / wheels[0].name
        shutil.copy2(wheels[0], target)
        return target


def wheel_requirements(wheel: Path) -> list[str]:
    """The wheel's run-time requirements (``Requires-Dist`` without extras' markers)."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(
            (n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)), None
        )
        if meta is None:
            raise SdcardError(f"{wheel} has no METADATA: not a wheel")
        msg = email.parser.Parser().parsestr(zf.read(meta).decode("utf-8"))
    reqs = []
    for req in msg.get_all("Requires-Dist") or []:
        spec, _, marker = req.partition(";")
        if "extra" in marker:
            continue
        reqs.append(spec.strip().replace(" ", ""))
    return reqs


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ (]", req, maxsplit=1)[0].lower().replace("_", "-")


def wheelhouse_commands(wheel: Path, dest: Path, index_args: Sequence[str] = ()) -> list[list[str]]:
    """The pip runs that fill ``dest``: binary-only aarch64 wheels of every dependency for
    each card Python, then the source-only ones and the tools that build them."""
    reqs = wheel_requirements(wheel)
    binary = [r for r in reqs if _name(r) not in SOURCE_ONLY]
    source = [r for r in reqs if _name(r) in SOURCE_ONLY]
    pip = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check"]
    cmds: list[list[str]] = []
    for version in PYTHONS:
        platforms = [a for p in AARCH64_PLATFORMS for a in ("--platform", p)]
        cmds.append(
            [
                *pip,
                *index_args,
                "--dest",
                str(dest),
                "--only-binary=:all:",
                *platforms,
                "--python-version",
                version,
                "--implementation",
                "cp",
                *binary,
            ]
        )
    if source:
        cmds.append(
            [*pip, *index_args, "--dest", str(dest), "--no-deps", "--no-binary=:all:", *source]
        )
    cmds.append([*pip, *index_args, "--dest", str(dest), "--only-binary=:all:", *BUILD_TOOLS])
    return cmds


def _run_pip(cmd: Sequence[str]) -> None:
    result = subprocess.run(
        list(cmd), capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1800
    )
    if result.returncode != 0:
        raise SdcardError(
            "--offline: pip could not fetch the Pi's wheels (is this machine online?):\n"
            f"$ {' '.join(cmd)}\n{(result.stderr or result.stdout).strip()}"
        )


def fetch_wheelhouse(
    wheel: Path, dest: Path, index_args: Sequence[str] = (), run: Runner = _run_pip
) -> list[Path]:
    """Download what an offline first boot installs from; returns the files."""
    dest.mkdir(parents=True, exist_ok=True)
    for cmd in wheelhouse_commands(wheel, dest, index_args):
        run(cmd)
    files = sorted(p for p in dest.iterdir() if p.is_file())
    if not files:
        raise SdcardError("--offline: pip fetched nothing")
    return files


@dataclass(frozen=True)
class Payload:
    """Files for the card's ``wzp/`` folder, card path -> bytes."""

    files: dict[str, bytes]
    wheel_name: str


def hook_script() -> bytes:
    return resources.files(__package__).joinpath("firstboot.sh").read_bytes()


def card_readme(wheel_name: str, offline: bool) -> bytes:
    text = f"""This folder was added by `wzp sdcard prepare` (the wzp handset project).

At the first boot the Pi installs the handset from here: install.sh with {wheel_name}
{"and the wheels in wheels/ (no internet needed)" if offline else "(it needs the internet once)"}.
What happened is written to wzp-firstboot.log next to this folder; the config the
handset starts with is ../wzp.toml, renamed wzp.toml.applied once applied, or
wzp.toml.error with the reasons at its top.

manifest.json and orig/ let `wzp sdcard prepare CARD --undo` restore the card.
"""
    return text.encode()


def build_payload(root: Path, wheel: Path, wheelhouse: Sequence[Path] | None) -> Payload:
    files: dict[str, bytes] = {
        f"wzp/{wheel.name}": wheel.read_bytes(),
        "wzp/install.sh": (root / "install.sh").read_bytes(),
        "wzp/systemd/wzp-phone.service": (root / "systemd" / "wzp-phone.service").read_bytes(),
        "wzp/wzp.toml.template": (
            root / "device" / "wzp" / "daemon" / "wzp.toml.template"
        ).read_bytes(),
        "wzp/firstboot.sh": hook_script(),
        "wzp/README.txt": card_readme(wheel.name, wheelhouse is not None),
    }
    for path in wheelhouse or ():
        files[f"wzp/wheels/{path.name}"] = path.read_bytes()
    return Payload(files, wheel.name)
