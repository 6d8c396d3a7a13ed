"""What goes into the card's ``wzp/`` folder: this checkout's wheel, install.sh, the unit,
the config template, the first-boot hook and, for ``--offline``, the aarch64 wheels for
Python 3.11 (Bookworm) and 3.13 (Trixie) that the install needs, and the arm64 Debian
packages a stock Raspberry Pi OS Lite lacks for it.
"""

from __future__ import annotations

import email.parser
import os
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
#: runs a command in a folder
AptRunner = Callable[[Sequence[str], Path], None]

#: the card's Python by release
RELEASE_PYTHON = {"bookworm": "3.11", "trixie": "3.13"}
#: Raspberry Pi OS (64-bit) takes these from Debian's own arm64 archive
DEBIAN_ARCHIVE = "http://deb.debian.org/debian"
DEBIAN_SECURITY = "http://deb.debian.org/debian-security"
#: Debian's archive keys (package debian-archive-keyring): apt checks the lists with them
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


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


def deb_packages(codename: str) -> list[str]:
    """What a stock Raspberry Pi OS Lite lacks for the install (install.sh's PI_APT):
    libopus0, which opuslib loads, and the headers pyalsaaudio builds with (python3-dev's
    are in libpythonX.Y-dev). install.sh --debs installs the library with dpkg and only
    unpacks the -dev packages for the build."""
    if codename not in RELEASE_PYTHON:
        raise SdcardError(f"--offline: no Debian packages known for release {codename!r}")
    return ["libopus0", "libasound2-dev", f"libpython{RELEASE_PYTHON[codename]}-dev"]


def apt_sources(codename: str, keyring: Path = DEBIAN_KEYRING) -> str:
    """sources.list of the release's archive, its updates and its security updates, every
    list checked against Debian's keyring alone."""
    signed = f"[signed-by={keyring}]"
    return (
        f"deb {signed} {DEBIAN_ARCHIVE} {codename} main\n"
        f"deb {signed} {DEBIAN_ARCHIVE} {codename}-updates main\n"
        f"deb {signed} {DEBIAN_SECURITY} {codename}-security main\n"
    )


def apt_options(state: Path) -> list[str]:
    """apt-get options that keep every file under ``state`` (lists, cache, dpkg status) and
    ask for arm64 alone: no root, no lock, nothing of this machine's apt state touched, and
    none of its trusted keys (the keyring in sources.list is the only one)."""
    return [
        *("-o", f"Dir={state}"),
        *("-o", f"Dir::State::status={state}/var/lib/dpkg/status"),
        *("-o", "APT::Architecture=arm64"),
        *("-o", "APT::Architectures::=arm64"),
        *("-o", "Debug::NoLocking=1"),
        *("-o", "Dir::Etc::trusted=/dev/null"),
        *("-o", "Dir::Etc::trustedparts=/nonexistent"),
    ]


def debs_commands(
    codename: str, state: Path, dest: Path, apt_get: str = "apt-get"
) -> list[tuple[list[str], Path]]:
    """The apt-get runs (command, folder to run it in) that fetch the release's arm64
    packages into ``dest``: the lists (an index that cannot be fetched is an error, not a
    warning), then the packages (apt-get download writes into the current folder)."""
    opts = apt_options(state)
    wanted = [f"{name}:arm64" for name in deb_packages(codename)]
    return [
        ([apt_get, *opts, "-qq", "-o", "APT::Update::Error-Mode=any", "update"], state),
        ([apt_get, *opts, "-qq", "download", *wanted], dest),
    ]


def _apt_state(state: Path, codename: str, keyring: Path) -> None:
    for sub in (
        "etc/apt/sources.list.d",
        "etc/apt/preferences.d",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/lib/dpkg",
    ):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "var/lib/dpkg/status").touch()
    (state / "etc/apt/sources.list").write_text(apt_sources(codename, keyring))


def _run_apt(cmd: Sequence[str], cwd: Path) -> None:
    try:
        result = subprocess.run(
            list(cmd),
            cwd=cwd,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=900,
            env={**os.environ, "LC_ALL": "C"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SdcardError(f"--offline: could not run {cmd[0]}: {exc}") from None
    if result.returncode != 0:
        raise SdcardError(
            "--offline: apt-get could not fetch the Pi's Debian packages (is this machine "
            f"online?):\n$ {' '.join(cmd)}\n{(result.stderr or result.stdout).strip()}"
        )


def fetch_debs(
    codename: str,
    dest: Path,
    run: AptRunner = _run_apt,
    apt_get: str | None = None,
    keyring: Path | None = None,
) -> list[Path]:
    """Download the release's arm64 .debs (``deb_packages``) into ``dest`` with this
    machine's apt-get, in a private apt folder; returns the files. ``apt_get``: the
    program (default: apt-get on PATH); ``keyring``: default ``DEBIAN_KEYRING``."""
    wanted = deb_packages(codename)
    keyring = DEBIAN_KEYRING if keyring is None else keyring
    exe = shutil.which("apt-get") if apt_get is None else apt_get
    if exe is None or not Path(exe).is_file():
        where = "there is none on PATH" if apt_get is None else f"{apt_get} does not exist"
        raise SdcardError(
            f"--offline fetches the Debian packages the Pi lacks ({', '.join(wanted)}) with "
            f"apt-get, and {where}: prepare the card on Debian, Ubuntu or Raspberry Pi OS, "
            "or without --offline (the Pi then needs the internet at its first boot)"
        )
    if not keyring.is_file():
        raise SdcardError(
            f"--offline: {keyring} is missing: apt checks the signatures of Debian's archive "
            "with it. Install it (sudo apt-get install debian-archive-keyring; "
            "./install.sh --dev as root does) and run prepare again"
        )
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wzp-apt-") as tmp:
        state = Path(tmp)
        _apt_state(state, codename, keyring)
        for cmd, cwd in debs_commands(codename, state, dest, exe):
            run(cmd, cwd)
    files = sorted(p for p in dest.iterdir() if p.is_file() and p.suffix == ".deb")
    lacking = [n for n in wanted if not any(p.name.startswith(f"{n}_") for p in files)]
    if lacking:
        raise SdcardError(f"--offline: apt-get fetched no {', '.join(lacking)}")
    return files


@dataclass(frozen=True)
class Payload:
    """Files for the card's ``wzp/`` folder, card path -> bytes."""

    files: dict[str, bytes]
    wheel_name: str


def hook_script() -> bytes:
    return resources.files(__package__).joinpath("firstboot.sh").read_bytes()


def card_readme(wheel_name: str, offline: bool, debs: Sequence[str] = ()) -> bytes:
    how = "(it needs the internet once)"
    if offline:
        how = "and the wheels in wheels/ (no internet needed)"
    if debs:
        how += (
            ".\nWith no network, debs/ supplies the Debian packages Raspberry Pi OS Lite\n"
            "lacks: libopus0 is installed from it; the headers in the -dev packages are only\n"
            "unpacked for building pyalsaaudio"
        )
    text = f"""This folder was added by `wzp sdcard prepare` (the wzp handset project).

At the first boot the Pi installs the handset from here: install.sh with {wheel_name}
{how}.
What happened is written to wzp-firstboot.log next to this folder; the config the
handset starts with is ../wzp.toml, renamed wzp.toml.applied once applied, or
wzp.toml.error with the reasons at its top.

manifest.json and orig/ let `wzp sdcard prepare CARD --undo` restore the card.
"""
    return text.encode()


def build_payload(
    root: Path,
    wheel: Path,
    wheelhouse: Sequence[Path] | None,
    debs: Sequence[Path] = (),
) -> Payload:
    files: dict[str, bytes] = {
        f"wzp/{wheel.name}": wheel.read_bytes(),
        "wzp/install.sh": (root / "install.sh").read_bytes(),
        "wzp/systemd/wzp-phone.service": (root / "systemd" / "wzp-phone.service").read_bytes(),
        "wzp/wzp.toml.template": (
            root / "device" / "wzp" / "daemon" / "wzp.toml.template"
        ).read_bytes(),
        "wzp/firstboot.sh": hook_script(),
        "wzp/README.txt": card_readme(wheel.name, wheelhouse is not None, [p.name for p in debs]),
    }
    for path in wheelhouse or ():
        files[f"wzp/wheels/{path.name}"] = path.read_bytes()
    for path in debs:
        files[f"wzp/debs/{path.name}"] = path.read_bytes()
    return Payload(files, wheel.name)
