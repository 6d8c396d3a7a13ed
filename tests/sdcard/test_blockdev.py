"""``wzp sdcard prepare`` on a real block device: the synthetic cards of ``cards.py`` attached
to a loop device (``/dev/loopN``), as a card in a reader shows up: every placed file, the
same bytes as on the image file, idempotence, --undo, refusals that leave the device
untouched, a write-protected card, and a partition that is really mounted (directly, through
a loop device over the card, or with the card being an image attached to a loop device).

Needs root and loop devices; skipped (with the reason) only when no loop device can be
attached. Every loop device and mount is undone on the way out, failure or not."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from tests.sdcard.cards import BOOT_OFFSET, ROOT_START, SECTOR, SPECS, boot_files, build_image
from tests.sdcard.test_prepare import check_again_and_undo, check_prepared, run_prepare
from wzp.sdcard import SdcardError
from wzp.sdcard.prepare import Options, prepare, undo

SYS_BLOCK = Path("/sys/class/block")
#: the boot (FAT) and root (ext4) partitions of a synthetic card: number, byte offset
PARTITIONS = {"boot": (1, BOOT_OFFSET), "root": (2, ROOT_START * SECTOR)}


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return subprocess.CompletedProcess(list(cmd), 127, "", f"{cmd[0]}: not found")


def _partition_names(dev: Path) -> list[str]:
    folder = SYS_BLOCK / dev.name
    return sorted(
        c.name
        for c in folder.iterdir()
        if c.name.startswith(dev.name) and (c / "partition").exists()
    )


@contextmanager
def attached(image: Path, read_only: bool = False) -> Iterator[Path]:
    """``image`` as a loop block device with its partitions' nodes (``/dev/loopNp1``);
    detached again on the way out. Skips when no loop device can be attached."""
    if os.geteuid() != 0:
        pytest.skip("loop devices need root (run as root to test a real block device)")
    if not Path("/dev/loop-control").exists():
        pytest.skip("no /dev/loop-control: this kernel or container has no loop devices")
    if shutil.which("losetup") is None:
        pytest.skip("losetup not found (Debian: util-linux)")
    flags = ["--read-only"] if read_only else []
    result = _run("losetup", "--find", "--show", "--partscan", *flags, str(image))
    if result.returncode != 0:
        result = _run("losetup", "--find", "--show", *flags, str(image))
    if result.returncode != 0:
        pytest.skip(f"cannot attach a loop device: losetup: {result.stderr.strip()}")
    dev = Path(result.stdout.strip())
    made: list[Path] = []
    try:
        # --partscan does not always make the partitions (some kernels, containers): add
        # them (all a truncated card has room for)
        if not _partition_names(dev):
            _run("partx", "--add", str(dev))
        names = _partition_names(dev)
        for name in names:  # a /dev without udev or devtmpfs has no nodes for them
            node = Path("/dev", name)
            if not node.exists():
                major, minor = (SYS_BLOCK / name / "dev").read_text().split(":")
                os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(int(major), int(minor)))
                made.append(node)
        yield dev
    finally:
        for node in made:
            node.unlink(missing_ok=True)
        _run("partx", "--delete", str(dev))
        detached = _run("losetup", "--detach", str(dev))
        assert detached.returncode == 0, f"losetup --detach {dev}: {detached.stderr}"


@contextmanager
def a_partition_mounted(dev: Path, through_offset: bool) -> Iterator[str]:
    """The boot partition of ``dev`` mounted read-only, or its root partition when this
    kernel cannot mount FAT (the refusal is the same); yields which one. ``through_offset``:
    mounted from the whole device at the partition's offset, through a loop device that
    ``mount`` sets up and frees. Unmounted on the way out; skips when nothing mounts."""
    assert through_offset or _partition_names(dev), f"{dev} has no partition nodes"
    errors = []
    for which in PARTITIONS:
        number, offset = PARTITIONS[which]
        point = Path(tempfile.mkdtemp(prefix="wzp-mnt-"))
        source, options = (
            (dev, f"ro,offset={offset}") if through_offset else (f"{dev}p{number}", "ro")
        )
        result = _run("mount", "-o", options, str(source), str(point))
        if result.returncode == 0:
            break
        point.rmdir()
        errors.append(f"mount -o {options} {source}: {result.stderr.strip()}")
    else:
        pytest.skip("cannot mount a partition of the loop device: " + "; ".join(errors))
    try:
        yield which
    finally:
        if _run("umount", str(point)).returncode != 0:
            _run("umount", "--lazy", str(point))
        with suppress(OSError):
            point.rmdir()


def device_digest(dev: Path) -> str:
    with open(dev, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ------------------------------------------------------------------------------ prepare


@pytest.mark.parametrize("kind", ["trixie", "bookworm", "plain"])
def test_a_device_gets_what_an_image_gets_again_and_again_and_undo_restores_it(
    kind: str, tmp_path: Path, wheel: Path, config: Path
) -> None:
    image = build_image(SPECS[kind], tmp_path / "build")
    as_file = tmp_path / "as-file.img"
    shutil.copyfile(image, as_file)
    run_prepare(as_file, config, wheel)
    on_image_file = boot_files(as_file, tmp_path / "reads")

    with attached(image) as dev:
        before = boot_files(dev, tmp_path / "reads")
        assert before == boot_files(image, tmp_path / "reads")
        # prepare, prepare again (same bytes), undo (the card as it was)
        first = check_again_and_undo(
            kind, dev, lambda: boot_files(dev, tmp_path / "reads"), config, wheel
        )
        check_prepared(kind, first, before, wheel, config, tmp_path)
        assert first == on_image_file  # byte for byte what the image file got

        out = "\n".join(run_prepare(dev, config, wheel))
        assert f"target: the boot partition of device {dev}" in out
    # the writes reached the medium: the image file behind the device holds them
    assert boot_files(image, tmp_path / "reads") == first


# ------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("ubuntu", "not a Raspberry Pi OS boot partition"),
        ("bullseye", "bullseye"),
        ("truncated", r"device /dev/loop\d+ is truncated"),
    ],
)
def test_refused_devices_are_left_byte_identical(
    kind: str, message: str, tmp_path: Path, wheel: Path, config: Path
) -> None:
    image = build_image(SPECS[kind], tmp_path / "build")
    with attached(image) as dev:
        digest = device_digest(dev)
        with pytest.raises(SdcardError, match=message):
            run_prepare(dev, config, wheel)
        assert device_digest(dev) == digest


def test_a_write_protected_device_is_refused_before_anything_is_written(
    tmp_path: Path, wheel: Path, config: Path
) -> None:
    image = build_image(SPECS["trixie"], tmp_path / "build")
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    with attached(image, read_only=True) as dev:
        lines: list[str] = []
        with pytest.raises(SdcardError, match=r"is read-only \(write-protected\).*lock switch"):
            prepare(Options(dev, config, wheel=wheel), lines.append)
        assert lines == []  # not even "target: ..."
        with pytest.raises(SdcardError, match="read-only"):
            undo(Options(dev, None, undo=True), lines.append)
    assert hashlib.sha256(image.read_bytes()).hexdigest() == digest


# ------------------------------------------------------------------------------ mounted


@pytest.mark.parametrize("through_offset", [False, True], ids=["partition-node", "offset-loop"])
def test_a_device_with_a_mounted_partition_is_refused(
    through_offset: bool, tmp_path: Path, wheel: Path, config: Path
) -> None:
    """Mounted as ``/dev/loopNp1``, or through a second loop device over the whole device
    (``mount -o offset=``, what one does where the kernel made no partition nodes)."""
    image = build_image(SPECS["trixie"], tmp_path / "build")
    with attached(image) as dev:
        digest = device_digest(dev)
        with a_partition_mounted(dev, through_offset) as which:
            node = r"/dev/loop\d+" if through_offset else re.escape(f"{dev}p{PARTITIONS[which][0]}")
            refusal = rf"{re.escape(str(dev))} is mounted \({node}\).*sudo umount {node}"
            with pytest.raises(SdcardError, match=refusal):
                run_prepare(dev, config, wheel)
            with pytest.raises(SdcardError, match=refusal):
                undo(Options(dev, None, undo=True), print)
            assert device_digest(dev) == digest, which
        # unmounted: the same device is prepared
        run_prepare(dev, config, wheel)
        assert "wzp.toml" in boot_files(dev, tmp_path / "reads")


def test_an_image_attached_to_a_loop_device_and_mounted_is_refused(
    tmp_path: Path, wheel: Path, config: Path
) -> None:
    """``udisksctl loop-setup`` (or a file manager opening the image) mounts its partitions:
    writing the image file under a mounted file system would corrupt it."""
    image = build_image(SPECS["trixie"], tmp_path / "build")
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    with attached(image) as dev, a_partition_mounted(dev, through_offset=False) as which:
        node = re.escape(f"{dev}p{PARTITIONS[which][0]}")
        with pytest.raises(SdcardError, match=rf"{re.escape(str(image))} is mounted \({node}\)"):
            run_prepare(image, config, wheel)
        assert hashlib.sha256(image.read_bytes()).hexdigest() == digest
    # attached but not mounted (or detached): fine
    run_prepare(image, config, wheel)
