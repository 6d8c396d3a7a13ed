"""The handset's buttons and LEDs on real (or mock) pins, through gpiozero.

Threads: gpiozero calls edge callbacks from its own thread. They only append
``(role, level, clock())`` to a lock-protected queue; everything else (debouncing,
events, LED patterns) runs in the caller's thread, i.e. the daemon's asyncio loop,
through :meth:`Board.poll` and :meth:`Board.tick` (about 50 times a second).

gpiozero's own debouncing is off (``bounce_time=None``): :mod:`wzp.board.buttons`
debounces, with timestamps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from gpiozero import LED, RGBLED, DigitalInputDevice
from gpiozero.exc import PinPWMUnsupported

from .buttons import (
    DEFAULT_DEBOUNCE_S,
    DEFAULT_LONG_PRESS_S,
    DEFAULT_STUCK_S,
    ButtonEvent,
    ButtonLogic,
)
from .chip import GpioError
from .leds import (
    BLACK,
    BLUE,
    GREEN,
    LINK_COLOURS,
    LINK_PATTERNS,
    RED,
    STATUS_PATTERNS,
    WHITE,
    Colour,
    level_at,
)
from .profile import BoardProfile, pin_label

log = logging.getLogger(__name__)

Level = bool | Colour
#: How long each step of :meth:`Board.test_leds` lasts.
LED_TEST_STEP_S = 0.4
#: Queued edges beyond this are dropped (counted); the button is then re-read.
EDGE_QUEUE_LIMIT = 1024


@dataclass(frozen=True, slots=True)
class _TestStep:
    duration: float
    levels: dict[str, Level]


def _wrap_gpio_error(what: str, exc: BaseException) -> GpioError:
    hint = ""
    text = str(exc)
    if "busy" in text.lower():
        hint = " (another process holds this pin: is another wzp or GPIO program running?)"
    return GpioError(f"{what}: {type(exc).__name__}: {text}{hint}")


class Board:
    """Buttons and LEDs of one :class:`~wzp.board.profile.BoardProfile`.

    ``factory`` is a gpiozero pin factory (:func:`~wzp.board.factory.make_factory`).
    ``clock`` stamps edges and LED changes (inject a fake one in tests).
    ``debounce_s`` defaults to the profile's ``debounce_s``, else 20 ms.
    The factory itself is not closed by :meth:`close` (its creator owns it).
    """

    def __init__(
        self,
        profile: BoardProfile,
        factory: Any,
        *,
        clock: Callable[[], float] = time.monotonic,
        debounce_s: float | None = None,
        long_press_s: float = DEFAULT_LONG_PRESS_S,
        stuck_s: float = DEFAULT_STUCK_S,
        history_len: int = 1000,
        factory_description: str = "",
    ) -> None:
        if debounce_s is None:
            debounce_s = (
                profile.debounce_s if profile.debounce_s is not None else DEFAULT_DEBOUNCE_S
            )
        # refuse bad timings before any pin is claimed
        ButtonLogic("check", debounce_s, long_press_s, stuck_s)
        self.profile = profile
        self.factory_description = factory_description
        self._clock = clock
        self._debounce_s = debounce_s
        self._long_press_s = long_press_s
        self._stuck_s = stuck_s
        self._lock = threading.Lock()
        self._edges: deque[tuple[str, bool, float]] = deque()
        self._resync: set[str] = set()
        self.edge_drops = 0
        self._closed = False
        self._inputs: dict[str, DigitalInputDevice] = {}
        self._logic: dict[str, ButtonLogic] = {}
        self._outputs: dict[str, LED | RGBLED] = {}
        self._rgb_role: str | None = None
        self._rgb_pwm = False
        self._levels: dict[str, Level] = {}
        #: LED role -> the newest ``history_len`` ``(t, level)`` changes (a bounded deque).
        self.history: dict[str, deque[tuple[float, Level]]] = {}
        self._history_len = history_len

        t0 = clock()
        self._status = "off"
        self._status_since = t0
        self._link: str | None = None
        self._link_since = t0
        self._tx = False
        self._test: list[_TestStep] | None = None
        self._test_since = t0
        self._pending: list[ButtonEvent] = []

        try:
            self._make_leds(factory, t0)
            self._make_buttons(factory, t0)
        except BaseException:
            self.close()
            raise
        log.info(
            "board %s: buttons %s, LEDs %s",
            profile.name,
            ", ".join(f"{r}={pin_label(b.pin)}" for r, b in profile.buttons.items()),
            ", ".join(f"{r}={self._pin_text(r)}" for r in self._outputs),
        )

    # -- construction --------------------------------------------------------------------

    def _make_leds(self, factory: Any, t0: float) -> None:
        for role, led in self.profile.leds.items():
            try:
                self._outputs[role] = LED(
                    led.pin, active_high=led.active_high, initial_value=False, pin_factory=factory
                )
            except Exception as exc:
                raise _wrap_gpio_error(f"{role} LED on {pin_label(led.pin)}", exc) from None
            self._levels[role] = False
            self.history[role] = deque([(t0, False)], maxlen=self._history_len)
        rgb = self.profile.link_rgb
        if rgb is not None:
            what = f"link RGB LED on GPIO{rgb.red}/{rgb.green}/{rgb.blue}"
            try:
                try:
                    dev = RGBLED(*rgb.pins, active_high=rgb.active_high, pin_factory=factory)
                    self._rgb_pwm = True
                except PinPWMUnsupported:
                    log.info("%s: no PWM on these pins, colours are on/off only", what)
                    dev = RGBLED(
                        *rgb.pins, active_high=rgb.active_high, pwm=False, pin_factory=factory
                    )
            except Exception as exc:
                raise _wrap_gpio_error(what, exc) from None
            self._outputs["link"] = dev
            self._rgb_role = "link"
            self._levels["link"] = BLACK
            self.history["link"] = deque([(t0, BLACK)], maxlen=self._history_len)

    def _make_buttons(self, factory: Any, t0: float) -> None:
        for role, b in self.profile.buttons.items():
            what = f"{role} button on {pin_label(b.pin)}"
            try:
                if b.pull == "up":
                    dev = DigitalInputDevice(
                        b.pin, pull_up=True, bounce_time=None, pin_factory=factory
                    )
                elif b.pull == "down":
                    dev = DigitalInputDevice(
                        b.pin, pull_up=False, bounce_time=None, pin_factory=factory
                    )
                else:
                    dev = DigitalInputDevice(
                        b.pin,
                        pull_up=None,
                        active_state=not b.active_low,
                        bounce_time=None,
                        pin_factory=factory,
                    )
                self._inputs[role] = dev
                dev.when_activated = partial(self._on_edge, role, True)
                dev.when_deactivated = partial(self._on_edge, role, False)
                pressed = bool(dev.is_active)
            except Exception as exc:
                raise _wrap_gpio_error(what, exc) from None
            if pressed:
                log.warning(
                    "%s reads pressed at start: ignored until released (held down, or "
                    "wired differently from the profile's active_low/pull_up?)",
                    what,
                )
            self._logic[role] = ButtonLogic(
                role,
                self._debounce_s,
                self._long_press_s,
                self._stuck_s,
                pressed_at_start=pressed,
                t0=t0,
            )

    def _pin_text(self, role: str) -> str:
        if role == self._rgb_role and self.profile.link_rgb is not None:
            rgb = self.profile.link_rgb
            return f"RGB GPIO{rgb.red}/{rgb.green}/{rgb.blue}"
        return pin_label(self.profile.leds[role].pin)

    # -- buttons -------------------------------------------------------------------------

    def _on_edge(self, role: str, level: bool) -> None:
        """gpiozero's thread: stamp and queue, nothing else."""
        t = self._clock()
        with self._lock:
            if self._closed:
                return
            if len(self._edges) >= EDGE_QUEUE_LIMIT:
                self.edge_drops += 1
                self._resync.add(role)
                return
            self._edges.append((role, level, t))

    def poll(self, now: float | None = None) -> list[ButtonEvent]:
        """Debounce the queued edges up to ``now``; the button events due, oldest first."""
        if self._closed:
            return []
        if now is None:
            now = self._clock()
        with self._lock:
            edges = list(self._edges)
            self._edges.clear()
            resync, self._resync = self._resync, set()
        events: list[ButtonEvent] = []
        for role, level, t in edges:
            events.extend(self._logic[role].edge(level, t))
        for role in sorted(resync):
            # edges were dropped: trust the pin's present level instead
            try:
                level = bool(self._inputs[role].is_active)
            except Exception as exc:
                log.warning("re-reading the %s button failed: %s", role, exc)
                continue
            events.extend(self._logic[role].edge(level, now))
        for logic in self._logic.values():
            events.extend(logic.poll(now))
        events.sort(key=lambda e: e.at)
        return events

    @property
    def buttons(self) -> tuple[str, ...]:
        return tuple(self._logic)

    @property
    def leds(self) -> tuple[str, ...]:
        return tuple(self._outputs)

    # -- LEDs ----------------------------------------------------------------------------

    def set_status(self, pattern: str, now: float | None = None) -> None:
        """Show a :data:`~wzp.board.leds.STATUS_PATTERNS` pattern on the status LED."""
        if pattern not in STATUS_PATTERNS:
            raise ValueError(
                f"unknown status pattern {pattern!r} (known: {', '.join(STATUS_PATTERNS)})"
            )
        now = self._clock() if now is None else now
        if pattern != self._status:
            self._status = pattern
            self._status_since = now
        self.tick(now)

    def set_link(self, tier: str | None, now: float | None = None) -> None:
        """Show a link tier (``"clear"`` ... ``"extreme"``) on the link LED; ``None``: off."""
        if tier is not None and tier not in LINK_PATTERNS:
            raise ValueError(f"unknown link tier {tier!r} (known: {', '.join(LINK_PATTERNS)})")
        now = self._clock() if now is None else now
        if tier != self._link:
            self._link = tier
            self._link_since = now
        self.tick(now)

    def set_tx(self, on: bool, now: float | None = None) -> None:
        """Light the tx LED while transmitting."""
        now = self._clock() if now is None else now
        self._tx = bool(on)
        self.tick(now)

    def test_leds(self, now: float | None = None) -> float:
        """Cycle every LED (each alone, RGB colours one by one, all on, all off).

        Driven by :meth:`tick`; returns how long the test lasts. Normal patterns
        resume afterwards.
        """
        now = self._clock() if now is None else now
        roles = list(self._outputs)
        dark: dict[str, Level] = {r: (BLACK if r == self._rgb_role else False) for r in roles}
        steps: list[_TestStep] = []
        for role in roles:
            if role == self._rgb_role:
                for colour in (RED, GREEN, BLUE):
                    steps.append(_TestStep(LED_TEST_STEP_S, {**dark, role: colour}))
            else:
                steps.append(_TestStep(LED_TEST_STEP_S, {**dark, role: True}))
        lit: dict[str, Level] = {r: (WHITE if r == self._rgb_role else True) for r in roles}
        steps.append(_TestStep(LED_TEST_STEP_S, lit))
        steps.append(_TestStep(LED_TEST_STEP_S, dark))
        self._test = steps
        self._test_since = now
        self.tick(now)
        return sum(s.duration for s in steps)

    @property
    def led_test_running(self) -> bool:
        return self._test is not None

    def _test_levels(self, now: float) -> dict[str, Level] | None:
        if self._test is None:
            return None
        elapsed = now - self._test_since
        acc = 0.0
        for step in self._test:
            acc += step.duration
            if elapsed < acc:
                return step.levels
        self._test = None
        return None

    def _wanted(self, now: float) -> dict[str, Level]:
        test = self._test_levels(now)
        if test is not None:
            return test
        wanted: dict[str, Level] = {}
        if "status" in self._outputs:
            wanted["status"] = level_at(STATUS_PATTERNS[self._status], now - self._status_since)
        if "link" in self._outputs:
            lit = self._link is not None and level_at(
                LINK_PATTERNS[self._link], now - self._link_since
            )
            if self._rgb_role == "link":
                wanted["link"] = LINK_COLOURS[self._link] if lit and self._link else BLACK
            else:
                wanted["link"] = lit
        if "tx" in self._outputs:
            wanted["tx"] = self._tx
        return wanted

    def tick(self, now: float | None = None) -> None:
        """Apply the patterns at ``now``; a pin is written only when its level changes."""
        if self._closed:
            return
        now = self._clock() if now is None else now
        for role, level in self._wanted(now).items():
            self._write(role, level, now)

    def _write(self, role: str, level: Level, now: float) -> None:
        if role == self._rgb_role:
            r, g, b = level if isinstance(level, tuple) else BLACK
            if not self._rgb_pwm:  # on/off pins: round each channel
                r, g, b = (float(c >= 0.5) for c in (r, g, b))
            level = (r, g, b)
        if self._levels.get(role) == level:
            return
        dev = self._outputs[role]
        try:
            if isinstance(dev, RGBLED):
                dev.value = level
            elif level:
                dev.on()
            else:
                dev.off()
        except Exception as exc:
            log.warning("setting the %s LED failed: %s", role, exc)
            return
        self._levels[role] = level
        self.history[role].append((now, level))

    # -- status and teardown -------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """LED levels and patterns, button states: plain data for ``wzp status`` (JSON-able)."""
        leds: dict[str, Any] = {}
        for role in self._outputs:
            level = self._levels.get(role, False)
            if role == "status":
                pattern = self._status
            elif role == "link":
                pattern = self._link or "off"
            else:
                pattern = "on" if self._tx else "off"
            leds[role] = {
                "pin": self._pin_text(role),
                "pattern": pattern,
                "level": list(level) if isinstance(level, tuple) else bool(level),
            }
        buttons = {
            role: {
                "pin": pin_label(self.profile.buttons[role].pin),
                "pressed": logic.pressed,
                "raw": logic.raw,
                "stuck": logic.stuck,
            }
            for role, logic in self._logic.items()
        }
        return {
            "profile": self.profile.name,
            "factory": self.factory_description,
            "closed": self._closed,
            "leds": leds,
            "buttons": buttons,
            "led_test": self._test is not None,
            "edge_drops": self.edge_drops,
        }

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Turn every LED off and release every pin. Safe to call twice (and at exit)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._edges.clear()
        now = self._clock()
        for role, dev in self._outputs.items():
            off: Level = BLACK if role == self._rgb_role else False
            try:
                if isinstance(dev, RGBLED):
                    dev.value = off
                else:
                    dev.off()
                if self._levels.get(role) != off:
                    self._levels[role] = off
                    self.history[role].append((now, off))
            except Exception as exc:
                log.warning("turning the %s LED off failed: %s", role, exc)
        devices: list[Any] = [*self._outputs.values(), *self._inputs.values()]
        for dev in devices:
            try:
                if isinstance(dev, DigitalInputDevice):
                    dev.when_activated = None
                    dev.when_deactivated = None
                dev.close()
            except Exception as exc:
                log.warning("releasing %r failed: %s", dev, exc)
        self._test = None
        log.info("board %s closed: LEDs off, pins released", self.profile.name)
