"""The handset's GPIO edge: board profiles, the header chip, pin factories, buttons, LEDs.

* :mod:`.profile`: which pin is which button/LED (TOML, shipped in ``boards/``).
* :mod:`.chip`: find the 40-pin header's gpiochip by label (Pi 3, 4, 5; any kernel).
* :mod:`.factory`: gpiozero pin factories (lgpio on that chip, RPi.GPIO, mock).
* :mod:`.buttons` and :mod:`.leds`: pure logic (debounce, long/stuck; LED patterns).
* :mod:`.board`: :class:`Board` ties them to pins; polled from the daemon's loop.
"""

from __future__ import annotations

from .board import Board
from .buttons import ButtonEvent, ButtonLogic
from .chip import HEADER_LABELS, ChipInfo, GpioError, choose_header_chip, list_chips
from .factory import FACTORY_KINDS, make_factory
from .leds import (
    LINK_COLOURS,
    LINK_PATTERNS,
    STATUS_PATTERNS,
    Pattern,
    describe_patterns,
    level_at,
)
from .profile import (
    BoardError,
    BoardProfile,
    ButtonPin,
    LedPin,
    RgbLedPins,
    list_profiles,
    load_profile,
)

__all__ = [
    "FACTORY_KINDS",
    "HEADER_LABELS",
    "LINK_COLOURS",
    "LINK_PATTERNS",
    "STATUS_PATTERNS",
    "Board",
    "BoardError",
    "BoardProfile",
    "ButtonEvent",
    "ButtonLogic",
    "ButtonPin",
    "ChipInfo",
    "GpioError",
    "LedPin",
    "Pattern",
    "RgbLedPins",
    "choose_header_chip",
    "describe_patterns",
    "level_at",
    "list_chips",
    "list_profiles",
    "load_profile",
    "make_factory",
]
