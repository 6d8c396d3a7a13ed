"""The receiving half: datagram -> parse -> decrypt + replay -> FEC -> jitter buffer.

Every piece of receiver state (FEC blocks, jitter buffer, decoder, loss and jitter
meters) is per sender stream (ARCHITECTURE rule 7): a relay room has several
senders, told apart by the header's stream byte. Every drop is counted by reason
and nothing raises out of :meth:`MediaReceiver.receive`.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from math import ceil, log

import numpy as np

from ..crypto.media import MediaCrypto
from ..fec.backend import FecBackend, default_backend
from ..fec.block import BlockDecoder, FecError
from ..proto.header import Datagram, Drop, DropReason, MediaHeader, QualityReport, parse_datagram
from .playout import SAMPLE_RATE, FrameDecoder, Played, Playout, PlayoutConfig
from .quality import LossWindow, Unwrapper

#: open FEC blocks kept per stream (older ones are past their playout time)
MAX_OPEN_BLOCKS = 12
#: seconds of seqs over which the loss pattern (mean loss, mean run) is fitted: long
#: enough to hold a dozen loss runs at 10 % loss, short enough to follow a changing link
PATTERN_WINDOW_S = 10.0
#: the loss the report tells and the playout's FEC wait follow: the last seconds of it
LOSS_WINDOW_S = 3.0
#: blocks over which the sender's repair count is taken (the most seen in one of them).
#: A block shows its true count only when its last repair arrives, so the window grows
#: with the loss until the last repairs of all its blocks are lost together less than
#: once in SHAPE_MISS blocks: 4 blocks at 30 % loss, 6 at 45 %, 19 at 78 % (with a
#: fixed 4, the shape read lower one block in three at 78 % loss, and every misreading
#: restarted the judging of the tier). A sender that really lowers its count is seen
#: that many blocks later.
SHAPE_BLOCKS = 4
SHAPE_BLOCKS_MAX = 32
SHAPE_MISS = 0.01


@dataclass
class _Block:
    decoder: BlockDecoder
    codec: int
    ts0: int | None = None  # media time of the block's first frame
    frame_ms: int | None = None
    shape_seen: bool = False
    max_repair: int = -1  # the highest repair ESI seen: K + R - 1 once the last arrived


@dataclass
class StreamReceiver:
    """Receiver state of one sender stream."""

    decoder: FrameDecoder
    backend: FecBackend
    playout_config: PlayoutConfig = field(default_factory=PlayoutConfig)
    log: list[Played] | None = None

    def __post_init__(self) -> None:
        self.playout = Playout(self.decoder, self.playout_config, self.log)
        #: one window of seqs: its loss over LOSS_WINDOW_S, its pattern over all of it
        self.loss = LossWindow(window_s=PATTERN_WINDOW_S, loss_s=LOSS_WINDOW_S)
        self._ts = Unwrapper(32)  # media time, u32 ms
        self._blocks: OrderedDict[int, _Block] = OrderedDict()
        self.packets = 0
        self.recovered = 0
        self.malformed = 0
        self.last_arrival: float | None = None
        #: (codec, frame ms, K) and repairs seen (highest ESI - K + 1) of recent blocks
        self._repairs: OrderedDict[int, tuple[tuple[int, int, int], int]] = OrderedDict()
        self._shapes: deque[tuple[int, int]] = deque(maxlen=6)  # (span, frame) ms, recent blocks
        #: what the sender uses now, as seen in its packets: (codec, frame ms, K, R). R is
        #: the most repairs seen in one of the last blocks of that shape (SHAPE_BLOCKS):
        #: the header's 7-bit ratio field stops at 2.0, which the ladder's tiers from heavy
        #: up all exceed, so it cannot tell them apart
        self.sender_shape: tuple[int, int, int, int] | None = None
        self.shape_since = 0.0

    def on_packet(
        self, header: MediaHeader, payload: bytes, now: float, excuse_gap: bool = False
    ) -> None:
        """One authenticated packet. ``excuse_gap``: a gap in the seqs before it is not
        the link's loss (see :meth:`MediaReceiver.floor_changed`)."""
        self.packets += 1
        self.last_arrival = now
        self.loss.add(header.seq, now, excuse_gap)
        # the playout's FEC wait reacts to the first loss seen (or its absence): a lost
        # syllable at the start of a call hurts more than a noisy estimate
        loss = self.loss.loss(now, raw=True)
        self.playout.set_loss(loss, now)
        ts = self._ts.extend(header.ts)
        if not header.is_repair and not payload:
            # keep-alive: it carried a report and a seq, and says where the sender paused
            self.playout.sender_paused(ts)
            return
        block = self._blocks.get(header.block)
        if block is None or block.codec != header.codec:
            block = _Block(BlockDecoder(self.backend), header.codec)
            self._blocks[header.block] = block
            while len(self._blocks) > MAX_OPEN_BLOCKS:
                self._blocks.popitem(last=False)
        self._blocks.move_to_end(header.block)
        if header.is_repair:
            try:
                block.decoder.add_repair(header.symbol, payload)
            except FecError:
                self.malformed += 1
                return
            block.ts0 = ts
            block.max_repair = max(block.max_repair, header.symbol)
        else:
            dur = self._duration_ms(header.codec, payload) or 0
            self.playout.insert(ts, header.codec, payload, now, recovered=False, dur_ms=dur)
            if block.frame_ms is None and dur:
                block.frame_ms = dur
            if block.frame_ms and block.ts0 is None:
                block.ts0 = ts - header.symbol * block.frame_ms
            block.decoder.add_source(header.symbol, payload)
        self._recover(block, header.codec, now)
        self._track_shape(header.block, block, header.codec, now, loss or 0.0)

    def _track_shape(
        self, block_id: int, block: _Block, codec: int, now: float, loss: float
    ) -> None:
        k = block.decoder.k
        if k is None or not block.frame_ms or block.max_repair < k:
            return
        key = (codec, block.frame_ms, k)
        self._repairs[block_id] = (key, block.max_repair - k + 1)
        self._repairs.move_to_end(block_id)
        while len(self._repairs) > SHAPE_BLOCKS_MAX:
            self._repairs.popitem(last=False)
        blocks = SHAPE_BLOCKS
        if loss > 0.0:
            needed = ceil(log(SHAPE_MISS) / log(min(loss, 0.95)))
            blocks = max(SHAPE_BLOCKS, min(SHAPE_BLOCKS_MAX, needed))
        recent = islice(reversed(self._repairs.values()), blocks)
        r = max(n for kk, n in recent if kk == key)
        shape = (*key, r)
        if shape != self.sender_shape:
            self.sender_shape, self.shape_since = shape, now

    def _duration_ms(self, codec: int, payload: bytes) -> int | None:
        try:
            return self.decoder.payload_samples(codec, payload) * 1000 // SAMPLE_RATE
        except ValueError:
            return None

    def _recover(self, block: _Block, codec: int, now: float) -> None:
        dec = block.decoder
        if dec.k is not None and block.frame_ms and not block.shape_seen:
            # the largest recent block sets the wait: a short block closed early (push-to-
            # talk released, tier switch) must not shrink the buffer under the next one
            block.shape_seen = True
            self._shapes.append((dec.k * block.frame_ms, block.frame_ms))
            self.playout.set_block_span(
                max(s for s, _ in self._shapes), max(f for _, f in self._shapes)
            )
        if not dec.missing:
            return
        got = dec.try_recover()
        if not got or block.ts0 is None:
            return
        for esi, payload in got.items():
            frame_ms = block.frame_ms or self._duration_ms(codec, payload)
            if not frame_ms:
                self.malformed += 1
                continue
            block.frame_ms = frame_ms
            self.recovered += 1
            ts = block.ts0 + esi * frame_ms
            self.playout.insert(ts, codec, payload, now, recovered=True, dur_ms=frame_ms)

    def pull(self, now: float) -> np.ndarray:
        return self.playout.pull(now)


@dataclass
class MediaReceiver:
    """All streams arriving on one connection (one on a direct call, several in a room)."""

    decoder_factory: Callable[[], FrameDecoder]
    crypto: MediaCrypto | None = None
    backend: FecBackend = field(default_factory=default_backend)
    playout_config: PlayoutConfig = field(default_factory=PlayoutConfig)
    #: stream ids accepted (None: any); a direct call accepts only 0
    streams_allowed: frozenset[int] | None = None
    #: keep a log of played frames per stream (benchmarks)
    keep_log: bool = False

    def __post_init__(self) -> None:
        self.streams: dict[int, StreamReceiver] = {}
        self.drops: Counter[DropReason] = Counter()
        self.last_report: QualityReport | None = None
        self.reports_received = 0
        self.logs: dict[int, list[Played]] = {}
        #: when the last datagram that passed authentication arrived (None: none yet)
        self.last_heard: float | None = None
        #: the slot holding the floor of a push-to-talk room, as the relay last said
        self.floor: int | None = None
        #: streams that have not held the floor since their last packet (floor_changed)
        self._floor_elsewhere: set[int] = set()

    def floor_changed(self, slot: int | None) -> None:
        """The relay of a push-to-talk room says who holds the floor now (None: free).

        The relay drops whatever a member sends while it does not hold the floor (SPEC
        8.4). A sender that pressed PTT just as someone else took the floor (a
        collision) only learns of it a round trip later, and a holder whose floor the
        relay freed under it (max_floor_s) is kept off it a while: in both cases
        packets that never come, a gap in the seqs that is not the link's loss and
        would otherwise push the sender's tier up (the burst rule reads it as one long
        run). So a stream's gaps are excused from the time it no longer holds the floor
        up to and including its first packet once it holds it again (that packet may
        come before or after the Floor saying so); its gaps while it holds the floor
        count as ever. A sender that does not hold the floor sends only keep-alives, so
        little of the link's loss goes unseen.
        """
        self.floor = slot
        self._floor_elsewhere.update(sid for sid in self.streams if sid != slot)

    def stream(self, sid: int) -> StreamReceiver:
        rx = self.streams.get(sid)
        if rx is None:
            log: list[Played] | None = [] if self.keep_log else None
            if log is not None:
                self.logs[sid] = log
            rx = StreamReceiver(self.decoder_factory(), self.backend, self.playout_config, log)
            self.streams[sid] = rx
        return rx

    def receive(self, data: bytes, now: float) -> Drop | None:
        """Take one datagram. Returns the drop (also counted) or None when it was used."""
        parsed = parse_datagram(data, encrypted=self.crypto is not None)
        if isinstance(parsed, Drop):
            self.drops[parsed.reason] += 1
            return parsed
        return self._accept(parsed, now)

    def _accept(self, dg: Datagram, now: float) -> Drop | None:
        hdr = dg.header
        if self.streams_allowed is not None and hdr.stream not in self.streams_allowed:
            drop = Drop(DropReason.WRONG_STREAM, f"stream {hdr.stream}")
            self.drops[drop.reason] += 1
            return drop
        if self.crypto is not None:
            opened = self.crypto.open(dg, now)
            if isinstance(opened, Drop):
                self.drops[opened.reason] += 1
                return opened
            payload = opened
        else:
            payload = dg.body
        self.last_heard = now
        if dg.report is not None:
            self.last_report = dg.report
            self.reports_received += 1
        excuse = hdr.stream in self._floor_elsewhere
        if excuse and self.floor == hdr.stream:
            self._floor_elsewhere.discard(hdr.stream)
        self.stream(hdr.stream).on_packet(hdr, payload, now, excuse)
        return None

    def pull(self, now: float) -> np.ndarray:
        """One period of the mix of every stream (one stream: its audio unchanged)."""
        if not self.streams:
            period = PlayoutConfig().period_ms * SAMPLE_RATE // 1000
            return np.zeros(period, dtype=np.int16)
        outs = [rx.pull(now) for rx in self.streams.values()]
        if len(outs) == 1:
            return outs[0]
        mix = np.sum([o.astype(np.int32) for o in outs], axis=0)
        return np.clip(mix, -32768, 32767).astype(np.int16)

    def loss(self, now: float) -> float | None:
        """Worst pre-FEC loss over the streams (what the report tells the peer)."""
        losses = [x for rx in self.streams.values() if (x := rx.loss.loss(now)) is not None]
        return max(losses) if losses else None

    def jitter_ms(self) -> float:
        return max((rx.playout.jitter_s * 1000 for rx in self.streams.values()), default=0.0)

    def report(self, now: float, rtt_ms: float, cap_kbps: float) -> QualityReport:
        loss = self.loss(now)
        return QualityReport.from_measured((loss or 0.0) * 100, rtt_ms, self.jitter_ms(), cap_kbps)
