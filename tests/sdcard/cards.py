"""Synthetic Raspberry Pi OS cards, built from scratch without root or mounts: an MBR
partition table (sfdisk), a FAT boot partition (mkfs.vfat --offset, filled with mcopy) and
an ext4 root partition holding /etc/os-release (mkfs.ext4 -E offset= -d).

The boot files imitate what Raspberry Pi OS images and Raspberry Pi Imager write: pi-gen's
issue.txt, config.txt and cmdline.txt; Imager's cloud-init user-data / network-config /
meta-data on Trixie; Imager's firstrun.sh started from cmdline.txt on Bookworm.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

TOOLS = ("sfdisk", "mkfs.vfat", "mkfs.ext4", "mcopy", "mdir", "debugfs")
SECTOR = 512
BOOT_START = 2048  # sectors: 1 MiB, as Raspberry Pi OS images use
BOOT_SECTORS = 16 * 2048  # 16 MiB
ROOT_START = BOOT_START + BOOT_SECTORS
IMAGE_MIB = 40
BOOT_OFFSET = BOOT_START * SECTOR
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def need_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} missing (Debian: mtools dosfstools fdisk e2fsprogs; "
            "./install.sh --dev installs them as root)"
        )


CONFIG_TXT = """# For more options and information see
# http://rptl.io/configtxt
dtparam=audio=on
camera_auto_detect=1
display_auto_detect=1
auto_initramfs=1
dtoverlay=vc4-kms-v3d
max_framebuffers=2
disable_fw_kms_setup=1
arm_64bit=1
disable_overscan=1
arm_boost=1

[all]
"""
CMDLINE = (
    "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 "
    "fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot "
    "cfg80211.ieee80211_regdom=GB\n"
)
CMDLINE_IMAGER = (
    CMDLINE.rstrip("\n") + " systemd.run=/boot/firstrun.sh systemd.run_success_action=reboot "
    "systemd.unit=kernel-command-line.target\n"
)
SSH_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGGakkE8UR+O7GThbvNfQeV8UWHBRHxQrFu2FgPGNLFE me@laptop"
)
FIRSTRUN_IMAGER = """#!/bin/bash

set +e

CURRENT_HOSTNAME=`cat /etc/hostname | tr -d " \\t\\n\\r"`
if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then
   /usr/lib/raspberrypi-sys-mods/imager_custom set_hostname handset
else
   echo handset >/etc/hostname
   sed -i "s/127.0.1.1.*$CURRENT_HOSTNAME/127.0.1.1\\thandset/g" /etc/hosts
fi
FIRSTUSER=`getent passwd 1000 | cut -d: -f1`
FIRSTUSERHOME=`getent passwd 1000 | cut -d: -f6`
if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then
   /usr/lib/raspberrypi-sys-mods/imager_custom enable_ssh -k '{KEY}'
fi
if [ -f /usr/lib/userconf-pi/userconf ]; then
   /usr/lib/userconf-pi/userconf 'pi' '$5$kVFkWxbC0D$8RwXA2pZ7Fq9P0oUJ3mK1aGxQeYdVvLbNcTrSsHiEu4'
fi
if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then
   /usr/lib/raspberrypi-sys-mods/imager_custom set_wlan 'HomeNet' 'f3c1a0d9e8b7c6a5' 'GB'
fi
rm -f /boot/firstrun.sh
sed -i 's| systemd.run.*||g' /boot/cmdline.txt
exit 0
""".replace("{KEY}", SSH_KEY)
USER_DATA_IMAGER = """#cloud-config
hostname: handset
manage_etc_hosts: true
packages:
- avahi-daemon
apt:
  conf: |
    Acquire {
      Check-Date "false";
    };

users:
- name: pi
  groups: users,adm,dialout,audio,netdev,video,plugdev,cdrom,games,input,gpio,spi,i2c,render,sudo
  shell: /bin/bash
  lock_passwd: false
  passwd: $5$kVFkWxbC0D$8RwXA2pZ7Fq9P0oUJ3mK1aGxQeYdVvLbNcTrSsHiEu4
  ssh_authorized_keys:
    - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGGakkE8UR+O7GThbvNfQeV8UWHBRHxQrFu2FgPGNLFE me@laptop
  sudo: ALL=(ALL) NOPASSWD:ALL

ssh_pwauth: false

timezone: Europe/London
runcmd:
- localectl set-x11-keymap "gb" pc105
- setupcon -k --force || true

"""
NETWORK_CONFIG = """network:
  version: 2
  wifis:
    renderer: NetworkManager
    wlan0:
      dhcp4: true
      regulatory-domain: "GB"
      access-points:
        "HomeNet":
          password: "f3c1a0d9e8b7c6a5"
      optional: true
"""
META_DATA = """# This is the meta-data configuration file for cloud-init.
dsmode: local
instance_id: rpios-image
"""


def issue(date: str) -> str:
    return (
        f"Raspberry Pi reference {date}\n"
        "Generated using pi-gen, https://github.com/RPi-Distro/pi-gen, "
        "5b0d7f2c3e9a1b4d6f8a0c2e4b6d8f0a1c3e5b7d, stage2\n"
    )


def os_release(version: str, codename: str, ident: str = "debian") -> str:
    name = "Ubuntu" if ident == "ubuntu" else "Debian GNU/Linux"
    return (
        f'PRETTY_NAME="{name} {version} ({codename})"\nNAME="{name}"\n'
        f'VERSION_ID="{version}"\nVERSION="{version} ({codename})"\n'
        f"VERSION_CODENAME={codename}\nID={ident}\n"
    )


@dataclass(frozen=True)
class CardSpec:
    name: str
    boot: dict[str, str]
    os_release: str
    truncate_to: int | None = None  # bytes


SPECS = {
    "trixie": CardSpec(
        "trixie",
        {
            "config.txt": CONFIG_TXT,
            "cmdline.txt": CMDLINE,
            "issue.txt": issue("2025-10-01"),
            "user-data": USER_DATA_IMAGER,
            "network-config": NETWORK_CONFIG,
            "meta-data": META_DATA,
        },
        os_release("13", "trixie"),
    ),
    "bookworm": CardSpec(
        "bookworm",
        {
            "config.txt": CONFIG_TXT,
            "cmdline.txt": CMDLINE_IMAGER,
            "issue.txt": issue("2024-11-19"),
            "firstrun.sh": FIRSTRUN_IMAGER,
        },
        os_release("12", "bookworm"),
    ),
    "plain": CardSpec(
        "plain",
        {"config.txt": CONFIG_TXT, "cmdline.txt": CMDLINE, "issue.txt": issue("2025-05-13")},
        os_release("12", "bookworm"),
    ),
    # Ubuntu for the Pi: config.txt, cmdline.txt and cloud-init files, but not Raspberry Pi OS
    "ubuntu": CardSpec(
        "ubuntu",
        {
            "config.txt": "[all]\nkernel=vmlinuz\ninitramfs initrd.img followkernel\n",
            "cmdline.txt": "console=serial0,115200 root=LABEL=writable rootwait\n",
            "user-data": "#cloud-config\nhostname: ubuntu\n",
            "meta-data": "instance_id: cloud-image\n",
            "network-config": "network:\n  version: 2\n",
        },
        os_release("24.04", "noble", "ubuntu"),
    ),
    "bullseye": CardSpec(
        "bullseye",
        {"config.txt": CONFIG_TXT, "cmdline.txt": CMDLINE, "issue.txt": issue("2023-05-03")},
        os_release("11", "bullseye"),
    ),
    "truncated": CardSpec(
        "truncated",
        {"config.txt": CONFIG_TXT, "cmdline.txt": CMDLINE, "issue.txt": issue("2024-11-19")},
        os_release("12", "bookworm"),
        truncate_to=(ROOT_START + 2048) * SECTOR,
    ),
}


def _run(*cmd: str, env: dict[str, str] | None = None, stdin: str | None = None) -> None:
    result = subprocess.run(list(cmd), capture_output=True, text=True, env=env, input=stdin)
    assert result.returncode == 0, f"{cmd}: {result.stdout}{result.stderr}"


def build_image(spec: CardSpec, work: Path) -> Path:
    """An image file holding ``spec``: partition table, FAT boot, ext4 root."""
    need_tools()
    work.mkdir(parents=True, exist_ok=True)
    image = work / f"{spec.name}.img"
    with open(image, "wb") as f:
        f.truncate(IMAGE_MIB << 20)
    _run(
        "sfdisk",
        "-q",
        str(image),
        stdin=f"label: dos\n{BOOT_START},{BOOT_SECTORS},c\n{ROOT_START},,83\n",
    )
    _run(
        "mkfs.vfat", "-F", "16", "-n", "bootfs", "--offset", str(BOOT_START), str(image),
        str(BOOT_SECTORS // 2),
    )  # fmt: skip
    files = work / f"{spec.name}-boot-src"
    files.mkdir()
    for name, text in spec.boot.items():
        (files / name).write_text(text)
    _run(
        "mcopy", "-s", "-i", f"{image}@@{BOOT_OFFSET}",
        *[str(p) for p in sorted(files.iterdir())], "::/",
        env=MTOOLS_ENV,
    )  # fmt: skip
    rootfs = work / f"{spec.name}-root-src"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "os-release").write_text(spec.os_release)
    root_bytes = (IMAGE_MIB << 20) - ROOT_START * SECTOR
    _run(
        "mkfs.ext4", "-q", "-F", "-L", "rootfs", "-E", f"offset={ROOT_START * SECTOR}",
        "-d", str(rootfs), str(image), f"{root_bytes // 1024}k",
    )  # fmt: skip
    if spec.truncate_to is not None:
        with open(image, "r+b") as f:
            f.truncate(spec.truncate_to)
    return image


def extract_boot(image: Path, dest: Path) -> Path:
    """The image's boot partition copied to a folder (as a laptop shows ``bootfs``)."""
    dest.mkdir(parents=True)
    _run("mcopy", "-s", "-n", "-i", f"{image}@@{BOOT_OFFSET}", "::/*", str(dest), env=MTOOLS_ENV)
    return dest


def boot_files(image: Path, work: Path) -> dict[str, bytes]:
    """Every file on the image's boot partition: relative path -> bytes."""
    folder = extract_boot(image, work / f"x{len(list(work.glob('x*')))}")
    return folder_files(folder)


def folder_files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }
