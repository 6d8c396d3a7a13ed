"""The pieces of ``wzp sdcard prepare`` on their own: the user-data merge, the firstrun.sh
chain, release detection, the partition table, the mounted-device refusal, the offline
wheelhouse (pip against a local fake index: no network)."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.sdcard.cards import CMDLINE, FIRSTRUN_IMAGER, USER_DATA_IMAGER, issue
from wzp.sdcard import SdcardError
from wzp.sdcard.fs import FolderFS, card_layout, is_read_only, read_mbr, refuse_if_mounted
from wzp.sdcard.hooks import (
    BLOCK_BEGIN,
    CMDLINE_RUN,
    FIRSTRUN_BLOCK,
    RUNCMD_COMMENT,
    RUNCMD_ENTRY,
    add_cmdline_run,
    chain_firstrun,
    merge_user_data,
)
from wzp.sdcard.payload import (
    AARCH64_PLATFORMS,
    fetch_wheelhouse,
    wheel_requirements,
    wheelhouse_commands,
)
from wzp.sdcard.release import detect

# ------------------------------------------------------------------------------ user-data


def test_merge_appends_runcmd_and_keeps_the_text_when_there_is_none() -> None:
    text = "#cloud-config\n# a comment Imager wrote\nhostname: handset\nssh_pwauth: false\n"
    merged = merge_user_data(text)
    assert merged.startswith(text)
    assert merged[len(text) :] == f"\n{RUNCMD_COMMENT}\nruncmd:\n- {_flow()}\n"
    assert yaml.safe_load(merged) == {
        "hostname": "handset",
        "ssh_pwauth": False,
        "runcmd": [RUNCMD_ENTRY],
    }


def _flow() -> str:
    return "[" + ", ".join(RUNCMD_ENTRY) + "]"


@pytest.mark.parametrize(
    "runcmd",
    [
        "runcmd:\n- echo one\n- [ls, -l]\n",
        "runcmd:\n  - echo one\n  - [ls, -l]\n",
        "runcmd:  # Imager's\n  - echo one\n\n  # commented\n  - [ls, -l]\n",
    ],
)
def test_merge_adds_to_an_existing_runcmd_in_place(runcmd: str) -> None:
    text = f"#cloud-config\nhostname: a\n{runcmd}timezone: Europe/London\n"
    merged = merge_user_data(text)
    data = yaml.safe_load(merged)
    assert data["runcmd"] == ["echo one", ["ls", "-l"], RUNCMD_ENTRY]
    assert data["timezone"] == "Europe/London" and data["hostname"] == "a"
    # edited in place: every original line is still there
    assert all(line in merged.splitlines() for line in text.splitlines())


def test_merge_rewrites_a_flow_style_runcmd_and_keeps_the_settings() -> None:
    text = "#cloud-config\nusers: [{name: pi, groups: sudo}]\nruncmd: [echo one, echo two]\n"
    merged = merge_user_data(text)
    assert merged.startswith("#cloud-config\n")
    data = yaml.safe_load(merged)
    assert data == {
        "users": [{"name": "pi", "groups": "sudo"}],
        "runcmd": ["echo one", "echo two", RUNCMD_ENTRY],
    }


def test_merge_of_imagers_user_data_and_of_nothing() -> None:
    merged = merge_user_data(USER_DATA_IMAGER)
    assert yaml.safe_load(merged)["runcmd"][-1] == RUNCMD_ENTRY
    assert merge_user_data(merged) == merged  # never twice
    fresh = merge_user_data(None)
    assert fresh.startswith("#cloud-config\n")
    assert yaml.safe_load(fresh) == {"runcmd": [RUNCMD_ENTRY]}
    assert merge_user_data("   \n") == fresh


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hostname: x\n", "does not start with #cloud-config"),
        ("#cloud-config\n- a\n- b\n", "not a cloud-config mapping"),
        ("#cloud-config\nruncmd: {a: 1}\n", "runcmd is not a list"),
        ("#cloud-config\na: [\n", "not valid YAML"),
    ],
)
def test_merge_refuses_what_it_cannot_merge(text: str, message: str) -> None:
    with pytest.raises(SdcardError, match=message):
        merge_user_data(text)


# ------------------------------------------------------------------------------ firstrun.sh


def test_chain_puts_the_block_before_imagers_cleanup() -> None:
    chained = chain_firstrun(FIRSTRUN_IMAGER)
    original = FIRSTRUN_IMAGER.splitlines()
    at = original.index("rm -f /boot/firstrun.sh")
    block = FIRSTRUN_BLOCK.rstrip("\n").split("\n")
    # exactly the block and a blank line, inserted before Imager's clean-up
    assert chained.splitlines() == [*original[:at], *block, "", *original[at:]]
    assert chain_firstrun(chained) == chained


@pytest.mark.parametrize(
    "script",
    [
        "#!/bin/bash\necho hi\nexit 0\n",  # no rm line: before the last exit 0
        "#!/bin/bash\necho hi\n",  # neither: at the end
    ],
)
def test_chain_without_imagers_cleanup_line(script: str) -> None:
    chained = chain_firstrun(script)
    lines = chained.splitlines()
    assert BLOCK_BEGIN in lines and "echo hi" in lines
    if "exit 0" in script:
        assert lines.index(BLOCK_BEGIN) < lines.index("exit 0")
    result = subprocess.run(["bash", "-n"], input=chained, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_cmdline_gets_imagers_words_on_its_one_line() -> None:
    assert add_cmdline_run(CMDLINE) == CMDLINE.rstrip("\n") + " " + CMDLINE_RUN + "\n"
    assert add_cmdline_run("a=1 b=2") == f"a=1 b=2 {CMDLINE_RUN}"
    assert add_cmdline_run("a=1\r\n") == f"a=1 {CMDLINE_RUN}\r\n"
    with pytest.raises(SdcardError, match="more than one line"):
        add_cmdline_run("a=1\nb=2\n")


# ------------------------------------------------------------------------------ release


def boot_folder(tmp_path: Path, **files: str) -> FolderFS:
    base = {"config.txt": "arm_64bit=1\n", "cmdline.txt": CMDLINE}
    for name, text in {**base, **files}.items():
        (tmp_path / name.replace("_", "-")).write_text(text)
    return FolderFS(tmp_path)


@pytest.mark.parametrize(
    ("files", "codename", "mechanism"),
    [
        ({"issue.txt": issue("2025-10-01")}, "trixie", "cloud-init"),
        (
            {"issue.txt": issue("2024-03-15"), "meta_data": "dsmode: local\n"},
            "trixie",
            "cloud-init",
        ),
        ({"issue.txt": issue("2023-10-10")}, "bookworm", "firstrun"),
        ({"issue.txt": issue("2025-05-13")}, "bookworm", "firstrun"),
    ],
)
def test_release_from_the_boot_partition(
    tmp_path: Path, files: dict[str, str], codename: str, mechanism: str
) -> None:
    release = detect(boot_folder(tmp_path, **files))
    assert (release.codename, release.mechanism) == (codename, mechanism)
    assert codename.capitalize() in release.describe()


def test_os_release_wins_over_the_boot_partition(tmp_path: Path) -> None:
    fs = boot_folder(tmp_path, **{"issue.txt": issue("2025-10-01")})
    release = detect(fs, 'ID=debian\nVERSION="12 (bookworm)"\n')
    assert release.codename == "bookworm"
    with pytest.raises(SdcardError, match="names no release"):
        detect(fs, "ID=debian\n")
    with pytest.raises(SdcardError, match="forky"):
        detect(fs, "ID=debian\nVERSION_CODENAME=forky\n")
    assert detect(fs, "ID=raspbian\nVERSION_CODENAME=trixie\n").codename == "trixie"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "no issue.txt"),
        ({"issue.txt": "Ubuntu 24.04\n"}, 'lacks the "Raspberry Pi reference" line'),
        ({"issue.txt": "Raspberry Pi reference\n"}, "unknown release"),
        ({"issue.txt": issue("2022-09-22")}, "older than Bookworm"),
    ],
)
def test_release_refusals(tmp_path: Path, files: dict[str, str], message: str) -> None:
    with pytest.raises(SdcardError, match=message):
        detect(boot_folder(tmp_path, **files))


def test_an_imager_run_without_its_script_is_refused(tmp_path: Path) -> None:
    fs = boot_folder(
        tmp_path,
        **{"issue.txt": issue("2024-11-19"), "cmdline.txt": f"{CMDLINE.strip()} {CMDLINE_RUN}\n"},
    )
    with pytest.raises(SdcardError, match=r"has no firstrun\.sh"):
        detect(fs)


# ------------------------------------------------------------------------------ partitions


def mbr(*entries: tuple[int, int, int]) -> bytes:
    head = bytearray(512)
    for i, (ptype, start, count) in enumerate(entries):
        struct.pack_into("<B3xBxxxII", head, 446 + 16 * i, 0, ptype, start, count)
    head[510:512] = b"\x55\xaa"
    return bytes(head)


def test_the_partition_table_is_read_and_checked(tmp_path: Path) -> None:
    parts = read_mbr(mbr((0x0C, 8192, 1024000), (0x83, 1032192, 4000000)), "card")
    assert [(p.number, p.type, p.start) for p in parts] == [
        (1, 0x0C, 8192 * 512),
        (2, 0x83, 1032192 * 512),
    ]
    with pytest.raises(SdcardError, match="GPT"):
        read_mbr(mbr((0xEE, 1, 100)), "card")
    with pytest.raises(SdcardError, match="empty partition table"):
        read_mbr(mbr(), "card")
    with pytest.raises(SdcardError, match="no partition table"):
        read_mbr(b"\0" * 512, "card")
    image = tmp_path / "linux-only.img"
    image.write_bytes(mbr((0x83, 1, 10)) + b"\0" * 10 * 512)
    with pytest.raises(SdcardError, match="no FAT partition"):
        card_layout(image, image.stat().st_size, "image")


# ------------------------------------------------------------------------------ devices


def test_a_mounted_device_is_refused(tmp_path: Path) -> None:
    sys_block = tmp_path / "sys"
    for name in ("sdz1", "sdz2"):
        (sys_block / "sdz" / name).mkdir(parents=True)
        (sys_block / "sdz" / name / "partition").write_text("1\n")
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\n/dev/sdz1 /media/me/bootfs vfat rw 0 0\n")
    with pytest.raises(SdcardError, match=r"/dev/sdz is mounted \(/dev/sdz1\).*umount /dev/sdz1"):
        refuse_if_mounted(Path("/dev/sdz"), mounts, sys_block)
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\n")
    refuse_if_mounted(Path("/dev/sdz"), mounts, sys_block)  # not mounted: no error


def test_a_device_mounted_through_a_loop_or_mapper_device_is_refused(tmp_path: Path) -> None:
    """What sits on the card counts too: a loop device over it or over a partition (``mount
    -o offset=``), with its own partitions, and a device-mapper map (kpartx); and for an
    image file, the loop devices over it (``udisksctl loop-setup`` mounts their partitions)."""
    sys_block = tmp_path / "sys"
    image = tmp_path / "card.img"
    image.write_bytes(b"")
    (sys_block / "sdz" / "sdz1").mkdir(parents=True)
    (sys_block / "sdz" / "sdz1" / "partition").write_text("1\n")
    # /sys/class/block lists partitions too, with their holders
    (sys_block / "sdz1" / "holders" / "dm-3").mkdir(parents=True)
    for loop, backing in (("loop6", "/dev/sdz"), ("loop7", "/dev/sdz1"), ("loop8", str(image))):
        (sys_block / loop / "loop").mkdir(parents=True)
        (sys_block / loop / "loop" / "backing_file").write_text(backing + "\n")
    (sys_block / "loop6" / "loop6p2").mkdir()
    (sys_block / "loop6" / "loop6p2" / "partition").write_text("2\n")
    (sys_block / "loop8" / "loop8p1").mkdir()
    (sys_block / "loop8" / "loop8p1" / "partition").write_text("1\n")
    mounts = tmp_path / "mounts"
    for source in ("/dev/loop6p2", "/dev/loop7", "/dev/dm-3"):
        mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\n{source} /mnt vfat ro 0 0\n")
        with pytest.raises(SdcardError, match=rf"/dev/sdz is mounted \({source}\)"):
            refuse_if_mounted(Path("/dev/sdz"), mounts, sys_block)
        refuse_if_mounted(image, mounts, sys_block)  # another card's: fine
    mounts.write_text("/dev/loop8p1 /media/me/bootfs vfat rw 0 0\n")
    with pytest.raises(SdcardError, match=r"card\.img is mounted \(/dev/loop8p1\)"):
        refuse_if_mounted(image, mounts, sys_block)
    refuse_if_mounted(Path("/dev/sdz"), mounts, sys_block)


def test_a_write_protected_device_is_recognised(tmp_path: Path) -> None:
    for name, ro in (("sdy", "1"), ("sdz", "0")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ro").write_text(ro + "\n")
    assert is_read_only(Path("/dev/sdy"), tmp_path)
    assert not is_read_only(Path("/dev/sdz"), tmp_path)
    assert not is_read_only(Path("/dev/sdx"), tmp_path)  # unknown: let the writes tell


# ------------------------------------------------------------------------------ wheelhouse


def fake_wheel(folder: Path, name: str, version: str, tag: str, requires: list[str]) -> Path:
    path = folder / f"{name}-{version}-{tag}.whl"
    dist = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{dist}/METADATA", meta)
        zf.writestr(f"{dist}/WHEEL", f"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: {tag}\n")
        zf.writestr(f"{dist}/RECORD", "")
    return path


FAKE_BACKEND = """import os


def get_requires_for_build_wheel(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    dist = "{name}-{version}.dist-info"
    os.makedirs(os.path.join(metadata_directory, dist))
    with open(os.path.join(metadata_directory, dist, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n")
    return dist


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise RuntimeError("a download never builds")
"""


def fake_sdist(folder: Path, name: str, version: str) -> Path:
    path = folder / f"{name}-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for member, text in {
            # an in-tree build backend: pip prepares the metadata with no tools installed
            "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\n'
            'backend-path = ["."]\n',
            "backend.py": FAKE_BACKEND.format(name=name, version=version),
            "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        }.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name}-{version}/{member}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


AARCH = "manylinux_2_17_aarch64.manylinux2014_aarch64"


@pytest.fixture
def fake_index(tmp_path: Path) -> tuple[Path, Path]:
    """A wzp-like wheel and a find-links folder with aarch64 wheels for 3.11 and 3.13,
    and decoys pip must not take (x86_64, cp312)."""
    index = tmp_path / "index"
    index.mkdir()
    wzp = fake_wheel(
        tmp_path,
        "wzp",
        "0.1.0",
        "py3-none-any",
        [
            "numpy>=1.24",
            "opuslib>=3.0.1",
            "gpiozero>=2.0.1.post3",
            "pyalsaaudio>=0.11",
            "pytest>=8; extra == 'dev'",
        ],
    )
    for py in ("cp311", "cp313"):
        fake_wheel(index, "numpy", "2.1.0", f"{py}-{py}-{AARCH}", [])
    fake_wheel(index, "numpy", "2.1.0", "cp311-cp311-manylinux_2_17_x86_64", [])
    fake_wheel(index, "numpy", "2.1.0", f"cp312-cp312-{AARCH}", [])
    fake_wheel(index, "gpiozero", "2.0.1.post3", "py3-none-any", [])
    fake_wheel(index, "setuptools", "75.0.0", "py3-none-any", [])
    fake_wheel(index, "wheel", "0.44.0", "py3-none-any", [])
    fake_sdist(index, "pyalsaaudio", "0.11.0")
    fake_sdist(index, "opuslib", "3.0.1")
    return wzp, index


def test_the_wheelhouse_commands_ask_for_aarch64_wheels_for_both_pythons(
    fake_index: tuple[Path, Path], tmp_path: Path
) -> None:
    wzp, _ = fake_index
    assert wheel_requirements(wzp) == [
        "numpy>=1.24",
        "opuslib>=3.0.1",
        "gpiozero>=2.0.1.post3",
        "pyalsaaudio>=0.11",
    ]
    cmds = wheelhouse_commands(wzp, tmp_path / "out")
    binary = [c for c in cmds if "--python-version" in c]
    assert [c[c.index("--python-version") + 1] for c in binary] == ["3.11", "3.13"]
    for cmd in binary:
        assert "--only-binary=:all:" in cmd and "pyalsaaudio>=0.11" not in cmd
        assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--platform"] == list(
            AARCH64_PLATFORMS
        )
        assert cmd[-2:] == ["numpy>=1.24", "gpiozero>=2.0.1.post3"]
    source = [c for c in cmds if "--no-binary=:all:" in c]
    assert len(source) == 1 and source[0][-2:] == ["opuslib>=3.0.1", "pyalsaaudio>=0.11"]


def test_pip_fills_the_wheelhouse_from_a_local_index(
    fake_index: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wzp, index = fake_index
    # this machine's pip configuration (extra indexes, constraints) stays out of it
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT"):
        monkeypatch.delenv(var, raising=False)
    args = ["--no-index", "--find-links", str(index), "--no-build-isolation"]
    files = fetch_wheelhouse(wzp, tmp_path / "house", args)
    assert sorted(p.name for p in files) == sorted(
        [
            f"numpy-2.1.0-cp311-cp311-{AARCH}.whl",
            f"numpy-2.1.0-cp313-cp313-{AARCH}.whl",
            "gpiozero-2.0.1.post3-py3-none-any.whl",
            "pyalsaaudio-0.11.0.tar.gz",
            "opuslib-3.0.1.tar.gz",
            "setuptools-75.0.0-py3-none-any.whl",
            "wheel-0.44.0-py3-none-any.whl",
        ]
    )


def test_a_failed_download_is_a_clear_refusal(
    fake_index: tuple[Path, Path], tmp_path: Path
) -> None:
    wzp, _ = fake_index
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SdcardError, match="could not fetch the Pi's wheels"):
        fetch_wheelhouse(
            wzp,
            tmp_path / "house",
            ["--no-index", "--find-links", str(empty), "--isolated"],
        )
