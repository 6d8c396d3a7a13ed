"""Access to a card's boot partition: a folder, or a FAT file system inside an image file or
a block device, read and written with mtools at the partition's byte offset (never mounted).

Paths here are relative to the boot partition's root and use ``/`` (``wzp/manifest.json``).
FAT compares names without case; both backends keep the case they are given.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from . import SdcardError

SECTOR = 512
#: MBR partition types of a FAT file system (FAT12/16/32, CHS or LBA)
FAT_TYPES = {0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E}
LINUX_TYPE = 0x83
GPT_PROTECTIVE = 0xEE
MTOOLS = ("mcopy", "mdir", "mmd", "mdel", "mdeltree")


class BootFS(Protocol):
    """The few operations prepare and undo need on a boot partition."""

    description: str

    def read(self, path: str) -> bytes | None:
        """The file's bytes, None when it does not exist."""
        ...

    def write(self, path: str, data: bytes) -> None:
        """Create or replace the file (its folder must exist)."""
        ...

    def delete(self, path: str) -> None:
        """Remove a file; absent is fine."""
        ...

    def mkdir(self, path: str) -> None:
        """Create a folder (and its parents); existing is fine."""
        ...

    def rmtree(self, path: str) -> None:
        """Remove a folder and everything in it; absent is fine."""
        ...

    def free_bytes(self) -> int:
        """Room left on the file system, bytes."""
        ...

    def tree_bytes(self, path: str) -> int:
        """Bytes of the files under a folder (0 when it does not exist)."""
        ...

    def listdir(self, path: str = "") -> dict[str, bool] | None:
        """Names in a folder -> is-a-folder; None when the folder does not exist."""
        ...


def _parts(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"bad card path {path!r}")
    return parts


class FolderFS:
    """A boot partition that is already mounted (the ``bootfs`` folder a laptop shows), or
    one extracted to a folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = f"folder {root}"

    def _p(self, path: str) -> Path:
        return self.root.joinpath(*_parts(path))

    def read(self, path: str) -> bytes | None:
        try:
            return self._p(path).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def write(self, path: str, data: bytes) -> None:
        target = self._p(path)
        fd, tmp = tempfile.mkstemp(prefix=".wzp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, path: str) -> None:
        self._p(path).unlink(missing_ok=True)

    def mkdir(self, path: str) -> None:
        self._p(path).mkdir(parents=True, exist_ok=True)

    def rmtree(self, path: str) -> None:
        target = self._p(path)
        if target.is_dir():
            shutil.rmtree(target)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def tree_bytes(self, path: str) -> int:
        folder = self._p(path)
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

    def listdir(self, path: str = "") -> dict[str, bool] | None:
        folder = self._p(path)
        if not folder.is_dir():
            return None
        return {entry.name: entry.is_dir() for entry in folder.iterdir()}


class MtoolsFS:
    """The FAT file system at ``offset`` bytes into an image file or a block device."""

    def __init__(self, image: Path, offset: int, what: str) -> None:
        missing = [tool for tool in MTOOLS if shutil.which(tool) is None]
        if missing:
            raise SdcardError(
                f"{', '.join(missing)} not found: install mtools "
                "(Debian/Ubuntu: sudo apt-get install mtools; macOS: brew install mtools)"
            )
        self.image = image
        self.offset = offset
        self.description = what
        # geometry checks refuse some valid images (and cards written by other tools)
        self._env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}

    def _spec(self) -> str:
        return f"{self.image}@@{self.offset}"

    def _run(self, tool: str, *args: str, ok_missing: bool = False) -> bytes | None:
        result = subprocess.run(
            [tool, "-i", self._spec(), *args],
            capture_output=True,
            env=self._env,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        if result.returncode != 0:
            err = result.stderr.decode("utf-8", "replace").strip()
            if ok_missing and "not found" in err:
                return None
            raise SdcardError(f"{tool} on {self.description} failed: {err or result.returncode}")
        return result.stdout

    @staticmethod
    def _card(path: str) -> str:
        return "::/" + "/".join(_parts(path))

    def read(self, path: str) -> bytes | None:
        return self._run("mcopy", "-n", self._card(path), "-", ok_missing=True)

    def write(self, path: str, data: bytes) -> None:
        with tempfile.NamedTemporaryFile(prefix="wzp-card-") as tmp:
            tmp.write(data)
            tmp.flush()
            self._run("mcopy", "-o", "-n", tmp.name, self._card(path))

    def delete(self, path: str) -> None:
        self._run("mdel", self._card(path), ok_missing=True)

    def mkdir(self, path: str) -> None:
        done: list[str] = []
        for part in _parts(path):
            parent = "/".join(done)
            listing = self.listdir(parent) or {}
            done.append(part)
            if not any(name.lower() == part.lower() and is_dir for name, is_dir in listing.items()):
                self._run("mmd", self._card("/".join(done)))

    def rmtree(self, path: str) -> None:
        self._run("mdeltree", self._card(path), ok_missing=True)

    def free_bytes(self) -> int:
        # mdir's last line: "   3 088 384 bytes free" (digits grouped by spaces)
        out = self._run("mdir", "::/") or b""
        return self._mdir_number(out, r"bytes free", "how much room is free")

    def tree_bytes(self, path: str) -> int:
        # mdir -/ ends with "Total files listed:" and "   38 files   13 602 141 bytes"
        out = self._run("mdir", "-/", self._card(path), ok_missing=True)
        if out is None:
            return 0
        return self._mdir_number(out, r"bytes\s*$", f"how big {path} is", last=True)

    def _mdir_number(self, out: bytes, after: str, what: str, last: bool = False) -> int:
        """The number (digits grouped by spaces) before ``after`` in mdir's output."""
        text = out.decode("utf-8", "replace")
        found = re.findall(rf"(\d[\d ,.']*) {after}", text, flags=re.MULTILINE)
        digits = re.sub(r"\D", "", found[-1 if last else 0]) if found else ""
        if not digits:
            raise SdcardError(f"mdir on {self.description} did not say {what}")
        return int(digits)

    def listdir(self, path: str = "") -> dict[str, bool] | None:
        out = self._run("mdir", "-b", self._card(path) if path else "::/", ok_missing=True)
        if out is None:
            return None
        prefix = self._card(path).rstrip("/") + "/"
        entries: dict[str, bool] = {}
        for line in out.decode("utf-8", "replace").splitlines():
            if not line.startswith(prefix):
                continue
            rest = line[len(prefix) :]
            is_dir = rest.endswith("/")
            name = rest.rstrip("/")
            if name and "/" not in name:
                entries[name] = is_dir
        return entries


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Partition:
    number: int
    type: int
    start: int  # bytes
    size: int  # bytes

    @property
    def end(self) -> int:
        return self.start + self.size


def read_mbr(head: bytes, what: str) -> list[Partition]:
    """The primary partitions of an MBR (DOS) partition table. Raises SdcardError."""
    if len(head) < SECTOR or head[510:512] != b"\x55\xaa":
        raise SdcardError(
            f"{what} has no partition table: not a Raspberry Pi OS card image "
            "(write one with Raspberry Pi Imager first)"
        )
    parts: list[Partition] = []
    for index in range(4):
        entry = head[446 + 16 * index : 446 + 16 * (index + 1)]
        ptype = entry[4]
        start, count = struct.unpack_from("<II", entry, 8)
        if ptype == 0 or count == 0:
            continue
        if ptype == GPT_PROTECTIVE:
            raise SdcardError(
                f"{what} has a GPT partition table: Raspberry Pi OS images use an MBR one, "
                "so this is not a card as Raspberry Pi Imager writes it"
            )
        parts.append(Partition(index + 1, ptype, start * SECTOR, count * SECTOR))
    if not parts:
        raise SdcardError(f"{what} has an empty partition table: not a Raspberry Pi OS card")
    return parts


@dataclass(frozen=True)
class CardLayout:
    boot: Partition
    root: Partition | None


def card_layout(image: Path, size: int, what: str) -> CardLayout:
    """The boot (first FAT) and root (first Linux) partitions. Raises SdcardError, also for
    an image shorter than its partition table says (a truncated download or copy)."""
    with open(image, "rb") as f:
        head = f.read(SECTOR)
    parts = read_mbr(head, what)
    for part in parts:
        if part.end > size:
            raise SdcardError(
                f"{what} is truncated: partition {part.number} ends at byte {part.end} but "
                f"there are only {size} bytes (an incomplete download or copy?)"
            )
    boot = next((p for p in parts if p.type in FAT_TYPES), None)
    if boot is None:
        raise SdcardError(
            f"{what} has no FAT partition: not a Raspberry Pi OS card (its boot partition is FAT32)"
        )
    root = next((p for p in parts if p.type == LINUX_TYPE), None)
    return CardLayout(boot, root)


def read_root_file(image: Path, root: Partition, paths: tuple[str, ...]) -> str | None:
    """The first of ``paths`` that the ext4 root partition holds, read with debugfs (no
    mount); None when debugfs is missing or none is readable."""
    if shutil.which("debugfs") is None:
        return None
    for path in paths:
        result = subprocess.run(
            ["debugfs", "-R", f"cat {path}", f"{image}?offset={root.start}"],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        text = result.stdout.decode("utf-8", "replace")
        if result.returncode == 0 and "=" in text:
            return text
    return None


# --------------------------------------------------------------------------- block devices


def mounted_sources(mounts_file: Path = Path("/proc/self/mounts")) -> set[str]:
    """Every mount source (device path) in the mount table."""
    try:
        text = mounts_file.read_text()
    except OSError:
        return set()
    sources = set()
    for line in text.splitlines():
        fields = line.split()
        if fields:
            sources.add(fields[0].replace("\\040", " "))
    return sources


def device_partitions(device: Path, sys_block: Path = Path("/sys/class/block")) -> list[Path]:
    """Every node a mount of the device's contents can name: the device (``/dev/sdb``), its
    partitions (``/dev/sdb1``, ...) and what is stacked on any of these, in turn: a loop
    device over one (``mount -o offset=``, ``losetup``) or a device-mapper one (``kpartx``).
    ``device`` may also be an image file: then the loop devices over it (and what is stacked
    on those) count."""
    loops: dict[str, list[str]] = {}  # backing file or device -> loop devices over it
    for backing in sorted(sys_block.glob("*/loop/backing_file")):
        try:
            source = backing.read_text().strip()
        except OSError:
            continue
        loops.setdefault(str(Path(source).resolve()), []).append(backing.parent.parent.name)
    nodes = [device.resolve()]
    todo = list(nodes)
    while todo:
        node = todo.pop(0)
        stacked = list(loops.get(str(node), ()))
        folder = sys_block / node.name
        if node.parent == Path("/dev") and folder.is_dir():
            for child in sorted(folder.iterdir()):
                if child.name.startswith(node.name) and (child / "partition").exists():
                    stacked.append(child.name)
            if (folder / "holders").is_dir():
                stacked.extend(sorted(h.name for h in (folder / "holders").iterdir()))
        for name in stacked:
            if Path("/dev", name) not in nodes:
                nodes.append(Path("/dev", name))
                todo.append(Path("/dev", name))
    return nodes


def refuse_if_mounted(
    device: Path,
    mounts_file: Path = Path("/proc/self/mounts"),
    sys_block: Path = Path("/sys/class/block"),
) -> None:
    """SdcardError when the device (or image file) or one of its partitions is mounted,
    directly or through a loop or device-mapper device."""
    sources = mounted_sources(mounts_file)
    resolved = {str(Path(s).resolve()) for s in sources if s.startswith("/dev/")}
    busy = [str(n) for n in device_partitions(device, sys_block) if str(n) in resolved]
    if busy:
        raise SdcardError(
            f"{device} is mounted ({', '.join(busy)}): eject or unmount it first "
            f"(sudo umount {' '.join(busy)}), or pass the mounted boot folder instead"
        )


def is_read_only(device: Path, sys_block: Path = Path("/sys/class/block")) -> bool:
    """Whether the kernel refuses writes to the block device: an SD card whose adapter's lock
    switch is on, ``losetup -r``, ``blockdev --setro``. (Opening it for writing still works;
    only the writes fail, and some mtools commands exit 0 all the same.)"""
    try:
        return (sys_block / device.resolve().name / "ro").read_text().strip() == "1"
    except OSError:
        return False


def is_block_device(path: Path) -> bool:
    try:
        return stat.S_ISBLK(path.stat().st_mode)
    except OSError:
        return False


def block_size(device: Path) -> int:
    """Byte size of a block device."""
    with open(device, "rb") as f:
        return f.seek(0, os.SEEK_END)
