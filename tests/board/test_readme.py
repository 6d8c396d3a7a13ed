"""hw/README.md says what the code does: pin tables, header diagram, LED table, example."""

from __future__ import annotations

import re
from pathlib import Path

from wzp.board.leds import patterns_markdown
from wzp.board.profile import BCM_TO_HEADER, load_profile, loads_profile

README = Path(__file__).resolve().parents[2] / "hw" / "README.md"
TOP_README = Path(__file__).resolve().parents[2] / "README.md"


def block(name: str, readme: Path = README) -> str:
    text = readme.read_text(encoding="utf-8")
    m = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, re.S)
    assert m, f"marker {name} missing in {readme}"
    return m.group(1).strip()


def test_led_table_is_the_generated_one() -> None:
    assert block("led-patterns") == patterns_markdown()
    # the project README shows the same table
    assert block("led-patterns", TOP_README) == patterns_markdown()


def test_breadboard_table_matches_the_profile() -> None:
    profile = load_profile("breadboard")
    rows = {}
    for line in block("breadboard-pins").splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        key, _part, gpio, header, _other = cells
        rows[key] = (int(gpio.removeprefix("GPIO")), int(header))
    expected = {f"{key}": (pin, BCM_TO_HEADER[pin]) for pin, key in profile.used_pins().items()}
    assert rows == expected


def test_header_diagram_pairs_are_right() -> None:
    diagram = block("header-diagram")
    pairs = re.findall(r"GPIO(\d+)\s+\((\d+)\)", diagram)
    pairs += [(g, p) for p, g in re.findall(r"\((\d+)\)\s+GPIO(\d+)", diagram)]
    assert len(pairs) == 28
    assert {int(g): int(p) for g, p in pairs} == BCM_TO_HEADER
    # the labelled wires land on the breadboard profile's pins
    profile = load_profile("breadboard")
    labels = {
        "CALL": "call",
        "PTT": "ptt",
        "HANGUP": "hangup",
        "VOL+": "volume_up",
        "VOL-": "volume_down",
    }
    for label, role in labels.items():
        m = re.search(rf"^\s*{re.escape(label)} -+ GPIO(\d+)", diagram, re.M)
        assert m and int(m.group(1)) == profile.buttons[role].pin, label
    for role in ("status", "link", "tx"):
        m = re.search(rf"GPIO(\d+) -+ {role} LED", diagram)
        assert m and int(m.group(1)) == profile.leds[role].pin, role


def test_rgb_example_is_a_valid_profile() -> None:
    text = block("rgb-example").removeprefix("```toml").removesuffix("```")
    profile = loads_profile(text, source="hw/README.md")
    assert profile.link_rgb is not None
    assert profile.name == "breadboard-rgb"


def test_aiy_table_matches_the_profile() -> None:
    profile = load_profile("aiy-voicehat")
    text = README.read_text(encoding="utf-8")
    section = text.split("## Google AIY Voice HAT", 1)[1].split("\n## ", 1)[0]
    reserved = []
    for gpio, header, role in re.findall(r"\| GPIO(\d+) \| (\d+) \| ([^|]+) \|", section):
        assert BCM_TO_HEADER[int(gpio)] == int(header)
        role = role.strip()
        if role == "reserved":
            reserved.append(int(gpio))
        else:
            assert profile.used_pins()[int(gpio)] == role.strip("`")
    assert tuple(sorted(reserved)) == profile.reserved_pins
    assert profile.audio.capture in section
