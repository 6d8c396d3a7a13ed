"""Jitter buffer and playout for one sender stream.

Frames are keyed by media time (the header's ts, unwrapped), never by seq, so a
repair packet can never look like lost media (ARCHITECTURE rule 6). The sound card
drives :meth:`Playout.pull`: one call per device period returns exactly one
period of 48 kHz PCM, and every "is this frame missing?" decision is taken there,
when the frame is due (rule 1). A frame that is missing when due is concealed:
from the next packet's Opus in-band FEC when that packet is already here, else by
the decoder's PLC. FEC-recovered payloads arrive through :meth:`Playout.insert` like
any other and count as received.

Timing: the frame with media time ``ts`` (ms) plays at local time
``base + ts / 1000``. A packet leaves its sender when its frame has been captured,
at media time ``ts + duration``; the network transit of a packet is its arrival
minus that. ``base`` is the smallest recent transit plus the target delay: the
frame duration (a frame is whole only once captured) or, while packets are being
lost, the block span ``K x frame`` (a block's repairs leave after its last frame),
plus a margin for the measured jitter. Measured this way, a tier change that
alters the frame or block size moves the target, never the transit floor. The
buffer follows a changing target by inserting or skipping whole periods in one step,
in a pause when it can.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import numpy as np

SAMPLE_RATE = 48_000


#: seconds of frame fates kept for :meth:`Playout.residual` (its longest window)
FATES_KEEP_S = 10.0


class FrameDecoder(Protocol):
    """What the playout needs from the codec layer (48 kHz mono int16 out)."""

    def decode(self, codec: int, payload: bytes) -> np.ndarray: ...

    def conceal(
        self, samples: int, next_codec: int | None = None, next_payload: bytes | None = None
    ) -> np.ndarray: ...

    def payload_samples(self, codec: int, payload: bytes) -> int: ...


class FrameFate(Enum):
    DECODED = "decoded"  # arrived and played
    RECOVERED = "recovered"  # rebuilt by RaptorQ and played
    FEC = "inband-fec"  # concealed from the next packet's Opus in-band FEC
    CONCEALED = "concealed"  # PLC / fade: residual loss
    INSERTED = "inserted"  # the buffer grew: this much concealment, media time held still
    SKIPPED = "skipped"  # the buffer shrank: this much queued audio dropped


@dataclass(frozen=True, slots=True)
class Played:
    """One frame as it went to the sound card (for statistics and benchmarks)."""

    ts: int  # unwrapped media time, ms
    duration_ms: int
    at: float  # local time its first sample was due to play
    fate: FrameFate


@dataclass(slots=True)
class _Entry:
    codec: int
    payload: bytes
    recovered: bool


@dataclass
class PlayoutStats:
    decoded: int = 0
    recovered: int = 0
    inband_fec: int = 0
    concealed: int = 0
    late: int = 0
    duplicate: int = 0
    skipped: int = 0
    inserted: int = 0
    underruns: int = 0  # periods of silence while a talk spurt was still expected
    bad_payload: int = 0

    @property
    def frames_due(self) -> int:
        return self.decoded + self.recovered + self.inband_fec + self.concealed


@dataclass
class PlayoutConfig:
    period_ms: int = 20  # sound card period
    jitter_factor: float = 3.0  # target covers this many times the RFC 3550 jitter
    min_margin_ms: float = 15.0
    max_delay_ms: float = 600.0
    max_conceal_ms: int = 240  # conceal at most this long with nothing queued, then idle
    transit_window_s: float = 4.0
    fec_on_loss: float = 0.003  # pre-FEC loss above which the FEC wait is kept
    fec_off_loss: float = 0.0005  # ... and below which it may be dropped,
    fec_off_after_s: float = 20.0  # ... once no loss has been seen for this long
    quiet_rms: float = 300.0  # a decoded frame below this RMS counts as a pause
    max_step_periods: int = 16  # at most this many periods inserted at once
    shrink_after_s: float = 4.0  # a lower target must hold this long before the buffer shrinks
    #: a longer FEC wait (the sender moved to longer blocks) is taken in a pause, at most
    #: this long after the longer blocks began: growing the buffer in speech inserts
    #: a gap into a word. Until then a frame lost in a longer block may be concealed.
    span_grow_wait_s: float = 3.0


class _Transit:
    """Sliding minimum of transit time over a time window (monotonic deque)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._q: deque[tuple[float, float]] = deque()

    def add(self, now: float, transit: float) -> None:
        while self._q and self._q[-1][1] >= transit:
            self._q.pop()
        self._q.append((now, transit))
        cutoff = now - self.window_s
        while self._q and self._q[0][0] < cutoff:
            self._q.popleft()

    @property
    def floor(self) -> float | None:
        return self._q[0][1] if self._q else None


@dataclass
class Playout:
    """Jitter buffer + playout of one stream; pure (time is passed in)."""

    decoder: FrameDecoder
    config: PlayoutConfig = field(default_factory=PlayoutConfig)
    log: list[Played] | None = None  # set to a list to record every played frame

    def __post_init__(self) -> None:
        self.stats = PlayoutStats()
        self._frames: dict[int, _Entry] = {}
        self._fifo = np.zeros(0, dtype=np.int16)
        self._playing = False
        self._next_ts = 0  # media time of the next frame to decode (ms)
        self._base: float | None = None
        self._last_dur_ms = 20
        self._last_codec: int | None = None
        self._concealed_run_ms = 0
        self._transit = _Transit(self.config.transit_window_s)
        self._jitter = 0.0
        self._prev_transit: float | None = None
        self._span_ms = 0
        self._span_used_ms = 0  # the block span the target delay allows for now
        self._span_grow_since: float | None = None
        self._span_hint_ms = 0  # a longer span the receiver asked the sender for ...
        self._span_hint_until = float("-inf")  # ... expected until then
        self._frame_ms = 0
        # until the loss window says the link is clean, wait for repairs: the start
        # of a talk spurt is where a lost syllable hurts most
        self._fec_active = True
        self._last_loss_at = float("-inf")
        self._pending_since: float | None = None
        self._last_rms = 0.0
        self._fates: deque[tuple[float, bool]] = deque()  # (time, lost) of recent frames
        self._hold_ms = 0  # media time held still while waiting for a possibly late frame
        self._hold_at = 0.0
        #: media time at which the sender stopped (push-to-talk released), from its
        #: keep-alives; nothing at or after it is owed until new frames arrive
        self._spurt_end: int | None = None
        self.period = self.config.period_ms * SAMPLE_RATE // 1000

    # -- inputs ----------------------------------------------------------------------------

    def set_block_span(self, span_ms: int, frame_ms: int) -> None:
        """The sender's block shape: K x frame duration, and the frame duration."""
        self._span_ms = max(0, span_ms)
        self._frame_ms = max(0, frame_ms)
        if self._base is None:
            self._span_used_ms = self._span_ms

    def expect_span(self, span_ms: int, until: float) -> None:
        """The receiver has asked the sender for blocks of ``span_ms``: make room for
        them in the next pause instead of in speech once they arrive (until ``until``,
        when the request is taken as not followed)."""
        self._span_hint_ms, self._span_hint_until = max(0, span_ms), until

    def _wanted_span_ms(self, now: float) -> int:
        hint = self._span_hint_ms if now < self._span_hint_until else 0
        return max(self._span_ms, hint)

    def _follow_span(self, now: float, pause: bool) -> None:
        """Move the span the target delay allows for towards the one wanted: down at once
        (the shrink rule then waits for a pause), up in a pause or after
        ``span_grow_wait_s``."""
        wanted = self._wanted_span_ms(now)
        if wanted <= self._span_used_ms:
            self._span_used_ms = wanted
            self._span_grow_since = None
            return
        if self._span_grow_since is None:
            self._span_grow_since = now
        if pause or now - self._span_grow_since >= self.config.span_grow_wait_s:
            self._span_used_ms = wanted
            self._span_grow_since = None

    def set_loss(self, pre_fec_loss: float | None, now: float) -> None:
        """Measured loss before FEC decides whether the FEC wait is worth its delay.

        Any loss turns the wait on at once; it goes only after ``fec_off_after_s`` with
        a clean window, since bursty links have long clean stretches between bursts.
        """
        if pre_fec_loss is None:
            return
        if pre_fec_loss > self.config.fec_on_loss:
            self._fec_active = True
            self._last_loss_at = now
        elif (
            pre_fec_loss < self.config.fec_off_loss
            and now - self._last_loss_at >= self.config.fec_off_after_s
        ):
            self._fec_active = False

    @property
    def target_delay_s(self) -> float:
        c = self.config
        margin = max(c.min_margin_ms / 1000, c.jitter_factor * self._jitter)
        wait = max(self._span_used_ms if self._fec_active else 0, self._frame_ms) / 1000
        return min(c.max_delay_ms / 1000, wait + margin)

    @property
    def jitter_s(self) -> float:
        """RFC 3550 interarrival jitter of this stream, seconds."""
        return self._jitter

    @property
    def depth_ms(self) -> int:
        """Media time queued ahead of the playout point."""
        if not self._frames:
            return 0
        return max(0, max(self._frames) - self._next_ts + self._last_dur_ms)

    def insert(
        self, ts: int, codec: int, payload: bytes, now: float, recovered: bool, dur_ms: int = 0
    ) -> bool:
        """Queue one frame (unwrapped media time ``ts``, duration ``dur_ms``).

        False if late or duplicate.
        """
        # a frame plays from its start: the target must cover at least its duration,
        # known from the frame itself before the block shape is
        self._frame_ms = max(self._frame_ms, dur_ms)
        if not recovered:
            transit = now - (ts + dur_ms) / 1000
            self._transit.add(now, transit)
            if self._prev_transit is not None:
                self._jitter += (abs(transit - self._prev_transit) - self._jitter) / 16
            self._prev_transit = transit
        if self._playing and self._hold_ms and ts == self._next_ts:
            self._end_hold(lost=False)  # the frame we held for: it was late, not lost
        elif self._playing and ts < self._next_ts:
            self.stats.late += 1
            return False
        if ts in self._frames:
            self.stats.duplicate += 1
            return False
        if self._spurt_end is not None and ts >= self._spurt_end:
            self._spurt_end = None  # a new talk spurt
        self._frames[ts] = _Entry(codec, payload, recovered)
        return True

    def sender_paused(self, ts: int) -> None:
        """The sender has stopped at media time ``ts`` (a keep-alive after its last frame).

        When playout reaches ``ts`` with nothing queued, the talk spurt ends there: no
        concealment is played or counted for frames that were never sent.
        """
        if ts >= self._next_ts or not self._playing:
            self._spurt_end = ts

    # -- output ----------------------------------------------------------------------------

    def _desired_base(self) -> float | None:
        floor = self._transit.floor
        return None if floor is None else floor + self.target_delay_s

    def pull(self, now: float) -> np.ndarray:
        """Exactly one period of PCM for the period starting at ``now``."""
        if not self._playing:
            self._follow_span(now, pause=True)  # idle: a pause
            self._maybe_start(now)
        if self._playing:
            self._maybe_adjust(now)
            while len(self._fifo) < self.period and self._playing:
                self._produce(now)
        if len(self._fifo) >= self.period:
            out, self._fifo = self._fifo[: self.period], self._fifo[self.period :]
            return out
        # not playing (idle or finished a spurt): silence, keep any partial tail
        out = np.zeros(self.period, dtype=np.int16)
        out[: len(self._fifo)] = self._fifo
        self._fifo = np.zeros(0, dtype=np.int16)
        return out

    def _maybe_start(self, now: float) -> None:
        if not self._frames:
            return
        desired = self._desired_base()
        if desired is None:
            return
        step = self.config.period_ms / 1000
        for ts in sorted(self._frames):
            due = desired + ts / 1000
            if due < now - step:  # its time passed while idle: it is late
                del self._frames[ts]
                self.stats.late += 1
                continue
            if due <= now + 1e-6:
                # start on the first period at or after the due time; the base is what
                # actually happens, so later adjustments compare like with like
                self._base = now - ts / 1000
                self._playing = True
                self._next_ts = ts
                self._concealed_run_ms = 0
            return

    def _maybe_adjust(self, now: float) -> None:
        """Follow a changed target delay in one step, in a pause when possible.

        For jitter the buffer grows at once, in one step: waiting would make frames
        late, and a lost frame is worse than a short stretch of concealment. For longer
        blocks it grows in a pause (:meth:`_follow_span`). It shrinks only
        once the lower target has held for ``shrink_after_s``, and only in a pause:
        dropping silence is inaudible, dropping speech is not.
        """
        c = self.config
        if self._base is None:
            return
        self._follow_span(now, pause=self._last_rms < c.quiet_rms)
        desired = self._desired_base()
        if desired is None:
            return
        step = c.period_ms / 1000
        deficit = desired - self._base
        if abs(deficit) < step / 2 or (deficit < 0 and abs(deficit) < 1.5 * step):
            self._pending_since = None
            return
        if self._pending_since is None:
            self._pending_since = now
        pending = now - self._pending_since
        quiet = self._last_rms < c.quiet_rms
        if deficit > 0:
            n = min(c.max_step_periods, max(1, round(deficit / step)))
            # more delay: n periods of concealment while media time holds still
            self._fifo = np.concatenate((self._fifo, self._conceal_samples(n * self.period)))
            self._base += n * step
            self.stats.inserted += n
            self._log_event(now, n, FrameFate.INSERTED)
        else:
            if not quiet or pending < c.shrink_after_s:
                return
            n = min(round(-deficit / step), len(self._fifo) // self.period)
            if n == 0:
                return
            self._fifo = self._fifo[n * self.period :]
            self._base -= n * step
            self.stats.skipped += n
            self._log_event(now, n, FrameFate.SKIPPED)
        self._pending_since = None

    def _log_event(self, now: float, periods: int, fate: FrameFate) -> None:
        if self.log is not None:
            self.log.append(Played(self._next_ts, periods * self.config.period_ms, now, fate))

    def _conceal_samples(self, samples: int, nxt: _Entry | None = None) -> np.ndarray:
        try:
            if nxt is not None:
                return self.decoder.conceal(samples, nxt.codec, nxt.payload)
            return self.decoder.conceal(samples)
        except ValueError:
            return np.zeros(samples, dtype=np.int16)

    def _produce(self, now: float) -> None:
        ts = self._next_ts
        entry = self._frames.pop(ts, None)
        at = now + len(self._fifo) / SAMPLE_RATE  # when its first sample reaches the card
        if entry is not None:
            try:
                pcm = self.decoder.decode(entry.codec, entry.payload)
            except ValueError:
                self.stats.bad_payload += 1
                entry = None
            else:
                dur_ms = len(pcm) * 1000 // SAMPLE_RATE
                fate = FrameFate.RECOVERED if entry.recovered else FrameFate.DECODED
                self._last_rms = float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64))))
                self._emit(pcm, ts, dur_ms, at, fate)
                self._last_codec = entry.codec
                self._concealed_run_ms = 0
                return
        # missing when due
        ahead = [t for t in self._frames if t > ts]
        if not ahead and self._spurt_end is not None and ts >= self._spurt_end:
            self._hold_ms = 0  # what a hold played was the pause's first silence
            self._playing = False  # the sender paused here: the spurt is over, nothing lost
            return
        if not ahead and self._concealed_run_ms >= self.config.max_conceal_ms:
            self._end_hold(lost=True)
            self._playing = False  # the talk spurt is over (or the link is dead)
            self.stats.underruns += 1
            return
        if not ahead and self._hold_ms < self._last_dur_ms:
            # nothing queued behind it: the frame may only be late (a longer frame after a
            # tier switch, a jitter spike). Hold media time still and conceal one period;
            # if the frame turns up, this becomes a delay step instead of a lost frame.
            if self._hold_ms == 0:
                self._hold_at = at
            self._fifo = np.concatenate((self._fifo, self._conceal_samples(self.period)))
            self._hold_ms += self.config.period_ms
            self._concealed_run_ms += self.config.period_ms
            return
        self._end_hold(lost=True)
        ts = self._next_ts
        at = now + len(self._fifo) / SAMPLE_RATE
        if ts in self._frames:
            return  # the held time was the whole frame; play on from the next one
        dur_ms = self._last_dur_ms
        if ahead:
            dur_ms = max(1, min(dur_ms, min(ahead) - ts))
        samples = dur_ms * SAMPLE_RATE // 1000
        nxt = self._frames.get(ts + dur_ms)
        use_fec = nxt is not None and _is_opus(nxt.codec) and _is_opus(self._last_codec)
        pcm = self._conceal_samples(samples, nxt if use_fec else None)
        self._concealed_run_ms += dur_ms
        self._emit(pcm, ts, dur_ms, at, FrameFate.FEC if use_fec else FrameFate.CONCEALED)

    def _end_hold(self, lost: bool) -> None:
        """Settle a hold: the held audio concealed a lost frame's start, or delayed a late one."""
        held = self._hold_ms
        if not held:
            return
        self._hold_ms = 0
        if lost:
            self._next_ts += held
            self._last_dur_ms = max(self._last_dur_ms, held)
            self._count(FrameFate.CONCEALED, self._next_ts - held, held, self._hold_at)
        else:
            periods = held // self.config.period_ms
            self._base = (self._base or 0.0) + held / 1000
            self.stats.inserted += periods
            self._log_event(self._hold_at, periods, FrameFate.INSERTED)

    def residual(self, now: float, window_s: float = 3.0) -> tuple[float, int, int]:
        """Loss after FEC over the last ``window_s``: (fraction of frames concealed,
        frames due, loss events), a loss event being a run of consecutive concealed frames."""
        while self._fates and self._fates[0][0] < now - max(window_s, FATES_KEEP_S):
            self._fates.popleft()
        fates = [x for t, x in self._fates if t >= now - window_s]
        due = len(fates)
        lost = sum(fates)
        events = sum(1 for i, x in enumerate(fates) if x and (i == 0 or not fates[i - 1]))
        return (lost / due if due else 0.0), due, events

    def _emit(self, pcm: np.ndarray, ts: int, dur_ms: int, at: float, fate: FrameFate) -> None:
        self._fifo = np.concatenate((self._fifo, pcm.astype(np.int16, copy=False)))
        self._next_ts = ts + dur_ms
        self._last_dur_ms = dur_ms
        self._count(fate, ts, dur_ms, at)

    def _count(self, fate: FrameFate, ts: int, dur_ms: int, at: float) -> None:
        self._fates.append((at, fate in (FrameFate.CONCEALED, FrameFate.FEC)))
        while self._fates[0][0] < at - FATES_KEEP_S:
            self._fates.popleft()
        if fate is FrameFate.DECODED:
            self.stats.decoded += 1
        elif fate is FrameFate.RECOVERED:
            self.stats.recovered += 1
        elif fate is FrameFate.FEC:
            self.stats.inband_fec += 1
        else:
            self.stats.concealed += 1
        if self.log is not None:
            self.log.append(Played(ts, dur_ms, at, fate))


def _is_opus(codec: int | None) -> bool:
    return codec is not None and codec in (0, 1, 2, 6, 7, 8)
