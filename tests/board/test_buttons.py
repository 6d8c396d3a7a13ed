"""ButtonLogic: integrating debounce, long press, stuck button (pure, explicit time)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wzp.board.buttons import ButtonEvent, ButtonLogic


def kinds(events: list[ButtonEvent]) -> list[str]:
    return [e.kind for e in events]


def test_clean_press_reported_after_exactly_the_debounce_time() -> None:
    b = ButtonLogic("call", debounce_s=0.02)
    assert b.edge(True, 1.000) == []
    assert b.poll(1.010) == []
    assert b.poll(1.0199) == []
    assert b.poll(1.020) == [ButtonEvent("call", "press", 1.000)]
    assert b.pressed
    assert b.poll(1.5) == []
    assert b.edge(False, 1.600) == []
    assert b.poll(1.615) == []
    assert b.poll(1.620) == [ButtonEvent("call", "release", 1.600)]
    assert not b.pressed


def test_five_bouncing_edges_within_10ms_are_one_press() -> None:
    b = ButtonLogic("ptt", debounce_s=0.02)
    out: list[ButtonEvent] = []
    for i, level in enumerate([True, False, True, False, True]):
        out += b.edge(level, 2.0 + 0.002 * i)  # 0, 2, 4, 6, 8 ms
        out += b.poll(2.0 + 0.002 * i + 0.001)
    assert out == []
    # stable since the last edge at 8 ms: reported 20 ms later, stamped when it settled
    assert b.poll(2.027) == []
    assert b.poll(2.028) == [ButtonEvent("ptt", "press", 2.008)]
    # the release bounces too: still one release
    out = []
    for i, level in enumerate([False, True, False, True, False]):
        out += b.edge(level, 2.5 + 0.002 * i)
    out += b.poll(2.6)
    assert out == [ButtonEvent("ptt", "release", 2.508)]


def test_spike_shorter_than_debounce_is_no_press() -> None:
    b = ButtonLogic("call", debounce_s=0.02)
    b.edge(True, 1.0)
    b.edge(False, 1.005)
    assert b.poll(2.0) == []
    assert not b.pressed


def test_edge_settles_what_was_due_even_without_a_poll() -> None:
    b = ButtonLogic("call", debounce_s=0.02)
    b.edge(True, 1.0)
    # no poll in between: the next edge reports the press that was certain before it
    assert b.edge(False, 1.3) == [ButtonEvent("call", "press", 1.0)]
    assert b.poll(1.35) == [ButtonEvent("call", "release", 1.3)]


def test_long_press_once_per_hold() -> None:
    b = ButtonLogic("call", debounce_s=0.02, long_press_s=1.0)
    b.edge(True, 0.0)
    assert kinds(b.poll(0.02)) == ["press"]
    assert b.poll(0.99) == []
    assert b.poll(1.0) == [ButtonEvent("call", "long", 1.0)]
    assert b.poll(1.5) == []
    assert b.poll(5.0) == []
    b.edge(False, 6.0)
    assert kinds(b.poll(6.1)) == ["release"]
    # the next hold gets its own long press
    b.edge(True, 7.0)
    assert kinds(b.poll(8.5)) == ["press", "long"]


def test_release_before_long_threshold_is_not_long_even_if_polled_late() -> None:
    b = ButtonLogic("call", debounce_s=0.02, long_press_s=1.0)
    b.edge(True, 0.0)
    out = b.edge(False, 0.9)  # the hold ended at 0.9
    out += b.poll(3.0)
    assert kinds(out) == ["press", "release"]


def test_bouncing_release_does_not_stretch_a_hold_into_long() -> None:
    b = ButtonLogic("call", debounce_s=0.02, long_press_s=1.0)
    b.edge(True, 0.0)
    assert kinds(b.poll(0.5)) == ["press"]
    b.edge(False, 0.99)
    assert b.poll(1.005) == []  # release still settling: the hold ended at 0.99
    assert b.poll(1.01) == [ButtonEvent("call", "release", 0.99)]


def test_stuck_button_reports_once_and_is_ignored_until_release() -> None:
    b = ButtonLogic("ptt", debounce_s=0.02, long_press_s=1.0, stuck_s=30.0)
    b.edge(True, 0.0)
    out = b.poll(0.5)
    assert kinds(out) == ["press"]
    out = b.poll(29.9)
    assert kinds(out) == ["long"]
    out = b.poll(30.0)
    assert out == [ButtonEvent("ptt", "stuck", 30.0)]
    assert b.stuck
    # a long time held: nothing repeats, polling stays cheap and silent
    assert all(b.poll(30.0 + i) == [] for i in range(1, 200))
    # a glitch while stuck is still nothing
    b.edge(False, 300.0)
    b.edge(True, 300.001)
    assert b.poll(301.0) == []
    b.edge(False, 400.0)
    assert b.poll(400.03) == [ButtonEvent("ptt", "unstuck", 400.0)]
    assert not b.stuck and not b.pressed
    # usable again afterwards
    b.edge(True, 401.0)
    assert kinds(b.poll(401.05)) == ["press"]


def test_all_due_events_in_one_late_poll_are_in_order() -> None:
    b = ButtonLogic("call", debounce_s=0.02, long_press_s=1.0, stuck_s=30.0)
    b.edge(True, 10.0)
    out = b.poll(100.0)
    assert out == [
        ButtonEvent("call", "press", 10.0),
        ButtonEvent("call", "long", 11.0),
        ButtonEvent("call", "stuck", 40.0),
    ]


def test_pressed_at_start_is_stuck_until_released() -> None:
    b = ButtonLogic("call", pressed_at_start=True, t0=5.0)
    assert b.poll(5.0) == [ButtonEvent("call", "stuck", 5.0)]
    assert b.poll(100.0) == []
    b.edge(False, 101.0)
    assert kinds(b.poll(101.1)) == ["unstuck"]


def test_time_never_runs_backwards() -> None:
    b = ButtonLogic("call", debounce_s=0.02)
    b.edge(True, 10.0)
    # an out-of-order stamp is treated as "now"
    b.edge(False, 9.0)
    assert b.poll(10.1) == []
    assert not b.pressed


def test_duplicate_level_is_ignored() -> None:
    b = ButtonLogic("call", debounce_s=0.02)
    b.edge(True, 1.0)
    b.edge(True, 1.015)  # a repeated report must not restart the debounce timer
    assert kinds(b.poll(1.02)) == ["press"]


@pytest.mark.parametrize(
    ("debounce", "long", "stuck"),
    [(0.02, 0.01, 30.0), (0.02, 1.0, 0.5), (-0.01, 1.0, 30.0), (float("nan"), 1.0, 30.0)],
)
def test_bad_timings_refused(debounce: float, long: float, stuck: float) -> None:
    with pytest.raises(ValueError):
        ButtonLogic("call", debounce, long, stuck)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.floats(min_value=0.0, max_value=0.5)),
        min_size=0,
        max_size=60,
    )
)
def test_any_edge_stream_gives_well_formed_events(stream: list[tuple[bool, float]]) -> None:
    b = ButtonLogic("call", debounce_s=0.02, long_press_s=1.0, stuck_s=3.0)
    t = 0.0
    events: list[ButtonEvent] = []
    for level, gap in stream:
        t += gap
        events += b.edge(level, t)
        events += b.poll(t + gap / 2)
    events += b.poll(t + 10.0)
    # times never go backwards
    assert [e.at for e in events] == sorted(e.at for e in events)
    # press/release alternate; long and stuck only inside a press; stuck ends with unstuck
    down = stuck = long_seen = False
    for e in events:
        if e.kind == "press":
            assert not down
            down, long_seen = True, False
        elif e.kind == "long":
            assert down and not stuck and not long_seen
            long_seen = True
        elif e.kind == "stuck":
            assert down and not stuck
            stuck = True
        elif e.kind == "release":
            assert down and not stuck
            down = False
        elif e.kind == "unstuck":
            assert down and stuck
            down = stuck = False
    # after 10 quiet seconds the debounced level is the last raw level
    assert b.pressed == b.raw
