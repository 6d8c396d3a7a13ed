"""Board on gpiozero's mock pins with a fake clock: buttons, LED patterns, close()."""

from __future__ import annotations

import threading

import pytest
from gpiozero import LED
from gpiozero.pins.mock import MockFactory, MockPWMPin

from wzp.board import board as board_mod
from wzp.board.board import LED_TEST_STEP_S, Board
from wzp.board.buttons import ButtonEvent
from wzp.board.chip import GpioError
from wzp.board.leds import LINK_COLOURS, STATUS_PATTERNS, level_at
from wzp.board.profile import BoardProfile, load_profile, loads_profile


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> float:
        self.t = round(self.t + dt, 9)
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def factory() -> MockFactory:
    f = MockFactory(pin_class=MockPWMPin)
    yield f
    f.reset()


def make_board(profile: BoardProfile | str, factory: MockFactory, clock: FakeClock, **kw) -> Board:
    if isinstance(profile, str):
        profile = load_profile(profile)
    return Board(profile, factory, clock=clock, **kw)


def states(factory: MockFactory, pin: int) -> list[float]:
    return [s.state for s in factory.pin(pin).states]


def kinds(events: list[ButtonEvent]) -> list[tuple[str, str]]:
    return [(e.role, e.kind) for e in events]


# -- buttons ----------------------------------------------------------------------------


def test_press_and_release_through_the_pin(factory: MockFactory, clock: FakeClock) -> None:
    board = make_board("breadboard", factory, clock)
    assert board.buttons == ("call", "ptt", "hangup", "volume_up", "volume_down")
    call = factory.pin(17)
    assert call.pull == "up" and call.state is True  # internal pull-up, not pressed
    assert board.poll(clock()) == []
    call.drive_low()  # active low: pressed
    t_press = clock()
    assert board.poll(clock.advance(0.010)) == []
    assert board.poll(clock.advance(0.010)) == [ButtonEvent("call", "press", t_press)]
    assert board.snapshot()["buttons"]["call"]["pressed"] is True
    clock.advance(0.3)
    call.drive_high()
    t_release = clock()
    assert board.poll(clock.advance(0.02)) == [ButtonEvent("call", "release", t_release)]
    board.close()


def test_five_edges_in_10ms_are_one_press(factory: MockFactory, clock: FakeClock) -> None:
    board = make_board("breadboard", factory, clock)
    ptt = factory.pin(27)
    events = []
    for i in range(5):  # low, high, low, high, low: 5 edges 2.5 ms apart
        ptt.drive_low() if i % 2 == 0 else ptt.drive_high()
        clock.advance(0.0025)
        events += board.poll(clock())
    events += board.poll(clock.advance(0.05))
    assert kinds(events) == [("ptt", "press")]
    board.close()


def test_long_press_and_stuck_button_do_not_block_the_others(
    factory: MockFactory, clock: FakeClock
) -> None:
    board = make_board("breadboard", factory, clock, long_press_s=1.0, stuck_s=30.0)
    factory.pin(27).drive_low()
    events = []
    for _ in range(int(31 / 0.02)):  # 31 s of 50 Hz polling
        events += board.poll(clock.advance(0.02))
    assert kinds(events) == [("ptt", "press"), ("ptt", "long"), ("ptt", "stuck")]
    assert board.snapshot()["buttons"]["ptt"]["stuck"] is True
    # another button still works while PTT is stuck
    factory.pin(17).drive_low()
    assert kinds(board.poll(clock.advance(0.05))) == [("call", "press")]
    factory.pin(27).drive_high()
    assert kinds(board.poll(clock.advance(0.05))) == [("ptt", "unstuck")]
    board.close()


def test_button_held_at_start_is_reported_stuck(factory: MockFactory, clock: FakeClock) -> None:
    # floating input (external pull-up in the profile): the mock pin starts low = pressed
    profile = loads_profile(
        "[buttons.call]\npin = 17\npull_up = false\n[leds.status]\npin = 23\n", default_name="x"
    )
    board = make_board(profile, factory, clock)
    assert factory.pin(17).pull == "floating"
    assert board.poll(clock()) == [ButtonEvent("call", "stuck", clock())]
    factory.pin(17).drive_high()
    assert kinds(board.poll(clock.advance(0.05))) == [("call", "unstuck")]
    board.close()


def test_active_high_button_with_pull_down(factory: MockFactory, clock: FakeClock) -> None:
    profile = loads_profile(
        "[buttons.call]\npin = 17\nactive_low = false\npull_up = false\n[leds.status]\npin = 23\n"
    )
    board = make_board(profile, factory, clock)
    assert factory.pin(17).pull == "down"
    factory.pin(17).drive_high()
    assert kinds(board.poll(clock.advance(0.05))) == [("call", "press")]
    board.close()


def test_edges_from_another_thread_are_queued(factory: MockFactory, clock: FakeClock) -> None:
    board = make_board("breadboard", factory, clock)
    worker = threading.Thread(target=factory.pin(22).drive_low)
    worker.start()
    worker.join()
    assert kinds(board.poll(clock.advance(0.05))) == [("hangup", "press")]
    board.close()


def test_edge_flood_is_dropped_counted_and_resynced(
    factory: MockFactory, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(board_mod, "EDGE_QUEUE_LIMIT", 4)
    board = make_board("breadboard", factory, clock)
    pin = factory.pin(5)
    for _ in range(10):
        pin.drive_low()
        pin.drive_high()
    pin.drive_low()  # ends pressed
    assert board.edge_drops > 0
    events = board.poll(clock.advance(0.05))
    events += board.poll(clock.advance(0.05))
    assert kinds(events)[-1] == ("volume_up", "press")
    assert board.snapshot()["buttons"]["volume_up"]["pressed"] is True
    assert board.snapshot()["edge_drops"] == board.edge_drops
    board.close()


# -- LEDs -------------------------------------------------------------------------------


def run(board: Board, clock: FakeClock, seconds: float, step: float = 0.01) -> None:
    for _ in range(round(seconds / step)):
        board.tick(clock.advance(step))


@pytest.mark.parametrize("name", list(STATUS_PATTERNS))
def test_status_pattern_on_the_pin(name: str, factory: MockFactory, clock: FakeClock) -> None:
    board = make_board("breadboard", factory, clock)
    start = clock()
    board.set_status(name)
    run(board, clock, 4.0)
    pattern = STATUS_PATTERNS[name]
    # expected transitions at 10 ms tick resolution
    expected = [(start, False)]  # off since the board was made
    level = False
    for i in range(401):
        t = round(start + i * 0.01, 9)
        lit = level_at(pattern, t - start)
        if lit != level:
            expected.append((t, lit))
            level = lit
    history = list(board.history["status"])
    assert [(round(t, 6), lv) for t, lv in history] == [(round(t, 6), lv) for t, lv in expected]
    # the mock pin saw exactly those levels: written only on change
    assert states(factory, 23) == [False] + [lv for _, lv in expected[1:]]
    board.close()


def test_solid_pattern_writes_the_pin_once(factory: MockFactory, clock: FakeClock) -> None:
    board = make_board("breadboard", factory, clock)
    board.set_status("in_call")
    run(board, clock, 2.0)
    assert states(factory, 23) == [False, True]
    # setting the same pattern again does not restart it or rewrite the pin
    board.set_status("in_call")
    run(board, clock, 1.0)
    assert states(factory, 23) == [False, True]
    board.close()


def test_link_led_follows_the_tier_and_tx(factory: MockFactory, clock: FakeClock) -> None:
    board = make_board("breadboard", factory, clock)
    board.set_link("clear")
    run(board, clock, 1.0)
    assert states(factory, 24) == [False, True]
    t_heavy = board.set_link("heavy") or clock()
    run(board, clock, 4.0)
    heavy = [(round(t - t_heavy, 3), lv) for t, lv in board.history["link"] if t >= t_heavy]
    assert heavy == [(1.0, False), (2.0, True), (3.0, False), (4.0, True)]
    board.set_link(None)
    assert not factory.pin(24).state
    board.set_tx(True)
    assert factory.pin(25).state
    board.set_tx(False)
    assert not factory.pin(25).state
    with pytest.raises(ValueError, match="unknown link tier"):
        board.set_link("awful")
    with pytest.raises(ValueError, match="unknown status pattern"):
        board.set_status("dancing")
    board.close()


RGB = (
    "[buttons.call]\npin = 17\n[leds.status]\npin = 23\n"
    "[leds.link_rgb]\nred = 5\ngreen = 6\nblue = 13\n"
)


@pytest.mark.parametrize("tier", list(LINK_COLOURS))
def test_rgb_link_colours(tier: str, factory: MockFactory, clock: FakeClock) -> None:
    board = make_board(loads_profile(RGB), factory, clock)
    board.set_link(tier)
    colour = tuple(factory.pin(p).state for p in (5, 6, 13))
    assert colour == pytest.approx(LINK_COLOURS[tier])
    assert board.snapshot()["leds"]["link"]["level"] == list(LINK_COLOURS[tier])
    board.set_link(None)
    assert tuple(factory.pin(p).state for p in (5, 6, 13)) == (0, 0, 0)
    board.close()


def test_rgb_blinks_in_the_tier_pattern(factory: MockFactory, clock: FakeClock) -> None:
    board = make_board(loads_profile(RGB), factory, clock)
    t0 = clock.advance(1.0)
    board.set_link("severe")
    run(board, clock, 0.8)
    seen = [(round(t - t0, 3), lv) for t, lv in board.history["link"] if t >= t0]
    orange = LINK_COLOURS["severe"]
    black = (0.0, 0.0, 0.0)
    assert seen == [(0.0, orange), (0.2, black), (0.4, orange), (0.6, black), (0.8, orange)]
    board.close()


def test_rgb_without_pwm_falls_back_to_on_off(clock: FakeClock) -> None:
    factory = MockFactory()  # plain MockPin: no PWM
    try:
        board = make_board(loads_profile(RGB), factory, clock)
        board.set_link("heavy")  # yellow
        assert (factory.pin(5).state, factory.pin(6).state, factory.pin(13).state) == (
            True,
            True,
            False,
        )
        board.set_link("extreme")
        assert (factory.pin(5).state, factory.pin(6).state) == (True, False)
        board.close()
    finally:
        factory.reset()


def test_active_low_led_drives_the_pin_low(factory: MockFactory, clock: FakeClock) -> None:
    profile = loads_profile(
        "[buttons.call]\npin = 17\n[leds.status]\npin = 23\nactive_high = false\n"
    )
    board = make_board(profile, factory, clock)
    assert factory.pin(23).state == 1  # off = high
    board.set_status("in_call")
    assert factory.pin(23).state == 0
    board.close()
    pin = factory.pin(23)
    # driven off (high) before release; then an input, which leaves the LED dark. (The
    # mock PWM pin logs a 0 when released; real pins just stop driving.)
    assert pin.states[-2].state == 1
    assert pin.function == "input"


def test_led_test_cycles_every_led_then_resumes(factory: MockFactory, clock: FakeClock) -> None:
    board = make_board("breadboard", factory, clock)
    board.set_status("in_call")
    duration = board.test_leds()
    assert duration == pytest.approx(5 * LED_TEST_STEP_S)  # status, link, tx, all on, all off
    seen = []
    for _ in range(round(duration / 0.01)):
        seen.append(tuple(factory.pin(p).state for p in (23, 24, 25)))
        board.tick(clock.advance(0.01))
    order = [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]]
    assert order == [
        (True, False, False),
        (False, True, False),
        (False, False, True),
        (True, True, True),
        (False, False, False),
    ]
    assert board.snapshot()["led_test"] is False
    assert factory.pin(23).state == 1  # back to in_call
    board.close()


def test_led_test_with_rgb_shows_each_colour(factory: MockFactory, clock: FakeClock) -> None:
    board = make_board(loads_profile(RGB), factory, clock)
    duration = board.test_leds()
    assert duration == pytest.approx(6 * LED_TEST_STEP_S)  # status, red, green, blue, all, off
    colours = []
    for _ in range(round(duration / 0.01)):
        c = tuple(factory.pin(p).state for p in (5, 6, 13))
        if not colours or colours[-1] != c:
            colours.append(c)
        board.tick(clock.advance(0.01))
    assert colours == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1), (0, 0, 0)]
    board.close()


# -- status, teardown, errors -----------------------------------------------------------


def test_snapshot(factory: MockFactory, clock: FakeClock) -> None:
    board = make_board("breadboard", factory, clock, factory_description="mock pins")
    board.set_status("idle")
    board.set_link("dense")
    board.set_tx(True)
    snap = board.snapshot()
    assert snap["profile"] == "breadboard"
    assert snap["factory"] == "mock pins"
    assert snap["leds"]["status"] == {"pin": "GPIO23 (pin 16)", "pattern": "idle", "level": True}
    assert snap["leds"]["link"]["pattern"] == "dense"
    assert snap["leds"]["tx"] == {"pin": "GPIO25 (pin 22)", "pattern": "on", "level": True}
    assert snap["buttons"]["call"] == {
        "pin": "GPIO17 (pin 11)",
        "pressed": False,
        "raw": False,
        "stuck": False,
    }
    board.close()
    assert board.snapshot()["closed"] is True


def test_close_turns_everything_off_releases_pins_and_is_idempotent(
    factory: MockFactory, clock: FakeClock
) -> None:
    board = make_board("breadboard", factory, clock)
    board.set_status("in_call")
    board.set_link("clear")
    board.set_tx(True)
    assert [factory.pin(p).state for p in (23, 24, 25)] == [True, True, True]
    clock.advance(1.0)
    board.close()
    assert [factory.pin(p).state for p in (23, 24, 25)] == [False, False, False]
    assert [factory.pin(p).function for p in (17, 23, 24, 25)] == ["input"] * 4
    for role in ("status", "link", "tx"):
        assert board.history[role][-1] == (clock(), False)
    board.close()  # twice: fine
    assert board.closed
    # after close: no events, no writes, no crash
    factory.pin(17).drive_low()
    assert board.poll(clock.advance(1.0)) == []
    board.tick(clock())
    board.set_status("error")
    assert factory.pin(23).state == 0
    # the pins are free again
    led = LED(23, pin_factory=factory)
    led.close()


def test_close_with_rgb(factory: MockFactory, clock: FakeClock) -> None:
    board = make_board(loads_profile(RGB), factory, clock)
    board.set_link("extreme")
    board.close()
    assert [factory.pin(p).state for p in (5, 6, 13)] == [0, 0, 0]
    assert board.history["link"][-1][1] == (0.0, 0.0, 0.0)


def test_debounce_comes_from_the_profile(factory: MockFactory, clock: FakeClock) -> None:
    board = make_board("aiy-voicehat", factory, clock)
    factory.pin(23).drive_low()
    assert board.poll(clock.advance(0.04)) == []
    assert kinds(board.poll(clock.advance(0.01))) == [("call", "press")]
    board.close()


def test_busy_pin_is_a_gpio_error_and_nothing_stays_claimed(
    factory: MockFactory, clock: FakeClock
) -> None:
    squatter = LED(27, pin_factory=factory)  # PTT's pin taken by someone else
    with pytest.raises(GpioError, match=r"ptt button on GPIO27 \(pin 13\)"):
        make_board("breadboard", factory, clock)
    squatter.close()
    # the LEDs and buttons made before the failure were released: a new board works
    board = make_board("breadboard", factory, clock)
    board.close()


def test_bad_timings_claim_no_pin(factory: MockFactory, clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="debounce_s < long_press_s < stuck_s"):
        make_board("breadboard", factory, clock, long_press_s=60.0)
    assert factory.pins == {}
