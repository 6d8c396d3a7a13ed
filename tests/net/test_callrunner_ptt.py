"""The media clock's push-to-talk gate: pre-roll before the key, stop at release."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from wzp.net.callrunner import PREROLL_S, CallRunner


class FakeEngine:
    frame_samples = 960

    def __init__(self) -> None:
        self.media = SimpleNamespace(rtt_ms=0.0)
        self.captured: list[tuple[int, float]] = []  # (chunk number, capture time)
        self.stops = 0

    def capture(self, pcm: np.ndarray, now: float) -> None:
        self.captured.append((int(pcm[0]), round(now, 3)))

    def stop_sending(self) -> None:
        self.stops += 1

    def tick(self, now: float) -> None:
        pass

    def take_messages(self) -> list:
        return []

    def take_datagrams(self) -> list:
        return []

    def playout(self, now: float) -> np.ndarray:
        return np.zeros(960, dtype=np.int16)


class NumberedMic:
    """Period i is 960 samples of the value i."""

    def __init__(self) -> None:
        self.i = 0

    def read(self) -> np.ndarray:
        self.i += 1
        return np.full(960, self.i, dtype=np.int16)


class Sink:
    def write(self, pcm: np.ndarray) -> None:
        pass


async def test_key_down_sends_the_preroll_first_and_release_stops_sending() -> None:
    engine = FakeEngine()
    conn = SimpleNamespace(rtt=None)
    talking = {"on": False}
    runner = CallRunner(engine, conn, NumberedMic(), Sink(), talk=lambda: talking["on"])  # type: ignore[arg-type]
    for t in range(20):  # key up: nothing is sent
        runner._tick(t * 0.02)
    assert engine.captured == [] and not runner.talking
    talking["on"] = True
    runner._tick(20 * 0.02)  # the key goes down during period 21
    preroll = round(PREROLL_S / 0.02)
    # the periods before the press go out first, stamped with when they were captured
    numbers = [n for n, _ in engine.captured]
    assert numbers == list(range(21 - preroll, 22))
    times = [t for _, t in engine.captured]
    assert times == sorted(times)
    assert times[-1] - times[0] == pytest.approx(preroll * 0.02)
    for t in range(21, 30):
        runner._tick(t * 0.02)
    assert [n for n, _ in engine.captured][-1] == 30 and engine.stops == 0
    talking["on"] = False
    runner._tick(30 * 0.02)
    assert engine.stops == 1 and not runner.talking
    sent = len(engine.captured)
    for t in range(31, 40):
        runner._tick(t * 0.02)
    assert len(engine.captured) == sent and engine.stops == 1
