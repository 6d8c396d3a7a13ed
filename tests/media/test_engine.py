"""The media engine end to end in simulated time: sender -> datagrams -> receiver -> PCM."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wzp.crypto.handshake import Ephemeral, Role, initial_keys
from wzp.crypto.media import MediaCrypto
from wzp.media.codecs import make_frame_decoder, make_tier_encoder
from wzp.media.ladder import LADDER, Tier
from wzp.media.playout import FrameFate
from wzp.media.receiver import MediaReceiver
from wzp.media.sender import MediaSender
from wzp.proto.header import DropReason, MediaHeader, parse_datagram

PERIOD_S = 0.02
PERIOD = 960
DELAY_S = 0.3


def _keys() -> tuple[MediaCrypto, MediaCrypto]:
    ea, eb = Ephemeral.generate(), Ephemeral.generate()
    return (
        MediaCrypto(Role.CALLER, initial_keys(ea, eb.public, Role.CALLER), 0.0),
        MediaCrypto(Role.CALLEE, initial_keys(eb, ea.public, Role.CALLEE), 0.0),
    )


def run(
    speech: np.ndarray,
    tiers: list[tuple[float, Tier]],
    drop: Callable[[MediaHeader], bool] = lambda h: False,
    encrypted: bool = True,
) -> tuple[np.ndarray, MediaReceiver, MediaSender]:
    """Send ``speech``; ``tiers`` = [(from_time_s, tier), ...]; ``drop`` decides losses."""
    tx, rx = _keys() if encrypted else (None, None)
    sender = MediaSender(tiers[0][1], make_tier_encoder(), tx)
    receiver = MediaReceiver(make_frame_decoder, rx, keep_log=True)
    in_flight: list[tuple[float, bytes]] = []
    out = []
    pending = np.zeros(0, dtype=np.int16)
    pos = 0
    closed = False
    n = int(len(speech) / PERIOD + 1.5 / PERIOD_S)
    for i in range(n):
        now = i * PERIOD_S
        for start, tier in tiers:
            if abs(now - start) < 1e-9:
                sender.request_tier(tier)
        if pos < len(speech):
            pending = np.concatenate((pending, speech[pos : pos + PERIOD]))
            pos += PERIOD
        while len(pending) >= sender.frame_samples:
            frame, pending = pending[: sender.frame_samples], pending[sender.frame_samples :]
            sent = sender.push_frame(frame)
            if pos >= len(speech) and len(pending) < sender.frame_samples and not closed:
                closed = True  # end of speech: the last block's repairs go out now
                sent += sender.close_block()
            for d in sent:
                parsed = parse_datagram(d, encrypted=encrypted)
                if not drop(parsed.header):  # type: ignore[union-attr]
                    in_flight.append((now + DELAY_S, d))
        due = [x for x in in_flight if x[0] <= now + 1e-9]
        in_flight = [x for x in in_flight if x[0] > now + 1e-9]
        for at, d in due:
            receiver.receive(d, at)
        out.append(receiver.pull(now))
    return np.concatenate(out), receiver, sender


def _frames(receiver: MediaReceiver, stream: int, sender: MediaSender | None) -> list:
    """Played frames of the media that was sent (not the concealed tail after the end)."""
    end = sender._ts if sender is not None else 1 << 62
    return [
        p
        for p in receiver.logs[stream]
        if p.fate not in (FrameFate.INSERTED, FrameFate.SKIPPED) and p.ts < end
    ]


def _fates(
    receiver: MediaReceiver, stream: int = 0, sender: MediaSender | None = None
) -> dict[FrameFate, int]:
    counts: dict[FrameFate, int] = {}
    for p in _frames(receiver, stream, sender):
        counts[p.fate] = counts.get(p.fate, 0) + 1
    return counts


PAIRS = list(itertools.permutations(LADDER, 2))


@pytest.mark.parametrize("a,b", PAIRS, ids=[f"{a.name}->{b.name}" for a, b in PAIRS])
def test_every_tier_switch_gives_continuous_audio(speech48: np.ndarray, a: Tier, b: Tier) -> None:
    speech = speech48[: 48_000 * 3]
    out, rx, tx = run(speech, [(0.0, a), (1.2, b)])
    fates = _fates(rx, 0, tx)
    # every frame of both tiers decoded: no gap, no frame-size mismatch at the switch
    assert fates.get(FrameFate.CONCEALED, 0) == 0, fates
    assert fates.get(FrameFate.DECODED, 0) > 0
    assert tx.stats.tier_changes == 1
    assert set(tx.tiers_used) == {a.name, b.name}
    # media time played == media time sent, end to end
    sent_ms = sum(
        t.frame_ms * n for t, n in ((a, tx.tiers_used[a.name]), (b, tx.tiers_used[b.name]))
    )
    log = _frames(rx, 0, tx)
    assert sum(p.duration_ms for p in log) == sent_ms
    # the played media times are contiguous: each frame starts where the last ended
    for prev, cur in itertools.pairwise(log):
        assert cur.ts == prev.ts + prev.duration_ms
    assert len(out) % PERIOD == 0


def test_lost_sources_inside_a_block_are_recovered(speech48: np.ndarray) -> None:
    heavy = next(t for t in LADDER if t.name == "heavy")  # K=2, R=6
    lost: list[tuple[int, int]] = []

    def drop(h: MediaHeader) -> bool:
        # not in block 0: before the first repair packet arrives the receiver cannot know
        # the block shape (K), so it cannot wait for the stream's very first block
        # every source of every other block: only repairs are left to rebuild them from
        if not h.is_repair and h.block % 2 == 0 and h.block > 0 and h.symbol in (0, 1):
            lost.append((h.block, h.symbol))
            return True
        return False

    _, rx, tx = run(speech48[: 48 * 4800], [(0.0, heavy)], drop)  # 20 whole blocks
    fates = _fates(rx, 0, tx)
    assert len(lost) >= 12
    assert fates[FrameFate.RECOVERED] == len(lost)
    assert fates.get(FrameFate.CONCEALED, 0) == 0


def test_a_lost_repair_never_shows_as_lost_media(speech48: np.ndarray) -> None:
    light = next(t for t in LADDER if t.name == "light")
    dropped = 0

    def drop(h: MediaHeader) -> bool:
        nonlocal dropped
        if h.is_repair:
            dropped += 1
            return True
        return False

    _, rx, tx = run(speech48[: 48_000 * 3], [(0.0, light)], drop)
    fates = _fates(rx, 0, tx)
    assert dropped == tx.stats.repair_packets > 0
    assert set(fates) <= {FrameFate.DECODED, FrameFate.INSERTED, FrameFate.SKIPPED}
    assert fates[FrameFate.DECODED] == tx.stats.source_packets


def test_two_sender_streams_into_one_receiver_stay_separate(speech48: np.ndarray) -> None:
    """Two senders in a room (streams 3 and 7) with the same seq/ts/block numbers."""
    tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(48_000 * 2) / 48_000)).astype(np.int16)
    voice = speech48[: 48_000 * 2]
    light = next(t for t in LADDER if t.name == "light")
    senders = {
        3: MediaSender(light, make_tier_encoder(), stream=3),
        7: MediaSender(light, make_tier_encoder(), stream=7),
    }
    sources = {3: tone, 7: voice}
    rx = MediaReceiver(make_frame_decoder, None, keep_log=True)
    outs: dict[int, list[np.ndarray]] = {3: [], 7: []}
    flight: list[tuple[float, bytes]] = []
    for i in range(int(2.0 / PERIOD_S) + 60):
        now = i * PERIOD_S
        for sid, sender in senders.items():
            f = sender.frame_samples
            if (i + 1) * PERIOD % f == 0 and (i + 1) * PERIOD <= len(sources[sid]):
                frame = sources[sid][(i + 1) * PERIOD - f : (i + 1) * PERIOD]
                for d in sender.push_frame(frame):
                    header = parse_datagram(d, encrypted=False).header  # type: ignore[union-attr]
                    if not (sid == 7 and header.symbol == 1):  # stream 7 loses symbol 1
                        flight.append((now + DELAY_S, d))
        for at, d in [x for x in flight if x[0] <= now + 1e-9]:
            rx.receive(d, at)
        flight = [x for x in flight if x[0] > now + 1e-9]
        for sid in (3, 7):
            outs[sid].append(rx.streams[sid].pull(now) if sid in rx.streams else np.zeros(PERIOD))
    assert set(rx.streams) == {3, 7}
    f3, f7 = _fates(rx, 3, senders[3]), _fates(rx, 7, senders[7])
    assert f3.get(FrameFate.RECOVERED, 0) == 0  # stream 3 lost nothing
    assert f7[FrameFate.RECOVERED] > 5  # stream 7's losses repaired from its own FEC
    assert f7.get(FrameFate.CONCEALED, 0) == 0
    # stream 3 carries the pure tone: its spectrum is a single line at 440 Hz
    out3 = np.concatenate(outs[3]).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(out3))
    freqs = np.fft.rfftfreq(len(out3), 1 / 48_000)
    peak = freqs[np.argmax(spectrum)]
    assert abs(peak - 440) < 5
    assert spectrum[(freqs > 600) & (freqs < 4000)].max() < 0.1 * spectrum.max()


def test_direct_call_refuses_other_streams_and_counts_drops() -> None:
    tx, rxk = _keys()
    light = next(t for t in LADDER if t.name == "light")
    sender = MediaSender(light, make_tier_encoder(), tx, stream=5)
    rx = MediaReceiver(make_frame_decoder, rxk, streams_allowed=frozenset({0}))
    pcm = np.zeros(sender.frame_samples, dtype=np.int16)
    for d in sender.push_frame(pcm):
        assert rx.receive(d, 1.0) is not None
    assert rx.drops[DropReason.WRONG_STREAM] >= 1
    assert rx.streams == {}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=30))
def test_receiver_never_raises_on_garbage(datagrams: list[bytes]) -> None:
    rx = MediaReceiver(make_frame_decoder, None)
    for i, d in enumerate(datagrams):
        rx.receive(d, i * 0.01)
        rx.pull(i * 0.01)
    # and the plaintext path with structurally valid headers but garbage bodies
    for i, d in enumerate(datagrams):
        header = MediaHeader(codec=i % 9, is_repair=bool(i % 2), symbol=i % 7, seq=i, ts=i * 20)
        rx.receive(header.encode() + d, 1.0 + i * 0.01)
        rx.pull(1.0 + i * 0.01)


def test_what_a_push_to_talk_relay_dropped_is_not_the_links_loss(speech48: np.ndarray) -> None:
    """Stream 5 presses PTT just as stream 9 takes the floor: the relay drops stream 5's
    packets until it learns, a round trip later. The receiver, told by the relay who
    holds the floor, excuses that gap (the sender's tier would climb on it otherwise);
    a gap while stream 5 holds the floor itself is the link's and counts."""
    clear = next(t for t in LADDER if t.name == "clear")
    sender = MediaSender(clear, make_tier_encoder(), stream=5)
    n = sender.frame_samples
    datagrams = [d for i in range(0, 48_000 * 6, n) for d in sender.push_frame(speech48[i : i + n])]
    assert len(datagrams) > 110  # packets after every gap below
    lost = range(30, 40)  # a collision: the relay dropped these
    for told in (False, True):
        rx = MediaReceiver(make_frame_decoder, None)
        t = 0.0
        for i, d in enumerate(datagrams[:60]):
            if i == 20 and told:
                rx.floor_changed(9)  # another member holds the floor
            if i == 45 and told:
                rx.floor_changed(None)  # it let go
            if i not in lost:
                rx.receive(d, t)
            t += 0.03
        pattern = rx.streams[5].loss.pattern(t)
        assert pattern is not None
        if told:
            assert rx.loss(t) == 0.0 and pattern.lost == 0
        else:
            assert rx.loss(t) == pytest.approx(10 / 60) and pattern.lost == 10
    # stream 5 now holds the floor: what the link loses of it counts
    rx.floor_changed(5)
    for i, d in enumerate(datagrams[60:80], start=60):
        if i not in (70, 71):
            rx.receive(d, t)
        t += 0.03
    pattern = rx.streams[5].loss.pattern(t)
    assert pattern is not None and pattern.lost == 2
    # it held the floor too long (the relay's max_floor_s): freed under it and kept off
    # it a while, what it sent meanwhile dropped; it takes the floor again, the Floor
    # saying so here coming before its first packet: that gap is excused too, the next
    # one (the link's) is not
    rx.floor_changed(None)
    for i, d in enumerate(datagrams[80:], start=80):
        if i == 90:
            rx.floor_changed(5)
        if not (82 <= i < 90 or i == 95):
            rx.receive(d, t)
        t += 0.03
    pattern = rx.streams[5].loss.pattern(t)
    assert pattern is not None and pattern.lost == 3
