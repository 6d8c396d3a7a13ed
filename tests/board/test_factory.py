"""make_factory: mock pins, lgpio on the chip found by label, clear errors (no hardware)."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from typing import ClassVar

import pytest
from gpiozero.pins.mock import MockFactory

from wzp.board.chip import ChipInfo, GpioError
from wzp.board.factory import make_factory


def test_mock_factory() -> None:
    factory, description = make_factory("mock", None)
    assert isinstance(factory, MockFactory)
    assert description == "mock pins (no hardware)"


def test_a_mock_pin_remembers_a_bounded_history() -> None:
    """A daemon on mock pins blinks LEDs for as long as it runs: gpiozero's mock pin kept
    every change (a soak test saw ~16 KB a minute); ours keep the last MOCK_PIN_HISTORY."""
    from gpiozero import PWMLED

    from wzp.board.factory import MOCK_PIN_HISTORY

    factory, _ = make_factory("mock", None)
    led = PWMLED(17, pin_factory=factory)
    try:
        for _ in range(MOCK_PIN_HISTORY + 500):
            led.toggle()
        states = factory.pin(17).states
        assert len(states) == MOCK_PIN_HISTORY
        assert bool(states[-1].state) == led.is_lit  # the newest kept, the oldest gone
        led.value = 0.5  # still a PWM pin: an RGB LED mixes colours
        assert factory.pin(17).states[-1].state == 0.5
    finally:
        led.close()


def test_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(GpioError, match="lgpio, rpigpio, mock"):
        make_factory("pigpio", None)


class FakeLGPIOFactory:
    opened: ClassVar[list[int]] = []
    fail: ClassVar[Exception | None] = None

    def __init__(self, chip: int | None = None) -> None:
        if FakeLGPIOFactory.fail is not None:
            raise FakeLGPIOFactory.fail
        assert chip is not None, "the chip must always be passed explicitly"
        FakeLGPIOFactory.opened.append(chip)
        self.chip = chip


@pytest.fixture
def fake_lgpio_module(monkeypatch: pytest.MonkeyPatch) -> type[FakeLGPIOFactory]:
    module = types.ModuleType("gpiozero.pins.lgpio")
    module.LGPIOFactory = FakeLGPIOFactory  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gpiozero.pins.lgpio", module)
    FakeLGPIOFactory.opened = []
    FakeLGPIOFactory.fail = None
    return FakeLGPIOFactory


PI5_612 = [
    ChipInfo(11, "/dev/gpiochip11", "gpio-brcmstb@107d508500", 32),
    ChipInfo(13, "/dev/gpiochip13", "pinctrl-rp1", 54),
    ChipInfo(14, "/dev/gpiochip14", "gpio-brcmstb@107d517c00", 17),
]


def test_lgpio_factory_opens_the_header_chip_by_label(fake_lgpio_module: type) -> None:
    factory, description = make_factory("lgpio", None, lister=lambda errors: list(PI5_612))
    assert factory.chip == 13
    assert fake_lgpio_module.opened == [13]
    assert description == "lgpio on gpiochip13 (pinctrl-rp1, Raspberry Pi 5)"


def test_lgpio_factory_honours_the_override(fake_lgpio_module: type) -> None:
    factory, description = make_factory("lgpio", 11, lister=lambda errors: list(PI5_612))
    assert factory.chip == 11
    assert description.startswith("lgpio on gpiochip11 (gpio-brcmstb@107d508500")


def test_lgpio_no_header_chip_reports_chips_and_unreadable_ones(fake_lgpio_module: type) -> None:
    def lister(errors: list[str]) -> list[ChipInfo]:
        errors.append("gpiochip0: can not open gpiochip")
        return [ChipInfo(1, "/dev/gpiochip1", "raspberrypi-exp-gpio", 8)]

    with pytest.raises(GpioError) as err:
        make_factory("lgpio", None, lister=lister)
    assert "raspberrypi-exp-gpio" in str(err.value)
    assert "Unreadable: gpiochip0: can not open gpiochip" in str(err.value)
    assert fake_lgpio_module.opened == []


def test_lgpio_open_failure_hints_at_the_gpio_group(fake_lgpio_module: type) -> None:
    fake_lgpio_module.fail = OSError(13, "Permission denied")
    with pytest.raises(GpioError, match="gpio group"):
        make_factory("lgpio", None, lister=lambda errors: list(PI5_612))


def test_missing_lgpio_binding_gives_the_apt_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiozero.pins.lgpio", None)
    with pytest.raises(GpioError, match="apt install python3-lgpio"):
        make_factory("lgpio", None, lister=lambda errors: [])


def test_missing_rpigpio_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiozero.pins.rpigpio", None)
    with pytest.raises(GpioError, match=r"python3-rpi\.gpio.*lgpio"):
        make_factory("rpigpio", None)


def test_rpigpio_runtime_error_becomes_gpio_error(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("gpiozero.pins.rpigpio")

    class Broken:
        def __init__(self) -> None:
            raise RuntimeError("Cannot determine SOC peripheral base address")

    module.RPiGPIOFactory = Broken  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gpiozero.pins.rpigpio", module)
    with pytest.raises(GpioError, match="SOC peripheral"):
        make_factory("rpigpio", None)


def test_importing_the_board_package_never_imports_lgpio(tmp_path: Path) -> None:
    """lgpio creates .lgd-nfy* in the cwd on import: wzp.board must not import it."""
    code = (
        "import sys, wzp.board, wzp.board.board, wzp.board.factory, wzp.board.chip\n"
        "from wzp.board import make_factory\n"
        "make_factory('mock')\n"
        "assert 'lgpio' not in sys.modules, 'lgpio imported'\n"
        "assert 'RPi' not in sys.modules, 'RPi.GPIO imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []
