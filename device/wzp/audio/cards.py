"""Sound cards as the kernel lists them right now (PLATFORM.md, Audio).

Enumeration is read fresh from ``/proc/asound`` on every call and never cached: a
long-running process that cached its card list missed a card plugged in after it
started (graywolf#207). Devices are opened by name (``plughw:CARD=Device,DEV=0``),
never by index, because indices move when a USB card is replugged.

``/proc/asound/cards`` looks like this on a Pi 4 with a USB dongle::

     0 [Headphones     ]: bcm2835_headpho - bcm2835 Headphones
                          bcm2835 Headphones
     1 [vc4hdmi        ]: vc4-hdmi - vc4-hdmi
                          vc4-hdmi
     2 [Device         ]: USB-Audio - USB Audio Device
                          C-Media Electronics Inc. USB Audio Device at usb-0000:01:00.0-1.3

and ``/proc/asound/cardN/pcmXc/subY/status`` says ``closed`` or, while a process has the
stream open, ``state: RUNNING`` and ``owner_pid   : 1234`` among other lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PROC_ASOUND = "/proc/asound"

_CARD_LINE = re.compile(r"^\s*(\d+)\s+\[([^\]]*)\]:\s*(.*?)\s+-\s+(.*)$")
_INDEX_ONLY = re.compile(r"^\d+$")


@dataclass(frozen=True)
class Card:
    index: int
    id: str  # the stable name used in CARD=..., e.g. "Device"
    name: str  # short name, e.g. "USB Audio Device"
    longname: str
    driver: str = ""


@dataclass(frozen=True)
class Holder:
    """A process that has a PCM stream of a card open."""

    pid: int
    comm: str  # process name from /proc/PID/comm ("?" when it cannot be read)
    stream: str  # e.g. "pcm0c/sub0" (c = capture, p = playback)
    state: str  # e.g. "RUNNING", "PREPARED"

    def describe(self) -> str:
        return f"{self.comm} (pid {self.pid}, {self.stream} {self.state})"


def parse_cards(text: str) -> list[Card]:
    """Cards in the text of ``/proc/asound/cards`` (lines that do not parse are skipped)."""
    cards: list[Card] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _CARD_LINE.match(line)
        if m is None:
            continue
        longname = ""
        if i + 1 < len(lines) and _CARD_LINE.match(lines[i + 1]) is None:
            longname = lines[i + 1].strip()
        cards.append(
            Card(
                index=int(m.group(1)),
                id=m.group(2).strip(),
                name=m.group(4).strip(),
                longname=longname,
                driver=m.group(3).strip(),
            )
        )
    return cards


def list_cards(proc: str | Path = PROC_ASOUND) -> list[Card]:
    """The cards present now (a fresh read every call; [] when there is no ``proc``)."""
    try:
        text = (Path(proc) / "cards").read_text(errors="replace")
    except OSError:
        return []
    return parse_cards(text)


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def card_of(device_name: str) -> str | None:
    """The card a device name refers to (an id like ``Device`` or an index like ``2``).

    ``hw:CARD=Device,DEV=0`` / ``plughw:CARD=Device`` / ``dsnoop:CARD=Device,DEV=0`` /
    ``default:CARD=Device`` -> ``Device``; ``hw:Device,0`` -> ``Device``; ``hw:1,0`` ->
    ``1``. Names that do not name a card (``default``, ``null``, ``pulse``) -> ``None``.
    """
    name = device_name.strip()
    if ":" not in name:
        return None
    _, args = name.split(":", 1)
    parts = [p.strip() for p in args.split(",") if p.strip()]
    for part in parts:
        if "=" in part:
            key, value = part.split("=", 1)
            if key.strip().upper() == "CARD":
                return _unquote(value) or None
    if parts and "=" not in parts[0]:
        return _unquote(parts[0]) or None  # positional form: hw:Device,0 or hw:1,0
    return None


def find_card(ref: str, cards: list[Card]) -> Card | None:
    """The card with id ``ref`` (exact, as ALSA compares ids), or index ``ref`` if numeric."""
    for card in cards:
        if card.id == ref:
            return card
    if _INDEX_ONLY.match(ref):
        for card in cards:
            if card.index == int(ref):
                return card
    return None


#: the device name meaning "the first USB sound card, else ALSA's default"
AUTO = "auto"


def resolve_device(name: str, cards: list[Card]) -> str:
    """The ALSA name to open for ``name``: ``auto`` becomes the first USB sound card by
    its stable name (``plughw:CARD=Device,DEV=0``: any rate the program asks for, found
    again after a replug whatever its new index), or ``default`` without one."""
    if name != AUTO:
        return name
    for card in cards:
        if card.driver == "USB-Audio":
            return f"plughw:CARD={card.id},DEV=0"
    return "default"


def card_present(device_name: str, cards: list[Card]) -> bool:
    """Whether the card a device name refers to is in ``cards``.

    A name that does not refer to a card (``default``, ``null``) is assumed present:
    whether it opens is for ALSA to say.
    """
    ref = card_of(device_name)
    if ref is None:
        return True
    return find_card(ref, cards) is not None


def hw_name(device_name: str) -> str:
    """The raw ``hw:`` device under a plugin name, for asking what the hardware offers.

    ``plughw:CARD=Device,DEV=0`` / ``dsnoop:CARD=Device,DEV=0`` / ``dmix:...`` ->
    ``hw:CARD=Device,DEV=0``; ``default:CARD=Device`` / ``sysdefault:CARD=Device`` ->
    ``hw:CARD=Device``. Anything else (``hw:...``, ``default``, ``null``) is returned as is.
    """
    name = device_name.strip()
    if ":" not in name:
        return name
    prefix, args = name.split(":", 1)
    if prefix in ("plughw", "dsnoop", "dmix", "default", "sysdefault", "front"):
        ref = card_of(name)
        if ref is None:
            return name
        if prefix in ("default", "sysdefault"):
            return f"hw:CARD={ref}"
        dev = "0"
        parts = [p.strip() for p in args.split(",") if p.strip()]
        for i, part in enumerate(parts):
            if "=" in part:
                key, value = part.split("=", 1)
                if key.strip().upper() == "DEV":
                    dev = _unquote(value)
            elif i == 1:
                dev = part  # positional: plughw:Device,1
        return f"hw:CARD={ref},DEV={dev}"
    return name


def _read_status(path: Path) -> tuple[str, int] | None:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    state = ""
    pid: int | None = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "state":
            state = value.strip()
        elif key == "owner_pid":
            try:
                pid = int(value.strip())
            except ValueError:
                pid = None
    if pid is None or pid <= 0:
        return None
    return state, pid


def busy_holders(card_id: str, proc: str | Path = PROC_ASOUND) -> list[Holder]:
    """Processes that have a stream of card ``card_id`` (id or index) open, best effort.

    Reads ``cardN/pcm*/sub*/status`` for ``owner_pid`` and ``/proc/PID/comm`` for the
    process name (the ``proc`` directory's parent is taken as ``/proc``). Returns [] when
    the card is unknown or nothing can be read.
    """
    root = Path(proc)
    card = find_card(card_id, list_cards(root))
    if card is None:
        return []
    holders: list[Holder] = []
    for status in sorted((root / f"card{card.index}").glob("pcm*/sub*/status")):
        found = _read_status(status)
        if found is None:
            continue
        state, pid = found
        try:
            comm = (root.parent / str(pid) / "comm").read_text(errors="replace").strip() or "?"
        except OSError:
            comm = "?"
        stream = f"{status.parent.parent.name}/{status.parent.name}"
        holders.append(Holder(pid=pid, comm=comm, stream=stream, state=state))
    return holders
