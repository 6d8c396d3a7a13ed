"""Runs a call: one :class:`~wzp.media.call.CallEngine` over one QUIC connection.

The engine is pure; this is the edge that feeds it. A media clock ticks every 20 ms on
absolute deadlines (never drifting with the work done in a tick): it reads one period
of captured audio, hands complete frames to the engine, lets it keep its timers, sends
what it produced and plays one period. Datagrams and signalling from the connection go
to the engine as they arrive, with the same clock, and its answers leave at once.
Audio comes from a source with ``read() -> 960 samples`` and goes to a sink with
``write(pcm)``: files here, the sound card in the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..media.call import CallEngine
from ..proto import signal as sig
from ..proto.session import EndReason, State
from .quic import WzpConnection

log = logging.getLogger(__name__)

PERIOD_S = 0.020
PERIOD = 960
#: how long a hung-up call keeps its connection for the Hangup to be acknowledged: on a
#: 60 % link with 600 ms RTT each copy gets only a few retransmissions a second
HANGUP_LINGER_S = 5.0
#: a Hangup goes out at once, then again every ``HANGUP_RESEND_S`` on a stream of its own
#: until one copy is acknowledged, at most ``HANGUP_COPIES`` in all. Copies sent together
#: share one UDP packet and are lost together: at 60 % loss the callee missed all three
#: of a burst of copies (and the CONNECTION_CLOSE) about once in ten calls and ended by
#: idle timeout
HANGUP_COPIES = 10
HANGUP_RESEND_S = 0.4
#: tx/rx kbit/s in status are measured over about this long (whoever asks, however often)
RATE_WINDOW_S = 2.0
#: reason phrase prefix of a connection closed after a hang-up ("hangup:Normal")
HANGUP_CLOSE = "hangup:"
#: push-to-talk: audio captured this long before the key went down is sent first, so a
#: word started together with the key press keeps its first syllable
PREROLL_S = 0.1


class AudioSource(Protocol):
    def read(self) -> np.ndarray: ...


class AudioSink(Protocol):
    def write(self, pcm: np.ndarray) -> None: ...


@dataclass
class LinkStatus:
    """What ``wzp dial/listen`` print once a second (and the daemon's status shows)."""

    t: float
    state: str
    tier: str
    loss_pct: float | None
    rtt_ms: float | None
    jitter_ms: float
    tx_kbps: float
    rx_kbps: float
    rekeys: int
    recovered: int
    concealed: int

    def line(self) -> str:
        loss = "-" if self.loss_pct is None else f"{self.loss_pct:.1f}%"
        rtt = "-" if self.rtt_ms is None else f"{self.rtt_ms:.0f}ms"
        return (
            f"t={self.t:5.1f}s state={self.state} tier={self.tier} loss={loss} rtt={rtt} "
            f"jitter={self.jitter_ms:.0f}ms tx={self.tx_kbps:.1f}kbit/s "
            f"rx={self.rx_kbps:.1f}kbit/s recovered={self.recovered} "
            f"concealed={self.concealed} rekeys={self.rekeys}"
        )


class CallRunner:
    """Drives ``engine`` over ``conn`` until the call ends (or :meth:`stop`)."""

    def __init__(
        self,
        engine: CallEngine,
        conn: WzpConnection,
        source: AudioSource,
        sink: AudioSink,
        *,
        busy: Callable[[], bool] = lambda: False,
        on_status: Callable[[LinkStatus], None] | None = None,
        answer_after: float | None = None,
        talk: Callable[[], bool] | None = None,
        on_tick_late: Callable[[float], None] | None = None,
    ) -> None:
        self.engine = engine
        self.conn = conn
        self.source = source
        self.sink = sink
        self.busy = busy
        self.on_status = on_status
        self.answer_after = answer_after  # auto-answer (no button on a command line)
        #: push-to-talk: media is captured only while this says so (None: always)
        self.talk = talk
        #: told how late (s) a media tick ran when it missed its deadline by > 10 ms
        self.on_tick_late = on_tick_late
        self._talking = False
        self._preroll = np.zeros(0, dtype=np.int16)
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self._pending = np.zeros(0, dtype=np.int16)
        self._stop = asyncio.Event()
        self._hangup_streams: list[int] = []
        self._hangup: sig.Hangup | None = None
        self._hangup_next = 0.0
        self._tx_bytes = 0
        self._rx_bytes = 0
        #: (time, bytes sent, bytes received), a sample every 0.5 s of the last few seconds
        self._rate_samples: deque[tuple[float, int, int]] = deque([(0.0, 0, 0)], maxlen=16)
        self._media_totals = (0, 0)  # (recovered, concealed) as last seen while media ran
        conn.on_datagram = self._on_datagram
        conn.on_message = self._on_message
        conn.on_close = self._on_close

    def now(self) -> float:
        return self.loop.time() - self.t0

    def dial(self, peer_fingerprint: bytes) -> None:
        """Call ``peer_fingerprint`` over the (already connected) connection."""
        self.engine.dial(peer_fingerprint, self.now())
        self.engine.on_connected(self.now(), self.conn.peer_fingerprint)

    # -- connection -> engine ----------------------------------------------------------

    def _on_datagram(self, data: bytes) -> None:
        self._rx_bytes += len(data)
        self.engine.on_datagram(data, self.now())

    def _on_message(self, msg: sig.Message | sig.UnknownMessage) -> None:
        if isinstance(msg, sig.CallOffer) and self.busy():
            # another call holds this handset: refuse on this connection only
            self.conn.send_message(sig.Hangup(reason="Busy", call_id=msg.call_id))
            self.loop.call_later(1.0, self.stop)
            return
        self.engine.on_message(msg, self.now())
        self.flush()

    def _on_close(self, conn: WzpConnection) -> None:
        reason = conn.close_reason or "connection closed"
        if reason.startswith(HANGUP_CLOSE) and self.engine.session.live:
            # the peer hung up and closed, and its Hangup message did not get here first
            try:
                end = EndReason(reason[len(HANGUP_CLOSE) :])
            except ValueError:
                end = EndReason.NORMAL
            self.engine.on_peer_closed(end, self.now(), "peer hung up (connection closed)")
        else:
            self.engine.on_transport_closed(self.now(), reason)
        self._stop.set()

    def close_phrase(self) -> str:
        """Reason phrase for closing the connection after this call."""
        end = self.engine.session.end_reason
        return f"{HANGUP_CLOSE}{end.value}" if end is not None else ""

    def flush(self) -> None:
        for msg in self.engine.take_messages():
            try:
                sid = self.conn.send_message(msg)
            except Exception as exc:  # a closing connection: the call is ending anyway
                log.warning("could not send %s: %s", type(msg).__name__, exc)
                continue
            if isinstance(msg, sig.Hangup):
                # on a lossy link one copy may take several round trips; more copies on
                # their own streams follow (the peer ignores the extra ones)
                self._hangup = msg
                self._hangup_streams = [sid]
                self._hangup_next = self.now() + HANGUP_RESEND_S
        for d in self.engine.take_datagrams():
            if self.conn.send_datagram(d):
                self._tx_bytes += len(d)

    def _resend_hangup(self, now: float) -> None:
        """Another copy of our unacknowledged Hangup, spaced from the last one."""
        if self._hangup is None or now < self._hangup_next:
            return
        if len(self._hangup_streams) >= HANGUP_COPIES:
            return
        self._hangup_next = now + HANGUP_RESEND_S
        try:
            self._hangup_streams.append(self.conn.send_message(self._hangup))
        except Exception as exc:  # the connection is closing (the peer closed it): done
            log.debug("no Hangup resent: %s", exc)
            self._hangup = None

    # -- the media clock ---------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self, max_duration: float | None = None) -> EndReason | None:
        """Tick until the call is over (or ``max_duration``, then hang up)."""
        deadline = self.loop.time()
        ended_at: float | None = None
        next_status = 1.0
        while not self._stop.is_set():
            now = self.now()
            self._tick(now)
            self._sample_rates(now)
            if max_duration is not None and now >= max_duration and self.engine.session.live:
                self.engine.hangup(now)
                self.flush()
            if not self.engine.session.live and self.engine.state is State.CLOSED:
                ended_at = ended_at if ended_at is not None else now
                # keep the connection until the peer has the Hangup (it may need
                # retransmitting on a lossy link), at most HANGUP_LINGER_S
                streams = self._hangup_streams
                delivered = not streams or any(self.conn.message_delivered(s) for s in streams)
                if delivered or now - ended_at > HANGUP_LINGER_S:
                    break
                self._resend_hangup(now)
            if self.on_status is not None and now >= next_status:
                next_status += 1.0
                self.on_status(self.status(now))
            deadline += PERIOD_S
            delay = deadline - self.loop.time()
            if delay < -0.010 and self.on_tick_late is not None:
                self.on_tick_late(-delay)
            if delay < -0.2:  # fell far behind (suspended): resynchronise, count nothing
                deadline = self.loop.time()
                delay = 0
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, delay))
        return self.engine.session.end_reason

    def _tick(self, now: float) -> None:
        eng = self.engine
        if (
            self.answer_after is not None
            and eng.state is State.RINGING
            and now - eng.session.entered_at >= self.answer_after
        ):
            eng.answer(now)
        if eng.media is not None:
            # audio is taken from the source only while a call is up: a file given to
            # --in starts at its beginning when the call is answered
            self._take_audio()
            rtt = self.conn.rtt
            if rtt is not None:
                eng.media.rtt_ms = rtt * 1000
            while len(self._pending) >= eng.frame_samples and eng.media is not None:
                n = eng.frame_samples
                # when this frame's first sample was captured (pre-roll: before now)
                eng.capture(self._pending[:n], now - len(self._pending) / 48000)
                self._pending = self._pending[n:]
        else:
            self._pending = self._pending[:0]
        eng.tick(now)
        self.flush()
        self.sink.write(eng.playout(now))

    def _take_audio(self) -> None:
        chunk = self.source.read()
        if self.talk is None:
            self._pending = np.concatenate((self._pending, chunk))
            return
        if self.talk():
            if not self._talking:
                # key down: what was said just before goes first
                self._pending = self._preroll
                self._preroll = np.zeros(0, dtype=np.int16)
                self._talking = True
            self._pending = np.concatenate((self._pending, chunk))
            return
        if self._talking:
            # key up (after the hangover): the open FEC block is closed and sent now
            self._talking = False
            self._pending = self._pending[:0]
            self.engine.stop_sending()
        keep = round(PREROLL_S * 48000)
        self._preroll = np.concatenate((self._preroll, chunk))[-keep:]

    @property
    def talking(self) -> bool:
        return self.talk is None or self._talking

    def _sample_rates(self, now: float) -> None:
        if now - self._rate_samples[-1][0] >= RATE_WINDOW_S / 4:
            self._rate_samples.append((now, self._tx_bytes, self._rx_bytes))

    def status(self, now: float) -> LinkStatus:
        eng = self.engine
        # the newest sample at least RATE_WINDOW_S old (else the oldest one): a status
        # asked twice a second and one asked once a minute both see the last ~2 s
        t_prev, tx_prev, rx_prev = self._rate_samples[0]
        for sample in self._rate_samples:
            if now - sample[0] < RATE_WINDOW_S:
                break
            t_prev, tx_prev, rx_prev = sample
        dt = max(1e-3, now - t_prev)
        tx = (self._tx_bytes - tx_prev) * 8 / dt / 1000
        rx = (self._rx_bytes - rx_prev) * 8 / dt / 1000
        loss = jitter = None
        # the call's totals so far; once its media is gone, what they came to
        recovered, concealed = self._media_totals
        tier = "-"
        if eng.media is not None:
            tier = eng.media.tier.name
            loss_f = eng.media.receiver.loss(now)
            loss = None if loss_f is None else loss_f * 100
            jitter = eng.media.receiver.jitter_ms()
            streams = eng.media.receiver.streams.values()
            recovered = sum(rx_stream.playout.stats.recovered for rx_stream in streams)
            concealed = sum(rx_stream.playout.stats.concealed for rx_stream in streams)
            self._media_totals = (recovered, concealed)
        rtt = self.conn.rtt
        return LinkStatus(
            t=now,
            state=eng.state.value,
            tier=tier,
            loss_pct=loss,
            rtt_ms=None if rtt is None else rtt * 1000,
            jitter_ms=jitter or 0.0,
            tx_kbps=tx,
            rx_kbps=rx,
            rekeys=eng.stats.rekeys,
            recovered=recovered,
            concealed=concealed,
        )
