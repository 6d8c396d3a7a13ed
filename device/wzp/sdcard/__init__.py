"""``wzp sdcard prepare``: turn a freshly written Raspberry Pi OS card into a handset.

The card's FAT boot partition gets a ``wzp/`` folder (this checkout's wheel, install.sh,
the unit, the first-boot hook, optionally the aarch64 wheels for an offline install), the
user's config as the boot-partition ``wzp.toml`` the daemon applies at start, and a hook
into the release's own first-boot mechanism: cloud-init ``user-data`` on Trixie, Imager's
``firstrun.sh`` (started from ``cmdline.txt``) on Bookworm.

Targets are a mounted boot partition (a folder), an image file or an unmounted block
device; images and devices are written with mtools at the partition's offset, so nothing
is ever mounted. Everything changed is recorded in ``wzp/manifest.json`` on the card with
copies of the originals, which makes a second run idempotent and ``--undo`` exact.
"""

from __future__ import annotations


class SdcardError(Exception):
    """A refusal or failure, with a message meant for the person at the laptop."""
