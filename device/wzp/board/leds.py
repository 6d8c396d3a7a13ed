"""LED patterns: what each LED shows, as timed on/off segments (pure).

A :class:`Pattern` is a sequence of ``(level, seconds)`` segments, repeated or shown
once; :func:`level_at` says whether the LED is lit ``elapsed`` seconds after the
pattern started. The board layer drives the pins from these tables.

* ``STATUS_PATTERNS``: the status LED, one per handset state.
* ``LINK_PATTERNS``: the link LED, one per quality tier (the media ladder's names):
  steady while the link is good, slow blink when heavily protected, fast blink at
  the bottom of the ladder. Off when there is no call.
* ``LINK_COLOURS``: the colour of an RGB link LED per tier (lit in the tier's pattern).

:func:`describe_patterns` and :func:`patterns_markdown` render the tables for the
README (a test checks that ``hw/README.md`` shows exactly this table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Colour = tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class Pattern:
    """A named sequence of ``(lit, seconds)`` segments; ``repeat`` loops it forever."""

    name: str
    segments: tuple[tuple[bool, float], ...]
    repeat: bool = True

    def __post_init__(self) -> None:
        if not self.segments:
            raise ValueError(f"pattern {self.name!r} has no segments")
        for level, duration in self.segments:
            if not isinstance(level, bool):
                raise ValueError(f"pattern {self.name!r}: level {level!r} is not a bool")
            if not (math.isfinite(duration) and duration >= 0.001):
                raise ValueError(f"pattern {self.name!r}: duration {duration!r} must be >= 0.001 s")

    @property
    def period(self) -> float:
        return sum(d for _, d in self.segments)

    @property
    def solid(self) -> bool | None:
        """``True``/``False`` for a pattern that never changes, else ``None``."""
        levels = {level for level, _ in self.segments}
        return levels.pop() if len(levels) == 1 else None


def level_at(pattern: Pattern, elapsed: float) -> bool:
    """Whether ``pattern`` lights its LED ``elapsed`` seconds after it started.

    Times are compared in whole nanoseconds, so a boundary (0.15 s) falls where it is
    written, not a float rounding away. A pattern shown once holds its last segment's
    level after it ends.
    """
    if not math.isfinite(elapsed) or elapsed < 0:
        elapsed = 0.0
    t_ns = round(elapsed * 1e9)
    durations = [round(d * 1e9) for _, d in pattern.segments]
    period = sum(durations)
    if pattern.repeat:
        t_ns %= period
    elif t_ns >= period:
        return pattern.segments[-1][0]
    acc = 0
    for (level, _), duration in zip(pattern.segments, durations, strict=True):
        acc += duration
        if t_ns < acc:
            return level
    return pattern.segments[-1][0]


ON = Pattern("on", ((True, 1.0),))
OFF = Pattern("off", ((False, 1.0),))

#: The status LED: one pattern per handset state.
STATUS_PATTERNS: dict[str, Pattern] = {
    p.name: p
    for p in (
        Pattern("off", ((False, 1.0),)),
        Pattern("idle", ((True, 0.1), (False, 1.9))),
        Pattern("connecting", ((True, 0.25), (False, 0.25))),
        Pattern("ringing", ((True, 0.1), (False, 0.1), (True, 0.1), (False, 0.7))),
        Pattern("in_call", ((True, 1.0),)),
        Pattern("rekeying", ((True, 0.05), (False, 0.05))),
        Pattern(
            "error",
            (
                (True, 0.15),
                (False, 0.15),
                (True, 0.15),
                (False, 0.15),
                (True, 0.15),
                (False, 1.0),
            ),
        ),
    )
}

STATUS_MEANINGS: dict[str, str] = {
    "off": "daemon stopped (or not started yet)",
    "idle": "ready: no call",
    "connecting": "calling out / connecting",
    "ringing": "a call rings here (press CALL to answer), or the handset you called rings",
    "in_call": "in a call",
    "rekeying": "in a call, renewing its keys",
    "error": (
        "needs attention (sound card gone, call failed, stuck button, boot file refused, "
        "relay refusing this handset or out of reach): see `wzp status`"
    ),
}

_SOLID = (True, 1.0)
_SLOW = ((True, 1.0), (False, 1.0))
_FAST = ((True, 0.2), (False, 0.2))

#: The link LED: one pattern per quality tier (the media ladder's tier names).
LINK_PATTERNS: dict[str, Pattern] = {
    "clear": Pattern("clear", (_SOLID,)),
    "light": Pattern("light", (_SOLID,)),
    "heavy": Pattern("heavy", _SLOW),
    "dense": Pattern("dense", _SLOW),
    "severe": Pattern("severe", _FAST),
    "deep": Pattern("deep", _FAST),
    "extreme": Pattern("extreme", _FAST),
}

LINK_MEANINGS: dict[str, str] = {
    "clear": "link good (tier clear)",
    "light": "some loss, light protection (tier light)",
    "heavy": "heavy loss, heavy protection (tier heavy)",
    "dense": "heavy loss, dense protection (tier dense)",
    "severe": "severe loss (tier severe)",
    "deep": "severe loss, longer blocks: more delay (tier deep)",
    "extreme": "extreme loss: the last resort tier (tier extreme)",
}

GREEN: Colour = (0.0, 1.0, 0.0)
YELLOW: Colour = (1.0, 1.0, 0.0)
ORANGE: Colour = (1.0, 0.3, 0.0)
RED: Colour = (1.0, 0.0, 0.0)
BLUE: Colour = (0.0, 0.0, 1.0)
WHITE: Colour = (1.0, 1.0, 1.0)
BLACK: Colour = (0.0, 0.0, 0.0)

#: The colour of an RGB link LED per tier; it is dark when there is no call.
LINK_COLOURS: dict[str, Colour] = {
    "clear": GREEN,
    "light": GREEN,
    "heavy": YELLOW,
    "dense": YELLOW,
    "severe": ORANGE,
    "deep": ORANGE,
    "extreme": RED,
}

_COLOUR_NAMES: dict[Colour, str] = {
    GREEN: "green",
    YELLOW: "yellow",
    ORANGE: "orange",
    RED: "red",
    BLUE: "blue",
    WHITE: "white",
    BLACK: "off",
}

TX_MEANING = "transmitting (PTT held, or the microphone open in full-duplex)"


def colour_name(colour: Colour) -> str:
    return _COLOUR_NAMES.get(colour, "rgb({:g}, {:g}, {:g})".format(*colour))


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def describe(pattern: Pattern) -> str:
    """A human description: ``"blinks once every 2 s (0.1 s flash)"``."""
    solid = pattern.solid
    if solid is not None:
        return "on (solid)" if solid else "off"
    ons = [d for level, d in pattern.segments if level]
    offs = [d for level, d in pattern.segments if not level]
    if len(ons) == 1 and len(offs) == 1 and math.isclose(ons[0], offs[0]):
        text = f"blinks evenly, {ons[0]:g} s on / {offs[0]:g} s off"
    elif len(set(ons)) == 1:
        text = f"blinks {_times(len(ons))} every {pattern.period:g} s ({ons[0]:g} s flash)"
    else:
        parts = ", ".join(f"{'on' if lv else 'off'} {d:g} s" for lv, d in pattern.segments)
        text = f"sequence: {parts}"
    return text if pattern.repeat else f"{text}, once"


def describe_patterns() -> list[dict[str, str]]:
    """Every LED pattern as a row: ``led``, ``name``, ``meaning``, ``description``."""
    rows = [
        {
            "led": "status",
            "name": name,
            "meaning": STATUS_MEANINGS[name],
            "description": describe(p),
        }
        for name, p in STATUS_PATTERNS.items()
    ]
    rows.append({"led": "link", "name": "(no call)", "meaning": "no call", "description": "off"})
    for name, p in LINK_PATTERNS.items():
        rows.append(
            {
                "led": "link",
                "name": name,
                "meaning": LINK_MEANINGS[name],
                "description": f"{describe(p)}; RGB LED: {colour_name(LINK_COLOURS[name])}",
            }
        )
    rows.append({"led": "tx", "name": "on", "meaning": TX_MEANING, "description": "on (solid)"})
    rows.append({"led": "tx", "name": "off", "meaning": "not transmitting", "description": "off"})
    return rows


def patterns_markdown() -> str:
    """The pattern table as Markdown (what ``hw/README.md`` shows)."""
    lines = ["| LED | pattern | means | looks like |", "|---|---|---|---|"]
    for row in describe_patterns():
        lines.append(f"| {row['led']} | {row['name']} | {row['meaning']} | {row['description']} |")
    return "\n".join(lines)
