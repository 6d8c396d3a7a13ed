"""The handset daemon end to end: mock pins, fake sound cards, real QUIC on loopback.

Two :class:`Handset` instances (the code behind ``wzp run``) call each other. Buttons
are pressed by driving gpiozero mock pins as a finger would (with contact bounce);
LEDs are checked by the levels their pins went through; audio comes from a fake ALSA
card (``tests.audio.test_alsa.FakeCard``: unplug and replug on demand) or is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from tests.audio.test_alsa import FakeCard
from wzp.audio.alsa import AudioDevice
from wzp.board.board import Board
from wzp.board.leds import STATUS_PATTERNS
from wzp.board.profile import load_profile
from wzp.crypto.identity import Identity
from wzp.daemon.config import Config, Contact
from wzp.daemon.contacts import ContactStore
from wzp.daemon.control import ControlError, request
from wzp.daemon.demo import DemoAudio
from wzp.daemon.handset import Handset
from wzp.daemon.statusfmt import format_status

PROFILE = load_profile("breadboard")


class Box:
    """One handset under test, with its pins and what its LEDs did."""

    def __init__(self, name: str, handset: Handset, factory: MockFactory) -> None:
        self.name = name
        self.h = handset
        self.factory = factory
        self.leds: list[dict[str, Any]] = []

    def pin(self, role: str) -> Any:
        return self.factory.pin(PROFILE.buttons[role].pin)

    def led_pin(self, role: str) -> Any:
        return self.factory.pin(PROFILE.leds[role].pin)

    async def press(self, role: str, hold_s: float = 0.12, bounce: bool = True) -> None:
        pin = self.pin(role)
        if bounce:  # a real contact: 5 edges in 10 ms before it settles
            for level in (0, 1, 0, 1, 0):
                (pin.drive_low if level == 0 else pin.drive_high)()
                time.sleep(0.002)
        else:
            pin.drive_low()
        await asyncio.sleep(hold_s)
        pin.drive_high()

    def statuses(self) -> list[str]:
        out: list[str] = []
        for st in self.leds:
            if not out or out[-1] != st["status"]:
                out.append(st["status"])
        return out


def _config(
    tmp: Path, name: str, contacts: dict[str, Contact], default: str | None, **kw: Any
) -> Config:
    return dataclasses.replace(
        Config.default(),
        board_profile="breadboard",
        pin_factory="mock",
        listen_hosts=("127.0.0.1",),
        listen_port=0,
        contacts=contacts,
        default_contact=default,
        control_socket=tmp / f"{name}.sock",
        control_group=None,
        **kw,
    )


async def _box(
    tmp: Path,
    name: str,
    ident: Identity,
    audio: Any,
    contacts: dict[str, Contact],
    default: str | None = None,
    stuck_s: float = 30.0,
    **kw: Any,
) -> Box:
    factory = MockFactory(pin_class=MockPWMPin)
    board = Board(PROFILE, factory, stuck_s=stuck_s)
    cfg = _config(tmp, name, contacts, default, **kw)
    box: Box
    h = Handset(
        cfg,
        ident,
        board,
        audio,
        contacts=ContactStore(tmp / f"{name}-contacts.toml"),
        gpio_description="mock pins",
        alias=name,
        on_led_change=lambda _n, st: box.leds.append(st),
    )
    box = Box(name, h, factory)
    await h.start()
    return box


async def pair(
    tmp: Path,
    ids: dict[str, Identity],
    audio_a: Any,
    audio_b: Any,
    a_kw: dict[str, Any] | None = None,
    b_kw: dict[str, Any] | None = None,
) -> tuple[Box, Box]:
    """Handset B (knows A as "alice") listening, handset A (B is "bob", its default)."""
    b = await _box(
        tmp, "b", ids["B"], audio_b,
        {"alice": Contact("alice", ids["A"].fingerprint, "127.0.0.1", 9)}, **(b_kw or {}),
    )  # fmt: skip
    assert b.h.port
    a = await _box(
        tmp, "a", ids["A"], audio_a,
        {"bob": Contact("bob", ids["B"].fingerprint, "127.0.0.1", b.h.port)}, "bob",
        **(a_kw or {}),
    )  # fmt: skip
    return a, b


@contextlib.asynccontextmanager
async def _full_duplex_call(
    tmp: Path, ids: dict[str, Identity], audio_a: Any
) -> AsyncIterator[Box]:
    """A (full duplex, microphone ``audio_a``) in a call with B, who answers at once."""
    a, b = await pair(
        tmp, ids, audio_a, DemoAudio(np.zeros(0, np.int16)),
        a_kw={"mode": "full-duplex"}, b_kw={"auto_answer_s": 0.0},
    )  # fmt: skip
    try:
        a.h.place_call()
        await until(lambda: a.h.state_name() == "active", 15, "the call")
        yield a
    finally:
        await a.h.stop()
        await b.h.stop()


async def until(cond: Any, timeout: float = 15.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.02)


def _levels(box: Box, role: str, since: float) -> list[tuple[float, bool]]:
    """(time, level) changes of an LED after ``since`` (monotonic), as the board drove its
    pin; checked against the mock pin's own record of the levels it went through."""
    hist = [(t, bool(lv)) for t, lv in box.h.board.history[role]]
    pin_levels = [bool(st.state) for st in box.led_pin(role).states]
    merged = [lv for i, lv in enumerate(pin_levels) if i == 0 or pin_levels[i - 1] != lv]
    board_levels = [lv for i, (_, lv) in enumerate(hist) if i == 0 or hist[i - 1][1] != lv]
    assert merged[-len(board_levels) :] == board_levels[-len(merged) :]
    return [(t, lv) for t, lv in hist if t >= since]


@pytest.fixture
def ids() -> dict[str, Identity]:
    return {"A": Identity.generate(), "B": Identity.generate()}


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0


async def test_call_answer_ptt_hangup_with_leds(tmp_path: Path, ids: dict[str, Identity]) -> None:
    card = FakeCard()
    card.amplitude = 8000.0  # A's microphone hears a 1 kHz tone
    audio_a = AudioDevice(
        "plughw:CARD=Device,DEV=0", "plughw:CARD=Device,DEV=0", pcm_open=card.open
    )
    audio_b = DemoAudio(np.zeros(0, dtype=np.int16))
    a, b = await pair(tmp_path, ids, audio_a, audio_b)
    try:
        # boot: the idle heartbeat (0.1 s on every 2 s) on the status LED
        t_boot = time.monotonic()
        await until(lambda: a.h.audio.state == "ok", 5, "A's sound card")
        await asyncio.sleep(2.3)
        idle = _levels(a, "status", t_boot)
        ons = [t for t, lv in idle if lv]
        offs = [t for t, lv in idle if not lv]
        assert ons and offs, idle
        on_t = ons[0]
        off_t = min(t for t in offs if t > on_t)
        assert 0.07 <= off_t - on_t <= 0.16, idle  # a 0.1 s blink
        assert a.statuses()[0] == "idle" and b.statuses()[0] == "idle"

        # CALL on A, with contact bounce: exactly one call is placed
        await a.press("call")
        await until(lambda: b.h.state_name() == "ringing", 15, "B to ring")
        dials = [e for e in a.h.events if e["kind"] == "dial"]
        assert len(dials) == 1, a.h.events
        assert "connecting" in a.statuses()
        await until(lambda: "ringing" in a.statuses(), 5, "A to show the peer ringing")
        assert b.statuses()[-1] == "ringing"

        # the status LED's ringing pattern on B: two short blinks then a pause
        t_ring = time.monotonic()
        await asyncio.sleep(1.5)  # a whole 1 s cycle, whatever the phase
        ring = _levels(b, "status", t_ring)
        assert sum(1 for _, lv in ring if lv) >= 2, ring

        # B answers with its CALL button
        await b.press("call")
        await until(
            lambda: a.h.state_name() == "active" and b.h.state_name() == "active", 15, "the call"
        )
        await until(lambda: a.statuses()[-1] == "in_call" and b.statuses()[-1] == "in_call", 2)
        assert a.led_pin("status").state == 1  # in call: solid on
        await until(lambda: a.leds[-1]["link"] is not None, 3, "the link LED")

        # status over the control socket, during the call: every field, quickly
        t = time.monotonic()
        st = await asyncio.to_thread(request, a.h.config.control_socket, "status")
        assert time.monotonic() - t < 0.2
        call = st["call"]
        for key in (
            "peer", "tier", "loss_pct", "residual_loss_pct", "rtt_ms", "jitter_ms",
            "tx_kbps", "rx_kbps", "rekeys", "talking", "duration_s",
        ):  # fmt: skip
            assert key in call, key
        assert call["peer"] == "bob" and call["direction"] == "outgoing"
        for key in ("capture_dbfs", "playback_dbfs", "state"):
            assert key in st["audio"]
        assert st["gpio"]["factory"] == "mock pins"
        assert st["uptime_s"] > 0 and st["mode"] == "half-duplex"
        assert "seed" not in repr(st).lower()

        # half-duplex: nothing is sent until PTT is held; then B hears A's tone
        assert not a.h.status()["call"]["talking"]
        quiet_from = len(audio_b.heard)
        await asyncio.sleep(1.0)
        assert _rms(np.concatenate(audio_b.heard[quiet_from:])) < 50
        assert a.led_pin("tx").state == 0
        press = asyncio.ensure_future(a.press("ptt", hold_s=2.5))
        await until(lambda: a.h.status()["call"]["talking"], 2, "A to talk")
        await until(lambda: a.led_pin("tx").state == 1, 1, "the TX LED")
        heard_from = len(audio_b.heard)
        await press
        await asyncio.sleep(1.5)  # the end of the spurt crosses the link
        spurt = np.concatenate(audio_b.heard[heard_from:])
        assert _rms(spurt) > 1000, _rms(spurt)
        await until(lambda: not a.h.status()["call"]["talking"], 1, "A to stop talking")
        assert a.led_pin("tx").state == 0

        # A hangs up with a long press on CALL
        await a.press("call", hold_s=1.3)
        await until(lambda: a.h.call is None and b.h.call is None, 10, "both to hang up")
        assert a.h.last_call["ended"] == "Normal" and b.h.last_call["ended"] == "Normal"
        await until(lambda: a.statuses()[-1] == "idle" and b.statuses()[-1] == "idle", 2)
        assert a.led_pin("link").state == 0 and a.led_pin("tx").state == 0
    finally:
        await a.h.stop()
        await b.h.stop()
    # stopping turns every LED off
    for role in PROFILE.leds:
        assert a.led_pin(role).state == 0


async def test_sound_card_missing_at_start_and_mid_call(
    tmp_path: Path, ids: dict[str, Identity]
) -> None:
    card = FakeCard(present=False)
    audio_a = AudioDevice(
        "plughw:CARD=Device,DEV=0",
        "plughw:CARD=Device,DEV=0",
        pcm_open=card.open,
        reopen_interval_s=0.2,
    )
    a, b = await pair(
        tmp_path, ids, audio_a, DemoAudio(np.zeros(0, np.int16)), b_kw={"auto_answer_s": 0.0}
    )
    try:
        # no card at boot: the daemon runs, shows the error pattern and says why
        await until(lambda: a.h.audio.state == "missing", 3, "the missing card")
        await until(lambda: a.statuses() and a.statuses()[-1] == "error", 2)
        st = a.h.status()
        assert st["audio"]["state"] == "missing"
        assert "Device" in (st["audio"]["error"] or "")
        assert st["status_led"] == "error"
        # the card is plugged in: recovery by itself
        card.present = True
        await until(lambda: a.h.audio.state == "ok", 3, "recovery")
        await until(lambda: a.statuses()[-1] == "idle", 2)
        # a call (auto-answered by B), then the card vanishes mid-call
        a.h.place_call()
        await until(lambda: a.h.state_name() == "active", 15, "the call")
        card.present = False
        await until(lambda: a.h.audio.state == "missing", 3, "the card to vanish")
        await until(lambda: a.statuses()[-1] == "error", 2)
        assert a.h.state_name() == "active"  # the call goes on
        card.present = True
        await until(lambda: a.h.audio.state == "ok", 3, "recovery mid-call")
        await until(lambda: a.statuses()[-1] == "in_call", 2)
        assert a.h.audio.status_dict()["recoveries"] >= 2
        a.h.hangup()
        await until(lambda: a.h.call is None, 10)
    finally:
        await a.h.stop()
        await b.h.stop()


async def test_stuck_button_and_control_commands(tmp_path: Path, ids: dict[str, Identity]) -> None:
    a = await _box(
        tmp_path,
        "a",
        ids["A"],
        DemoAudio(np.zeros(0, np.int16)),
        {},
        None,
        stuck_s=1.5,
        mode="full-duplex",
    )
    try:
        # a PTT held down (a stuck key) is reported and then ignored; others still work
        a.pin("ptt").drive_low()
        await until(lambda: a.h.last_error is not None and "ptt" in a.h.last_error, 3, "stuck")
        assert a.h.status_led(a.h.now()) == "error"
        a.pin("volume_up").drive_low()
        await asyncio.sleep(0.1)
        a.pin("volume_up").drive_high()
        await until(lambda: a.h.volume_db == 3.0, 2, "volume up")
        a.pin("ptt").drive_high()
        # CALL with no default contact: a clear error, no crash
        await a.press("call")
        await until(lambda: "default contact" in (a.h.last_error or ""), 2)
        sock = a.h.config.control_socket
        with pytest.raises(ControlError, match="nothing is ringing"):
            await asyncio.to_thread(request, sock, "answer")
        with pytest.raises(ControlError, match="no contact named 'carol'"):
            await asyncio.to_thread(request, sock, "call", target="carol")
        with pytest.raises(ControlError, match='"down" or "up"'):
            await asyncio.to_thread(request, sock, "ptt", action="sideways")
        # contacts over the socket: added, listed, used for a call attempt, removed
        fp = Identity.generate().fingerprint_text
        added = await asyncio.to_thread(
            request, sock, "contacts_add", name="carol", fingerprint=fp, address="127.0.0.1:9"
        )
        assert added["address"] == "127.0.0.1:9"
        rows = await asyncio.to_thread(request, sock, "contacts_list")
        assert [r["name"] for r in rows] == ["carol"]
        with pytest.raises(ControlError):
            await asyncio.to_thread(
                request, sock, "contacts_add", name="bad name!", fingerprint=fp, address="x"
            )
        assert await asyncio.to_thread(request, sock, "contacts_remove", name="carol")
        assert await asyncio.to_thread(request, sock, "contacts_list") == []
        ident = await asyncio.to_thread(request, sock, "identity")
        assert ident == {"fingerprint": a.h.identity.fingerprint_text}
        # full-duplex: PTT toggles mute
        before = a.h.muted  # the stuck key's first press toggled it once
        await asyncio.to_thread(request, sock, "ptt", action="down")
        assert a.h.muted is not before and a.h.talk_now() is before
        await asyncio.to_thread(request, sock, "ptt", action="down")
        assert a.h.muted is before
        # the LED test cycles every LED
        res = await asyncio.to_thread(request, sock, "test_leds")
        assert set(res["leds"]) >= {"status", "link", "tx"}
        t0 = time.monotonic()
        await asyncio.sleep(res["seconds"] + 0.2)
        for role in ("status", "link", "tx"):
            assert any(lv for _, lv in _levels(a, role, t0)), role
        # button events streamed to `wzp test buttons`
        events: list[dict[str, Any]] = []
        watcher = asyncio.ensure_future(
            asyncio.to_thread(request, sock, "test_buttons", seconds=1.0, on_event=events.append)
        )
        await asyncio.sleep(0.2)
        await a.press("hangup")
        await watcher
        assert [(e["role"], e["kind"]) for e in events][:2] == [
            ("hangup", "press"),
            ("hangup", "release"),
        ]
    finally:
        await a.h.stop()


def test_led_patterns_documented() -> None:
    # the status patterns the daemon uses all exist
    for name in ("idle", "connecting", "ringing", "in_call", "rekeying", "error", "off"):
        assert name in STATUS_PATTERNS


async def test_long_press_while_ringing_declines_without_answering(
    tmp_path: Path, ids: dict[str, Identity]
) -> None:
    a, b = await pair(
        tmp_path, ids, DemoAudio(np.zeros(0, np.int16)), DemoAudio(np.zeros(0, np.int16))
    )
    try:
        await a.press("call")
        await until(lambda: b.h.state_name() == "ringing", 15, "B to ring")
        await b.press("call", hold_s=1.3)
        await until(lambda: a.h.call is None and b.h.call is None, 10, "the call to end")
        assert a.h.last_call["ended"] == "Declined"
        assert not any(e["detail"] == "answered" for e in b.h.events)
        assert "in_call" not in b.statuses()
    finally:
        await a.h.stop()
        await b.h.stop()


async def test_a_microphone_that_captures_nothing_is_reported(
    tmp_path: Path, ids: dict[str, Identity], caplog: pytest.LogCaptureFixture
) -> None:
    card = FakeCard()
    card.amplitude = 0.0  # a dead microphone: digital silence
    audio_a = AudioDevice("hw:CARD=Device", "hw:CARD=Device", pcm_open=card.open)
    async with _full_duplex_call(tmp_path, ids, audio_a) as a:
        await until(lambda: "microphone captures nothing" in (a.h.last_error or ""), 9, "report")
        assert a.h.status_led(a.h.now()) == "error"
        # at warning priority, where `journalctl -p warning` finds it
        assert any(
            r.levelno == logging.WARNING and "microphone captures nothing" in r.getMessage()
            for r in caplog.records
        )
        # while it lasts, status's audio line says so (not a ✓ on a silent capture)
        st = a.h.status()
        assert st["audio"]["state"] == "ok" and st["audio"]["capture_silent"] is True
        line = next(ln for ln in format_status(st).splitlines() if "audio" in ln)
        assert line.startswith(" ✗ audio") and "captures nothing" in line, line
        card.amplitude = 8000.0  # the microphone comes back: so does the ✓
        await until(lambda: not a.h.status()["audio"]["capture_silent"], 4, "the capture")
        assert a.h.state_name() == "active"  # reported, the call goes on


async def test_a_file_backed_microphone_that_speaks_is_not_reported_silent(
    tmp_path: Path, ids: dict[str, Identity]
) -> None:
    """The demo's and file-backed ports measure what passes through them, as the sound
    card does: speech for longer than the silent-microphone limit raises nothing (they
    used to report -96 dBFS always, so every demo call ended on the error LED)."""
    from wzp.daemon.handset import MIC_SILENT_S

    t = np.arange(48_000 * 12) / 48_000
    tone = (6000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    mic = DemoAudio(tone)
    async with _full_duplex_call(tmp_path, ids, mic) as a:
        mic.speak()
        await asyncio.sleep(MIC_SILENT_S + 1.5)
        assert -30 < mic.levels()["capture_dbfs"] < -10  # the tone, about -14.7 dBFS
        assert "microphone" not in (a.h.last_error or "")
        assert a.h.status_led(a.h.now()) != "error"


async def test_a_hot_overloaded_pi_caps_the_call(tmp_path: Path, ids: dict[str, Identity]) -> None:
    """Injected readings (SoC at 82 °C, firmware throttling) cap the live call: lower
    Opus complexity on its encoder, the costliest tiers forbidden, and status says why."""
    from wzp.daemon.resources import Limits, ResourceMonitor

    async with _full_duplex_call(tmp_path, ids, DemoAudio(np.zeros(0, np.int16))) as a:
        assert a.h.call is not None and a.h.call.complexity == 8
        a.h.monitor = ResourceMonitor(
            70.0,
            75.0,
            cpu_times=time.process_time,
            temperature=lambda: 82.0,
            throttled=lambda: 0x4,  # "throttled now"
            limits=Limits(tighten_after_s=1.0),
        )
        await until(lambda: a.h.call is not None and a.h.call.complexity == 2, 8, "the caps")
        info = a.h.call
        assert info.forbidden and "extreme" not in info.forbidden
        media = info.runner.engine.media
        assert media is not None and media.tier.name not in info.forbidden
        assert all(c.switcher.encoder.complexity == 2 for c in info.codecs)
        res = a.h.status()["resources"]
        assert res["level"] == 2 and res["complexity"] == 2
        assert any("82.0" in r for r in res["reasons"])
        assert any(e["kind"] == "resources" for e in a.h.events)


async def test_call_right_after_hangup_is_not_refused_as_busy(
    tmp_path: Path, ids: dict[str, Identity]
) -> None:
    """`wzp hangup` answers before the ended call's connection is gone (its Hangup waits
    for an acknowledgement): a `wzp call` at once waited for nothing and was refused
    "already in a call". An unknown name is said as such even during a call."""
    a, b = await pair(
        tmp_path, ids, DemoAudio(np.zeros(0, np.int16)), DemoAudio(np.zeros(0, np.int16)),
        b_kw={"auto_answer_s": 0.0},
    )  # fmt: skip
    sock = a.h.config.control_socket
    try:
        for _ in range(2):
            await asyncio.to_thread(request, sock, "call")
            await until(lambda: a.h.state_name() == "active", 15, "the call")
            with pytest.raises(ControlError, match="no contact named 'nobody'"):
                await asyncio.to_thread(request, sock, "call", target="nobody")
            assert (await asyncio.to_thread(request, sock, "hangup"))["done"] == "hung up"
        # both calls were placed: the second one right after the first one's hang-up
        await until(lambda: a.h.call is None and b.h.call is None, 10, "the end")
        assert a.h.calls_total == 2
    finally:
        await a.h.stop()
        await b.h.stop()


async def test_calling_a_handset_that_is_not_running_fails_at_once(
    tmp_path: Path, ids: dict[str, Identity]
) -> None:
    """Bob's Pi is up but its daemon is not: his host answers "port unreachable". The
    caller is told so at once (status and the error pattern), not after the 15 s dial
    timeout, and can call again straight away."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
        gone.bind(("127.0.0.1", 0))
        port = gone.getsockname()[1]
    a = await _box(
        tmp_path, "a", ids["A"], DemoAudio(np.zeros(0, np.int16)),
        {"bob": Contact("bob", ids["B"].fingerprint, "127.0.0.1", port)}, "bob",
    )  # fmt: skip
    sock = a.h.config.control_socket
    try:
        for _ in range(2):
            start = time.monotonic()
            await asyncio.to_thread(request, sock, "call")
            await until(lambda: a.h.dialing is None and a.h.last_error, 10, "the failure")
            assert time.monotonic() - start < 10  # the dial timeout is 15 s
            assert a.h.last_error is not None
            assert "cannot reach bob" in a.h.last_error
            assert "nothing listens" in a.h.last_error
            assert a.h.state_name() != "active"
            status = await asyncio.to_thread(request, sock, "status")
            assert "nothing listens" in format_status(status)
            a.h.last_error = None
    finally:
        await a.h.stop()


@pytest.mark.parametrize("how", ["button", "control"])
async def test_a_call_whose_hangup_cannot_get_through_does_not_hold_the_handset(
    tmp_path: Path, ids: dict[str, Identity], how: str
) -> None:
    """The link dies, the user hangs up: the Hangup can never be acknowledged, and the ended
    call used to keep the handset for up to 5 s more (plus QUIC's closing period), the
    call button doing nothing and `wzp call` refused "still ending". A press of the call
    button, or `wzp call`, right after the hang-up now dials."""
    from wzp.net.udpproxy import UdpLossyProxy
    from wzp.sim.link import LinkConfig

    b = await _box(
        tmp_path, "b", ids["B"], DemoAudio(np.zeros(0, np.int16)),
        {"alice": Contact("alice", ids["A"].fingerprint, "127.0.0.1", 9)},
        auto_answer_s=0.0,
    )  # fmt: skip
    assert b.h.port
    dies_at = 2.5
    dark = LinkConfig(blackouts=((dies_at, 600.0),))
    async with UdpLossyProxy(("127.0.0.1", b.h.port), dark) as proxy:
        started = time.monotonic()
        a = await _box(
            tmp_path, "a", ids["A"], DemoAudio(np.zeros(0, np.int16)),
            {"bob": Contact("bob", ids["B"].fingerprint, "127.0.0.1", proxy.port)}, "bob",
        )  # fmt: skip
        sock = a.h.config.control_socket
        try:
            a.h.place_call()
            await until(lambda: a.h.state_name() == "active", 10, "the call")
            await asyncio.sleep(max(0.0, dies_at + 0.3 - (time.monotonic() - started)))
            assert (await asyncio.to_thread(request, sock, "hangup"))["done"] == "hung up"
            assert a.h.call is not None  # the Hangup waits for an acknowledgement
            if how == "button":
                await a.press("call")  # short press: acts when released
            else:
                assert (await asyncio.to_thread(request, sock, "call"))["calling"] == "bob"
            await until(lambda: a.h.dialing == "bob", 2, "a new dial")
            assert a.h.last_call is not None and a.h.last_call["ended"] == "Normal"
            assert a.h.calls_total == 1
            assert (await asyncio.to_thread(request, sock, "hangup"))["done"] == "dial cancelled"
            await until(lambda: a.h.dialing is None, 5, "the dial to stop")
        finally:
            await a.h.stop()
            await b.h.stop()
