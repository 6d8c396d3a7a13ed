"""Board profiles: which BCM pin is which button and LED, loaded from TOML.

A profile names the pins of one handset build (a breadboard, an audio HAT). Profiles
ship as package data in ``wzp/board/boards/*.toml``; a path to any ``.toml`` file
works too. Every key is checked: an unknown key, a pin outside the header's GPIO
range (0..27), a pin used twice or a missing required role is a :class:`BoardError`
naming the file and the key.

Schema (all roles optional except ``buttons.call`` and ``leds.status``)::

    name = "breadboard"              # default: the file's stem
    description = "..."
    debounce_s = 0.02                # optional: button debounce for this build
    reserved_pins = [18, 19, 20, 21] # optional: pins the board itself uses

    [buttons.call]                   # roles: call, ptt, hangup, volume_up, volume_down
    pin = 17                         # BCM number
    active_low = true                # pressed = pin reads low (button to GND)
    pull_up = true                   # internal pull-up (false: see ButtonPin)

    [leds.status]                    # roles: status, link, tx
    pin = 23
    active_high = true               # LED lit when the pin is high (LED + resistor to GND)

    [leds.link_rgb]                  # instead of leds.link: a common-cathode/anode RGB LED
    red = 5
    green = 6
    blue = 13
    active_high = true

    [audio]                          # hints only: the daemon's config decides
    capture = "plughw:CARD=...,DEV=0"
    playback = "plughw:CARD=...,DEV=0"
    setup = "dtoverlay=... in config.txt"
"""

from __future__ import annotations

import logging
import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Button roles; ``call`` is required.
BUTTON_ROLES: tuple[str, ...] = ("call", "ptt", "hangup", "volume_up", "volume_down")
#: LED roles; ``status`` is required. ``link`` may instead be ``link_rgb``.
LED_ROLES: tuple[str, ...] = ("status", "link", "tx")
REQUIRED_BUTTONS: tuple[str, ...] = ("call",)
REQUIRED_LEDS: tuple[str, ...] = ("status",)

#: BCM GPIO numbers on the 40-pin header.
MIN_PIN = 0
MAX_PIN = 27

#: BCM number -> physical header pin (identical on every 40-pin Pi, the Pi 5 included).
BCM_TO_HEADER: dict[int, int] = {
    0: 27,
    1: 28,
    2: 3,
    3: 5,
    4: 7,
    5: 29,
    6: 31,
    7: 26,
    8: 24,
    9: 21,
    10: 19,
    11: 23,
    12: 32,
    13: 33,
    14: 8,
    15: 10,
    16: 36,
    17: 11,
    18: 12,
    19: 35,
    20: 38,
    21: 40,
    22: 15,
    23: 16,
    24: 18,
    25: 22,
    26: 37,
    27: 13,
}

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_BOARDS_DIR = "boards"


class BoardError(ValueError):
    """A board profile is missing, unreadable or invalid (the message names file and key)."""


def pin_label(pin: int) -> str:
    """``"GPIO17 (pin 11)"``: the BCM number and where it is on the header."""
    header = BCM_TO_HEADER.get(pin)
    return f"GPIO{pin} (pin {header})" if header is not None else f"GPIO{pin}"


@dataclass(frozen=True, slots=True)
class ButtonPin:
    """One button.

    ``active_low`` and ``pull_up`` together describe the wiring:

    * ``active_low=True, pull_up=True``: button to GND, the Pi's internal pull-up (the usual).
    * ``active_low=False, pull_up=False``: button to 3V3, the Pi's internal pull-down.
    * ``active_low=True, pull_up=False``: button to GND with an external pull-up resistor
      (the pin floats inside the Pi).
    * ``active_low=False, pull_up=True`` is refused: the pull-up would hold it pressed.
    """

    pin: int
    active_low: bool = True
    pull_up: bool = True

    @property
    def pull(self) -> str:
        """The internal bias the pin gets: ``"up"``, ``"down"`` or ``"floating"``."""
        if self.pull_up:
            return "up"
        return "floating" if self.active_low else "down"


@dataclass(frozen=True, slots=True)
class LedPin:
    """One single-colour LED; ``active_high``: lit when the pin drives high."""

    pin: int
    active_high: bool = True


@dataclass(frozen=True, slots=True)
class RgbLedPins:
    """An RGB LED on three pins (the link LED can be one: ``leds.link_rgb``)."""

    red: int
    green: int
    blue: int
    active_high: bool = True

    @property
    def pins(self) -> tuple[int, int, int]:
        return (self.red, self.green, self.blue)


@dataclass(frozen=True, slots=True)
class AudioHint:
    """The sound devices this board suggests (the daemon config still decides)."""

    capture: str = ""
    playback: str = ""
    setup: str = ""


@dataclass(frozen=True, slots=True)
class BoardProfile:
    """A validated board profile (see the module docstring for the TOML schema)."""

    name: str
    description: str
    buttons: dict[str, ButtonPin]
    leds: dict[str, LedPin]
    link_rgb: RgbLedPins | None = None
    audio: AudioHint = field(default_factory=AudioHint)
    debounce_s: float | None = None
    reserved_pins: tuple[int, ...] = ()
    source: str = ""

    def used_pins(self) -> dict[int, str]:
        """BCM pin -> the key that uses it (``buttons.call``, ``leds.link_rgb.red``...)."""
        used: dict[int, str] = {}
        for role, b in self.buttons.items():
            used[b.pin] = f"buttons.{role}"
        for role, led in self.leds.items():
            used[led.pin] = f"leds.{role}"
        if self.link_rgb is not None:
            for colour, pin in zip(("red", "green", "blue"), self.link_rgb.pins, strict=True):
                used[pin] = f"leds.link_rgb.{colour}"
        return used

    @property
    def has_link_led(self) -> bool:
        return "link" in self.leds or self.link_rgb is not None


# -- parsing -------------------------------------------------------------------------------


class _Ctx:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, msg: str) -> BoardError:
        where = f"{self.source}: {key}" if key else self.source
        return BoardError(f"{where}: {msg}")

    def table(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, not {type(value).__name__}")
        return value

    def no_unknown(self, table: dict[str, Any], allowed: tuple[str, ...], key: str) -> None:
        for k in table:
            if k not in allowed:
                full = f"{key}.{k}" if key else k
                raise self.fail(full, f"unknown key (allowed here: {', '.join(allowed)})")

    def pin(self, value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be a BCM GPIO number, not {value!r}")
        if not MIN_PIN <= value <= MAX_PIN:
            raise self.fail(key, f"{value} is not a header GPIO (BCM numbers {MIN_PIN}..{MAX_PIN})")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, not {value!r}")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, not {value!r}")
        return value


def _parse_button(ctx: _Ctx, role: str, raw: Any) -> ButtonPin:
    key = f"buttons.{role}"
    if role not in BUTTON_ROLES:
        raise ctx.fail(key, f"unknown button role (known: {', '.join(BUTTON_ROLES)})")
    t = ctx.table(raw, key)
    ctx.no_unknown(t, ("pin", "active_low", "pull_up"), key)
    if "pin" not in t:
        raise ctx.fail(f"{key}.pin", "missing")
    button = ButtonPin(
        pin=ctx.pin(t["pin"], f"{key}.pin"),
        active_low=ctx.boolean(t.get("active_low", True), f"{key}.active_low"),
        pull_up=ctx.boolean(t.get("pull_up", True), f"{key}.pull_up"),
    )
    if button.pull_up and not button.active_low:
        raise ctx.fail(
            key,
            "active_low = false with pull_up = true would read as pressed all the time; "
            "a button to 3V3 needs pull_up = false (internal pull-down)",
        )
    return button


def _parse_led(ctx: _Ctx, role: str, raw: Any) -> LedPin:
    key = f"leds.{role}"
    t = ctx.table(raw, key)
    ctx.no_unknown(t, ("pin", "active_high"), key)
    if "pin" not in t:
        raise ctx.fail(f"{key}.pin", "missing")
    return LedPin(
        pin=ctx.pin(t["pin"], f"{key}.pin"),
        active_high=ctx.boolean(t.get("active_high", True), f"{key}.active_high"),
    )


def _parse_rgb(ctx: _Ctx, raw: Any) -> RgbLedPins:
    key = "leds.link_rgb"
    t = ctx.table(raw, key)
    ctx.no_unknown(t, ("red", "green", "blue", "active_high"), key)
    pins = {}
    for colour in ("red", "green", "blue"):
        if colour not in t:
            raise ctx.fail(f"{key}.{colour}", "missing")
        pins[colour] = ctx.pin(t[colour], f"{key}.{colour}")
    return RgbLedPins(
        red=pins["red"],
        green=pins["green"],
        blue=pins["blue"],
        active_high=ctx.boolean(t.get("active_high", True), f"{key}.active_high"),
    )


def parse_profile(data: dict[str, Any], source: str, default_name: str = "") -> BoardProfile:
    """Validate a profile already parsed from TOML; ``source`` names it in errors."""
    ctx = _Ctx(source)
    ctx.no_unknown(
        data,
        ("name", "description", "debounce_s", "reserved_pins", "buttons", "leds", "audio"),
        "",
    )
    name = ctx.string(data.get("name", default_name), "name")
    if not _NAME_RE.match(name):
        raise ctx.fail("name", f"{name!r} is not a profile name ([A-Za-z0-9_-], 1..64)")
    description = ctx.string(data.get("description", ""), "description")

    debounce_s: float | None = None
    if "debounce_s" in data:
        v = data["debounce_s"]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ctx.fail("debounce_s", f"must be a number of seconds, not {v!r}")
        if not 0.0 <= v <= 0.5:
            raise ctx.fail("debounce_s", f"{v} is outside 0..0.5 s")
        debounce_s = float(v)

    reserved: list[int] = []
    if "reserved_pins" in data:
        raw_reserved = data["reserved_pins"]
        if not isinstance(raw_reserved, list):
            raise ctx.fail("reserved_pins", "must be a list of BCM numbers")
        reserved = [ctx.pin(p, f"reserved_pins[{i}]") for i, p in enumerate(raw_reserved)]

    buttons_raw = ctx.table(data.get("buttons", {}), "buttons")
    buttons = {role: _parse_button(ctx, role, raw) for role, raw in buttons_raw.items()}
    for role in REQUIRED_BUTTONS:
        if role not in buttons:
            raise ctx.fail(f"buttons.{role}", "missing (every handset needs this button)")

    leds_raw = ctx.table(data.get("leds", {}), "leds")
    leds: dict[str, LedPin] = {}
    link_rgb: RgbLedPins | None = None
    for role, raw in leds_raw.items():
        if role == "link_rgb":
            link_rgb = _parse_rgb(ctx, raw)
        elif role in LED_ROLES:
            leds[role] = _parse_led(ctx, role, raw)
        else:
            raise ctx.fail(
                f"leds.{role}", f"unknown LED role (known: {', '.join(LED_ROLES)}, link_rgb)"
            )
    if link_rgb is not None and "link" in leds:
        raise ctx.fail("leds.link_rgb", "give either leds.link or leds.link_rgb, not both")
    for role in REQUIRED_LEDS:
        if role not in leds:
            raise ctx.fail(f"leds.{role}", "missing (every handset needs this LED)")

    audio_raw = ctx.table(data.get("audio", {}), "audio")
    ctx.no_unknown(audio_raw, ("capture", "playback", "setup"), "audio")
    audio = AudioHint(
        capture=ctx.string(audio_raw.get("capture", ""), "audio.capture"),
        playback=ctx.string(audio_raw.get("playback", ""), "audio.playback"),
        setup=ctx.string(audio_raw.get("setup", ""), "audio.setup"),
    )

    # every pin once, none of the board's reserved pins
    seen: dict[int, str] = {}
    uses: list[tuple[int, str]] = [(b.pin, f"buttons.{r}.pin") for r, b in buttons.items()]
    uses += [(led.pin, f"leds.{r}.pin") for r, led in leds.items()]
    if link_rgb is not None:
        uses += [
            (p, f"leds.link_rgb.{c}")
            for c, p in zip(("red", "green", "blue"), link_rgb.pins, strict=True)
        ]
    reserved_set = set(reserved)
    for pin, key in uses:
        if pin in seen:
            raise ctx.fail(key, f"{pin_label(pin)} is already used by {seen[pin]}")
        if pin in reserved_set:
            raise ctx.fail(key, f"{pin_label(pin)} is reserved by this board (reserved_pins)")
        seen[pin] = key

    return BoardProfile(
        name=name,
        description=description,
        buttons=buttons,
        leds=leds,
        link_rgb=link_rgb,
        audio=audio,
        debounce_s=debounce_s,
        reserved_pins=tuple(sorted(reserved_set)),
        source=source,
    )


def loads_profile(
    text: str, source: str = "<string>", default_name: str = "custom"
) -> BoardProfile:
    """Parse and validate profile TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BoardError(f"{source}: not valid TOML: {exc}") from None
    return parse_profile(data, source, default_name=default_name)


def _boards_dir() -> Any:
    return resources.files("wzp.board").joinpath(_BOARDS_DIR)


def list_profiles() -> list[str]:
    """Names of the profiles shipped with wzp (the ``.toml`` files in ``wzp/board/boards``)."""
    names = []
    for entry in _boards_dir().iterdir():
        if entry.name.endswith(".toml") and entry.is_file():
            names.append(entry.name[: -len(".toml")])
    return sorted(names)


def load_profile(name_or_path: str | Path) -> BoardProfile:
    """Load a shipped profile by name (``"breadboard"``) or any profile file by path.

    A value containing a ``/`` or ending in ``.toml`` is a path; anything else is a name.
    """
    text_arg = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text_arg or text_arg.endswith(".toml"):
        path = Path(text_arg)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise BoardError(f"{path}: board profile file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise BoardError(f"{path}: cannot read board profile: {exc}") from None
        return loads_profile(text, source=str(path), default_name=path.stem)

    if not _NAME_RE.match(text_arg):
        raise BoardError(f"{text_arg!r} is not a board profile name or a path to a .toml file")
    entry = _boards_dir().joinpath(f"{text_arg}.toml")
    if not entry.is_file():
        known = ", ".join(list_profiles()) or "none"
        raise BoardError(f"no board profile named {text_arg!r} (shipped: {known})")
    return loads_profile(
        entry.read_text(encoding="utf-8"), source=str(entry), default_name=text_arg
    )
