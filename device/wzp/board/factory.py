"""gpiozero pin factories: mock, lgpio (on the header chip found by label), RPi.GPIO.

gpiozero's own factory auto-detection is never used (PLATFORM.md, GPIO): the lgpio
factory always gets the chip chosen by :func:`~wzp.board.chip.choose_header_chip`.
Hardware bindings are imported only when that factory is asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .chip import ChipInfo, GpioError, choose_header_chip, lgpio_error, list_chips

log = logging.getLogger(__name__)

#: The ``[board] pin_factory`` values.
FACTORY_KINDS: tuple[str, ...] = ("lgpio", "rpigpio", "mock")


#: state changes a mock pin remembers (gpiozero's keep every one, for tests' asserts)
MOCK_PIN_HISTORY = 1000


def _mock_factory() -> tuple[Any, str]:
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    class BoundedMockPWMPin(MockPWMPin):  # type: ignore[misc]
        """A mock pin that forgets all but its last MOCK_PIN_HISTORY state changes: a
        daemon on mock pins (the laptop demo) grew by every LED blink (~16 KB a minute
        in a soak test)."""

        def _change_state(self, value: Any) -> bool:
            changed = bool(super()._change_state(value))
            if len(self.states) > MOCK_PIN_HISTORY:
                del self.states[:-MOCK_PIN_HISTORY]
            return changed

    # PWM-capable mock pins, so an RGB link LED can show mixed colours as on hardware
    return MockFactory(pin_class=BoundedMockPWMPin), "mock pins (no hardware)"


def _lgpio_factory(
    chip: int | None, lister: Callable[..., list[ChipInfo]]
) -> tuple[Any, ChipInfo, str]:
    try:
        from gpiozero.pins.lgpio import LGPIOFactory  # imports lgpio (its pipe in the cwd)
    except (ImportError, OSError) as exc:
        raise lgpio_error(exc) from None

    errors: list[str] = []
    chips = lister(errors=errors)
    try:
        info = choose_header_chip(chips, chip)
    except GpioError as exc:
        if errors:
            raise GpioError(f"{exc} Unreadable: {'; '.join(errors)}") from None
        raise
    try:
        factory = LGPIOFactory(chip=info.number)
    except Exception as exc:  # lgpio.error, OSError, gpiozero errors
        raise GpioError(
            f"cannot open {info.describe()} with lgpio: {exc} (is the user in the gpio "
            "group? /dev/gpiochip* is root:gpio 0660)"
        ) from None
    return factory, info, f"lgpio on {info.describe()}"


def _rpigpio_factory(chip: int | None) -> tuple[Any, str]:
    if chip is not None:
        log.warning("gpio_chip = %d is ignored by the rpigpio pin factory", chip)
    try:
        from gpiozero.pins.rpigpio import RPiGPIOFactory
    except ImportError as exc:
        raise GpioError(
            f'pin_factory = "rpigpio" needs RPi.GPIO ({exc}); sudo apt install '
            'python3-rpi.gpio, or use pin_factory = "lgpio" (RPi.GPIO does not work on a '
            "Pi 5)"
        ) from None
    try:
        factory = RPiGPIOFactory()
    except Exception as exc:  # RuntimeError on a Pi 5 ("Cannot determine SOC ...")
        raise GpioError(
            f'RPi.GPIO cannot drive this board: {exc}; use pin_factory = "lgpio"'
        ) from None
    return factory, "RPi.GPIO"


def make_factory(
    kind: str,
    chip: int | None = None,
    *,
    lister: Callable[..., list[ChipInfo]] = list_chips,
) -> tuple[Any, str]:
    """A gpiozero pin factory and a line for logs and ``wzp status``.

    ``kind``: ``"mock"`` (gpiozero's MockFactory with PWM-capable pins), ``"lgpio"``
    (the header chip, found by label unless ``chip`` is given) or ``"rpigpio"``.
    ``lister`` enumerates the chips (tests pass a fake). Raises :class:`GpioError`
    with an install or permission hint when the factory cannot be made.
    """
    if kind == "mock":
        factory, description = _mock_factory()
    elif kind == "lgpio":
        factory, _info, description = _lgpio_factory(chip, lister)
    elif kind == "rpigpio":
        factory, description = _rpigpio_factory(chip)
    else:
        raise GpioError(f"unknown pin factory {kind!r} (known: {', '.join(FACTORY_KINDS)})")
    log.info("GPIO: %s", description)
    return factory, description
