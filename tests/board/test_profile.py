"""Board profiles: the shipped ones load, every mistake is refused with file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from wzp.board.profile import (
    BCM_TO_HEADER,
    BoardError,
    ButtonPin,
    list_profiles,
    load_profile,
    loads_profile,
    pin_label,
)

MINIMAL = """
[buttons.call]
pin = 17
[leds.status]
pin = 23
"""


def test_shipped_profiles_load_and_are_named_after_their_file() -> None:
    names = list_profiles()
    assert {"breadboard", "aiy-voicehat"} <= set(names)
    for name in names:
        profile = load_profile(name)
        assert profile.name == name
        assert profile.description


def test_breadboard_pins() -> None:
    p = load_profile("breadboard")
    assert {r: b.pin for r, b in p.buttons.items()} == {
        "call": 17,
        "ptt": 27,
        "hangup": 22,
        "volume_up": 5,
        "volume_down": 6,
    }
    assert all(b.active_low and b.pull_up and b.pull == "up" for b in p.buttons.values())
    assert {r: led.pin for r, led in p.leds.items()} == {"status": 23, "link": 24, "tx": 25}
    assert all(led.active_high for led in p.leds.values())
    # clear of I2S (an I2S HAT or a USB card can share the header), I2C and HAT ID pins
    assert not set(p.used_pins()) & {0, 1, 2, 3, 18, 19, 20, 21}


def test_aiy_voicehat() -> None:
    p = load_profile("aiy-voicehat")
    assert p.buttons == {"call": ButtonPin(23, active_low=True, pull_up=True)}
    assert p.leds["status"].pin == 25
    assert p.audio.capture == "plughw:CARD=sndrpigooglevoi,DEV=0"
    assert p.audio.playback == "plughw:CARD=sndrpigooglevoi,DEV=0"
    assert "googlevoicehat-soundcard" in p.audio.setup
    assert p.reserved_pins == (16, 18, 19, 20, 21)
    assert p.debounce_s == 0.05


def test_load_by_path_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(MINIMAL)
    p = load_profile(str(path))
    assert p.name == "mine"
    assert p.source == str(path)
    assert p.buttons["call"] == ButtonPin(17, True, True)
    assert p.leds["status"].active_high
    assert p.link_rgb is None and not p.has_link_led
    assert load_profile(path).name == "mine"  # a Path works too


def test_rgb_link_led() -> None:
    p = loads_profile(
        MINIMAL + "[leds.link_rgb]\nred = 5\ngreen = 6\nblue = 13\nactive_high = false\n"
    )
    assert p.link_rgb is not None
    assert p.link_rgb.pins == (5, 6, 13)
    assert not p.link_rgb.active_high
    assert p.has_link_led
    assert p.used_pins()[13] == "leds.link_rgb.blue"


def test_button_wiring_variants() -> None:
    p = loads_profile(
        MINIMAL
        + "[buttons.ptt]\npin = 27\nactive_low = false\npull_up = false\n"
        + "[buttons.hangup]\npin = 22\nactive_low = true\npull_up = false\n"
    )
    assert p.buttons["ptt"].pull == "down"
    assert p.buttons["hangup"].pull == "floating"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("colour = 1\n" + MINIMAL, r"<t>: colour: unknown key"),
        (MINIMAL + "colour = 1\n", r"<t>: leds\.status\.colour: unknown key"),
        (MINIMAL.replace("pin = 17", "pin = 17\npul_up = true"), r"buttons\.call\.pul_up: unknown"),
        (MINIMAL.replace("pin = 17", "pin = 28"), r"buttons\.call\.pin: 28 is not a header GPIO"),
        (MINIMAL.replace("pin = 17", "pin = -1"), r"buttons\.call\.pin: -1 is not"),
        (MINIMAL.replace("pin = 17", 'pin = "17"'), r"buttons\.call\.pin: must be a BCM"),
        (MINIMAL.replace("pin = 17", "pin = true"), r"buttons\.call\.pin: must be a BCM"),
        (
            MINIMAL.replace("pin = 23", "pin = 17"),
            r"leds\.status\.pin: GPIO17 \(pin 11\) is already used by buttons\.call",
        ),
        ("[leds.status]\npin = 23\n", r"buttons\.call: missing"),
        ("[buttons.call]\npin = 17\n", r"leds\.status: missing"),
        (MINIMAL + "[buttons.mute]\npin = 5\n", r"buttons\.mute: unknown button role"),
        (MINIMAL + "[leds.rx]\npin = 5\n", r"leds\.rx: unknown LED role"),
        (MINIMAL + "[buttons.ptt]\nactive_low = true\n", r"buttons\.ptt\.pin: missing"),
        (
            MINIMAL + "[buttons.ptt]\npin = 5\nactive_low = 1\n",
            r"buttons\.ptt\.active_low: must be true or false",
        ),
        (
            MINIMAL + "[buttons.ptt]\npin = 5\nactive_low = false\n",
            r"buttons\.ptt: active_low = false with pull_up = true",
        ),
        (
            MINIMAL + "[leds.link]\npin = 24\n[leds.link_rgb]\nred = 5\ngreen = 6\nblue = 13\n",
            r"leds\.link_rgb: give either",
        ),
        (MINIMAL + "[leds.link_rgb]\nred = 5\ngreen = 6\n", r"leds\.link_rgb\.blue: missing"),
        (
            MINIMAL + "[leds.link_rgb]\nred = 5\ngreen = 5\nblue = 6\n",
            r"leds\.link_rgb\.green: GPIO5 .* already used",
        ),
        ("reserved_pins = [17]\n" + MINIMAL, r"buttons\.call\.pin: GPIO17 \(pin 11\) is reserved"),
        ("reserved_pins = 17\n" + MINIMAL, r"reserved_pins: must be a list"),
        ("debounce_s = 2\n" + MINIMAL, r"debounce_s: 2 is outside"),
        ('debounce_s = "fast"\n' + MINIMAL, r"debounce_s: must be a number"),
        ('name = "a b"\n' + MINIMAL, r"name: 'a b' is not a profile name"),
        (MINIMAL + "[audio]\ncard = 1\n", r"audio\.card: unknown key"),
        (MINIMAL + "[audio]\ncapture = 1\n", r"audio\.capture: must be a string"),
        ("buttons = 3\n", r"buttons: must be a table"),
        ("[buttons\n", r"<t>: not valid TOML"),
    ],
)
def test_mistakes_are_refused_naming_file_and_key(text: str, match: str) -> None:
    with pytest.raises(BoardError, match=match):
        loads_profile(text, source="<t>")


def test_unknown_name_lists_the_shipped_profiles() -> None:
    with pytest.raises(BoardError, match=r"no board profile named 'nope' \(shipped: .*breadboard"):
        load_profile("nope")
    with pytest.raises(BoardError, match="not a board profile name"):
        load_profile("bad name")


def test_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(BoardError, match="not found"):
        load_profile(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(BoardError, match=r"bad\.toml"):
        load_profile(str(bad))


def test_header_map_is_a_bijection_onto_gpio_header_pins() -> None:
    assert sorted(BCM_TO_HEADER) == list(range(28))
    assert len(set(BCM_TO_HEADER.values())) == 28
    power_and_ground = {1, 2, 4, 6, 9, 14, 17, 20, 25, 30, 34, 39}
    assert not set(BCM_TO_HEADER.values()) & power_and_ground
    assert set(BCM_TO_HEADER.values()) | power_and_ground == set(range(1, 41))
    assert pin_label(17) == "GPIO17 (pin 11)"
