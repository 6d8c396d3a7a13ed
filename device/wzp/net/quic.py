"""QUIC transport for a wzp endpoint (SPEC 7): thin asyncio adapters over aioquic.

One :class:`WzpConnection` per call (or relay member). It carries media in QUIC DATAGRAM
frames and signalling on streams, and knows nothing about calls: a call engine (the pure
core) or a relay drives it.

* **Configuration** (:func:`make_configuration`): QUIC v1 only, TLS 1.3, ALPN ``wzp``,
  DATAGRAM on (``max_datagram_frame_size`` 65535), idle timeout 30 s. Each side presents
  its long-lived certificate self-signed with its Ed25519 identity key
  (:mod:`wzp.net.certs`); nobody does CA verification, TLS 1.3's CertificateVerify proves
  possession of the certificate key and :attr:`WzpConnection.peer_fingerprint` is the
  SPEC 5.2 fingerprint of that key. The server asks the client for its certificate too,
  so the fingerprint is known both ways (aioquic only has a private switch for this,
  ``tls.Context._request_client_certificate``; it is set in
  :class:`_WzpQuicConnection`). A client that gives ``expected_fingerprint`` to
  :func:`connect_wzp` closes the connection and raises :class:`PeerFingerprintMismatch`
  when the key differs, before any message is sent. SNI is ``direct`` on a direct call
  and the room name on a relay; the server side reads it as
  :attr:`WzpConnection.server_name`.
* **Signalling** (SPEC 3.1): :meth:`WzpConnection.send_message` opens a new
  bidirectional stream per message, writes ``u32 length || JSON`` and FIN. Received
  streams are read with :class:`wzp.proto.framing.FrameReader` and decoded with
  :func:`wzp.proto.signal.decode`, and delivered in stream-id order. A stream that breaks
  the framing (oversize length, truncation, extra bytes), does not decode, or is
  unidirectional is refused (STOP_SENDING + RESET_STREAM), counted in
  ``counters.stream_errors`` and never ends the connection. ``UnknownMessage`` values are
  delivered (the engine logs and skips them). ``Ping`` is answered with ``Pong`` here
  (SPEC 7: on any connection) unless ``auto_pong`` is off. The reverse half of every
  stream is unused: it is finished with an empty FIN so that both sides free the stream.
* **Keep-alive**: a QUIC PING every 5 s (NAT bindings, RTT samples);
  :attr:`WzpConnection.rtt` is aioquic's smoothed RTT.

Media datagrams
---------------

*Coalescing.* aioquic queues DATAGRAM frames (``send_datagram_frame`` appends to
``QuicConnection._datagrams_pending``) and its packet writer puts **as many pending
DATAGRAM frames as fit into one QUIC packet**; a 1-RTT packet is always alone in its UDP
datagram, so several media packets would share one UDP packet and be lost together, which
defeats FEC. :meth:`WzpConnection.transmit` therefore hands aioquic one pending datagram
at a time (the others are held back for the duration of one ``datagrams_to_send`` call)
and repeats while datagrams go out, so each media packet leaves in its own UDP packet.
:meth:`WzpConnection.send_datagram` calls it at once, so normally nothing waits at all.

*Congestion control.* aioquic decides what may be sent in ``datagrams_to_send``: the
packet builder's ``max_flight_bytes`` is ``congestion_window - bytes_in_flight``, and
``_write_application`` holds every packet back while the pacer says so; the pacer spaces
packets ``max_datagram_size / (congestion_window / smoothed_rtt)`` seconds apart,
charging each packet as a full 1200 bytes however small it is. DATAGRAM frames count
towards both. With the default New Reno, loss halves the window down to 2 packets
(2400 bytes), so at 300 ms RTT the pacer allows about 6.7 packets/s: a 50 packet/s voice
stream under 50 % loss ends up with almost everything stuck in the queue (the team
measured 163 of 1250 sent in 25 s). Voice must not back off on random loss: the media
layer adapts its own rate from quality reports (SPEC 4) and the link loses packets
whether we send them or not.

So connections use :class:`VoiceCongestionControl`, registered with aioquic as
``"wzp-voice"``: New Reno whose window never falls below a floor sized for
``floor_packets_per_s`` (200) full-size packets per smoothed RTT. That keeps the pacing
rate at 200 packets/s or more and ``bytes_in_flight`` far below the window for any voice
stream, whatever the loss, while Reno still governs above the floor. The floor follows
the RTT (an RTT-scaled window is a rate), so it means the same at 50 ms and at 800 ms.
wzp carries no bulk data (signalling messages are small), so nothing else can use the
floor to flood the link. (tests/net/test_quic.py: 50 % loss each way, 300 ms RTT,
50 datagrams/s of 200 bytes for 5 s: all 250 leave with ``"wzp-voice"``, 27-42 % with
``"reno"``, whose window sits at 2400 bytes.) On top of that,
:meth:`WzpConnection.send_datagram` never lets more than :data:`MAX_PENDING_DATAGRAMS`
(2) wait in aioquic's queue and drops (and counts) a datagram it cannot queue or that
the socket buffer cannot take; it never raises for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aioquic import tls
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.congestion.base import register_congestion_control
from aioquic.quic.congestion.reno import RenoCongestionControl
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicPacketType, QuicProtocolVersion, pull_quic_header
from aioquic.quic.packet_builder import PACKET_NUMBER_SEND_SIZE
from aioquic.quic.retry import QuicRetryTokenHandler
from cryptography import x509

from wzp.crypto.identity import Identity, fingerprint_text, parse_fingerprint
from wzp.net.certs import CertificateKeyError, fingerprint_of_certificate, make_certificate
from wzp.proto.framing import FrameReader, FramingError, frame
from wzp.proto.signal import Message, Ping, Pong, SignalError, UnknownMessage, decode, encode

__all__ = [
    "ALPN",
    "DIRECT_SERVER_NAME",
    "IDLE_TIMEOUT_S",
    "KEEPALIVE_INTERVAL_S",
    "MAX_DATAGRAM_FRAME_SIZE",
    "MAX_PENDING_DATAGRAMS",
    "VOICE_CONGESTION_CONTROL",
    "WZP_ERROR_BAD_STREAM",
    "WZP_ERROR_PEER_IDENTITY",
    "PeerFingerprintMismatch",
    "VoiceCongestionControl",
    "WzpConnection",
    "WzpCounters",
    "WzpServer",
    "connect_wzp",
    "make_configuration",
    "serve_wzp",
]

log = logging.getLogger(__name__)

ALPN = "wzp"
DIRECT_SERVER_NAME = "direct"
MAX_DATAGRAM_FRAME_SIZE = 65535
IDLE_TIMEOUT_S = 30.0
KEEPALIVE_INTERVAL_S = 5.0
#: Datagrams allowed to wait in aioquic's queue; one more is dropped and counted.
MAX_PENDING_DATAGRAMS = 2
#: A datagram is dropped when the socket transport already buffers this many bytes.
SEND_BUFFER_LIMIT = 64 * 1024
#: Received items kept for ``recv_*`` when no callback is set (oldest dropped beyond).
RX_QUEUE_LIMIT = 1024
#: A complete message waits at most this long for a lower stream id (SPEC 3.1 order),
#: then is delivered (the lower one too, if it ever completes). On a 65 % link QUIC's
#: backed-off retransmission of a lost stream can take over 10 s, and everything behind
#: it waited as long, including the copies of a CallOffer, CallAnswer, Rekey or Hangup
#: that the call engine sends on fresh streams exactly so as not to depend on that one
#: stream: with a 10 s hold 5 of 16 calls got set up there, with 1.5 s 14 of 16.
ORDER_HOLD_S = 1.5
#: :func:`connect_wzp` starts a fresh handshake this often while none has finished.
#: QUIC doubles the retransmission timeout after every unanswered flight (RFC 9002
#: 6.2.1), so one handshake that loses two or three flights in a row on a 70 % link
#: waits 5-10 s before its next try; a new attempt starts with a short timeout again.
#: Measured (``wzp bench transport``: 300 ms one way, 15 s to connect, 40 tries a point):
#: one handshake connected 33/40 times at 70 % random loss and 31-34/40 at 30-70 %
#: bursty loss; a fresh attempt every 3 s 39/40 and 40/40.
ATTEMPT_EVERY_S = 3.0
#: Handshakes a listening socket keeps in progress before a new client must first prove
#: its address with a Retry round trip (RFC 9000 8.1.2). Each costs the server some
#: 20-80 KB for up to the 30 s idle timeout, and a 1200-byte datagram that merely looks like
#: a QUIC Initial starts one: without a limit anyone who can send UDP to a relay could
#: fill its memory (QA measured +370 MB for 20 000 such datagrams). Past the limit, the
#: server answers new Initials statelessly; a spoofed sender never sees the Retry, a
#: real client pays one more round trip.
MAX_HALF_OPEN = 64
VOICE_CONGESTION_CONTROL = "wzp-voice"

#: Application error codes (RESET_STREAM / STOP_SENDING / CONNECTION_CLOSE).
WZP_ERROR_NONE = 0x0
WZP_ERROR_BAD_STREAM = 0x101
WZP_ERROR_PEER_IDENTITY = 0x102

# 1-RTT packet overhead around one DATAGRAM frame: first byte, a connection id of up to
# 20 bytes, aioquic's 2-byte packet number, AEAD tag; frame type and a 2-byte length.
_AEAD_TAG = 16
_PACKET_OVERHEAD = 1 + 20 + PACKET_NUMBER_SEND_SIZE + _AEAD_TAG
_FRAME_OVERHEAD = 1 + 2


# --------------------------------------------------------------------- congestion control


class VoiceCongestionControl(RenoCongestionControl):
    """New Reno whose congestion window never drops below a voice floor.

    ``floor = floor_packets_per_s * max_datagram_size * srtt`` (srtt at least
    ``min_floor_rtt_s``), where ``srtt`` is smoothed here from the raw RTT samples the same
    way aioquic smooths its own (which subtracts the ACK delay and so is never larger): the
    pacer's rate ``window / srtt`` is therefore never below ``floor_packets_per_s``
    full-size packets per second. A relay may subclass it with a larger rate and register
    it under another name.
    """

    floor_packets_per_s: float = 200.0
    min_floor_rtt_s: float = 0.1

    def __init__(self, *, max_datagram_size: int) -> None:
        self._floor_unit = self.floor_packets_per_s * max_datagram_size
        self._srtt: float | None = None
        self._window = 0
        super().__init__(max_datagram_size=max_datagram_size)

    @property  # type: ignore[override]
    def congestion_window(self) -> int:
        """Reno's window, raised to :attr:`window_floor`."""
        return max(self._window, self.window_floor)

    @congestion_window.setter
    def congestion_window(self, value: int) -> None:
        self._window = int(value)

    @property
    def window_floor(self) -> int:
        srtt = self.min_floor_rtt_s if self._srtt is None else self._srtt
        return int(self._floor_unit * max(srtt, self.min_floor_rtt_s))

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        self._srtt = rtt if self._srtt is None else 0.875 * self._srtt + 0.125 * rtt
        super().on_rtt_measurement(now=now, rtt=rtt)


register_congestion_control(VOICE_CONGESTION_CONTROL, VoiceCongestionControl)


# --------------------------------------------------------------------- configuration


def _check_server_name(server_name: str) -> str:
    try:
        ipaddress.ip_address(server_name)
    except ValueError:
        pass
    else:
        raise ValueError(f"server name {server_name!r} is an IP address: SNI would not be sent")
    if not server_name or not server_name.isascii() or len(server_name) > 253:
        raise ValueError(f"server name must be 1-253 ASCII characters, got {server_name!r}")
    return server_name


def make_configuration(
    identity: Identity,
    is_client: bool,
    server_name: str = DIRECT_SERVER_NAME,
    *,
    congestion_control: str = VOICE_CONGESTION_CONTROL,
    idle_timeout: float = IDLE_TIMEOUT_S,
) -> QuicConfiguration:
    """The aioquic configuration of a wzp endpoint (SPEC 7).

    ``server_name`` (SNI: ``"direct"`` or a relay room) is used by clients only.
    ``congestion_control`` is an aioquic algorithm name (``"reno"`` for comparison).
    """
    cert, key = make_certificate(identity)
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        idle_timeout=idle_timeout,
        congestion_control_algorithm=congestion_control,
        max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE,
        supported_versions=[QuicProtocolVersion.VERSION_1],
    )
    config.certificate = cert
    config.private_key = key
    if is_client:
        config.server_name = _check_server_name(server_name)
        # Self-signed: no CA check. CertificateVerify is still checked, and the caller
        # compares peer_fingerprint with the fingerprint it expects.
        config.verify_mode = ssl.CERT_NONE
    return config


class _WzpTlsContext(tls.Context):
    """Server-side TLS context that remembers the SNI the client sent (room or direct)."""

    client_server_name: str | None = None

    def _server_handle_hello(
        self, input_buf: Buffer, initial_buf: Buffer, handshake_buf: Buffer
    ) -> None:
        try:
            hello = tls.pull_client_hello(Buffer(data=input_buf.data_slice(0, input_buf.capacity)))
            self.client_server_name = hello.server_name
        except Exception:  # a malformed hello fails in the real parse just below
            pass
        super()._server_handle_hello(input_buf, initial_buf, handshake_buf)


class _WzpQuicConnection(QuicConnection):
    """aioquic's connection plus: the server requests the client's certificate, keeps SNI."""

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if not self._is_client:
            self.tls.__class__ = _WzpTlsContext
            self.tls._request_client_certificate = True


# --------------------------------------------------------------------- connection


class PeerFingerprintMismatch(ConnectionError):
    """The peer's certificate key is not the identity the caller expected."""

    def __init__(self, expected: bytes, actual: bytes | None) -> None:
        shown = fingerprint_text(actual) if actual is not None else "no Ed25519 certificate"
        super().__init__(
            f"peer fingerprint mismatch: expected {fingerprint_text(expected)}, got {shown}"
        )
        self.expected = expected
        self.actual = actual


@dataclass
class WzpCounters:
    """Counters of one connection (monotonic; read them, never write them)."""

    datagrams_sent: int = 0
    """Datagrams written into a UDP packet."""
    datagrams_received: int = 0
    datagrams_dropped: int = 0
    """Datagrams refused by ``send_datagram`` (not ready, too big, queue or buffer full) or
    still queued when the connection ended."""
    datagrams_rx_dropped: int = 0
    """Received datagrams dropped because nobody read the receive queue."""
    messages_sent: int = 0
    messages_received: int = 0
    messages_rx_dropped: int = 0
    stream_errors: int = 0
    """Refused incoming streams: framing errors, oversize, undecodable, unidirectional."""
    streams_reset_by_peer: int = 0
    last_stream_error: str | None = field(default=None)
    socket_errors: int = 0
    """ICMP errors reported on the socket once connected (port unreachable while the peer
    restarts, say): counted, the connection goes on; QUIC's idle timeout ends it if the
    peer stays away."""


class _RxStream:
    __slots__ = ("payload", "reader")

    def __init__(self) -> None:
        self.reader = FrameReader()
        self.payload: bytes | None = None


_CLOSED: Any = object()


class WzpConnection(QuicConnectionProtocol):
    """One wzp QUIC connection (client or server side); see the module docstring.

    Receiving: set ``on_datagram`` / ``on_message`` to get callbacks (called in the event
    loop; exceptions are logged, never propagated), or leave them ``None`` and use
    :meth:`recv_datagram` / :meth:`recv_message` (or iterate :meth:`datagrams` /
    :meth:`messages`), which raise ``ConnectionError`` once the connection has ended and
    the queue is empty. ``on_close`` is called once when the connection has ended.
    """

    def __init__(self, quic: QuicConnection, stream_handler: Any = None) -> None:
        super().__init__(quic, stream_handler=stream_handler)
        if type(quic) is QuicConnection:  # made by aioquic's QuicServer
            quic.__class__ = _WzpQuicConnection
        self.on_datagram: Callable[[bytes], None] | None = None
        self.on_message: Callable[[Message | UnknownMessage], None] | None = None
        self.on_close: Callable[[WzpConnection], None] | None = None
        self.auto_pong = True
        self.counters = WzpCounters()
        self.alpn: str | None = None
        self.close_error_code: int | None = None
        self.close_reason: str | None = None
        self._ready = False
        self._closing = False
        self._ended = False
        self._owns_transport = False
        self._on_established: Callable[[WzpConnection], None] | None = None
        self._on_ended: Callable[[WzpConnection], None] | None = None
        self._established: asyncio.Future[None] | None = None
        #: ICMP "port unreachable" before the handshake finished (a client only)
        self._refused: ConnectionRefusedError | None = None
        self._keepalive_handle: asyncio.TimerHandle | None = None
        self._ping_uid = 0
        self._peer_fp: bytes | None = None
        self._peer_fp_done = False
        self._rx_datagrams: asyncio.Queue[bytes] = asyncio.Queue()
        self._rx_messages: asyncio.Queue[Message | UnknownMessage] = asyncio.Queue()
        # incoming signalling streams: the peer's bidirectional ids are 0 mod 4 when the
        # peer is the client, 1 mod 4 when it is the server
        self._rx_next = 1 if quic.configuration.is_client else 0
        self._rx_open: dict[int, _RxStream] = {}
        self._rx_ready: dict[int, Message | UnknownMessage | None] = {}
        self._rx_skipped: set[int] = set()
        self._rx_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ properties

    @property
    def is_client(self) -> bool:
        return self._quic.configuration.is_client

    @property
    def is_connected(self) -> bool:
        """Handshake done and the connection neither closing (either side) nor ended."""
        return self._ready and not self._shutting_down

    @property
    def _shutting_down(self) -> bool:
        return self._closing or self._ended or self._quic._close_event is not None

    @property
    def server_name(self) -> str | None:
        """SNI: ours on a client, the client's on a server (``"direct"`` or a room)."""
        if self.is_client:
            return self._quic.configuration.server_name
        return getattr(getattr(self._quic, "tls", None), "client_server_name", None)

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        """The certificate the peer presented in the TLS handshake, if any."""
        return getattr(getattr(self._quic, "tls", None), "_peer_certificate", None)

    @property
    def peer_fingerprint(self) -> bytes | None:
        """SPEC 5.2 fingerprint of the peer's certificate key (``None``: none or not Ed25519)."""
        if not self._peer_fp_done:
            cert = self.peer_certificate
            if cert is None:
                return None
            try:
                self._peer_fp = fingerprint_of_certificate(cert)
            except (CertificateKeyError, ValueError):
                self._peer_fp = None
            self._peer_fp_done = True
        return self._peer_fp

    @property
    def rtt(self) -> float | None:
        """aioquic's smoothed RTT in seconds, ``None`` before the first sample."""
        loss = self._quic._loss
        return loss._rtt_smoothed if loss._rtt_initialized else None

    @property
    def congestion_window(self) -> int:
        return self._quic._loss.congestion_window

    @property
    def bytes_in_flight(self) -> int:
        return self._quic._loss.bytes_in_flight

    @property
    def max_datagram_payload(self) -> int:
        """Largest datagram :meth:`send_datagram` accepts (0 until the peer allows any)."""
        remote = self._quic._remote_max_datagram_frame_size
        if remote is None:
            return 0
        in_packet = self._quic._max_datagram_size - _PACKET_OVERHEAD - _FRAME_OVERHEAD
        return max(0, min(in_packet, remote - _FRAME_OVERHEAD))

    @property
    def pending_datagrams(self) -> int:
        """Datagrams waiting in aioquic's queue (at most :data:`MAX_PENDING_DATAGRAMS`)."""
        return len(self._quic._datagrams_pending)

    # ------------------------------------------------------------------ sending

    def send_datagram(self, data: bytes | bytearray | memoryview) -> bool:
        """Send one media datagram in its own UDP packet; ``False`` (counted) if dropped.

        Never raises for a full queue or buffer, a datagram too big to send unsplit
        (SPEC 7), or a connection that is not (or no longer) established.
        """
        c = self.counters
        pending = self._quic._datagrams_pending
        if (
            not self.is_connected
            or len(data) > self.max_datagram_payload
            or len(pending) >= MAX_PENDING_DATAGRAMS
            or self._transport is None
            or self._transport.get_write_buffer_size() > SEND_BUFFER_LIMIT
        ):
            c.datagrams_dropped += 1
            return False
        self._quic.send_datagram_frame(bytes(data))
        self.transmit()
        return True

    def send_message(self, msg: Message) -> int:
        """Send a signalling message on a new bidirectional stream; return its stream id.

        Raises ``ConnectionError`` when the connection is closing or ended (and
        ``TypeError`` for a value that is not a message).
        """
        if self._shutting_down:
            raise ConnectionError(f"connection is closed: {self.close_reason or 'closing'}")
        data = frame(encode(msg))
        stream_id = self._quic.get_next_available_stream_id()
        self._quic.send_stream_data(stream_id, data, end_stream=True)
        self.counters.messages_sent += 1
        self.transmit()
        return stream_id

    def message_delivered(self, stream_id: int) -> bool:
        """True once the peer has acknowledged all of a message we sent (data and FIN)."""
        stream = self._quic._streams.get(stream_id)
        return stream is None or stream.sender.is_finished

    def transmit(self) -> None:
        """aioquic's transmit, but one DATAGRAM frame per UDP packet (module docstring)."""
        pending = self._quic._datagrams_pending
        while True:
            held: list[bytes] = []
            while len(pending) > 1:
                held.append(pending.pop())
            before = len(pending)
            try:
                super().transmit()
            finally:
                went = before - len(pending)
                pending.extend(reversed(held))
            self.counters.datagrams_sent += went
            if not went or not pending:
                return

    def close(self, error_code: int = WZP_ERROR_NONE, reason_phrase: str = "") -> None:
        """Close the connection (CONNECTION_CLOSE with ``error_code`` and the reason)."""
        self._closing = True
        super().close(error_code=error_code, reason_phrase=reason_phrase)

    async def wait_established(self) -> None:
        """Until the handshake is done (ALPN checked); ``ConnectionError`` if it ends first.

        Unlike aioquic's ``wait_connected``, whose shielded future is failed later with
        nobody to read it ("Future exception was never retrieved") when the wait was
        cancelled, the future here is the one awaited, so a timeout cancels it for good.
        """
        if self._ready:
            return
        if self._ended:
            raise ConnectionError(self.close_reason or "closed")
        if self._refused is not None:
            raise self._refused
        if self._established is None or self._established.done():
            self._established = self._loop.create_future()
        await self._established

    async def aclose(self, reason_phrase: str = "", timeout: float = 5.0) -> None:
        """Close, wait until the connection has ended (at most ``timeout`` s)."""
        self.close(reason_phrase=reason_phrase)
        try:
            await asyncio.wait_for(self.wait_closed(), timeout)
        except TimeoutError:  # CONNECTION_CLOSE is out; the closing period is a courtesy
            log.debug("connection did not end within %.1f s of closing", timeout)
        finally:  # cancelled too (a daemon stopping): the socket goes with the connection
            if self._owns_transport and self._transport is not None:
                self._transport.close()

    # ------------------------------------------------------------------ receiving API

    async def recv_datagram(self) -> bytes:
        """The next received datagram (queue mode); ``ConnectionError`` once ended."""
        return await self._get(self._rx_datagrams)

    async def recv_message(self) -> Message | UnknownMessage:
        """The next received message (queue mode); ``ConnectionError`` once ended."""
        return await self._get(self._rx_messages)

    async def datagrams(self) -> AsyncIterator[bytes]:
        """Received datagrams until the connection ends."""
        while True:
            try:
                yield await self.recv_datagram()
            except ConnectionError:
                return

    async def messages(self) -> AsyncIterator[Message | UnknownMessage]:
        """Received messages until the connection ends."""
        while True:
            try:
                yield await self.recv_message()
            except ConnectionError:
                return

    async def _get(self, queue: asyncio.Queue[Any]) -> Any:
        item = await queue.get()
        if item is _CLOSED:
            queue.put_nowait(_CLOSED)  # for the next reader
            raise ConnectionError(f"connection ended: {self.close_reason or 'closed'}")
        return item

    def _enqueue(self, queue: asyncio.Queue[Any], item: Any) -> bool:
        overflow = queue.qsize() >= RX_QUEUE_LIMIT
        if overflow:
            queue.get_nowait()
        queue.put_nowait(item)
        return not overflow

    # ------------------------------------------------------------------ events

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.DatagramFrameReceived):
            self._on_datagram(event.data)
        elif isinstance(event, events.StreamDataReceived):
            self._on_stream_data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, events.StreamReset):
            self._on_stream_reset(event.stream_id)
        elif isinstance(event, events.HandshakeCompleted):
            self._on_handshake(event)
        elif isinstance(event, events.ConnectionTerminated):
            self._on_terminated(event)

    def _on_handshake(self, event: events.HandshakeCompleted) -> None:
        self.alpn = event.alpn_protocol
        if self.alpn != ALPN:  # aioquic refuses a missing ALPN already; belt and braces
            self.close(WZP_ERROR_BAD_STREAM, f"ALPN {self.alpn!r} is not {ALPN!r}")
            return
        self._ready = True
        self._keepalive_handle = self._loop.call_later(KEEPALIVE_INTERVAL_S, self._keepalive)
        if self._established is not None and not self._established.done():
            self._established.set_result(None)
        if self._on_established is not None:
            self._on_established(self)

    def error_received(self, exc: Exception) -> None:
        """An ICMP error on the socket (reported only on a client's connected socket).

        Before the handshake, "port unreachable" means nothing listens at that address:
        the attempt fails at once (``ConnectionRefusedError``) instead of waiting out the
        dial timeout. Afterwards it is counted and the connection goes on: a peer that is
        restarting may answer again, and one that is gone is found by the idle timeout.
        """
        if self._ready or self._ended:
            self.counters.socket_errors += 1
            log.debug("socket error on a connected wzp connection: %s", exc)
            return
        if isinstance(exc, ConnectionRefusedError):
            if self._refused is None:
                self._refused = ConnectionRefusedError("port unreachable: nothing listens there")
            if self._established is not None and not self._established.done():
                self._established.set_exception(self._refused)
            return
        self.counters.socket_errors += 1
        log.debug("socket error during the handshake: %s", exc)

    def _keepalive(self) -> None:
        self._keepalive_handle = None
        if not self.is_connected:
            return
        self._ping_uid -= 1  # negative: never one of aioquic's ping() waiter ids
        self._quic.send_ping(self._ping_uid)
        self.transmit()
        self._keepalive_handle = self._loop.call_later(KEEPALIVE_INTERVAL_S, self._keepalive)

    def _on_terminated(self, event: events.ConnectionTerminated) -> None:
        if self._ended:
            return
        self._ended = True
        self._ready = False
        self.close_error_code = event.error_code
        self.close_reason = event.reason_phrase or f"error code {event.error_code:#x}"
        for handle in (self._keepalive_handle, self._rx_timer):
            if handle is not None:
                handle.cancel()
        self._keepalive_handle = self._rx_timer = None
        self.counters.datagrams_dropped += len(self._quic._datagrams_pending)
        self._quic._datagrams_pending.clear()
        self._enqueue(self._rx_datagrams, _CLOSED)
        self._enqueue(self._rx_messages, _CLOSED)
        if self._established is not None and not self._established.done():
            self._established.set_exception(ConnectionError(self.close_reason))
        if self._owns_transport and self._transport is not None:
            self._transport.close()
        if self._on_ended is not None:
            self._on_ended(self)
        if self.on_close is not None:
            self._call(self.on_close, self)

    def _call(self, callback: Callable[[Any], None], arg: Any) -> None:
        try:
            callback(arg)
        except Exception:
            log.exception("wzp connection callback %r failed", callback)

    def _on_datagram(self, data: bytes) -> None:
        self.counters.datagrams_received += 1
        if self.on_datagram is not None:
            self._call(self.on_datagram, data)
        elif not self._enqueue(self._rx_datagrams, data):
            self.counters.datagrams_rx_dropped += 1

    # ------------------------------------------------------------------ signalling streams

    def _is_peer_bidi(self, stream_id: int) -> bool:
        return stream_id & 3 == (1 if self.is_client else 0)

    def _rx_handled(self, stream_id: int) -> bool:
        return stream_id in self._rx_ready or (
            stream_id < self._rx_next and stream_id not in self._rx_skipped
        )

    def _on_stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if not self._is_peer_bidi(stream_id):
            # A unidirectional stream is necessarily the peer's: not part of SPEC 3.1.
            # Data on a bidirectional one is the unused reverse half of our own: ignored.
            if stream_id & 2 and stream_id not in self._rx_skipped:
                self._rx_skipped.add(stream_id)
                self._stream_error(stream_id, "unidirectional stream refused", both=False)
            return
        if self._rx_handled(stream_id):
            return  # late data on a stream already refused or delivered
        rx = self._rx_open.get(stream_id)
        if rx is None:
            rx = self._rx_open[stream_id] = _RxStream()
        try:
            for payload in rx.reader.feed(data):
                rx.payload = payload
            if end_stream:
                rx.reader.end_of_stream()
        except FramingError as exc:
            self._stream_error(stream_id, f"framing: {exc}")
            self._rx_finish(stream_id, None)
            return
        if not end_stream:
            return
        assert rx.payload is not None  # end_of_stream() checked that one message came
        try:
            msg = decode(rx.payload)
        except SignalError as exc:
            self._stream_error(stream_id, f"message: {exc}", stop=False)
            self._rx_finish(stream_id, None)
            return
        self._finish_reverse_half(stream_id)
        self._rx_finish(stream_id, msg)

    def _on_stream_reset(self, stream_id: int) -> None:
        if not self._is_peer_bidi(stream_id) or self._rx_handled(stream_id):
            return
        self.counters.streams_reset_by_peer += 1
        with contextlib.suppress(ValueError):
            self._quic.reset_stream(stream_id, WZP_ERROR_NONE)
        self._transmit_soon()
        self._rx_finish(stream_id, None)

    def _stream_error(
        self, stream_id: int, text: str, *, stop: bool = True, both: bool = True
    ) -> None:
        self.counters.stream_errors += 1
        self.counters.last_stream_error = f"stream {stream_id}: {text}"
        log.warning("refused signalling stream %d: %s", stream_id, text)
        try:
            if stop:
                self._quic.stop_stream(stream_id, WZP_ERROR_BAD_STREAM)
            if both:
                self._quic.reset_stream(stream_id, WZP_ERROR_BAD_STREAM)
        except ValueError:  # stream already gone
            pass
        self._transmit_soon()

    def _finish_reverse_half(self, stream_id: int) -> None:
        try:
            self._quic.send_stream_data(stream_id, b"", end_stream=True)
        except ValueError:
            return
        self._transmit_soon()

    def _rx_finish(self, stream_id: int, item: Message | UnknownMessage | None) -> None:
        self._rx_open.pop(stream_id, None)
        if stream_id in self._rx_skipped:  # released past already: deliver late
            self._rx_skipped.discard(stream_id)
            if item is not None:
                self._deliver(item)
            return
        self._rx_ready[stream_id] = item
        self._rx_drain()

    def _rx_drain(self) -> None:
        while self._rx_next in self._rx_ready:
            item = self._rx_ready.pop(self._rx_next)
            self._rx_next += 4
            if item is not None:
                self._deliver(item)
        if self._rx_ready and self._rx_timer is None:
            self._rx_timer = self._loop.call_later(ORDER_HOLD_S, self._rx_release)
        elif not self._rx_ready and self._rx_timer is not None:
            self._rx_timer.cancel()
            self._rx_timer = None

    def _rx_release(self) -> None:
        """A lower stream never completed: stop waiting for it (it is delivered if it does)."""
        self._rx_timer = None
        if not self._rx_ready:
            return
        first = min(self._rx_ready)
        log.info(  # routine on a lossy link: the lower stream is usually a copy's twin
            "signalling streams %d..%d still missing after %.1f s: delivering past them",
            self._rx_next,
            first - 4,
            ORDER_HOLD_S,
        )
        self._rx_skipped.update(range(self._rx_next, first, 4))
        self._rx_next = first
        self._rx_drain()

    def _deliver(self, msg: Message | UnknownMessage) -> None:
        self.counters.messages_received += 1
        if isinstance(msg, UnknownMessage):
            log.info("unknown signalling message %r skipped by the transport's caller", msg.name)
        if isinstance(msg, Ping) and self.auto_pong:
            if self.is_connected:
                self.send_message(Pong(timestamp_ms=msg.timestamp_ms))
            return
        if self.on_message is not None:
            self._call(self.on_message, msg)
        elif not self._enqueue(self._rx_messages, msg):
            self.counters.messages_rx_dropped += 1


# --------------------------------------------------------------------- client


def _udp_socket(family: int, host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to ``(host, port)``; IPv6 sockets are IPv6-only."""
    sock = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _as_fingerprint(value: bytes | str) -> bytes:
    if isinstance(value, str):
        return parse_fingerprint(value)
    fp = bytes(value)
    if len(fp) != 16:
        raise ValueError("a fingerprint has 16 bytes")
    return fp


async def connect_wzp(
    host: str,
    port: int,
    identity: Identity,
    expected_fingerprint: bytes | str | None = None,
    server_name: str = DIRECT_SERVER_NAME,
    *,
    timeout: float = 10.0,
    local_port: int = 0,
    congestion_control: str = VOICE_CONGESTION_CONTROL,
    attempt_every: float | None = ATTEMPT_EVERY_S,
) -> WzpConnection:
    """Connect to a wzp endpoint or relay and complete the handshake.

    The local socket has the family of ``host``'s first address (IPv6 sockets are
    IPv6-only). While no handshake has finished, a new attempt (its own socket and
    connection) starts every ``attempt_every`` seconds (:data:`ATTEMPT_EVERY_S`; None, or
    a fixed ``local_port``, makes one attempt only); the first to finish is kept and the
    others are closed. With ``expected_fingerprint`` (16 bytes or text), a peer whose
    certificate key has another fingerprint is closed (error code
    :data:`WZP_ERROR_PEER_IDENTITY`) and :class:`PeerFingerprintMismatch` is raised.
    Raises ``TimeoutError`` when no handshake finishes within ``timeout`` seconds and
    ``ConnectionError`` when the peer ends one, ``ConnectionRefusedError`` (at once) when
    the peer's host answers that nothing listens on the port (neither is retried). Close the
    connection with :meth:`WzpConnection.aclose`; the socket goes with it.
    """
    expected = _as_fingerprint(expected_fingerprint) if expected_fingerprint is not None else None
    config = make_configuration(identity, True, server_name, congestion_control=congestion_control)
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP)
    family, _, _, _, addr = infos[0]
    bind_host = "::" if family == socket.AF_INET6 else "0.0.0.0"

    async def attempt() -> WzpConnection:
        sock = _udp_socket(family, bind_host, local_port)
        quic = _WzpQuicConnection(configuration=config)
        try:
            # connected, so that the kernel reports ICMP "port unreachable" (it does not
            # on an unconnected UDP socket): a peer whose daemon is not running is said
            # at once, not after the dial timeout. Nothing is lost by it: a client drops
            # packets from any other address than the one it dialled anyway (RFC 9000
            # section 9; aioquic does, tested)
            sock.connect(addr)
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: WzpConnection(quic), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        conn: WzpConnection = protocol  # type: ignore[assignment]
        conn._owns_transport = True
        try:
            conn.connect(addr)
            await conn.wait_established()
        except BaseException:
            conn.close(reason_phrase="handshake failed")
            transport.close()
            raise
        return conn

    every = attempt_every if attempt_every and not local_port else None
    deadline = loop.time() + timeout
    pending: set[asyncio.Task[WzpConnection]] = set()
    won: list[WzpConnection] = []
    failure: BaseException | None = None
    settled = False
    try:
        while not won and failure is None:
            now = loop.time()
            if now >= deadline:
                raise TimeoutError(f"no answer in {timeout:g} s")
            if not pending or every is not None:
                pending.add(asyncio.ensure_future(attempt()))
            wait = deadline - now if every is None else min(every, deadline - now)
            done, pending = await asyncio.wait(
                pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:  # read every outcome, so that none is left unretrieved
                exc = task.exception()
                if exc is None:
                    won.append(task.result())
                elif failure is None:
                    failure = exc
        settled = True
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            for task in pending:
                if not task.cancelled() and task.exception() is None:
                    won.append(task.result())  # finished while being cancelled
        for extra in won[1:] if settled else won:
            extra.close(reason_phrase="another attempt connected first")
    if not won:
        assert failure is not None
        if isinstance(failure, ConnectionRefusedError):
            raise ConnectionRefusedError(f"nothing listens at {host}:{port} (port unreachable)")
        if isinstance(failure, ConnectionError):
            raise ConnectionError(f"wzp handshake with {host}:{port} failed: {failure}")
        raise failure
    conn = won[0]
    if expected is not None and conn.peer_fingerprint != expected:
        error = PeerFingerprintMismatch(expected, conn.peer_fingerprint)
        log.warning("%s: %s", host, error)
        conn.close(WZP_ERROR_PEER_IDENTITY, "peer fingerprint mismatch")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(conn.wait_closed(), 2.0)
        if conn._transport is not None:
            conn._transport.close()
        raise error
    return conn


# --------------------------------------------------------------------- server


OnConnection = Callable[[WzpConnection], Awaitable[None] | None]


@dataclass
class ServerCounters:
    """What a listening endpoint refused before any connection existed."""

    not_quic: int = 0  # datagrams without a QUIC header: dropped
    retries: int = 0  # new handshakes asked to prove their address first (over the limit)
    bad_tokens: int = 0  # Initials whose Retry token did not validate: refused


class _GuardedQuicServer(QuicServer):
    """aioquic's server, with address validation (Retry) once ``limit`` handshakes are
    in progress, and the datagrams it drops counted."""

    def __init__(self, *, counters: ServerCounters, limit: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._counters = counters
        self._limit = limit
        self._tokens = QuicRetryTokenHandler()

    def half_open(self) -> int:
        """Connections whose handshake has not finished (nor failed) yet."""
        return sum(
            1
            for p in set(self._protocols.values())
            if isinstance(p, WzpConnection) and not p._ready and not p._ended
        )

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        raw = data if isinstance(data, bytes) else data.encode()
        try:
            header = pull_quic_header(
                Buffer(data=raw), host_cid_length=self._configuration.connection_id_length
            )
        except ValueError:
            self._counters.not_quic += 1
            return
        new = (
            header.packet_type == QuicPacketType.INITIAL
            and header.destination_cid not in self._protocols
        )
        # a token is validated whenever one comes (it answers a Retry of ours, perhaps
        # from before the load fell); without one, a Retry only over the limit
        if new and (header.token or self.half_open() >= self._limit):
            self._retry = self._tokens
            if header.token:
                try:
                    self._tokens.validate_token(
                        address=addr, destination_cid=header.destination_cid,
                        token=header.token, now=self._loop.time(),
                    )  # fmt: skip
                except ValueError:
                    self._counters.bad_tokens += 1
            else:
                self._counters.retries += 1
        else:
            self._retry = None
        super().datagram_received(raw, addr)


class WzpServer:
    """Listening wzp endpoint: one UDP socket per address family (see :func:`serve_wzp`)."""

    def __init__(self, on_connection: OnConnection) -> None:
        self._on_connection = on_connection
        self.counters = ServerCounters()
        self._servers: list[QuicServer] = []
        self._sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections: set[WzpConnection] = set()

    @property
    def addresses(self) -> list[tuple[Any, ...]]:
        """The bound socket addresses (one per family)."""
        return [s.getsockname() for s in self._sockets]

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._sockets)

    @property
    def port(self) -> int:
        return self._sockets[0].getsockname()[1]

    @property
    def half_open(self) -> int:
        """Handshakes in progress on every socket."""
        return sum(s.half_open() for s in self._servers if isinstance(s, _GuardedQuicServer))

    def _make_protocol(self, quic: QuicConnection, stream_handler: Any = None) -> WzpConnection:
        conn = WzpConnection(quic, stream_handler=stream_handler)
        conn._on_established = self._established
        return conn

    def _established(self, conn: WzpConnection) -> None:
        self.connections.add(conn)
        conn._on_ended = self.connections.discard
        try:
            result = self._on_connection(conn)
        except Exception:
            log.exception("on_connection failed")
            return
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("on_connection task failed", exc_info=task.exception())

    def close(self) -> None:
        """Close every connection (CONNECTION_CLOSE sent) and stop listening."""
        for conn in list(self.connections):
            conn.close(reason_phrase="server closing")
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        self._servers.clear()
        self._sockets.clear()

    async def __aenter__(self) -> WzpServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


def _hosts(host: str | Iterable[str] | None) -> tuple[list[str], bool]:
    if host is None or host == "" or host == "*":
        return ["0.0.0.0", "::"], True
    if isinstance(host, str):
        return [host], False
    return list(host), False


async def serve_wzp(
    host: str | Iterable[str] | None,
    port: int,
    identity: Identity,
    on_connection: OnConnection,
    *,
    congestion_control: str = VOICE_CONGESTION_CONTROL,
    half_open_limit: int = MAX_HALF_OPEN,
) -> WzpServer:
    """Listen for wzp connections; ``on_connection(conn)`` runs after each handshake.

    Past ``half_open_limit`` handshakes in progress on a socket, new clients are sent a
    Retry first (:data:`MAX_HALF_OPEN`); drops are counted in ``server.counters``.

    ``host`` is one address, several, or ``None`` for both wildcards (``0.0.0.0`` and
    ``::``). Each address gets its own socket and its own aioquic server: IPv6 sockets are
    IPv6-only, so nothing relies on dual-stack defaults. With ``port`` 0 every socket gets
    the same (first) port. With ``None``, a missing IPv6 stack only logs a warning.
    ``on_connection`` may be a plain function or a coroutine function.
    """
    hosts, wildcard = _hosts(host)
    if not hosts:
        raise ValueError("no address to listen on")
    loop = asyncio.get_running_loop()
    config = make_configuration(identity, False, congestion_control=congestion_control)
    resolved: list[tuple[int, str]] = []
    for h in hosts:
        infos = await loop.getaddrinfo(
            h, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP, flags=socket.AI_PASSIVE
        )
        family, _, _, _, addr = infos[0]
        resolved.append((family, addr[0]))

    for attempt in range(8):
        sockets: list[socket.socket] = []
        bound_port = port
        try:
            for family, addr in resolved:
                try:
                    sockets.append(_udp_socket(family, addr, bound_port))
                except OSError as exc:
                    missing_v6 = family == socket.AF_INET6 and exc.errno in (
                        errno.EAFNOSUPPORT,
                        errno.EADDRNOTAVAIL,
                    )
                    if wildcard and missing_v6:
                        log.warning("no IPv6: listening on IPv4 only (%s)", exc)
                        continue
                    raise
                bound_port = sockets[-1].getsockname()[1]
        except OSError as exc:
            for s in sockets:
                s.close()
            if port == 0 and exc.errno == errno.EADDRINUSE and attempt < 7:
                continue  # the first family's free port is taken in another family: retry
            raise
        break

    server = WzpServer(on_connection)
    try:
        for sock in sockets:
            _, proto = await loop.create_datagram_endpoint(
                lambda: _GuardedQuicServer(
                    configuration=config,
                    create_protocol=server._make_protocol,
                    counters=server.counters,
                    limit=half_open_limit,
                ),
                sock=sock,
            )
            server._servers.append(proto)  # type: ignore[arg-type]
            server._sockets.append(sock)
    except BaseException:
        server.close()
        for s in sockets:
            s.close()
        raise
    log.info("wzp listening on %s", ", ".join(map(str, server.addresses)))
    return server
