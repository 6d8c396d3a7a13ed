from __future__ import annotations

import errno
import os
from pathlib import Path

import alsaaudio
import numpy as np
import pytest

from wzp.audio.alsa import PERIOD
from wzp.audio.probe import (
    PROBE_RATES,
    analyse,
    play_tone_and_measure,
    rates_from_getrates,
)

DEV = "plughw:CARD=Device,DEV=0"


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += dt


class Loopback:
    """A card whose speaker is next to its microphone: capture hears playback at -6 dB,
    two periods late, over a little noise (or hears nothing at all: a dead mic)."""

    def __init__(self, gain: float = 0.5, dead_mic: bool = False) -> None:
        self.gain = gain
        self.dead_mic = dead_mic
        self.air = np.zeros(2 * PERIOD)  # latency
        self.rng = np.random.default_rng(7)
        self.closed: list[str] = []

    def open(self, device: str, kind: str) -> Loopback.Pcm:
        return Loopback.Pcm(self, kind)

    class Pcm:
        def __init__(self, loop: Loopback, kind: str) -> None:
            self.loop, self.kind = loop, kind

        def write(self, data: bytes) -> int:
            samples = np.frombuffer(bytes(data), dtype="<i2")
            self.loop.air = np.concatenate((self.loop.air, samples * self.loop.gain))
            return len(samples)

        def read(self) -> tuple[int, bytes]:
            loop = self.loop
            if len(loop.air) < PERIOD:
                return 0, b""
            heard, loop.air = loop.air[:PERIOD], loop.air[PERIOD:]
            hiss = loop.rng.normal(0, 30, PERIOD)  # about -61 dBFS
            heard = np.zeros(PERIOD) if loop.dead_mic else heard + hiss
            return PERIOD, np.clip(heard, -32768, 32767).astype("<i2").tobytes()

        def close(self) -> None:
            self.loop.closed.append(self.kind)


def fake_rates(device: str, kind: str) -> list[int]:
    return [48000] if kind == "capture" else [44100, 48000]


def run(loop: Loopback, **kw) -> object:
    clock = FakeClock()
    return play_tone_and_measure(
        DEV,
        DEV,
        seconds=0.5,
        pcm_open=loop.open,
        list_rates=fake_rates,
        clock=clock,
        sleep=clock.sleep,
        **kw,
    )


def test_loopback_hears_the_tone() -> None:
    loop = Loopback()
    result = run(loop)
    assert result.error is None
    assert result.tone_detected
    assert not result.silent
    # -12 dBFS played, -6 dB on the way back
    assert abs(result.capture_dbfs - (-18.0)) < 1.5
    assert abs(result.tone_dbfs - (-18.0)) < 1.5
    assert -16 < result.peak_dbfs < -13  # a sine's peak is 3 dB over its RMS
    assert result.seconds_captured == pytest.approx(0.6, abs=0.03)
    assert result.rates == {
        "capture hw:CARD=Device,DEV=0": [48000],
        "playback hw:CARD=Device,DEV=0": [44100, 48000],
    }
    assert sorted(loop.closed) == ["capture", "playback"]


def test_dead_microphone_is_reported_silent() -> None:
    result = run(Loopback(dead_mic=True))
    assert result.error is None
    assert result.silent
    assert not result.tone_detected
    assert result.capture_dbfs == -96.0


def test_null_device() -> None:
    result = play_tone_and_measure("null", "null", seconds=0.2)
    assert result.error is None
    assert result.rates == {"capture null": list(PROBE_RATES), "playback null": list(PROBE_RATES)}
    assert not result.tone_detected
    # null's "capture" is pyalsaaudio's uninitialised buffer (measured: often loud noise,
    # sometimes zeros), so only consistency can be asserted here
    assert result.silent == (result.capture_dbfs < -80)
    assert result.seconds_captured >= 0.2


def test_missing_card_says_it_is_not_present(tmp_path: Path) -> None:
    asound = tmp_path / "asound"
    asound.mkdir()
    (asound / "cards").write_text(" 1 [vc4hdmi        ]: vc4-hdmi - vc4-hdmi\n  vc4-hdmi\n")
    result = play_tone_and_measure(DEV, "null", seconds=0.2, proc=str(asound))
    assert result.error is not None
    assert f"capture device {DEV}" in result.error
    assert "card Device is not present (cards: vc4hdmi)" in result.error
    assert result.rates["capture hw:CARD=Device,DEV=0"] == []
    assert any("hw:CARD=Device,DEV=0" in note for note in result.notes)


def test_busy_card_names_the_holder(tmp_path: Path) -> None:
    asound = tmp_path / "proc" / "asound"
    sub = asound / "card2" / "pcm0p" / "sub0"
    sub.mkdir(parents=True)
    (asound / "cards").write_text(" 2 [Device         ]: USB-Audio - USB Audio Device\n  x\n")
    (sub / "status").write_text("state: RUNNING\nowner_pid   : 812\n")
    (tmp_path / "proc" / "812").mkdir()
    (tmp_path / "proc" / "812" / "comm").write_text("wzp\n")
    loop = Loopback()

    def opener(device: str, kind: str) -> Loopback.Pcm:
        if kind == "playback":
            raise alsaaudio.ALSAAudioError(f"{os.strerror(errno.EBUSY)} [{device}]")
        return loop.open(device, kind)

    result = play_tone_and_measure(
        DEV, DEV, seconds=0.2, pcm_open=opener, list_rates=fake_rates, proc=str(asound)
    )
    assert result.error is not None
    assert f"playback device {DEV} is busy" in result.error
    assert "held by wzp (pid 812, pcm0p/sub0 RUNNING)" in result.error
    assert loop.closed == ["capture"]  # what did open is closed again


def test_device_failing_mid_test_is_reported() -> None:
    loop = Loopback()

    class Dying(Loopback.Pcm):
        def read(self) -> tuple[int, bytes]:
            raise alsaaudio.ALSAAudioError(f"No such device [{DEV}]")

    def opener(device: str, kind: str) -> Loopback.Pcm:
        return Dying(loop, kind) if kind == "capture" else loop.open(device, kind)

    clock = FakeClock()
    result = play_tone_and_measure(
        DEV,
        DEV,
        seconds=0.2,
        pcm_open=opener,
        list_rates=fake_rates,
        clock=clock,
        sleep=clock.sleep,
    )
    assert result.error is not None and "capture device" in result.error
    assert "mid-test" in result.error
    assert sorted(loop.closed) == ["capture", "playback"]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="seconds"):
        play_tone_and_measure("null", "null", seconds=0)
    with pytest.raises(ValueError, match="freq"):
        play_tone_and_measure("null", "null", freq=30000)


@pytest.mark.parametrize(
    ("offered", "rates"),
    [
        (48000, [48000]),
        (22050, []),
        ((1, 4294967295), [8000, 16000, 44100, 48000]),
        ((44100, 48000), [44100, 48000]),
        ([16000, 32000, 48000], [16000, 48000]),
        ("nonsense", []),
    ],
)
def test_rates_from_getrates(offered: object, rates: list[int]) -> None:
    assert rates_from_getrates(offered) == rates


def test_analyse_tells_tone_from_noise() -> None:
    n = np.arange(48000)
    tone = (8000 * np.sin(2 * np.pi * 1000 * n / 48000)).astype(np.int16)
    level, peak, tone_dbfs, detected = analyse(tone, 1000.0)
    assert detected and abs(level - tone_dbfs) < 0.1
    assert abs(peak - (level + 3.01)) < 0.1
    assert not analyse(tone, 1500.0)[3]  # a different frequency is not "the tone"
    noise = np.random.default_rng(1).normal(0, 3000, 48000).astype(np.int16)
    assert not analyse(noise, 1000.0)[3]
    assert analyse(np.zeros(100, np.int16), 1000.0) == (-96.0, -96.0, -96.0, False)


def test_describe_says_what_was_found() -> None:
    text = run(Loopback()).describe()
    assert f" ✓ capture    {DEV}: -18." in text
    assert " ✓ tone       1000 Hz from" in text
    assert " ✓ rates      capture hw:CARD=Device,DEV=0: 48000 Hz" in text
    dead = run(Loopback(dead_mic=True)).describe()
    assert " ✗ capture" in dead and "captures nothing" in dead
    assert " ✗ tone" in dead
    failed = play_tone_and_measure("plughw:CARD=Gone,DEV=0", "null", seconds=0.1).describe()
    assert failed.startswith(" ✗ audio      capture device plughw:CARD=Gone,DEV=0")
    assert " ✗ rates      capture hw:CARD=Gone,DEV=0: none of" in failed
