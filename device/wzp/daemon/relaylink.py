"""The handset's membership of a relay room (SPEC 8), and calls through it.

:class:`RelayLink` connects to the configured relay (its certificate pinned to the
configured fingerprint, the room as the TLS server name), sends the signed ``Join``,
keeps the room's members and this handset's slot from each ``RoomUpdate``, and
reconnects with backoff (1, 2, 4 ... 30 s) whenever the connection goes: a relay
restart or a network change costs a few seconds, never a button press.

A call through the room runs the same :class:`~wzp.net.callrunner.CallRunner` and
:class:`~wzp.media.call.CallEngine` as a direct call. The runner gets a
:class:`RoomChannel` instead of a connection: messages go out on the relay connection
(the engine addresses them ``to`` the peer; the relay writes ``from``), datagrams go out
with this member's slot as the stream byte, and the channel outlives a reconnection: it
is bound to each new connection in turn, with the slots of the new ``RoomUpdate``. The
relay never sees a media key: the call's keys come from the peers' signed offer and
answer, end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..crypto.handshake import sign_join
from ..crypto.identity import Identity, fingerprint_text
from ..net.quic import PeerFingerprintMismatch, WzpConnection, connect_wzp
from ..proto import signal as sig

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 10.0
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
#: while joined, a signalling Ping to the relay this often ...
PING_S = 3.0
#: ... and the path counts as dead (a network change, a vanished relay) when nothing has
#: come back for this long: the handset rejoins instead of waiting for QUIC's 30 s idle
#: timeout
DEAD_S = 10.0
#: a link down this long is a fault (the status LED shows it): a relay restart costs
#: about 2 s, or 11-13 s after a kill -9 (DEAD_S first), and stays below it
DOWN_FAULT_S = 30.0
#: the relay's refusals of a Join that trying again does not mend (only a change of its
#: config, or of ours, does): a fault at once
LASTING_REFUSALS = frozenset(
    {"not-allowed", "no-such-room", "bad-room", "wrong-room", "bad-signature", "identity-mismatch"}
)


class JoinRefused(ConnectionError):
    """The relay closed the connection instead of seating this handset in the room."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


@dataclass(frozen=True)
class RelaySettings:
    host: str
    port: int
    fingerprint: bytes
    room: str


class RoomChannel:
    """The part of a :class:`WzpConnection` a call runner uses, over the room."""

    def __init__(self, link: RelayLink, peer: bytes) -> None:
        self.link = link
        self.peer_fingerprint: bytes | None = peer
        self.on_datagram: Callable[[bytes], None] | None = None
        self.on_message: Callable[[Any], None] | None = None
        self.on_close: Callable[[Any], None] | None = None
        self.close_reason: str | None = None
        self.detached = False
        #: told (my slot, the peer's slot) after every RoomUpdate: a rejoin may change them
        self.on_slots: Callable[[int, int | None], None] | None = None
        #: told the slot holding the floor (None: free) on every Floor of the relay
        self.on_floor: Callable[[int | None], None] | None = None

    @property
    def rtt(self) -> float | None:
        conn = self.link.conn
        return conn.rtt if conn is not None else None

    def send_datagram(self, data: bytes) -> bool:
        conn = self.link.conn
        if conn is None or not self.link.joined:
            return False  # rejoining: dropped, as on a full send buffer
        return conn.send_datagram(data)

    def send_message(self, msg: sig.Message) -> int:
        conn = self.link.conn
        if conn is None or not self.link.joined:
            raise ConnectionError("the relay is not connected")
        return conn.send_message(msg)

    def message_delivered(self, stream_id: int) -> bool:
        conn = self.link.conn
        return conn is not None and conn.message_delivered(stream_id)

    async def aclose(self, reason_phrase: str = "", timeout: float = 5.0) -> None:
        """The call is over: the room connection stays (it is the handset's)."""
        self.link.detach(self)


class RelayLink:
    def __init__(
        self,
        settings: RelaySettings,
        identity: Identity,
        *,
        alias: str | None = None,
        on_offer: Callable[[bytes, sig.CallOffer], None] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.alias = alias
        #: an offer from a member that no current call takes: (sender, offer)
        self.on_offer = on_offer
        self.on_change = on_change
        self.conn: WzpConnection | None = None
        self.state = "connecting"  # connecting, joined, reconnecting
        self.slot: int | None = None
        self.members: dict[bytes, tuple[int, str | None]] = {}  # fingerprint -> slot, alias
        #: the slot holding the floor of a push-to-talk room (None: free, or not told)
        self.floor: int | None = None
        #: the relay has told this session who holds the floor: a push-to-talk room
        self.push_to_talk = False
        #: what is wrong with the link now (None while joined) ...
        self.error: str | None = None
        #: ... and the last problem seen, kept after a rejoin clears ``error``
        self.last_error: str | None = None
        self.joins = 0
        self.dropped_messages = 0
        self.channels: dict[bytes, RoomChannel] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._stopping = False
        self._heard_at = 0.0
        self._refusal: tuple[str, str] | None = None  # the Error answering the Join: code, text
        #: not joined since (monotonic time) ...
        self.down_since = time.monotonic()
        #: ... and the last attempt failed in a way retrying does not mend (refused, or
        #: another relay than the pinned one)
        self.lasting = False

    @property
    def joined(self) -> bool:
        return self.state == "joined"

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.aclose("leaving")

    def channel(self, peer: bytes) -> RoomChannel:
        ch = RoomChannel(self, peer)
        self.channels[peer] = ch
        return ch

    def detach(self, ch: RoomChannel) -> None:
        ch.detached = True
        if self.channels.get(ch.peer_fingerprint or b"") is ch:
            del self.channels[ch.peer_fingerprint or b""]

    def slot_of(self, peer: bytes) -> int | None:
        entry = self.members.get(peer)
        return entry[0] if entry else None

    # -- the connection's life ---------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                await self._session()
                attempt = 0  # it was up: start the backoff again
            except (OSError, ConnectionError, TimeoutError, PeerFingerprintMismatch) as exc:
                self.lasting = isinstance(exc, PeerFingerprintMismatch) or (
                    isinstance(exc, JoinRefused) and exc.code in LASTING_REFUSALS
                )
                self._fault(f"relay {self.settings.host}:{self.settings.port}: {exc}")
            if self._stopping:
                return
            if self.joined:
                self.down_since = time.monotonic()
            self.state = "reconnecting"
            self.slot = None
            self.floor = None  # the next join is told the floor afresh
            self.push_to_talk = False
            self._changed()
            delay = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
            attempt += 1
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        s = self.settings
        conn = await connect_wzp(
            s.host, s.port, self.identity, expected_fingerprint=s.fingerprint, server_name=s.room
        )
        self.conn = conn
        self._refusal = None
        closed = asyncio.Event()
        joined = asyncio.Event()
        conn.on_datagram = self._on_datagram
        conn.on_message = lambda msg: self._on_message(msg, joined)
        conn.on_close = lambda _c: closed.set()
        conn.send_message(
            sig.Join(
                identity_pub=self.identity.ed25519_pub,
                room=s.room,
                signature=sign_join(self.identity, s.fingerprint, s.room),
                alias=self.alias,
            )
        )
        # a refused Join is answered by an Error and the connection's close: no waiting
        # for the timeout then
        waits = [asyncio.ensure_future(e.wait()) for e in (joined, closed)]
        try:
            await asyncio.wait(waits, timeout=JOIN_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if not joined.is_set():
            self.conn = None
            if closed.is_set():
                if self._refusal is not None:
                    raise JoinRefused(*self._refusal)
                why = conn.close_reason or "closed"
                raise JoinRefused(why, f"the relay closed the connection before the join: {why}")
            conn.close(reason_phrase="no RoomUpdate")
            raise TimeoutError(
                self._refusal[1] if self._refusal else "the relay did not answer the Join"
            )
        loop = asyncio.get_running_loop()
        self._heard_at = loop.time()
        while not closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closed.wait(), PING_S)
            if closed.is_set():
                break
            if loop.time() - self._heard_at > DEAD_S:
                # nothing from the relay for DEAD_S: the path is gone (a network change)
                conn.close(reason_phrase="relay silent")
                self.conn = None
                raise ConnectionError(f"no answer from the relay for {DEAD_S:.0f} s")
            with contextlib.suppress(Exception):
                conn.send_message(sig.Ping(timestamp_ms=int(loop.time() * 1000)))
        self.conn = None
        raise ConnectionError(conn.close_reason or "connection to the relay closed")

    def _fault(self, text: str) -> None:
        self.error = self.last_error = text
        log.warning("%s", text)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- what the relay sends ----------------------------------------------------------------

    def _heard(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._heard_at = asyncio.get_running_loop().time()

    def _on_datagram(self, data: bytes) -> None:
        self._heard()
        # one call at a time: the media of the room goes to it (its receiver keeps only
        # the peer's slot)
        for ch in list(self.channels.values()):
            if ch.on_datagram is not None:
                ch.on_datagram(data)

    def _on_message(self, msg: Any, joined: asyncio.Event) -> None:
        self._heard()
        if isinstance(msg, sig.RoomUpdate):
            self._room_update(msg)
            joined.set()
            return
        if isinstance(msg, sig.Floor):
            self.floor = msg.slot
            self.push_to_talk = True
            for ch in list(self.channels.values()):
                if ch.on_floor is not None:
                    ch.on_floor(msg.slot)
            self._changed()
            return
        if isinstance(msg, sig.Error) and getattr(msg, "from_", None) is None:
            text = f"relay refused: {msg.code}: {msg.message}"
            if self.joined:  # about one request; the membership is fine
                self.last_error = text
                log.warning("%s", text)
            else:  # the session ends on it: reported once, by _run
                self._refusal = (msg.code, text)
            return
        if isinstance(msg, sig.Pong | sig.Ping):
            return
        frm = getattr(msg, "from_", None)
        try:
            sender = bytes.fromhex(frm) if frm else None
        except ValueError:
            sender = None
        if sender is None:
            self.dropped_messages += 1
            return
        ch = self.channels.get(sender)
        if ch is not None and ch.on_message is not None:
            ch.on_message(msg)
        elif isinstance(msg, sig.CallOffer) and self.on_offer is not None:
            self.on_offer(sender, msg)
        else:
            self.dropped_messages += 1

    def _room_update(self, msg: sig.RoomUpdate) -> None:
        first = self.state != "joined"
        self.slot = msg.you
        self.members = {
            bytes.fromhex(p.fingerprint): (p.slot, p.alias)
            for p in msg.participants
            if p.fingerprint
        }
        self.state = "joined"
        if first:
            self.joins += 1
            self.error = None  # joined: what went wrong before is history (last_error)
            self.lasting = False
            log.info(
                "joined room %s on relay %s:%d as slot %d (members: %d)",
                self.settings.room,
                self.settings.host,
                self.settings.port,
                msg.you,
                len(self.members),
            )
        for peer, ch in self.channels.items():
            if ch.on_slots is not None:
                ch.on_slots(msg.you, self.slot_of(peer))
        self._changed()

    def fault(self, now: float) -> bool:
        """The room cannot be used and waiting will not mend it soon: the relay refuses
        this handset (not on the allow list, no such room), is not the pinned one, or has
        been out of reach for DOWN_FAULT_S (``now``: monotonic time). A relay restart is
        not one: the handset is back in the room before it counts."""
        return not self.joined and (self.lasting or now - self.down_since >= DOWN_FAULT_S)

    def status(self, contact_of: Callable[[bytes], str | None] | None = None) -> dict[str, Any]:
        """``contact_of`` names a member's fingerprint from the local contacts: the alias
        is what the member calls itself, unchecked."""
        return {
            "address": f"{self.settings.host}:{self.settings.port}",
            "fingerprint": fingerprint_text(self.settings.fingerprint),
            "room": self.settings.room,
            "state": self.state,
            "slot": self.slot,
            "members": [
                {
                    "fingerprint": fingerprint_text(fp),
                    "slot": slot,
                    "alias": alias,
                    "contact": contact_of(fp) if contact_of is not None else None,
                }
                for fp, (slot, alias) in sorted(self.members.items(), key=lambda x: x[1][0])
            ],
            "floor": self.floor,
            "push_to_talk": self.push_to_talk,
            "joins": self.joins,
            "error": self.error,
            "last_error": self.last_error,
        }
