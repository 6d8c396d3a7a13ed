"""AudioDevice against the real ``null`` device and against a card that can be unplugged.

The threads are real; FakeCard stands in for ALSA and raises exactly what pyalsaaudio
raises (``ALSAAudioError("No such device [hw:CARD=Device]")``, no errno attribute).
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import alsaaudio
import numpy as np
import pytest

from wzp.audio.alsa import (
    PERIOD,
    AudioDevice,
    AudioFormatError,
    alsa_errno,
    open_pcm,
    quiet_alsa_lib,
)

DEV = "plughw:CARD=Device,DEV=0"
EPIPE = -errno.EPIPE


def wait_for(cond: Callable[[], bool], timeout: float = 1.5) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


def audio_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("wzp-audio-")]


class FakeCard:
    """A USB card: unplug()/replug(), busy, xruns and stalls on demand."""

    def __init__(self, present: bool = True, errno_attr: bool = False) -> None:
        self.present = present
        self.busy = False
        self.stalled = False
        self.errno_attr = errno_attr  # raise with an .errno attribute instead of text only
        self.capture_xruns = 0
        self.playback_xruns = 0
        self.opens: list[tuple[str, str]] = []
        self.played: list[np.ndarray] = []
        self.events: list[tuple[str, int]] = []  # ("write", frames) / ("xrun", 0)
        self.raise_once: int | None = None  # errno for the next stream call to raise
        self.next_sample = 0
        self.amplitude: float | None = None  # a sine instead of a counter
        self.lock = threading.Lock()

    def error(self, code: int, device: str) -> alsaaudio.ALSAAudioError:
        exc = alsaaudio.ALSAAudioError(f"{os.strerror(code)} [{device}]")
        if self.errno_attr:
            exc.errno = code  # type: ignore[attr-defined]
        return exc

    def open(self, device: str, kind: str) -> FakePcm:
        with self.lock:
            self.opens.append((device, kind))
        if not self.present:
            raise self.error(errno.ENODEV, device)
        if self.busy:
            raise self.error(errno.EBUSY, device)
        return FakePcm(self, device, kind)

    def opens_of(self, kind: str) -> int:
        return sum(1 for _, k in self.opens if k == kind)

    def played_samples(self) -> np.ndarray:
        with self.lock:
            return np.concatenate(self.played) if self.played else np.zeros(0, np.int16)


class FakePcm:
    def __init__(self, card: FakeCard, device: str, kind: str) -> None:
        self.card, self.device, self.kind = card, device, kind
        self.closed = False

    def _check(self) -> None:
        if self.closed:
            raise alsaaudio.ALSAAudioError("PCM device is closed")
        if not self.card.present:
            raise self.card.error(errno.ENODEV, self.device)
        code, self.card.raise_once = self.card.raise_once, None
        if code is not None:
            raise self.card.error(code, self.device)

    def read(self) -> tuple[int, bytes]:
        self._check()
        card = self.card
        if card.capture_xruns > 0:
            card.capture_xruns -= 1
            return EPIPE, b""
        if card.stalled:
            return 0, b""
        n = np.arange(card.next_sample, card.next_sample + PERIOD)
        card.next_sample += PERIOD
        if card.amplitude is None:
            data = (n % 30000).astype("<i2")
        else:
            data = (card.amplitude * np.sin(2 * np.pi * 1000 * n / 48000)).astype("<i2")
        return PERIOD, data.tobytes()

    def write(self, data: bytes) -> int:
        self._check()
        card = self.card
        if card.playback_xruns > 0:
            card.playback_xruns -= 1
            with card.lock:
                card.events.append(("xrun", 0))
            return EPIPE
        if card.stalled:
            return 0
        samples = np.frombuffer(bytes(data), dtype="<i2")
        with card.lock:
            card.played.append(samples.copy())
            card.events.append(("write", len(samples)))
        return len(samples)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def devices() -> list[AudioDevice]:
    made: list[AudioDevice] = []
    yield made
    for device in made:
        device.stop()
    assert audio_threads() == []


def make(devices: list[AudioDevice], card: FakeCard | None = None, **kw) -> AudioDevice:
    if card is not None:
        kw.setdefault("pcm_open", card.open)
    kw.setdefault("reopen_interval_s", 0.05)
    device = AudioDevice(kw.pop("capture", DEV), kw.pop("playback", DEV), **kw)
    devices.append(device)
    return device


# -- the real null device ------------------------------------------------------------------


def test_null_device_streams_paced_and_stop_joins(devices: list[AudioDevice]) -> None:
    device = make(devices, capture="null", playback="null")
    device.start()
    assert sorted(audio_threads()) == ["wzp-audio-capture", "wzp-audio-playback"]
    assert wait_for(lambda: device.state == "ok")
    t0 = time.monotonic()
    reads = 0
    tone = (3000 * np.sin(np.arange(PERIOD) * 0.1)).astype(np.int16)
    while time.monotonic() - t0 < 0.3:
        out = device.read()
        assert out.dtype == np.int16 and out.shape == (PERIOD,)
        device.write(tone)
        reads += 1
        time.sleep(0.02)
    elapsed = time.monotonic() - t0
    stats = device.stats
    # null never blocks: the threads pace themselves at real time, a few periods ahead
    assert 0.5 * elapsed / 0.02 <= stats.periods_in <= elapsed / 0.02 + 6
    assert 0.5 * elapsed / 0.02 <= stats.periods_out <= elapsed / 0.02 + 10
    assert stats.xruns == stats.reopens == stats.card_gone == stats.recoveries == 0
    assert device.error is None
    assert device.levels()["playback_dbfs"] > -40  # the tone went out
    device.stop()
    assert audio_threads() == []
    assert device.state == "stopped"
    device.stop()  # idempotent
    assert device.state == "stopped"


def test_real_missing_card_is_missing_and_stop_is_prompt(devices: list[AudioDevice]) -> None:
    device = make(devices, capture="plughw:CARD=NoSuchCard,DEV=0", playback="null")
    device.start()
    assert wait_for(lambda: device.state == "missing")
    assert "capture device plughw:CARD=NoSuchCard,DEV=0 is missing" in (device.error or "")
    assert device.streams["playback"] == ("ok", None)
    assert not device.read().any()  # zeros while missing
    t0 = time.monotonic()
    device.stop()
    assert time.monotonic() - t0 < 0.3
    assert audio_threads() == []


def test_alsa_lib_stderr_is_quiet(capfd: pytest.CaptureFixture[str]) -> None:
    assert quiet_alsa_lib()
    with pytest.raises(alsaaudio.ALSAAudioError) as info:
        open_pcm("hw:CARD=NoSuchCard,DEV=0", "capture")
    assert alsa_errno(info.value) == errno.ENODEV
    assert "ALSA lib" not in capfd.readouterr().err


# -- errors as pyalsaaudio words them ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("No such device [hw:CARD=Device]", errno.ENODEV),
        ("No such file or directory [default]", errno.ENOENT),
        ("Broken pipe [plughw:CARD=Device,DEV=0]", errno.EPIPE),
        ("Input/output error [hw:CARD=Device]", errno.EIO),
        ("Device or resource busy [hw:CARD=Device,DEV=0]", errno.EBUSY),
        ("Permission denied [hw:0]", errno.EACCES),
        ("cannot find card 'Device'", errno.ENODEV),
        ("Something else entirely", None),
    ],
)
def test_alsa_errno_from_text(text: str, code: int | None) -> None:
    assert alsa_errno(alsaaudio.ALSAAudioError(text)) == code


def test_alsa_errno_prefers_an_attribute() -> None:
    exc = alsaaudio.ALSAAudioError("whatever")
    exc.errno = errno.ENODEV  # type: ignore[attr-defined]
    assert alsa_errno(exc) == errno.ENODEV
    assert alsa_errno(OSError(errno.EIO, "x")) == errno.EIO


# -- the card comes and goes ---------------------------------------------------------------


def test_card_missing_at_start_then_plugged_in(devices: list[AudioDevice]) -> None:
    card = FakeCard(present=False)
    seen: list[tuple[str, str | None, str]] = []
    device = make(
        devices,
        card,
        on_state_change=lambda s, e: seen.append((s, e, threading.current_thread().name)),
    )
    device.start()
    assert wait_for(lambda: device.state == "missing")
    assert device.error is not None
    assert f"capture device {DEV} is missing" in device.error
    assert f"playback device {DEV} is missing" in device.error
    assert not device.read().any()
    assert device.stats.capture_underruns >= 1
    card.present = True
    assert wait_for(lambda: device.state == "ok")
    assert wait_for(lambda: device.stats.periods_in >= 4)
    got = device.read()
    assert np.array_equal(np.diff(got.astype(np.int32)) % 30000, np.ones(PERIOD - 1))
    stats = device.stats
    assert stats.recoveries == 2  # both streams
    assert stats.card_gone == 0  # never had it
    states = [s for s, _, _ in seen]
    assert states[0] == "starting" and "missing" in states and states[-1] == "ok"
    # reported from the audio threads (the daemon hops to the loop itself)
    assert {name for s, _, name in seen if s != "starting"} <= {
        "wzp-audio-capture",
        "wzp-audio-playback",
    }


@pytest.mark.parametrize("errno_attr", [False, True])
def test_card_vanishes_mid_stream_and_comes_back(
    devices: list[AudioDevice], errno_attr: bool
) -> None:
    card = FakeCard(errno_attr=errno_attr)
    device = make(devices, card)
    device.start()
    assert wait_for(lambda: device.stats.periods_in >= 3 and device.stats.periods_out >= 3)
    card.present = False
    assert wait_for(lambda: device.state == "missing")
    assert "went away" in (device.error or "") or "is missing" in (device.error or "")
    assert DEV in (device.error or "")
    assert wait_for(lambda: device.stats.card_gone == 2)
    before = device.stats.periods_in
    card.present = True
    assert wait_for(lambda: device.state == "ok")
    assert wait_for(lambda: device.stats.periods_in >= before + 3)
    stats = device.stats
    assert stats.recoveries == 2
    assert device.error is None


def test_reopen_is_tried_about_once_per_interval() -> None:
    class Clock:
        def __init__(self) -> None:
            self.t = 0.0
            self.lock = threading.Lock()

        def __call__(self) -> float:
            return self.t

        def sleep(self, dt: float) -> None:
            with self.lock:
                self.t += max(0.0, dt)
            time.sleep(0.0002)  # let the other thread run

    clock = Clock()
    card = FakeCard(present=False)
    device = AudioDevice(
        DEV, DEV, pcm_open=card.open, clock=clock, sleep=clock.sleep, reopen_interval_s=1.0
    )
    device.start()
    try:
        assert wait_for(lambda: clock.t >= 20.0)
    finally:
        device.stop()
    elapsed = clock.t
    for kind in ("capture", "playback"):
        # never a busy loop: at most one attempt per interval of (simulated) time
        assert 1 <= card.opens_of(kind) <= elapsed / 1.0 + 2
    assert card.opens_of("capture") >= 10  # and it keeps trying
    assert audio_threads() == []


def test_busy_card_names_its_holder(devices: list[AudioDevice], tmp_path: Path) -> None:
    asound = tmp_path / "proc" / "asound"
    sub = asound / "card2" / "pcm0c" / "sub0"
    sub.mkdir(parents=True)
    (asound / "cards").write_text(" 2 [Device         ]: USB-Audio - USB Audio Device\n    x\n")
    (sub / "status").write_text("state: RUNNING\nowner_pid   : 812\n")
    (tmp_path / "proc" / "812").mkdir()
    (tmp_path / "proc" / "812" / "comm").write_text("pipewire\n")
    card = FakeCard()
    card.busy = True
    device = make(devices, card, proc=str(asound))
    device.start()
    assert wait_for(lambda: device.state == "busy")
    assert "pipewire (pid 812" in (device.error or "")
    card.busy = False
    assert wait_for(lambda: device.state == "ok")
    assert device.stats.recoveries == 2


def test_format_error_is_an_error_state(devices: list[AudioDevice]) -> None:
    def opener(device: str, kind: str) -> FakePcm:
        raise AudioFormatError(f"{device} cannot do 48000 Hz mono S16_LE")

    device = make(devices, pcm_open=opener)
    device.start()
    assert wait_for(lambda: device.state == "error")
    assert "cannot be used" in (device.error or "")


# -- xruns, stalls, bounded delay ----------------------------------------------------------


def test_capture_xruns_are_counted_and_audio_continues(devices: list[AudioDevice]) -> None:
    card = FakeCard()
    device = make(devices, card)
    device.start()
    assert wait_for(lambda: device.stats.periods_in >= 2)
    card.capture_xruns = 3
    assert wait_for(lambda: device.stats.xruns >= 3)
    before = device.stats.periods_in
    assert wait_for(lambda: device.stats.periods_in >= before + 3)
    assert device.state == "ok"
    assert device.stats.reopens == 0


def test_playback_underrun_is_counted_and_reprimed(devices: list[AudioDevice]) -> None:
    card = FakeCard()
    device = make(devices, card, playback_prime_periods=2)
    device.start()
    assert wait_for(lambda: device.stats.periods_out >= 4)
    assert card.events[0] == ("write", 2 * PERIOD)  # primed at start
    card.playback_xruns = 1
    assert wait_for(lambda: device.stats.xruns == 1)
    assert wait_for(lambda: len(card.events) >= card.events.index(("xrun", 0)) + 3)
    after = card.events[card.events.index(("xrun", 0)) + 1 :]
    # right after the underrun the stream is primed again, then periods follow
    assert after[0] == ("write", 2 * PERIOD)
    assert after[1] == ("write", PERIOD)
    assert device.state == "ok"
    assert device.stats.reopens == 0


def test_prime_comes_first(devices: list[AudioDevice]) -> None:
    card = FakeCard()
    device = make(devices, card, playback_prime_periods=3)
    device.write(np.full(PERIOD, 1000, np.int16))
    device.start()
    assert wait_for(lambda: len(card.played_samples()) >= 4 * PERIOD)
    played = card.played_samples()
    assert not played[: 3 * PERIOD].any()
    assert (played[3 * PERIOD : 4 * PERIOD] == 1000).all()


def test_broken_pipe_raised_mid_stream_gets_a_reopen(devices: list[AudioDevice]) -> None:
    # pyalsaaudio 0.10 raised on a playback underrun: one reopen tells it from a lost card
    card = FakeCard()
    device = make(devices, card)
    device.start()
    assert wait_for(lambda: device.stats.periods_in >= 2)
    card.raise_once = errno.EPIPE
    assert wait_for(lambda: device.stats.reopens == 1)
    before = device.stats.periods_in
    assert wait_for(lambda: device.stats.periods_in >= before + 3)
    assert device.state == "ok"
    assert device.stats.card_gone == 0


def test_stalled_stream_is_reopened(devices: list[AudioDevice]) -> None:
    card = FakeCard()
    device = make(devices, card, stall_s=0.1)
    device.start()
    assert wait_for(lambda: device.stats.periods_in >= 2)
    card.stalled = True
    # both streams are closed and opened again
    assert wait_for(lambda: card.opens_of("capture") >= 2 and card.opens_of("playback") >= 2)
    assert device.stats.reopens >= 2
    card.stalled = False
    before = device.stats.periods_in
    assert wait_for(lambda: device.stats.periods_in >= before + 3)
    assert device.state == "ok"


def test_playback_delay_stays_bounded(devices: list[AudioDevice]) -> None:
    card = FakeCard()
    device = make(devices, card, ring_periods=4)
    device.start()
    assert wait_for(lambda: device.stats.periods_out >= 2)
    burst = (np.arange(30 * PERIOD) % 30000).astype(np.int16)
    device.write(burst)  # 600 ms at once: more than the 80 ms ring may hold
    assert wait_for(lambda: device.stats.playback_dropped > 0)
    assert wait_for(lambda: device._play_ring.available() <= 4 * PERIOD)
    played = card.played_samples()
    assert np.all(np.diff(played[played > 0].astype(np.int32)) > 0)  # order kept


def test_underruns_count_only_while_audio_flows(devices: list[AudioDevice]) -> None:
    card = FakeCard()
    device = make(devices, card)
    device.start()
    assert wait_for(lambda: device.stats.periods_out >= 10)
    assert device.stats.playback_underruns == 0  # idle silence is not an underrun
    device.write(np.full(PERIOD, 500, np.int16))  # one period, then nothing
    assert wait_for(lambda: device.stats.playback_underruns >= 2)


def test_the_end_of_a_call_is_not_an_underrun(devices: list[AudioDevice]) -> None:
    """Between calls the handset drains the capture ring: the playback ring running dry
    then is the call's end, not an underrun."""
    card = FakeCard()
    device = make(devices, card)
    device.start()
    assert wait_for(lambda: device.stats.periods_out >= 4)
    device.write(np.full(8 * PERIOD, 500, np.int16))  # the call's last audio, at once
    device.read()
    device.drain()  # the call is over
    out = device.stats.periods_out
    assert wait_for(lambda: device.stats.periods_out >= out + 20)
    assert device.stats.playback_underruns == 0
    assert device.stats.capture_overruns == 0


def test_the_null_device_captures_silence(devices: list[AudioDevice]) -> None:
    """alsa-lib's null plugin returns the buffer as it found it (heap bytes, seen on this
    machine, not on every run): none of that may reach the encoder, let alone the peer.
    The fake card plays a null plugin that hands back a loud tone."""
    card = FakeCard()
    card.amplitude = 12000
    device = make(devices, card, capture="null", playback="null")
    device.start()
    assert wait_for(lambda: device.stats.periods_in >= 10)
    for _ in range(10):
        assert not device.read().any()
        time.sleep(0.02)
    assert device.levels()["capture_dbfs"] <= -90


def test_read_drops_stale_capture_backlog(devices: list[AudioDevice]) -> None:
    card = FakeCard()
    device = make(devices, card)
    device.start()
    assert wait_for(lambda: device.stats.periods_in >= 12)  # nobody reads: ring fills
    assert device.stats.capture_overruns == 0  # no reader, nothing counted
    device.read()
    assert device.stats.capture_dropped >= 6
    assert device._cap_ring.available() <= 2 * PERIOD


def test_levels(devices: list[AudioDevice]) -> None:
    card = FakeCard()
    card.amplitude = 32767 * 10 ** (-20 / 20) * 2**0.5  # a sine with -20 dBFS RMS
    device = make(devices, card)
    assert device.levels() == {"capture_dbfs": -96.0, "playback_dbfs": -96.0}
    device.start()
    assert wait_for(lambda: device.stats.periods_in >= 10)
    levels = device.levels()
    assert abs(levels["capture_dbfs"] + 20) < 0.5
    assert levels["playback_dbfs"] == -96.0  # only silence was played


def test_write_refuses_bad_input_without_raising(devices: list[AudioDevice]) -> None:
    device = make(devices, FakeCard())
    device.write(np.zeros(PERIOD, dtype=np.float32))
    device.write(np.zeros((PERIOD, 2), dtype=np.int16))
    assert device.stats.playback_rejected == 2
    device.write(np.array([70000, -70000, 5], dtype=np.int32))  # clipped
    assert device._play_ring.read(3).tolist() == [32767, -32768, 5]


def test_start_twice_and_restart(devices: list[AudioDevice]) -> None:
    card = FakeCard()
    device = make(devices, card)
    device.start()
    device.start()
    assert sorted(audio_threads()) == ["wzp-audio-capture", "wzp-audio-playback"]
    assert wait_for(lambda: device.state == "ok")
    device.stop()
    assert audio_threads() == []
    device.start()
    assert wait_for(lambda: device.state == "ok")
    device.stop()
    assert device.state == "stopped"


def test_drain_discards_idle_capture_and_status_dict(devices: list[AudioDevice]) -> None:
    card = FakeCard()
    device = make(devices, card)
    device.start()
    assert wait_for(lambda: device.stats.periods_in >= 3)
    device.drain()
    assert device._cap_ring.available() < PERIOD
    assert device.stats.capture_dropped == 0  # nobody wanted it: not a loss
    status = device.status_dict()
    json.dumps(status)  # the control socket sends it as JSON
    assert status["state"] == "ok" and status["error"] is None
    assert status["capture_state"] == status["playback_state"] == "ok"
    assert status["periods_in"] >= 3
    assert status["capture_dbfs"] <= 0 and status["playback_dbfs"] == -96.0
    card.present = False
    assert wait_for(lambda: device.status_dict()["capture_state"] == "missing")
    assert DEV in device.status_dict()["capture_error"]
    assert device.status_dict()["state"] == "missing"


def test_a_stream_that_keeps_stalling_is_an_error_until_audio_flows(
    devices: list[AudioDevice],
) -> None:
    card = FakeCard()
    device = make(devices, card, stall_s=0.03, reopen_interval_s=0.03)
    device.start()
    assert wait_for(lambda: device.stats.periods_in >= 2)
    card.stalled = True  # opens fine, never delivers: no silent deafness (USERS.md #8)
    assert wait_for(lambda: device.state == "error")
    assert "delivers no audio" in (device.error or "")
    assert device.stats.reopens >= 3
    card.stalled = False
    assert wait_for(lambda: device.state == "ok")
    assert device.stats.recoveries >= 1
