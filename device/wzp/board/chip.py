"""Find the GPIO chip that drives the 40-pin header, by label.

The header's chip number moves between Pi models and kernels (PLATFORM.md, GPIO):
``gpiochip4`` on early Pi 5 kernels, ``gpiochip0`` from 6.6.45 with ``gpiochip4`` left
as a symlink to it, ``gpiochip11``..``gpiochip15`` on a Pi 5 with 6.12. The label is
stable, so we open every ``/dev/gpiochip*``, read its label and pick the header's.

``lgpio`` is imported only inside :func:`list_chips`: importing it creates a
``.lgd-nfy*`` pipe in the working directory.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Labels of the header's GPIO chip -> the boards that carry it.
HEADER_LABELS: dict[str, str] = {
    "pinctrl-rp1": "Raspberry Pi 5",
    "pinctrl-bcm2711": "Raspberry Pi 4",
    "pinctrl-bcm2835": "Raspberry Pi 3 / Zero 2 W",
}

_CHIP_RE = re.compile(r"^gpiochip(\d+)$")


class GpioError(RuntimeError):
    """GPIO cannot be used: no header chip, a missing binding, no permission, a busy pin."""


@dataclass(frozen=True, slots=True)
class ChipInfo:
    """One ``/dev/gpiochipN`` as lgpio reports it."""

    number: int
    path: str
    label: str
    lines: int

    @property
    def name(self) -> str:
        return f"gpiochip{self.number}"

    @property
    def board(self) -> str | None:
        """The board this label belongs to, when it is a header chip."""
        return HEADER_LABELS.get(self.label)

    def describe(self) -> str:
        """``"gpiochip0 (pinctrl-rp1, Raspberry Pi 5)"``."""
        board = self.board
        what = f"{self.label}, {board}" if board else f"{self.label}, {self.lines} lines"
        return f"{self.name} ({what})"


def _seen(chips: list[ChipInfo]) -> str:
    if not chips:
        return "none"
    return ", ".join(f"{c.name} [{c.label}] ({c.lines} lines)" for c in chips)


def choose_header_chip(chips: list[ChipInfo], override: int | None = None) -> ChipInfo:
    """The chip of the 40-pin header among ``chips``.

    With ``override`` (the config's ``gpio_chip``), that chip number is used whatever its
    label (a warning is logged when it is not a known header label). Otherwise the chip
    whose label is in :data:`HEADER_LABELS` is chosen; entries that are symlinks to the
    same device (``gpiochip4 -> gpiochip0`` on a Pi 5 with kernel 6.6.45) count once, and
    the real device's own name is preferred. Raises :class:`GpioError` listing every chip
    seen when none matches.
    """
    ordered = sorted(chips, key=lambda c: c.number)
    if override is not None:
        for chip in ordered:
            if chip.number == override:
                if chip.board is None:
                    log.warning(
                        "gpio_chip = %d: %s is not a known header chip label (%s); using it "
                        "as configured",
                        override,
                        chip.name,
                        chip.label,
                    )
                return chip
        raise GpioError(
            f"gpio_chip = {override} is configured but gpiochip{override} was not found or "
            f"could not be read; chips seen: {_seen(ordered)}"
        )

    by_device: dict[str, list[ChipInfo]] = {}
    for chip in ordered:
        if chip.board is None:
            continue
        by_device.setdefault(os.path.realpath(chip.path), []).append(chip)
    if not by_device:
        raise GpioError(
            "no GPIO header chip found (looked for labels "
            f"{', '.join(HEADER_LABELS)}); chips seen: {_seen(ordered)}. "
            "Set [board] gpio_chip in the config to choose one by number."
        )

    candidates = []
    for real, group in by_device.items():
        canonical = [c for c in group if os.path.abspath(c.path) == real]
        candidates.append(canonical[0] if canonical else group[0])
    candidates.sort(key=lambda c: c.number)
    if len(candidates) > 1:
        log.warning(
            "several header chips found (%s); using %s",
            ", ".join(c.describe() for c in candidates),
            candidates[0].name,
        )
    return candidates[0]


def lgpio_error(exc: BaseException) -> GpioError:
    """A clear error for a failed import of lgpio (directly or through gpiozero)."""
    if isinstance(exc, ImportError):
        return GpioError(
            f"the lgpio Python binding is not installed ({exc}); on Raspberry Pi OS: "
            "sudo apt install python3-lgpio (the venv must see system site-packages)"
        )
    return GpioError(
        f"importing lgpio failed ({exc}): it creates a notification pipe .lgd-nfy* in "
        f"the working directory ({os.getcwd()}), which must be writable"
    )


def import_lgpio() -> Any:
    """The lgpio module, imported here only: importing it creates a notification pipe
    ``.lgd-nfy*`` in the working directory. Its failures become :class:`GpioError`."""
    try:
        import lgpio
    except (ImportError, OSError) as exc:
        raise lgpio_error(exc) from None
    return lgpio


def list_chips(dev: str | Path = "/dev", *, errors: list[str] | None = None) -> list[ChipInfo]:
    """Every ``gpiochipN`` under ``dev`` with its label and line count, by number.

    lgpio opens chips by number (``/dev/gpiochipN``). A chip that cannot be opened or
    queried is left out and logged; its reason is appended to ``errors`` when given.
    Raises :class:`GpioError` when the lgpio binding itself is missing.
    """
    lgpio = import_lgpio()

    base = Path(dev)
    found: list[tuple[int, Path]] = []
    try:
        entries = list(base.iterdir())
    except OSError as exc:
        raise GpioError(f"cannot list {base}: {exc}") from None
    for entry in entries:
        m = _CHIP_RE.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry))
    found.sort()

    chips: list[ChipInfo] = []
    for number, path in found:
        handle = None
        try:
            handle = lgpio.gpiochip_open(number)
            # [status, number of lines, name, label]
            _status, lines, _name, label = lgpio.gpio_get_chip_info(handle)
            chips.append(ChipInfo(number, str(path), str(label), int(lines)))
        except Exception as exc:  # lgpio.error, OSError, a malformed answer
            reason = f"gpiochip{number}: {exc}"
            log.info("cannot read %s", reason)
            if errors is not None:
                errors.append(reason)
        finally:
            if handle is not None and handle >= 0:
                try:
                    lgpio.gpiochip_close(handle)
                except Exception as exc:
                    log.debug("closing gpiochip%d: %s", number, exc)
    return chips
