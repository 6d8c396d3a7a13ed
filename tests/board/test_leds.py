"""LED patterns: timing of every pattern, distinctness, tier coverage, descriptions."""

from __future__ import annotations

import pytest

from wzp.board.leds import (
    LINK_COLOURS,
    LINK_PATTERNS,
    STATUS_MEANINGS,
    STATUS_PATTERNS,
    Pattern,
    describe,
    describe_patterns,
    level_at,
    patterns_markdown,
)
from wzp.media.ladder import LADDER


def sample(p: Pattern, start: float, stop: float, step: float = 0.01) -> list[bool]:
    n = round((stop - start) / step)
    return [level_at(p, start + i * step) for i in range(n)]


def on_intervals(p: Pattern, horizon: float, step: float = 0.01) -> list[tuple[float, float]]:
    """(start, end) of each lit run over [0, horizon), at 10 ms resolution."""
    runs, start = [], None
    for i, lit in enumerate(sample(p, 0.0, horizon, step)):
        t = round(i * step, 3)
        if lit and start is None:
            start = t
        elif not lit and start is not None:
            runs.append((start, t))
            start = None
    if start is not None:
        runs.append((start, round(horizon, 3)))
    return runs


def test_idle_is_a_heartbeat_every_two_seconds() -> None:
    assert on_intervals(STATUS_PATTERNS["idle"], 6.0) == [(0.0, 0.1), (2.0, 2.1), (4.0, 4.1)]


def test_connecting_blinks_evenly() -> None:
    assert on_intervals(STATUS_PATTERNS["connecting"], 1.0) == [(0.0, 0.25), (0.5, 0.75)]


def test_ringing_two_short_blinks_then_pause() -> None:
    assert on_intervals(STATUS_PATTERNS["ringing"], 2.0) == [
        (0.0, 0.1),
        (0.2, 0.3),
        (1.0, 1.1),
        (1.2, 1.3),
    ]


def test_rekeying_flickers_and_in_call_is_solid() -> None:
    runs = on_intervals(STATUS_PATTERNS["rekeying"], 0.3)
    assert runs == [(0.0, 0.05), (0.1, 0.15), (0.2, 0.25)]
    assert all(sample(STATUS_PATTERNS["in_call"], 0.0, 10.0))
    assert not any(sample(STATUS_PATTERNS["off"], 0.0, 10.0))


def test_error_three_quick_blinks_then_one_second_off() -> None:
    assert on_intervals(STATUS_PATTERNS["error"], 1.75) == [(0.0, 0.15), (0.3, 0.45), (0.6, 0.75)]
    assert STATUS_PATTERNS["error"].period == pytest.approx(1.75)


def test_status_patterns_are_told_apart() -> None:
    """No two states look alike: compare lit/dark run lengths and the period."""

    def signature(p: Pattern) -> tuple[object, ...]:
        ons = tuple(sorted(d for lv, d in p.segments if lv))
        offs = tuple(sorted(d for lv, d in p.segments if not lv))
        return (p.solid, ons if p.solid is None else (), offs if p.solid is None else ())

    sigs = {name: signature(p) for name, p in STATUS_PATTERNS.items()}
    assert len(set(sigs.values())) == len(sigs), sigs
    assert set(STATUS_PATTERNS) == set(STATUS_MEANINGS)
    assert {"off", "idle", "connecting", "ringing", "in_call", "rekeying", "error"} == set(
        STATUS_PATTERNS
    )


def test_link_tiers_match_the_media_ladder() -> None:
    assert list(LINK_PATTERNS) == [t.name for t in LADDER]
    assert list(LINK_COLOURS) == [t.name for t in LADDER]


def test_link_patterns_by_tier() -> None:
    for tier in ("clear", "light"):
        assert all(sample(LINK_PATTERNS[tier], 0.0, 5.0))
    for tier in ("heavy", "dense"):
        assert on_intervals(LINK_PATTERNS[tier], 4.0) == [(0.0, 1.0), (2.0, 3.0)]
    for tier in ("severe", "deep", "extreme"):
        assert on_intervals(LINK_PATTERNS[tier], 0.8) == [(0.0, 0.2), (0.4, 0.6)]


def test_link_colours() -> None:
    assert LINK_COLOURS["clear"] == LINK_COLOURS["light"] == (0.0, 1.0, 0.0)
    assert LINK_COLOURS["heavy"] == LINK_COLOURS["dense"] == (1.0, 1.0, 0.0)
    r, g, b = LINK_COLOURS["severe"]
    assert r == 1.0 and 0.0 < g < 1.0 and b == 0.0  # orange
    assert LINK_COLOURS["extreme"] == (1.0, 0.0, 0.0)


def test_boundaries_fall_where_written_despite_float_rounding() -> None:
    p = STATUS_PATTERNS["rekeying"]
    # 0.15 % 0.1 in floats is 0.04999...: still the dark half
    assert level_at(p, 0.15) is False
    assert level_at(p, 0.1 + 0.1 + 0.1) is True  # 0.30000000000000004
    assert level_at(p, 0.1499) is True


def test_once_pattern_holds_its_last_level_and_bad_elapsed_is_start() -> None:
    p = Pattern("flash", ((True, 0.5), (False, 0.5)), repeat=False)
    assert level_at(p, 0.2) is True
    assert level_at(p, 0.7) is False
    assert level_at(p, 100.0) is False
    assert level_at(p, -1.0) is True
    assert level_at(p, float("nan")) is True
    assert describe(p).endswith(", once")


@pytest.mark.parametrize(
    "segments",
    [(), ((True, 0.0),), ((True, -1.0),), ((True, float("inf")),), ((1, 0.5),)],
)
def test_bad_patterns_refused(segments: tuple[tuple[bool, float], ...]) -> None:
    with pytest.raises(ValueError):
        Pattern("bad", segments)


def test_descriptions() -> None:
    text = {
        row["name"]: row["description"] for row in describe_patterns() if row["led"] == "status"
    }
    assert text["idle"] == "blinks once every 2 s (0.1 s flash)"
    assert text["connecting"] == "blinks evenly, 0.25 s on / 0.25 s off"
    assert text["ringing"] == "blinks twice every 1 s (0.1 s flash)"
    assert text["error"] == "blinks 3 times every 1.75 s (0.15 s flash)"
    assert text["in_call"] == "on (solid)"
    assert text["off"] == "off"
    link = {row["name"]: row["description"] for row in describe_patterns() if row["led"] == "link"}
    assert link["severe"] == "blinks evenly, 0.2 s on / 0.2 s off; RGB LED: orange"
    assert link["clear"] == "on (solid); RGB LED: green"
    mixed = Pattern("mixed", ((True, 0.1), (False, 0.2), (True, 0.3), (False, 0.4)))
    assert describe(mixed) == "sequence: on 0.1 s, off 0.2 s, on 0.3 s, off 0.4 s"
    md = patterns_markdown().splitlines()
    assert md[0] == "| LED | pattern | means | looks like |"
    assert len(md) == 2 + len(describe_patterns())
