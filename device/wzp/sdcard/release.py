"""Which Raspberry Pi OS release a boot partition belongs to, and how it runs things once at
first boot.

Evidence, strongest first:

- the root partition's ``os-release`` (``VERSION_CODENAME``), when the target is an image or
  a device (a boot folder alone has no root partition);
- cloud-init's NoCloud seed on the boot partition (``user-data``, ``meta-data``,
  ``network-config``): Raspberry Pi OS ships these from Trixie on (images from 2025-10-01);
- the image date in ``issue.txt`` ("Raspberry Pi reference YYYY-MM-DD"), which pi-gen writes
  into every Raspberry Pi OS image: Bookworm images are dated 2023-10-10 to 2025-09-30.

A boot partition without ``config.txt``, ``cmdline.txt`` and that ``issue.txt`` line is not
a Raspberry Pi OS one. Bookworm runs Raspberry Pi Imager's ``firstrun.sh`` through
``systemd.run=`` in ``cmdline.txt``; Trixie runs cloud-init's ``user-data``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import SdcardError
from .fs import BootFS

KNOWN = ("bookworm", "trixie")
TRIXIE_FIRST = "2025-10-01"
BOOKWORM_FIRST = "2023-10-10"
CLOUD_INIT_SEED = ("user-data", "meta-data", "network-config")
ISSUE_RE = re.compile(r"Raspberry Pi reference (\d{4}-\d{2}-\d{2})")
#: what Raspberry Pi Imager adds to cmdline.txt to run its firstrun.sh once
IMAGER_RUN = "systemd.run=/boot/firstrun.sh"
SYSTEMD_RUN_RE = re.compile(r"(?:^|\s)systemd\.run=(\S+)")


@dataclass(frozen=True)
class Release:
    codename: str  # one of KNOWN
    mechanism: str  # "cloud-init" or "firstrun"
    date: str | None  # issue.txt's image date
    evidence: tuple[str, ...] = field(default=())
    #: what the card already runs at first boot: "user-data", "firstrun.sh" or ""
    customised: str = ""

    def describe(self) -> str:
        name = {"bookworm": "Bookworm (Debian 12)", "trixie": "Trixie (Debian 13)"}[self.codename]
        how = {
            "cloud-init": "cloud-init user-data on the boot partition",
            "firstrun": "firstrun.sh started from cmdline.txt (systemd.run=)",
        }[self.mechanism]
        return f"Raspberry Pi OS {name}; first boot runs {how}"


def names(fs: BootFS, folder: str = "") -> dict[str, str]:
    """A folder's entries, lower-cased name -> name as stored (FAT ignores case)."""
    listing = fs.listdir(folder) or {}
    return {name.lower(): name for name in listing}


def os_release_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.lstrip().startswith("#"):
            fields[key.strip()] = value.strip().strip("\"'")
    return fields


def cmdline_run_target(cmdline: str) -> str | None:
    """The script ``systemd.run=`` names in cmdline.txt, if any."""
    match = SYSTEMD_RUN_RE.search(cmdline)
    return match.group(1) if match else None


def detect(fs: BootFS, os_release: str | None = None) -> Release:
    """The card's release and first-boot mechanism. Raises SdcardError, with what was
    found, for anything that is not a Bookworm or Trixie Raspberry Pi OS boot partition."""
    top = names(fs)
    missing = [n for n in ("config.txt", "cmdline.txt", "issue.txt") if n not in top]
    if missing:
        raise SdcardError(
            f"{fs.description} is not a Raspberry Pi OS boot partition: no "
            f"{' or '.join(missing)} (write Raspberry Pi OS Lite (64-bit) with Raspberry Pi "
            "Imager, then pass its boot partition, the image or the card)"
        )
    issue = (fs.read(top["issue.txt"]) or b"").decode("utf-8", "replace")
    match = ISSUE_RE.search(issue)
    if "Raspberry Pi reference" not in issue:
        raise SdcardError(
            f"{fs.description} is not a Raspberry Pi OS boot partition: its issue.txt lacks "
            'the "Raspberry Pi reference" line that every Raspberry Pi OS image carries'
        )
    date = match.group(1) if match else None
    evidence: list[str] = [f"issue.txt: image of {date}" if date else "issue.txt: no date"]
    seed = [n for n in CLOUD_INIT_SEED if n in top]
    if seed:
        evidence.append(f"cloud-init files on the boot partition: {', '.join(seed)}")

    codename: str | None = None
    if os_release is not None:
        info = os_release_fields(os_release)
        pretty = info.get("PRETTY_NAME") or info.get("NAME") or info.get("ID", "unknown")
        ids = {info.get("ID", "")} | set(info.get("ID_LIKE", "").split())
        if not ids & {"debian", "raspbian"}:
            raise SdcardError(
                f"the root partition is {pretty}, not Raspberry Pi OS (Debian-based): "
                "wzp prepares Raspberry Pi OS Lite (64-bit) cards"
            )
        codename = info.get("VERSION_CODENAME") or None
        if codename is None:
            paren = re.search(r"\((\w+)\)", info.get("VERSION", ""))
            codename = paren.group(1) if paren else None
        evidence.insert(0, f"root partition os-release: {pretty}")
        if codename is None:
            raise SdcardError(
                f"the root partition's os-release ({pretty}) names no release "
                "(VERSION_CODENAME): wzp knows Bookworm and Trixie"
            )
    elif seed or (date is not None and date >= TRIXIE_FIRST):
        codename = "trixie"
    elif date is not None and date >= BOOKWORM_FIRST:
        codename = "bookworm"
    elif date is not None:
        codename = "a release older than Bookworm"

    if codename not in KNOWN:
        shown = codename or "an unknown release"
        raise SdcardError(
            f"{fs.description} holds {shown} ({'; '.join(evidence)}): wzp knows Raspberry Pi "
            "OS Bookworm and Trixie; write a current Raspberry Pi OS Lite (64-bit) image"
        )

    cmdline = (fs.read(top["cmdline.txt"]) or b"").decode("utf-8", "replace")
    run_target = cmdline_run_target(cmdline)
    if codename == "trixie":
        customised = "user-data" if "user-data" in top else ""
        return Release(codename, "cloud-init", date, tuple(evidence), customised)
    customised = ""
    if run_target is not None:
        if run_target not in ("/boot/firstrun.sh", "/boot/firmware/firstrun.sh"):
            raise SdcardError(
                f"cmdline.txt already runs {run_target} at first boot (systemd.run=): wzp "
                "chains onto Raspberry Pi Imager's firstrun.sh only; remove that entry first"
            )
        if "firstrun.sh" not in top:
            raise SdcardError(
                f"cmdline.txt runs {run_target} at first boot but the boot partition has no "
                "firstrun.sh: write the card again with Raspberry Pi Imager"
            )
        customised = "firstrun.sh"
        evidence.append("cmdline.txt starts Imager's firstrun.sh")
    return Release(codename, "firstrun", date, tuple(evidence), customised)
