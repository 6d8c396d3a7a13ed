"""Header chip choice against the chip lists of each Pi and kernel (PLATFORM.md, GPIO)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from wzp.board.chip import HEADER_LABELS, ChipInfo, GpioError, choose_header_chip, list_chips

EXP = "raspberrypi-exp-gpio"


def make_dev(tmp_path: Path, numbers: list[int], links: dict[int, int] | None = None) -> Path:
    """Stand-in /dev: a file per chip, symlinks for ``links`` (link number -> target)."""
    dev = tmp_path / "dev"
    dev.mkdir()
    for n in numbers:
        (dev / f"gpiochip{n}").touch()
    for link, target in (links or {}).items():
        (dev / f"gpiochip{link}").symlink_to(f"gpiochip{target}")
    return dev


def chips_of(dev: Path, table: dict[int, tuple[str, int]]) -> list[ChipInfo]:
    return [
        ChipInfo(n, str(dev / f"gpiochip{n}"), label, lines) for n, (label, lines) in table.items()
    ]


def test_pi3(tmp_path: Path) -> None:
    dev = make_dev(tmp_path, [0, 1])
    chips = chips_of(dev, {0: ("pinctrl-bcm2835", 54), 1: (EXP, 8)})
    chip = choose_header_chip(chips)
    assert (chip.number, chip.board) == (0, "Raspberry Pi 3 / Zero 2 W")
    assert chip.describe() == "gpiochip0 (pinctrl-bcm2835, Raspberry Pi 3 / Zero 2 W)"


def test_pi4(tmp_path: Path) -> None:
    dev = make_dev(tmp_path, [0, 1])
    chips = chips_of(dev, {0: ("pinctrl-bcm2711", 58), 1: (EXP, 8)})
    chip = choose_header_chip(chips)
    assert (chip.number, chip.lines, chip.board) == (0, 58, "Raspberry Pi 4")


def test_pi5_early_kernel_header_on_gpiochip4(tmp_path: Path) -> None:
    dev = make_dev(tmp_path, [0, 1, 2, 3, 4])
    chips = chips_of(
        dev,
        {
            0: ("gpio-brcmstb@107d508500", 32),
            1: ("gpio-brcmstb@107d508520", 4),
            2: ("gpio-brcmstb@107d517c00", 17),
            3: ("gpio-brcmstb@107d517c20", 6),
            4: ("pinctrl-rp1", 54),
        },
    )
    chip = choose_header_chip(chips)
    assert chip.number == 4
    assert chip.describe() == "gpiochip4 (pinctrl-rp1, Raspberry Pi 5)"


def test_pi5_kernel_6_6_45_symlink_counts_once_and_the_real_chip_wins(tmp_path: Path) -> None:
    # gpiochip0 is the header, gpiochip4 a symlink to it (raspberrypi/linux#6144)
    dev = make_dev(tmp_path, [0, 10, 11, 12, 13], links={4: 0})
    table = {
        0: ("pinctrl-rp1", 54),
        4: ("pinctrl-rp1", 54),
        10: ("gpio-brcmstb@107d508500", 32),
        11: ("gpio-brcmstb@107d508520", 4),
        12: ("gpio-brcmstb@107d517c00", 17),
        13: ("gpio-brcmstb@107d517c20", 6),
    }
    chips = chips_of(dev, table)
    assert choose_header_chip(chips).number == 0
    # whatever order the caller lists them in
    assert choose_header_chip(list(reversed(chips))).number == 0


def test_pi5_kernel_6_12_only_two_digit_chips(tmp_path: Path) -> None:
    # Adafruit_Blinka#1119: only gpiochip11..15 exist
    dev = make_dev(tmp_path, [11, 12, 13, 14, 15])
    chips = chips_of(
        dev,
        {
            11: ("gpio-brcmstb@107d508500", 32),
            12: ("gpio-brcmstb@107d508520", 4),
            13: ("pinctrl-rp1", 54),
            14: ("gpio-brcmstb@107d517c00", 17),
            15: ("gpio-brcmstb@107d517c20", 6),
        },
    )
    assert choose_header_chip(chips).number == 13


def test_no_header_chip_lists_what_was_seen(tmp_path: Path) -> None:
    dev = make_dev(tmp_path, [0, 1])
    chips = chips_of(dev, {0: ("gpio-mockup-A", 16), 1: (EXP, 8)})
    with pytest.raises(GpioError) as err:
        choose_header_chip(chips)
    msg = str(err.value)
    assert "gpiochip0 [gpio-mockup-A] (16 lines)" in msg
    assert f"gpiochip1 [{EXP}] (8 lines)" in msg
    assert "gpio_chip" in msg  # how to override
    with pytest.raises(GpioError, match="chips seen: none"):
        choose_header_chip([])


def test_override_picks_that_chip_whatever_its_label(tmp_path: Path) -> None:
    dev = make_dev(tmp_path, [0, 1])
    chips = chips_of(dev, {0: ("pinctrl-bcm2711", 58), 1: (EXP, 8)})
    assert choose_header_chip(chips, override=1).number == 1
    assert choose_header_chip(chips, override=0).number == 0
    with pytest.raises(GpioError, match=r"gpio_chip = 7 .*gpiochip0 \[pinctrl-bcm2711\]"):
        choose_header_chip(chips, override=7)


def test_two_distinct_header_chips_pick_the_lowest(tmp_path: Path) -> None:
    dev = make_dev(tmp_path, [2, 5])
    chips = chips_of(dev, {5: ("pinctrl-rp1", 54), 2: ("pinctrl-rp1", 54)})
    assert choose_header_chip(chips).number == 2


def test_header_labels_cover_the_supported_boards() -> None:
    assert set(HEADER_LABELS) == {"pinctrl-rp1", "pinctrl-bcm2711", "pinctrl-bcm2835"}


class FakeLgpio(types.ModuleType):
    """The three lgpio calls list_chips makes, over a table of chips."""

    class error(Exception):  # lgpio's own (lower-case) name
        pass

    def __init__(self, table: dict[int, tuple[str, int] | str]) -> None:
        super().__init__("lgpio")
        self.table = table
        self.open_handles: set[int] = set()

    def gpiochip_open(self, n: int) -> int:
        entry = self.table.get(n)
        if entry is None or isinstance(entry, str):
            raise self.error(entry or "can not open gpiochip")
        handle = 100 + n
        self.open_handles.add(handle)
        return handle

    def gpio_get_chip_info(self, handle: int) -> list[object]:
        label, lines = self.table[handle - 100]  # type: ignore[misc]
        return [0, lines, f"gpiochip{handle - 100}", label]

    def gpiochip_close(self, handle: int) -> int:
        self.open_handles.remove(handle)
        return 0


def test_list_chips_reads_labels_tolerates_errors_and_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = make_dev(tmp_path, [0, 2, 11], links={4: 0})
    (dev / "gpiochipX").touch()  # not a chip name
    (dev / "null").touch()
    fake = FakeLgpio(
        {0: ("pinctrl-rp1", 54), 4: ("pinctrl-rp1", 54), 2: "permission denied", 11: ("x", 3)}
    )
    monkeypatch.setitem(sys.modules, "lgpio", fake)
    errors: list[str] = []
    chips = list_chips(dev, errors=errors)
    assert [(c.number, c.label, c.lines) for c in chips] == [
        (0, "pinctrl-rp1", 54),
        (4, "pinctrl-rp1", 54),
        (11, "x", 3),
    ]
    assert errors == ["gpiochip2: permission denied"]
    assert fake.open_handles == set()
    # the symlinked entry counts once
    assert choose_header_chip(chips).number == 0


def test_list_chips_without_lgpio_explains_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lgpio", None)  # import lgpio -> ImportError
    with pytest.raises(GpioError, match="apt install python3-lgpio"):
        list_chips("/dev")
