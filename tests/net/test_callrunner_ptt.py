"""The media clock's push-to-talk gate: pre-roll before the key, stop at release."""

from __future__ import annotations

import asyncio
import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from wzp.net.callrunner import HANGUP_COPIES, HANGUP_RESEND_S, PREROLL_S, CallRunner
from wzp.proto.session import EndReason, State
from wzp.proto.signal import Hangup, HangupReason


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


class HangingUpEngine(FakeEngine):
    """A call that the runner hangs up at ``max_duration``: one Hangup message, then the
    session is over."""

    def __init__(self) -> None:
        super().__init__()
        self.media = None
        self.session = SimpleNamespace(live=True, end_reason=None)
        self.state = None
        self._out: list = []

    def hangup(self, now: float) -> None:
        self._out.append(Hangup(HangupReason.Normal))
        self.session.live = False
        self.session.end_reason = EndReason.NORMAL
        self.state = State.CLOSED

    def take_messages(self) -> list:
        out, self._out = self._out, []
        return out


class LossyConn:
    """Acknowledges nothing until the ``acked_after``-th copy of a message is sent."""

    def __init__(self, acked_after: int) -> None:
        self.rtt = None
        self.acked_after = acked_after
        self.sent: list[tuple[int, float]] = []  # (stream, loop time)

    def send_message(self, msg: object) -> int:
        self.sent.append((len(self.sent) * 4, asyncio.get_running_loop().time()))
        return self.sent[-1][0]

    def message_delivered(self, stream: int) -> bool:
        return len(self.sent) >= self.acked_after and stream == self.sent[-1][0]

    def send_datagram(self, data: bytes) -> bool:
        return True


async def test_a_hangup_is_resent_spaced_out_until_one_copy_is_acknowledged() -> None:
    """Copies sent together share a UDP packet and are lost together: each copy of the
    Hangup goes out on its own, HANGUP_RESEND_S after the last, until one is acknowledged
    (here the fourth)."""
    engine, conn = HangingUpEngine(), LossyConn(acked_after=4)
    runner = CallRunner(engine, conn, NumberedMic(), Sink())  # type: ignore[arg-type]
    await runner.run(max_duration=0.05)
    times = [t for _, t in conn.sent]
    assert len(times) == 4 <= HANGUP_COPIES
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= HANGUP_RESEND_S - 0.03 for g in gaps), gaps


async def test_kbit_per_s_cover_the_last_two_seconds_however_often_status_is_asked() -> None:
    """The rates used to cover the time since the previous status() call: the daemon's
    first ``wzp status`` of a call averaged the whole call, and two askers split it."""
    engine = FakeEngine()
    engine.media = None
    engine.state = State.ACTIVE
    engine.stats = SimpleNamespace(rekeys=0)
    runner = CallRunner(engine, SimpleNamespace(rtt=None), NumberedMic(), Sink())  # type: ignore[arg-type]
    t = 0.0
    for _ in range(500):  # 10 s at 1 kB per 20 ms received, nothing sent
        runner._rx_bytes += 1000
        runner._sample_rates(t)
        t = round(t + 0.02, 2)
    for _ in range(250):  # then 5 s at 250 bytes per 20 ms
        runner._rx_bytes += 250
        runner._sample_rates(t)
        t = round(t + 0.02, 2)
    first = runner.status(t)  # never asked before: still the last ~2 s, not 15 s
    again = runner.status(t)  # asked twice at once: the same answer
    assert first.rx_kbps == pytest.approx(100.0, rel=0.05)
    assert again.rx_kbps == pytest.approx(first.rx_kbps)
    assert first.tx_kbps == 0.0


async def test_the_last_status_of_a_call_keeps_its_recovered_and_concealed_counts() -> None:
    """Once the call's media is gone (hung up), its last status line used to read
    recovered=0 concealed=0: the totals are what they came to."""
    engine = FakeEngine()
    engine.state = State.ACTIVE
    engine.stats = SimpleNamespace(rekeys=0)
    stats = SimpleNamespace(recovered=7, concealed=2)
    engine.media = SimpleNamespace(  # type: ignore[assignment]
        tier=SimpleNamespace(name="heavy"),
        receiver=SimpleNamespace(
            loss=lambda now: 0.25,
            jitter_ms=lambda: 3.0,
            streams={0: SimpleNamespace(playout=SimpleNamespace(stats=stats))},
        ),
    )
    runner = CallRunner(engine, SimpleNamespace(rtt=None), NumberedMic(), Sink())  # type: ignore[arg-type]
    during = runner.status(1.0)
    assert (during.recovered, during.concealed, during.tier) == (7, 2, "heavy")
    engine.media = None  # the call ended
    engine.state = State.CLOSED
    after = runner.status(2.0)
    assert (after.recovered, after.concealed) == (7, 2)
