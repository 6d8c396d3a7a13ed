"""The relay's pure core (SPEC 8): rooms, joins, slots, forwarding, the floor, counters.

No I/O and no clock: every call takes an explicit ``now`` (seconds, any monotonic origin)
and returns what the edge (:mod:`wzp.relay.server`) must do. Connections are named by an
opaque, hashable ``conn`` id that the edge chooses.

* :meth:`Relay.connect` registers a connection with the room its TLS server name (SNI)
  names; :meth:`Relay.on_message` with its first message, which must be a ``Join`` (SPEC
  8.2), runs :meth:`Relay.join`: room name, ``Join.room`` = SNI room, signature over
  ``"wzp-join" || relay fingerprint || room``, the Join key = the TLS certificate key
  (when the edge knows it), the room exists (or ``open_rooms``), the allow list, the size
  limit; then a slot 1..255 unique in the room. Accepted: ``RoomUpdate`` to every member
  (and the current ``Floor`` to the joiner in a push-to-talk room). Refused: ``Error``
  then close, counted by code in :attr:`RelayCounters.joins_refused`. A member joining
  again from a new connection supersedes (closes) its old one.
* :meth:`Relay.on_datagram` reads the clear 12-byte header only (the relay has no keys)
  and returns a :class:`Forward` naming the other members to send the unchanged bytes to,
  or a :class:`Dropped` with the counted reason: not a member, malformed (SPEC 1.4),
  wrong stream byte (not the sender's slot), not the floor holder (push-to-talk).
  A forwarded packet's quality report (SPEC 1.3, in the clear when Q=1) is kept as the
  sender's :attr:`Member.report`: the loss, RTT and jitter that member measures.
* Push-to-talk rooms: the first member to send a valid packet takes the floor; it is
  released :data:`FLOOR_RELEASE_S` after the holder's last packet (found by
  :meth:`Relay.tick`, or by the next packet of another member), or when the holder
  leaves. Every change sends ``Floor`` (slot or ``null``) to every member. A member
  holds it :attr:`RoomPolicy.max_floor_s` at most at a time (60 s by default): then it
  is freed (by :meth:`Relay.tick`) and that member's packets are dropped
  (``floor-timeout``) for :data:`FLOOR_LOCKOUT_S`, so the others can take it.
* :meth:`Relay.on_message`: ``Ping`` is answered with ``Pong``; a message with a ``to``
  field goes to that member only, with ``from`` set to the sender's fingerprint (a
  forged ``from`` is overwritten and counted); anything else from a member is dropped
  and counted; anything but ``Join`` before the join closes the connection.
* :meth:`Relay.tick` closes connections that sent nothing within :data:`JOIN_TIMEOUT_S`
  of connecting and releases stale floors.
* At most ``max_pending`` (:data:`DEFAULT_MAX_PENDING`) connections wait for their Join
  at once; beyond that :meth:`Relay.connect` refuses (``busy``), so a flood of silent
  connections costs bounded state (each still holds a slot up to the join timeout).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from wzp.crypto.handshake import HandshakeError, verify_join
from wzp.crypto.identity import FINGERPRINT_LEN, fingerprint, fingerprint_text
from wzp.proto.header import Drop, QualityReport, parse_datagram
from wzp.proto.signal import (
    Error,
    Floor,
    Join,
    Message,
    Participant,
    Ping,
    Pong,
    RoomUpdate,
    UnknownMessage,
)

__all__ = [
    "DEFAULT_MAX_MEMBERS",
    "DEFAULT_MAX_PENDING",
    "DROP_MALFORMED",
    "DROP_NOT_FLOOR_HOLDER",
    "DROP_NOT_MEMBER",
    "DROP_WRONG_STREAM",
    "FLOOR_RELEASE_S",
    "JOIN_TIMEOUT_S",
    "MAX_SLOT",
    "ROOM_NAME_RE",
    "Action",
    "Close",
    "ConnId",
    "Dropped",
    "Forward",
    "Member",
    "Relay",
    "RelayCounters",
    "Room",
    "RoomPolicy",
    "Send",
    "valid_room_name",
]

#: SPEC 8.1: a room is 1-63 characters of a-z, 0-9 and "-".
ROOM_NAME_RE = re.compile(r"[a-z0-9-]{1,63}")
#: SPEC 8.2: a connection whose first message has not come within this time is closed.
JOIN_TIMEOUT_S = 10.0
#: Push-to-talk: the floor is free again this long after the holder's last packet.
FLOOR_RELEASE_S = 0.5
#: Push-to-talk: a member holds the floor this long at most at a time (a radio's
#: time-out timer): then the floor is freed and the holder's packets are dropped for
#: FLOOR_LOCKOUT_S, so that the others can answer. A stuck microphone, a runaway or a
#: hostile member (the relay cannot tell speech from noise: it cannot decrypt) cannot
#: keep the room silent. 0: no limit.
DEFAULT_MAX_FLOOR_S = 60.0
FLOOR_LOCKOUT_S = 3.0
MAX_SLOT = 255
DEFAULT_MAX_MEMBERS = 8
#: connections that have not joined yet, at most, relay-wide; more are refused ("busy")
DEFAULT_MAX_PENDING = 64

DROP_NOT_MEMBER = "not-a-member"
DROP_MALFORMED = "malformed"
DROP_WRONG_STREAM = "wrong-stream"
DROP_NOT_FLOOR_HOLDER = "not-floor-holder"
DROP_FLOOR_TIMEOUT = "floor-timeout"
#: the body of an encrypted keep-alive: the 16-byte ChaCha20-Poly1305 tag of an empty payload
KEEPALIVE_BODY = 16

ConnId: TypeAlias = Hashable


def valid_room_name(name: object) -> bool:
    """SPEC 8.1 room name rule."""
    return isinstance(name, str) and ROOM_NAME_RE.fullmatch(name) is not None


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class RoomPolicy:
    """Who may join a room and how it behaves.

    ``allow``: the fingerprints (16 bytes each) that may join, or ``None`` for anyone.
    """

    allow: frozenset[bytes] | None = None
    max_members: int = DEFAULT_MAX_MEMBERS
    push_to_talk: bool = False
    #: push-to-talk: the longest a member holds the floor at a time (0: no limit)
    max_floor_s: float = DEFAULT_MAX_FLOOR_S

    def __post_init__(self) -> None:
        if isinstance(self.max_members, bool) or not 1 <= self.max_members <= MAX_SLOT:
            raise ValueError(f"max_members must be 1..{MAX_SLOT}, got {self.max_members!r}")
        if isinstance(self.max_floor_s, bool) or not 0 <= self.max_floor_s <= 3600:
            raise ValueError(f"max_floor_s must be 0..3600, got {self.max_floor_s!r}")
        if self.allow is not None:
            allow = frozenset(bytes(fp) for fp in self.allow)
            if any(len(fp) != FINGERPRINT_LEN for fp in allow):
                raise ValueError("allow holds fingerprints of 16 bytes")
            object.__setattr__(self, "allow", allow)

    @property
    def is_open(self) -> bool:
        return self.allow is None


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``msg`` on connection ``conn``."""

    conn: ConnId
    msg: Message


@dataclass(frozen=True, slots=True)
class Close:
    """Close connection ``conn`` (after the messages sent to it just before, if any)."""

    conn: ConnId
    reason: str


Action: TypeAlias = Send | Close


@dataclass(frozen=True, slots=True)
class Forward:
    """Send the datagram, unchanged, to each of ``targets``; then run ``actions`` (Floor)."""

    targets: tuple[ConnId, ...]
    actions: tuple[Action, ...] = ()


@dataclass(frozen=True, slots=True)
class Dropped:
    """The datagram was dropped; ``reason`` is the counter key."""

    reason: str


def _bump(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


@dataclass
class RelayCounters:
    """Everything the relay counts (monotonic). ``dict`` fields count by reason or code."""

    connections: int = 0
    joins: int = 0
    joins_refused: dict[str, int] = field(default_factory=dict)
    """Refused Joins by the ``Error.code`` sent (``bad-signature``, ``not-allowed``...)."""
    closed_before_join: dict[str, int] = field(default_factory=dict)
    """Connections closed before a Join: ``join-first`` (another message came first),
    ``join-timeout`` (nothing within 10 s)."""
    superseded: int = 0
    """Members whose old connection was closed because they joined again."""
    leaves: int = 0
    datagrams_received: int = 0
    datagrams_forwarded: int = 0
    """Received datagrams accepted for forwarding."""
    forwarded_copies: int = 0
    """Copies handed to the edge (one per other member)."""
    forwarded_bytes: int = 0
    datagram_drops: dict[str, int] = field(default_factory=dict)
    """Received datagrams dropped, by reason (``not-a-member``, ``malformed``, ...)."""
    datagram_drop_bytes: dict[str, int] = field(default_factory=dict)
    """The bytes of those, by the same reasons."""
    send_drops: int = 0
    """Copies a member could not take (its send buffer was full): counted by the edge."""
    send_drop_bytes: int = 0
    """The bytes of those (counted by the edge)."""
    messages_received: int = 0
    messages_forwarded: int = 0
    message_drops: dict[str, int] = field(default_factory=dict)
    forged_from: int = 0
    """Routed messages whose ``from`` was not the sender's fingerprint (overwritten)."""
    pongs_sent: int = 0
    floor_changes: int = 0
    floor_timeouts: int = 0
    """Floors freed because their holder reached the room's max_floor_s."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Member:
    conn: ConnId
    fingerprint: bytes
    alias: str | None
    slot: int
    joined_at: float
    fp_hex: str = ""
    packets: int = 0
    bytes: int = 0
    dropped: int = 0
    last_packet: float | None = None
    report: QualityReport | None = None
    """The quality report (SPEC 1.3, in the clear) of the member's last forwarded packet
    that carried one: what the member measures of what it receives."""
    report_at: float | None = None

    def __post_init__(self) -> None:
        self.fp_hex = self.fingerprint.hex()


@dataclass
class Room:
    name: str
    policy: RoomPolicy
    configured: bool
    members: dict[int, Member] = field(default_factory=dict)
    """By slot."""
    by_fp: dict[str, Member] = field(default_factory=dict)
    """By fingerprint (lowercase hex, as in ``to``)."""
    floor: int | None = None
    floor_last: float = 0.0
    floor_since: float = 0.0  # when the holder took it
    #: the slot whose hold reached max_floor_s, kept off the floor until locked_until
    locked: int | None = None
    locked_until: float = 0.0
    conns: tuple[ConnId, ...] = ()
    """Every member's connection, in slot order."""

    def add(self, member: Member) -> None:
        self.members[member.slot] = member
        self.by_fp[member.fp_hex] = member
        self._refresh()

    def remove(self, member: Member) -> None:
        self.members.pop(member.slot, None)
        self.by_fp.pop(member.fp_hex, None)
        self._refresh()

    def _refresh(self) -> None:
        self.conns = tuple(self.members[s].conn for s in sorted(self.members))

    def free_slot(self) -> int | None:
        for slot in range(1, MAX_SLOT + 1):
            if slot not in self.members:
                return slot
        return None


@dataclass
class _Pending:
    room: str | None
    peer_fingerprint: bytes | None
    since: float


def _report_json(report: QualityReport | None) -> dict[str, float] | None:
    if report is None:
        return None
    return {
        "loss_percent": round(report.loss_percent, 2),
        "rtt_ms": report.rtt_ms,
        "jitter_ms": report.jitter_ms,
        "cap_kbps": report.cap_kbps,
    }


# --------------------------------------------------------------------------- the relay


class Relay:
    """The state of one relay (see the module docstring)."""

    def __init__(
        self,
        relay_fingerprint: bytes,
        rooms: Mapping[str, RoomPolicy] | None = None,
        *,
        open_rooms: bool = False,
        default_policy: RoomPolicy | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if len(relay_fingerprint) != FINGERPRINT_LEN:
            raise ValueError("the relay fingerprint has 16 bytes")
        if isinstance(max_pending, bool) or max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending!r}")
        self.max_pending = max_pending
        self.relay_fingerprint = bytes(relay_fingerprint)
        self.open_rooms = open_rooms
        self.default_policy = default_policy if default_policy is not None else RoomPolicy()
        self.counters = RelayCounters()
        self.rooms: dict[str, Room] = {}
        for name, policy in (rooms or {}).items():
            if not valid_room_name(name):
                raise ValueError(f"room name {name!r}: 1-63 characters of a-z, 0-9 and -")
            self.rooms[name] = Room(name, policy, configured=True)
        self._pending: dict[ConnId, _Pending] = {}
        self._members: dict[ConnId, tuple[Member, Room]] = {}

    # ------------------------------------------------------------------ queries

    def member(self, conn: ConnId) -> Member | None:
        entry = self._members.get(conn)
        return entry[0] if entry is not None else None

    def is_pending(self, conn: ConnId) -> bool:
        return conn in self._pending

    @property
    def pending(self) -> int:
        """Connections that have not joined (nor been refused) yet."""
        return len(self._pending)

    def status(self) -> dict[str, Any]:
        """Rooms and members, JSON-ready."""
        rooms = {}
        for name, room in sorted(self.rooms.items()):
            rooms[name] = {
                "configured": room.configured,
                "open": room.policy.is_open,
                "max_members": room.policy.max_members,
                "push_to_talk": room.policy.push_to_talk,
                "floor": room.floor,
                "members": [
                    {
                        "slot": m.slot,
                        "fingerprint": fingerprint_text(m.fingerprint),
                        "alias": m.alias,
                        "packets": m.packets,
                        "bytes": m.bytes,
                        "dropped": m.dropped,
                        "report": _report_json(m.report),
                    }
                    for _, m in sorted(room.members.items())
                ],
            }
        return {"rooms": rooms, "pending": len(self._pending)}

    # ------------------------------------------------------------------ connections

    def connect(
        self,
        conn: ConnId,
        server_name: str | None,
        now: float,
        peer_fingerprint: bytes | None = None,
    ) -> list[Action]:
        """A new connection to room ``server_name`` (its SNI). A bad room name is refused,
        and so is any connection while :attr:`max_pending` others have not joined yet
        (``Error`` code ``busy``, counted in ``joins_refused``).

        ``peer_fingerprint``: the fingerprint of the connection's TLS certificate key,
        when known; the Join must then be signed by that key.
        """
        if conn in self._pending or conn in self._members:
            raise ValueError(f"connection {conn!r} is already known")
        self.counters.connections += 1
        busy = len(self._pending) >= self.max_pending
        self._pending[conn] = _Pending(server_name, peer_fingerprint, now)
        if busy:
            return self._refuse(
                conn, "busy", f"the relay has {self.max_pending} connections waiting to join"
            )
        if not valid_room_name(server_name):
            shown = repr(server_name)[:80]
            return self._refuse(
                conn, "bad-room", f"room {shown}: 1-63 characters of a-z, 0-9 and -"
            )
        return []

    def join(
        self,
        conn: ConnId,
        join_msg: Join,
        relay_fingerprint: bytes,
        room: str | None,
        now: float,
    ) -> list[Action]:
        """Check a Join for ``room`` (the connection's SNI) and seat the member (SPEC 8.2)."""
        if conn in self._members:
            _bump(self.counters.message_drops, "duplicate-join")
            return []
        pending = self._pending.get(conn)
        if pending is None:
            pending = self._pending[conn] = _Pending(room, None, now)
            self.counters.connections += 1
        if not valid_room_name(room):
            return self._refuse(conn, "bad-room", f"room {room!r:.80}: 1-63 of a-z, 0-9, -")
        assert room is not None
        if join_msg.room != room:
            return self._refuse(
                conn,
                "wrong-room",
                f"Join names room {join_msg.room!r:.80} on a connection to room {room!r}",
            )
        try:
            verify_join(join_msg.identity_pub, relay_fingerprint, room, join_msg.signature)
        except HandshakeError:
            return self._refuse(conn, "bad-signature", "the Join signature does not verify")
        fp = fingerprint(join_msg.identity_pub)
        if pending.peer_fingerprint is not None and pending.peer_fingerprint != fp:
            return self._refuse(
                conn, "identity-mismatch", "the Join key is not the TLS certificate key"
            )
        the_room = self.rooms.get(room)
        if the_room is None:
            if not self.open_rooms:
                return self._refuse(conn, "no-such-room", f"this relay has no room {room!r}")
            the_room = Room(room, self.default_policy, configured=False)
        allow = the_room.policy.allow
        if allow is not None and fp not in allow:
            return self._refuse(
                conn, "not-allowed", f"{fingerprint_text(fp)} may not join room {room!r}"
            )
        actions: list[Action] = []
        old = the_room.by_fp.get(fp.hex())
        if old is not None:  # the same member again (new connection): the old one goes
            self.counters.superseded += 1
            actions.append(Close(old.conn, "superseded"))
            actions.extend(self._remove(old.conn, the_room, now, announce=False))
        if len(the_room.members) >= the_room.policy.max_members:
            return actions + self._refuse(
                conn, "room-full", f"room {room!r} is full ({the_room.policy.max_members})"
            )
        slot = the_room.free_slot()
        if slot is None:
            return actions + self._refuse(conn, "room-full", f"room {room!r} has no free slot")
        del self._pending[conn]
        self.rooms[room] = the_room
        member = Member(conn, fp, join_msg.alias, slot, now)
        the_room.add(member)
        self._members[conn] = (member, the_room)
        self.counters.joins += 1
        actions.extend(self._room_update(the_room))
        if the_room.policy.push_to_talk:
            actions.append(Send(conn, Floor(slot=the_room.floor)))
        return actions

    def leave(self, conn: ConnId, now: float) -> list[Action]:
        """The connection has ended: free its slot, tell the others."""
        if self._pending.pop(conn, None) is not None:
            return []
        entry = self._members.get(conn)
        if entry is None:
            return []
        self.counters.leaves += 1
        return self._remove(conn, entry[1], now, announce=True)

    def _remove(self, conn: ConnId, room: Room, now: float, *, announce: bool) -> list[Action]:
        member, _ = self._members.pop(conn)
        room.remove(member)
        actions: list[Action] = []
        if room.floor == member.slot:
            actions.extend(self._set_floor(room, None, now))
        if not room.members and not room.configured:
            self.rooms.pop(room.name, None)
        elif announce:
            actions.extend(self._room_update(room))
        return actions

    def _refuse(self, conn: ConnId, code: str, text: str) -> list[Action]:
        self._pending.pop(conn, None)
        _bump(self.counters.joins_refused, code)
        return [Send(conn, Error(code=code, message=text)), Close(conn, code)]

    def _room_update(self, room: Room) -> list[Action]:
        participants = tuple(
            Participant(fingerprint=m.fp_hex, alias=m.alias, slot=m.slot)
            for _, m in sorted(room.members.items())
        )
        return [
            Send(m.conn, RoomUpdate(room=room.name, you=m.slot, participants=participants))
            for _, m in sorted(room.members.items())
        ]

    def _set_floor(self, room: Room, slot: int | None, now: float) -> list[Action]:
        room.floor = slot
        room.floor_last = now
        room.floor_since = now
        self.counters.floor_changes += 1
        return [Send(c, Floor(slot=slot)) for c in room.conns]

    # ------------------------------------------------------------------ datagrams

    def on_datagram(self, conn: ConnId, data: bytes, now: float) -> Forward | Dropped:
        """Decide what to do with one received datagram (never raises for any bytes)."""
        c = self.counters
        c.datagrams_received += 1
        entry = self._members.get(conn)
        if entry is None:
            return self._drop(DROP_NOT_MEMBER, None, len(data))
        member, room = entry
        parsed = parse_datagram(data)
        if isinstance(parsed, Drop):
            return self._drop(DROP_MALFORMED, member, len(data))
        if parsed.header.stream != member.slot:
            return self._drop(DROP_WRONG_STREAM, member, len(data))
        actions: tuple[Action, ...] = ()
        # a keep-alive (a source packet whose body is only the AEAD tag: no audio) carries
        # a quality report while its sender is silent: it is forwarded, but it neither
        # takes nor holds the floor of a push-to-talk room
        keepalive = not parsed.header.is_repair and len(parsed.body) <= KEEPALIVE_BODY
        if room.policy.push_to_talk and not keepalive:
            if room.locked == member.slot and now < room.locked_until:
                return self._drop(DROP_FLOOR_TIMEOUT, member, len(data))
            if room.floor is None:
                actions = tuple(self._set_floor(room, member.slot, now))
            elif room.floor != member.slot:
                if now - room.floor_last < FLOOR_RELEASE_S:
                    return self._drop(DROP_NOT_FLOOR_HOLDER, member, len(data))
                released = self._set_floor(room, None, now)
                actions = tuple(released + self._set_floor(room, member.slot, now))
            room.floor_last = now
        n = len(data)
        member.packets += 1
        member.bytes += n
        member.last_packet = now
        if parsed.report is not None:
            member.report = parsed.report
            member.report_at = now
        targets = tuple(t for t in room.conns if t != conn)
        c.datagrams_forwarded += 1
        c.forwarded_copies += len(targets)
        c.forwarded_bytes += n * len(targets)
        return Forward(targets, actions)

    def _drop(self, reason: str, member: Member | None, n: int) -> Dropped:
        c = self.counters
        _bump(c.datagram_drops, reason)
        c.datagram_drop_bytes[reason] = c.datagram_drop_bytes.get(reason, 0) + n
        if member is not None:
            member.dropped += 1
        return Dropped(reason)

    # ------------------------------------------------------------------ signalling

    def on_message(self, conn: ConnId, msg: Message | UnknownMessage, now: float) -> list[Action]:
        """One received signalling message (SPEC 8.2, 8.4)."""
        c = self.counters
        c.messages_received += 1
        pending = self._pending.get(conn)
        if pending is not None:
            if isinstance(msg, Join):
                return self.join(conn, msg, self.relay_fingerprint, pending.room, now)
            del self._pending[conn]
            _bump(c.closed_before_join, "join-first")
            name = type(msg).__name__ if not isinstance(msg, UnknownMessage) else msg.name
            return [
                Send(conn, Error(code="join-first", message=f"expected Join, got {name:.40}")),
                Close(conn, "join-first"),
            ]
        entry = self._members.get(conn)
        if entry is None:
            _bump(c.message_drops, "not-connected")
            return []
        member, room = entry
        if isinstance(msg, UnknownMessage):
            _bump(c.message_drops, "unknown-message")
            return []
        if isinstance(msg, Ping):
            c.pongs_sent += 1
            return [Send(conn, Pong(timestamp_ms=msg.timestamp_ms))]
        if isinstance(msg, Join):
            _bump(c.message_drops, "duplicate-join")
            return []
        to = getattr(msg, "to", None)
        if to is None:
            _bump(c.message_drops, "no-recipient")
            return []
        target = room.by_fp.get(to)
        if target is None:
            _bump(c.message_drops, "unknown-recipient")
            return [Send(conn, Error(code="not-in-room", message=f"{to} is not in {room.name}"))]
        from_ = msg.from_  # type: ignore[union-attr]
        if from_ is not None and from_ != member.fp_hex:
            c.forged_from += 1
        c.messages_forwarded += 1
        return [Send(target.conn, dataclasses.replace(msg, from_=member.fp_hex))]  # type: ignore[type-var]

    # ------------------------------------------------------------------ time

    def tick(self, now: float) -> list[Action]:
        """Close connections past the join timeout; release floors whose holder went quiet."""
        actions: list[Action] = []
        late = [k for k, p in self._pending.items() if now - p.since >= JOIN_TIMEOUT_S]
        for conn in late:
            del self._pending[conn]
            _bump(self.counters.closed_before_join, "join-timeout")
            actions.append(Send(conn, Error(code="join-timeout", message="no Join within 10 s")))
            actions.append(Close(conn, "join-timeout"))
        for room in self.rooms.values():
            if room.floor is None:
                continue
            limit = room.policy.max_floor_s
            if limit and now - room.floor_since >= limit:
                room.locked, room.locked_until = room.floor, now + FLOOR_LOCKOUT_S
                self.counters.floor_timeouts += 1
                actions.extend(self._set_floor(room, None, now))
            elif now - room.floor_last >= FLOOR_RELEASE_S:
                actions.extend(self._set_floor(room, None, now))
        return actions
