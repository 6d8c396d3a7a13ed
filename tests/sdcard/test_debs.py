"""The Debian packages of an ``--offline`` card: the private, arm64-only apt-get runs that
fetch them (never the network here: a runner stub or a fake apt-get), their place on the
card, and a real compile and link against headers unpacked by install.sh's own code."""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.sdcard.cards import SPECS, boot_files, build_image, extract_boot, folder_files
from tests.sdcard.debs import build_deb, card_debs, multiarch, run_script
from wzp.sdcard import SdcardError, payload
from wzp.sdcard.payload import apt_sources, deb_packages, debs_commands, fetch_debs
from wzp.sdcard.prepare import Options, prepare, undo

INSTALL = Path(__file__).resolve().parents[2] / "install.sh"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def option(cmd: Sequence[str], name: str) -> str | None:
    """The value of ``-o NAME=VALUE`` in an apt-get command line."""
    for flag, value in itertools.pairwise(cmd):
        if flag == "-o" and value.startswith(f"{name}="):
            return value[len(name) + 1 :]
    return None


# ------------------------------------------------------------------------------ apt-get


@pytest.mark.parametrize(("codename", "python"), [("trixie", "3.13"), ("bookworm", "3.11")])
def test_the_apt_commands_are_private_arm64_and_ask_for_the_releases_packages(
    codename: str, python: str, tmp_path: Path
) -> None:
    state, dest = tmp_path / "state", tmp_path / "dest"
    (update, update_cwd), (download, download_cwd) = debs_commands(
        codename, state, dest, "/usr/bin/apt-get"
    )
    for cmd in (update, download):
        assert cmd[0] == "/usr/bin/apt-get"
        # every file apt writes or reads as state is under the private folder
        assert option(cmd, "Dir") == str(state)
        assert option(cmd, "Dir::State::status") == f"{state}/var/lib/dpkg/status"
        assert option(cmd, "APT::Architecture") == "arm64"
        assert ("-o", "APT::Architectures::=arm64") in itertools.pairwise(cmd)  # arm64 alone
        assert option(cmd, "Debug::NoLocking") == "1"
        # none of this machine's trusted keys: the signed-by keyring alone
        assert option(cmd, "Dir::Etc::trusted") == "/dev/null"
        assert option(cmd, "Dir::Etc::trustedparts") == "/nonexistent"
    assert update[-1] == "update" and update_cwd == state
    assert option(update, "APT::Update::Error-Mode") == "any"  # no network is an error
    assert download_cwd == dest
    assert download[download.index("download") + 1 :] == [
        "libopus0:arm64",
        "libasound2-dev:arm64",
        f"libpython{python}-dev:arm64",
    ]
    assert deb_packages(codename)[-1] == f"libpython{python}-dev"

    sources = apt_sources(codename).splitlines()
    assert sources == [
        f"deb [signed-by={KEYRING}] http://deb.debian.org/debian {codename} main",
        f"deb [signed-by={KEYRING}] http://deb.debian.org/debian {codename}-updates main",
        f"deb [signed-by={KEYRING}] http://deb.debian.org/debian-security {codename}-security main",
    ]


def fake_tools(tmp_path: Path) -> tuple[Path, Path]:
    """An apt-get and a keyring that exist (the stub runner never runs the former)."""
    apt_get = tmp_path / "bin" / "apt-get"
    apt_get.parent.mkdir()
    apt_get.write_text("#!/bin/sh\nexit 99\n")
    apt_get.chmod(0o755)
    keyring = tmp_path / "debian-archive-keyring.gpg"
    keyring.write_bytes(b"keys")
    return apt_get, keyring


def test_fetch_debs_runs_apt_get_in_a_private_folder_and_returns_the_packages(
    tmp_path: Path,
) -> None:
    apt_get, keyring = fake_tools(tmp_path)
    dest = tmp_path / "debs"
    seen: list[tuple[list[str], Path]] = []
    states: list[Path] = []

    def stub(cmd: Sequence[str], cwd: Path) -> None:
        seen.append((list(cmd), cwd))
        state = Path(option(cmd, "Dir") or "")
        states.append(state)
        if cmd[-1] == "update":
            # the private apt folder is ready: sources signed by the given keyring, an
            # empty dpkg status, the lists' and the cache's partial folders
            sources = (state / "etc/apt/sources.list").read_text()
            assert sources == apt_sources("trixie", keyring)
            assert (state / "var/lib/dpkg/status").read_bytes() == b""
            assert (state / "var/lib/apt/lists/partial").is_dir()
            assert (state / "var/cache/apt/archives/partial").is_dir()
        else:
            for name in ("libopus0_1.5.2-2", "libasound2-dev_1.2.14-1", "libpython3.13-dev_3"):
                (cwd / f"{name}_arm64.deb").write_bytes(b"deb")

    files = fetch_debs("trixie", dest, run=stub, apt_get=str(apt_get), keyring=keyring)
    assert [p.name for p in files] == [
        "libasound2-dev_1.2.14-1_arm64.deb",
        "libopus0_1.5.2-2_arm64.deb",
        "libpython3.13-dev_3_arm64.deb",
    ]
    assert [cmd[-1] for cmd, _ in seen] == ["update", "libpython3.13-dev:arm64"]
    assert all(cmd[0] == str(apt_get) for cmd, _ in seen)
    assert seen[1][1] == dest
    # one private folder for both runs, gone afterwards (and never this machine's)
    assert states[0] == states[1] and not states[0].exists()
    assert not str(states[0]).startswith(("/var", "/etc"))


def test_fetch_debs_refuses_clearly_without_apt_get_the_keyring_or_a_package(
    tmp_path: Path,
) -> None:
    apt_get, keyring = fake_tools(tmp_path)

    def never(cmd: Sequence[str], cwd: Path) -> None:
        raise AssertionError("nothing runs when a prerequisite is missing")

    dest = tmp_path / "debs"
    with pytest.raises(SdcardError, match=r"with apt-get, and .*/nope does not exist"):
        fetch_debs("trixie", dest, run=never, apt_get=str(tmp_path / "nope"), keyring=keyring)
    missing = tmp_path / "no-keyring.gpg"
    with pytest.raises(SdcardError) as exc:
        fetch_debs("bookworm", dest, run=never, apt_get=str(apt_get), keyring=missing)
    assert str(missing) in str(exc.value)
    assert "apt-get install debian-archive-keyring" in str(exc.value)

    def partial(cmd: Sequence[str], cwd: Path) -> None:
        if cmd[-1] != "update":
            (cwd / "libopus0_1.3.1-3_arm64.deb").write_bytes(b"deb")

    with pytest.raises(SdcardError, match=r"fetched no libasound2-dev, libpython3\.11-dev"):
        fetch_debs("bookworm", dest, run=partial, apt_get=str(apt_get), keyring=keyring)


def test_a_failing_apt_get_is_a_clear_refusal(tmp_path: Path) -> None:
    _, keyring = fake_tools(tmp_path)
    apt_get = tmp_path / "failing-apt-get"
    apt_get.write_text(
        '#!/bin/sh\necho "E: Failed to fetch http://deb.debian.org/debian/dists/trixie/'
        "InRelease  Temporary failure resolving 'deb.debian.org'\" >&2\nexit 100\n"
    )
    apt_get.chmod(0o755)
    with pytest.raises(SdcardError) as exc:
        fetch_debs("trixie", tmp_path / "debs", apt_get=str(apt_get), keyring=keyring)
    text = str(exc.value)
    assert "apt-get could not fetch the Pi's Debian packages (is this machine online?)" in text
    assert "Temporary failure resolving" in text and "update" in text


# ------------------------------------------------------------------------------ the card


def wheelhouse(tmp_path: Path) -> Path:
    house = tmp_path / "house"
    house.mkdir()
    for name in ("numpy-2.1.0-cp313-cp313-manylinux_2_17_aarch64.whl", "opuslib-3.0.1.tar.gz"):
        (house / name).write_bytes(name.encode())
    return house


@pytest.mark.parametrize("form", ["image", "folder"])
def test_offline_places_the_debian_packages_and_undo_removes_them(
    form: str, tmp_path: Path, wheel: Path, config: Path
) -> None:
    debs = card_debs(tmp_path / "debs", python="3.13")
    image = build_image(SPECS["trixie"], tmp_path / "build")
    target = image if form == "image" else extract_boot(image, tmp_path / "bootfs")

    def snapshot() -> dict[str, bytes]:
        if form == "image":
            return boot_files(image, tmp_path / "reads")
        return folder_files(target)

    before = snapshot()
    lines: list[str] = []
    opts = Options(
        target, config, offline=True, wheel=wheel, wheelhouse=wheelhouse(tmp_path),
        debs=tmp_path / "debs",
    )  # fmt: skip
    assert prepare(opts, lines.append) == 0
    out = "\n".join(lines)
    assert "2 wheels and 3 Debian packages" in out

    files = snapshot()
    placed = sorted(n for n in files if n.startswith("wzp/debs/"))
    assert placed == sorted(f"wzp/debs/{p.name}" for p in debs)
    for deb in debs:
        assert files[f"wzp/debs/{deb.name}"] == deb.read_bytes()
    readme = files["wzp/README.txt"].decode()
    assert "debs/" in readme and "libopus0" in readme

    assert undo(Options(target, None, undo=True), lines.append) == 0
    assert snapshot() == before


def test_without_debians_keyring_offline_is_refused_and_nothing_written(
    tmp_path: Path, wheel: Path, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(payload, "DEBIAN_KEYRING", tmp_path / "absent.gpg")
    image = build_image(SPECS["bookworm"], tmp_path / "build")
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    with pytest.raises(SdcardError, match="debian-archive-keyring"):
        prepare(Options(image, config, offline=True, wheel=wheel), print)
    assert hashlib.sha256(image.read_bytes()).hexdigest() == digest


def test_the_payload_counts_the_packages_in_the_space_check(
    tmp_path: Path, wheel: Path, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tmp_path / "debs"
    big.mkdir()
    (big / "libpython3.13-dev_3.13.5-2_arm64.deb").write_bytes(b"\0" * (3 << 20))
    target = extract_boot(build_image(SPECS["trixie"], tmp_path / "build"), tmp_path / "bootfs")
    house = wheelhouse(tmp_path)
    # free space that holds everything but the package
    need = sum(p.stat().st_size for p in (wheel, *house.iterdir())) + (1 << 20)
    free = need + (2 << 20)
    usage = shutil.disk_usage(target)
    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: type(usage)(usage.total, usage.used, free)
    )
    before = folder_files(target)
    opts = Options(target, config, offline=True, wheel=wheel, wheelhouse=house, debs=big)
    with pytest.raises(SdcardError, match="MiB free"):
        prepare(opts, print)
    assert folder_files(target) == before
    # the same free space holds the rest
    (big / "libpython3.13-dev_3.13.5-2_arm64.deb").unlink()
    assert prepare(opts, print) == 0


# ------------------------------------------------------------------------------ a real build


BUILD_CHECK = r"""
set -e
hidden=$1 work=$2 debs=$3 py=$4
# this host's own headers and link-time libasound.so out of sight: the build must find
# everything through CPATH and LIBRARY_PATH alone
for d in $hidden; do
    mount -t tmpfs -o size=1m wzp-hidden "$d"
done
dev=$(gcc -print-file-name=libasound.so)
if [ "$dev" != libasound.so ]; then
    libdir=$(cd "$(dirname "$dev")" && pwd -P)
    mkdir "$work/orig" "$work/shadow"
    mount --bind "$libdir" "$work/orig"
    ln -s "$work/orig"/* "$work/shadow/"
    rm "$work/shadow/libasound.so"
    mount --bind "$work/shadow" "$libdir"
fi
[ "$(gcc -print-file-name=libasound.so)" = libasound.so ]
echo 'hidden: ok'

. "$INSTALL_SH"
DEBS=$debs
PI_PYTHON=$py
offline_debs python3-dev libasound2-dev
echo "still missing: [$STILL_MISSING]"
echo "headers: $HEADERS"
cd "$work"
gcc -Wall -Werror check.c -o check -lasound
gcc -M check.c >deps.txt
./check
"""

CHECK_C = r"""#include <Python.h>
#include <alsa/asoundlib.h>
#include <stdio.h>

int main(int argc, char **argv) {
    snd_pcm_t *pcm = NULL;
    (void)argv;
    if (argc > 1)
        return snd_pcm_open(&pcm, "null", SND_PCM_STREAM_PLAYBACK, 0);
    printf("python %d.%d alsa %s\n", PY_MAJOR_VERSION, PY_MINOR_VERSION,
           snd_asoundlib_version());
    return 0;
}
"""


def mount_namespace() -> list[str] | None:
    exe = shutil.which("unshare")
    if exe is None:
        return None
    for prefix in ([exe, "-m"], [exe, "-rm"]):
        probe = subprocess.run(
            [*prefix, "mount", "-t", "tmpfs", "none", "/mnt"], capture_output=True
        )
        if probe.returncode == 0:
            return prefix
    return None


def test_pyalsaaudios_build_compiles_and_links_with_the_unpacked_headers_alone(
    tmp_path: Path,
) -> None:
    """install.sh's offline_debs, sourced, unpacks -dev packages holding copies of this
    host's real ALSA and Python headers; gcc then compiles and links a program using both
    with nothing but the CPATH and LIBRARY_PATH it exported, this host's own headers and
    libasound.so hidden."""
    ma = multiarch()
    py = f"python{sys.version_info.major}.{sys.version_info.minor}"
    real = {
        "alsa": Path("/usr/include/alsa"),
        "python": Path(f"/usr/include/{py}"),
        "pyconfig": Path(f"/usr/include/{ma}/{py}"),
    }
    lacking = [str(p) for p in real.values() if not p.is_dir()]
    if lacking or shutil.which("gcc") is None:
        pytest.skip(f"needs gcc and this host's headers ({', '.join(lacking) or 'gcc'} missing)")
    prefix = mount_namespace()
    if prefix is None:
        pytest.skip("cannot make a mount namespace here (unshare -m or -rm not permitted)")
    debs = tmp_path / "debs"
    build_deb(debs, "libasound2-dev", "1.2.14-1", {"usr/include/alsa": real["alsa"]})
    build_deb(
        debs,
        f"lib{py}-dev",
        "3.0-1",
        {f"usr/include/{py}": real["python"], f"usr/include/{ma}/{py}": real["pyconfig"]},
    )
    work = tmp_path / "work"
    work.mkdir()
    (work / "check.c").write_text(CHECK_C)
    script = tmp_path / "build-check.sh"
    script.write_text(BUILD_CHECK)
    env = {
        k: v for k, v in os.environ.items() if k not in ("CPATH", "LIBRARY_PATH", "C_INCLUDE_PATH")
    }
    env["INSTALL_SH"] = str(INSTALL)
    hidden = " ".join(str(p) for p in real.values())
    result, out = run_script(
        [*prefix, "bash", str(script), hidden, str(work), str(debs), sys.executable], env, 120
    )
    assert "hidden: ok" in out and "still missing: []" in out
    assert "build headers: unpacked libasound2-dev, " in out
    headers = next(
        line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("headers: ")
    )
    # every header came from the unpacked packages
    deps = (work / "deps.txt").read_text()
    for name in ("Python.h", "pyconfig.h", "alsa/asoundlib.h"):
        used = [w for w in deps.split() if w.endswith(f"/{name}")]
        assert used and all(w.startswith(headers) for w in used), (name, used)
    # the program runs on this host's libasound.so.2
    assert f"python {sys.version_info.major}.{sys.version_info.minor} alsa " in result.stdout
    # the unpacked folder went with the shell that made it
    assert not Path(headers).exists()
