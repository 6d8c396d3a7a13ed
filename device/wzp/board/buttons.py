"""Button logic: debounce, long press and stuck detection, from raw edges (pure).

:class:`ButtonLogic` is fed raw level changes with their timestamps (``edge``) and
the current time (``poll``); both return the :class:`ButtonEvent` s that became
certain. No thread, no clock and no gpiozero here: the board layer feeds it.

Debouncing: a level counts once it has been **stable for ``debounce_s``** (an
integrating debouncer, not leading-edge). A contact that bounces five times in
10 ms is one press; a spike shorter than ``debounce_s`` is no press at all (noise
on a long wire never starts a call). A clean press is reported ``debounce_s``
after the contact closes (plus up to one poll period); the event's ``at`` is when
the contact settled (the last raw edge), so hold times measure the real press.
A tap shorter than ``debounce_s`` is ignored.

Event kinds:

* ``press`` / ``release``: the debounced level changed.
* ``long``: once per hold, when held for ``long_press_s``.
* ``stuck``: held for ``stuck_s`` (or already pressed when the daemon started).
  The button is then ignored (no more events) until it is released, which gives
  ``unstuck`` instead of ``release``. A user of this class should treat ``stuck``
  as a release (stop transmitting) and warn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

EventKind = Literal["press", "release", "long", "stuck", "unstuck"]
EVENT_KINDS: tuple[str, ...] = ("press", "release", "long", "stuck", "unstuck")

DEFAULT_DEBOUNCE_S = 0.02
DEFAULT_LONG_PRESS_S = 1.0
DEFAULT_STUCK_S = 30.0

# thresholds are compared with this slack, so 100.0 + 0.01 + 0.01 counts as 20 ms
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class ButtonEvent:
    """Something a button did: ``role`` (``"call"``...), ``kind`` and when (``at``)."""

    role: str
    kind: EventKind
    at: float


class ButtonLogic:
    """Debounce, long-press and stuck detection for one button (see module docstring)."""

    def __init__(
        self,
        role: str,
        debounce_s: float = DEFAULT_DEBOUNCE_S,
        long_press_s: float = DEFAULT_LONG_PRESS_S,
        stuck_s: float = DEFAULT_STUCK_S,
        *,
        pressed_at_start: bool = False,
        t0: float = 0.0,
    ) -> None:
        for name, v in (
            ("debounce_s", debounce_s),
            ("long_press_s", long_press_s),
            ("stuck_s", stuck_s),
        ):
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, not {v!r}")
        if not debounce_s < long_press_s < stuck_s:
            raise ValueError(
                "need debounce_s < long_press_s < stuck_s, got "
                f"{debounce_s} / {long_press_s} / {stuck_s}"
            )
        self.role = role
        self.debounce_s = float(debounce_s)
        self.long_press_s = float(long_press_s)
        self.stuck_s = float(stuck_s)
        self._raw = pressed_at_start
        self._raw_since = t0
        self._stable = pressed_at_start
        self._stable_since = t0
        self._long_sent = pressed_at_start
        self._stuck = pressed_at_start
        self._last_t = t0
        self._queued: list[ButtonEvent] = []
        if pressed_at_start:
            # held (or wired wrong) before we started: ignore it until it is released
            self._queued.append(ButtonEvent(role, "stuck", t0))

    # -- state ---------------------------------------------------------------------------

    @property
    def pressed(self) -> bool:
        """The debounced level (``True`` also while stuck)."""
        return self._stable

    @property
    def raw(self) -> bool:
        """The last raw level seen."""
        return self._raw

    @property
    def stuck(self) -> bool:
        return self._stuck

    def held_for(self, t: float) -> float:
        """How long the debounced press has lasted at ``t`` (0 when released)."""
        return max(0.0, t - self._stable_since) if self._stable else 0.0

    # -- input ---------------------------------------------------------------------------

    def edge(self, pressed: bool, t: float) -> list[ButtonEvent]:
        """A raw level change at ``t``; returns the events that became certain before it."""
        t = max(t, self._last_t)
        out = self.poll(t)
        if pressed != self._raw:
            self._raw = pressed
            self._raw_since = t
        return out

    def poll(self, t: float) -> list[ButtonEvent]:
        """Advance to ``t`` and return the events due by then (oldest first)."""
        t = max(t, self._last_t)
        self._last_t = t
        out, self._queued = self._queued, []
        if self._raw != self._stable and t - self._raw_since >= self.debounce_s - _EPS:
            at = self._raw_since
            if self._raw:
                self._stable = True
                self._stable_since = at
                self._long_sent = False
                out.append(ButtonEvent(self.role, "press", at))
            else:
                self._check_hold(at, out)  # the hold ended when the contact opened
                self._stable = False
                self._stable_since = at
                if self._stuck:
                    self._stuck = False
                    out.append(ButtonEvent(self.role, "unstuck", at))
                else:
                    out.append(ButtonEvent(self.role, "release", at))
        if self._stable:
            # while a release is still bouncing, the hold may have ended at _raw_since
            until = t if self._raw == self._stable else self._raw_since
            self._check_hold(until, out)
        return out

    def _check_hold(self, until: float, out: list[ButtonEvent]) -> None:
        if self._stuck or not self._stable:
            return
        held = until - self._stable_since
        if not self._long_sent and held >= self.long_press_s - _EPS:
            self._long_sent = True
            # (never later than ``until``: the tolerance must not reorder events)
            at = min(self._stable_since + self.long_press_s, until)
            out.append(ButtonEvent(self.role, "long", at))
        if held >= self.stuck_s - _EPS:
            self._stuck = True
            out.append(
                ButtonEvent(self.role, "stuck", min(self._stable_since + self.stuck_s, until))
            )
