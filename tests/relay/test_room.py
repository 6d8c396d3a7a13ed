"""wzp.relay.room: the relay's pure core (SPEC 8), with explicit time and no I/O."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wzp.crypto.handshake import sign_join
from wzp.crypto.identity import Identity, fingerprint
from wzp.proto.header import MediaHeader, QualityReport, build_datagram
from wzp.proto.signal import (
    CallOffer,
    Error,
    Floor,
    Hangup,
    HangupReason,
    IceCandidate,
    Join,
    Ping,
    Pong,
    RoomUpdate,
    UnknownMessage,
    decode,
)
from wzp.relay.room import (
    DEFAULT_MAX_FLOOR_S,
    FLOOR_LOCKOUT_S,
    FLOOR_RELEASE_S,
    JOIN_TIMEOUT_S,
    Close,
    Dropped,
    Forward,
    Relay,
    RoomPolicy,
    Send,
    valid_room_name,
)

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
RELAY = Identity.from_seed(bytes(range(32)))
ALICE = Identity.from_seed(bytes([1]) * 32)
BOB = Identity.from_seed(bytes([2]) * 32)
CAROL = Identity.from_seed(bytes([3]) * 32)


def join_msg(ident: Identity, room: str, relay_fp: bytes = RELAY.fingerprint, **kw: object) -> Join:
    return Join(
        identity_pub=ident.ed25519_pub,
        room=room,
        signature=sign_join(ident, relay_fp, room),
        **kw,  # type: ignore[arg-type]
    )


def packet(slot: int, seq: int = 0, body: int = 40, report: bool = False) -> bytes:
    header = MediaHeader(codec=1, seq=seq, ts=seq * 20, stream=slot, has_report=report)
    return build_datagram(header, bytes(body), QualityReport(0, 0, 0, 0) if report else None)


def sends(actions: list, conn: object | None = None) -> list:  # type: ignore[type-arg]
    return [a.msg for a in actions if isinstance(a, Send) and (conn is None or a.conn == conn)]


def closes(actions: list) -> list[object]:  # type: ignore[type-arg]
    return [a.conn for a in actions if isinstance(a, Close)]


def seat(
    relay: Relay, conn: object, ident: Identity, room: str = "porch", now: float = 0.0, **kw: object
) -> list:  # type: ignore[type-arg]
    assert relay.connect(conn, room, now, ident.fingerprint) == []
    return relay.on_message(conn, join_msg(ident, room, **kw), now)


def porch(**policy: object) -> Relay:
    return Relay(RELAY.fingerprint, {"porch": RoomPolicy(**policy)})  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- rooms


@pytest.mark.parametrize("name", ["a", "porch", "room-1", "0", "a" * 63, "-"])
def test_valid_room_names(name: str) -> None:
    assert valid_room_name(name)


@pytest.mark.parametrize("name", ["", "Porch", "a" * 64, "a.b", "a_b", "über", None, "direct "])
def test_bad_room_names_are_refused_at_connect(name: str | None) -> None:
    relay = porch()
    actions = relay.connect(1, name, 0.0)
    (error,) = sends(actions, 1)
    assert isinstance(error, Error) and error.code == "bad-room"
    assert closes(actions) == [1]
    assert relay.counters.joins_refused == {"bad-room": 1}
    # whatever it sends next is ignored
    assert relay.on_message(1, join_msg(ALICE, "porch"), 0.1) == []
    assert not valid_room_name(name)


# ----------------------------------------------------------------------------- joining


@pytest.mark.parametrize("case", json.loads((VECTORS / "join.json").read_text())["cases"])
def test_join_vectors_are_accepted(case: dict[str, str]) -> None:
    msg = decode(case["json"].encode())
    assert isinstance(msg, Join)
    relay = Relay(bytes.fromhex(case["relay_fingerprint"]), {case["room"]: RoomPolicy()})
    fp = fingerprint(msg.identity_pub)
    assert relay.connect("c", case["room"], 0.0, fp) == []
    (update,) = sends(relay.on_message("c", msg, 0.0), "c")
    assert isinstance(update, RoomUpdate)
    assert update.room == case["room"] and update.you == 1
    (p,) = update.participants
    assert (p.fingerprint, p.alias, p.slot) == (fp.hex(), msg.alias, 1)
    assert relay.counters.joins == 1


def test_join_sends_room_update_to_everyone_with_their_own_slot() -> None:
    relay = porch()
    seat(relay, "a", ALICE, alias="alice")
    actions = seat(relay, "b", BOB)
    assert sorted(a.conn for a in actions) == ["a", "b"]
    for conn, you in (("a", 1), ("b", 2)):
        (update,) = sends(actions, conn)
        assert isinstance(update, RoomUpdate) and update.you == you
        assert [(p.fingerprint, p.alias, p.slot) for p in update.participants] == [
            (ALICE.fingerprint.hex(), "alice", 1),
            (BOB.fingerprint.hex(), None, 2),
        ]


def test_leave_frees_the_slot_and_tells_the_others() -> None:
    relay = porch()
    seat(relay, "a", ALICE)
    seat(relay, "b", BOB)
    actions = relay.leave("a", 1.0)
    (update,) = sends(actions, "b")
    assert isinstance(update, RoomUpdate) and update.you == 2
    assert [p.slot for p in update.participants] == [2]
    assert relay.counters.leaves == 1
    update = sends(seat(relay, "c", CAROL), "c")[0]
    assert update.you == 1  # the lowest free slot
    assert relay.leave("a", 2.0) == []  # already gone: nothing happens


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda j: Join(j.identity_pub, j.room, bytes(64), j.alias), "bad-signature"),
        (
            lambda j: Join(j.identity_pub, j.room, j.signature[:-1] + b"\x00", j.alias),
            "bad-signature",
        ),
        # signed for another relay: cannot be replayed here
        (lambda j: join_msg(ALICE, "porch", relay_fp=bytes(16)), "bad-signature"),
        (lambda j: join_msg(ALICE, "garden"), "wrong-room"),
        # a valid Join by another key than the TLS certificate's
        (lambda j: join_msg(BOB, "porch"), "identity-mismatch"),
    ],
)
def test_bad_joins_are_refused_with_error_and_close(mutate: object, code: str) -> None:
    relay = porch()
    relay.connect("a", "porch", 0.0, ALICE.fingerprint)
    actions = relay.on_message("a", mutate(join_msg(ALICE, "porch")), 0.0)  # type: ignore[operator]
    assert [type(a) for a in actions] == [Send, Close]
    (error,) = sends(actions, "a")
    assert isinstance(error, Error) and error.code == code
    assert closes(actions) == ["a"]
    assert relay.counters.joins_refused == {code: 1}
    assert relay.counters.joins == 0
    assert relay.member("a") is None and not relay.is_pending("a")


def test_join_without_a_tls_fingerprint_checks_the_signature_only() -> None:
    relay = porch()
    relay.connect("a", "porch", 0.0)
    assert isinstance(sends(relay.on_message("a", join_msg(BOB, "porch"), 0.0))[0], RoomUpdate)


def test_allow_list() -> None:
    relay = porch(allow=frozenset({ALICE.fingerprint}))
    assert isinstance(sends(seat(relay, "a", ALICE))[0], RoomUpdate)
    actions = seat(relay, "b", BOB)
    assert sends(actions)[0].code == "not-allowed" and closes(actions) == ["b"]
    assert relay.counters.joins_refused == {"not-allowed": 1}


def test_room_full() -> None:
    relay = porch(max_members=2)
    seat(relay, "a", ALICE)
    seat(relay, "b", BOB)
    actions = seat(relay, "c", CAROL)
    assert sends(actions) == [sends(actions)[0]] and sends(actions)[0].code == "room-full"
    assert closes(actions) == ["c"]
    relay.leave("a", 1.0)
    assert isinstance(sends(seat(relay, "d", CAROL), "d")[0], RoomUpdate)


def test_unknown_room_is_refused_unless_open_rooms() -> None:
    closed = porch()
    actions = seat(closed, "a", ALICE, room="garden")
    assert sends(actions)[0].code == "no-such-room"
    relay = Relay(RELAY.fingerprint, open_rooms=True)
    assert sends(seat(relay, "a", ALICE, room="garden"))[0].you == 1
    assert "garden" in relay.rooms and not relay.rooms["garden"].configured
    relay.leave("a", 1.0)
    assert "garden" not in relay.rooms  # a created room goes when it is empty
    configured = porch()
    seat(configured, "a", ALICE)
    configured.leave("a", 1.0)
    assert "porch" in configured.rooms


def test_joining_again_supersedes_the_old_connection() -> None:
    relay = porch()
    seat(relay, "a", ALICE)
    seat(relay, "b", BOB)
    actions = seat(relay, "a2", ALICE, now=3.0)
    assert Close("a", "superseded") in actions
    assert relay.member("a") is None and relay.member("a2") is not None
    updates = {a.conn: a.msg for a in actions if isinstance(a, Send)}
    assert set(updates) == {"a2", "b"}
    assert [p.slot for p in updates["b"].participants] == [1, 2]
    assert relay.counters.superseded == 1
    assert relay.leave("a", 4.0) == []  # the old connection's end changes nothing


def test_anything_before_join_closes_the_connection() -> None:
    for first in (Ping(timestamp_ms=1), IceCandidate(candidate="x"), UnknownMessage("Hello")):
        relay = porch()
        relay.connect("a", "porch", 0.0)
        actions = relay.on_message("a", first, 0.5)
        assert sends(actions)[0].code == "join-first" and closes(actions) == ["a"]
        assert relay.counters.closed_before_join == {"join-first": 1}
        assert relay.on_message("a", join_msg(ALICE, "porch"), 0.6) == []


def test_silent_connection_is_closed_after_ten_seconds() -> None:
    relay = porch()
    relay.connect("a", "porch", 100.0)
    assert relay.tick(100.0 + JOIN_TIMEOUT_S - 0.01) == []
    actions = relay.tick(100.0 + JOIN_TIMEOUT_S)
    assert sends(actions)[0].code == "join-timeout" and closes(actions) == ["a"]
    assert relay.counters.closed_before_join == {"join-timeout": 1}
    assert relay.tick(200.0) == []
    # a member is never timed out by tick
    seat(relay, "b", BOB, now=0.0)
    assert relay.tick(1000.0) == []


def test_connections_beyond_max_pending_are_refused_busy() -> None:
    relay = Relay(RELAY.fingerprint, {"porch": RoomPolicy()}, max_pending=2)
    assert relay.connect("a", "porch", 0.0, ALICE.fingerprint) == []
    assert relay.connect("b", "porch", 0.0, BOB.fingerprint) == []
    actions = relay.connect("c", "porch", 0.0, CAROL.fingerprint)
    assert [m.code for m in sends(actions, "c")] == ["busy"] and closes(actions) == ["c"]
    assert relay.pending == 2 and not relay.is_pending("c")
    assert relay.counters.joins_refused == {"busy": 1}
    # a join frees a place: the next connection waits for its Join again
    assert isinstance(sends(relay.on_message("a", join_msg(ALICE, "porch"), 0.0))[0], RoomUpdate)
    assert relay.pending == 1
    assert relay.connect("c2", "porch", 0.0, CAROL.fingerprint) == []
    assert relay.on_message("c2", join_msg(CAROL, "porch"), 0.0) != []
    assert relay.member("c2") is not None
    # so does the join timeout
    assert relay.connect("d", "porch", 0.0) == []
    assert sends(relay.connect("e", "porch", 0.0))[0].code == "busy"
    relay.tick(JOIN_TIMEOUT_S)
    assert relay.pending == 0 and relay.connect("e2", "porch", 20.0) == []
    assert relay.counters.joins_refused == {"busy": 2}
    with pytest.raises(ValueError):
        Relay(RELAY.fingerprint, max_pending=0)


def test_connect_twice_is_a_programming_error() -> None:
    relay = porch()
    relay.connect("a", "porch", 0.0)
    with pytest.raises(ValueError):
        relay.connect("a", "porch", 0.0)


# ----------------------------------------------------------------------------- datagrams


def test_datagrams_go_unchanged_to_every_other_member() -> None:
    relay = porch()
    for conn, ident in (("a", ALICE), ("b", BOB), ("c", CAROL)):
        seat(relay, conn, ident)
    data = packet(1, report=True)
    result = relay.on_datagram("a", data, 1.0)
    assert result == Forward(("b", "c"))
    assert relay.on_datagram("b", packet(2), 1.0) == Forward(("a", "c"))
    c = relay.counters
    assert c.datagrams_received == 2 and c.datagrams_forwarded == 2
    assert c.forwarded_copies == 4
    assert c.forwarded_bytes == 2 * len(data) + 2 * len(packet(2))
    member = relay.member("a")
    assert member is not None and member.packets == 1 and member.bytes == len(data)


def test_the_last_forwarded_report_is_kept_per_member() -> None:
    relay = porch()
    seat(relay, "a", ALICE)
    seat(relay, "b", BOB)
    report = QualityReport.from_measured(30.0, 600, 12, 16)
    header = MediaHeader(codec=1, seq=1, ts=20, stream=1, has_report=True)
    with_report = build_datagram(header, bytes(40), report)
    assert isinstance(relay.on_datagram("a", with_report, 5.0), Forward)
    assert isinstance(relay.on_datagram("a", packet(1, seq=2), 6.0), Forward)  # no report
    a = relay.member("a")
    assert a is not None and a.report == report and a.report_at == 5.0
    # a dropped packet's report is not taken
    stray = build_datagram(
        MediaHeader(codec=1, seq=3, stream=2, has_report=True), bytes(40), QualityReport(255)
    )
    assert relay.on_datagram("a", stray, 7.0) == Dropped("wrong-stream")
    assert a.report == report
    assert relay.member("b").report is None  # type: ignore[union-attr]
    assert relay.status()["rooms"]["porch"]["members"][0]["report"] == {
        "loss_percent": 29.8,
        "rtt_ms": 600,
        "jitter_ms": 12,
        "cap_kbps": 16,
    }


def test_datagram_drops_are_counted_by_reason() -> None:
    relay = porch()
    relay.connect("p", "porch", 0.0)  # connected, not joined yet
    seat(relay, "a", ALICE)
    seat(relay, "b", BOB)
    cases = [
        ("x", packet(1), "not-a-member"),
        ("p", packet(1), "not-a-member"),
        ("a", b"", "malformed"),
        ("a", packet(1)[:11], "malformed"),
        ("a", packet(1, body=10), "malformed"),  # body shorter than the AEAD tag
        ("a", bytes([0x3C]) + packet(1)[1:], "malformed"),  # codec 15
        ("a", packet(2), "wrong-stream"),
        ("a", packet(0), "wrong-stream"),
    ]
    for conn, data, reason in cases:
        assert relay.on_datagram(conn, data, 1.0) == Dropped(reason)
    assert relay.counters.datagram_drops == {"not-a-member": 2, "malformed": 4, "wrong-stream": 2}
    assert relay.counters.datagram_drop_bytes == {
        reason: sum(len(d) for _, d, r in cases if r == reason)
        for reason in ("not-a-member", "malformed", "wrong-stream")
    }
    assert relay.counters.datagrams_forwarded == 0
    assert relay.member("a").dropped == 6  # type: ignore[union-attr]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), conn=st.sampled_from(["a", "b", "p", "x"]))
def test_any_bytes_are_forwarded_or_counted_never_raised(data: bytes, conn: str) -> None:
    relay = porch(push_to_talk=True)
    relay.connect("p", "porch", 0.0)
    seat(relay, "a", ALICE)
    seat(relay, "b", BOB)
    result = relay.on_datagram(conn, data, 1.0)
    c = relay.counters
    if isinstance(result, Forward):
        assert conn in ("a", "b") and data[10] == relay.member(conn).slot  # type: ignore[union-attr]
        assert result.targets == (("b",) if conn == "a" else ("a",))
        assert c.datagrams_forwarded == 1
    else:
        assert isinstance(result, Dropped)
        assert c.datagram_drops == {result.reason: 1}
    assert c.datagrams_forwarded + sum(c.datagram_drops.values()) == c.datagrams_received == 1


# ----------------------------------------------------------------------------- floor


def test_push_to_talk_floor() -> None:
    relay = porch(push_to_talk=True)
    join_a = seat(relay, "a", ALICE)
    assert Floor(slot=None) in sends(join_a, "a")  # the joiner learns the floor state
    seat(relay, "b", BOB)
    seat(relay, "c", CAROL)
    # a takes the floor with its first packet: Floor(1) to everyone
    first = relay.on_datagram("a", packet(1), 10.0)
    assert isinstance(first, Forward) and first.targets == ("b", "c")
    assert sorted((a.conn, a.msg) for a in first.actions) == [
        (c, Floor(slot=1)) for c in ("a", "b", "c")
    ]
    # others are refused while a keeps talking; a's packets do not re-announce
    assert relay.on_datagram("b", packet(2), 10.2) == Dropped("not-floor-holder")
    assert relay.on_datagram("a", packet(1, 1), 10.4) == Forward(("b", "c"))
    assert relay.on_datagram("b", packet(2), 10.8) == Dropped("not-floor-holder")
    # garbage from a does not keep the floor: 500 ms after a's last *valid* packet
    relay.on_datagram("a", b"junk", 10.85)
    assert relay.tick(10.4 + FLOOR_RELEASE_S - 0.01) == []
    released = relay.tick(10.4 + FLOOR_RELEASE_S)
    assert sorted((a.conn, a.msg) for a in released) == [
        (c, Floor(slot=None)) for c in ("a", "b", "c")
    ]
    second = relay.on_datagram("b", packet(2), 11.0)
    assert isinstance(second, Forward) and second.targets == ("a", "c")
    assert {a.msg for a in second.actions} == {Floor(slot=2)}
    assert relay.counters.floor_changes == 3
    assert relay.counters.datagram_drops["not-floor-holder"] == 2
    assert relay.rooms["porch"].floor == 2


def test_floor_passes_on_without_a_tick_once_the_holder_is_quiet() -> None:
    relay = porch(push_to_talk=True)
    seat(relay, "a", ALICE)
    seat(relay, "b", BOB)
    relay.on_datagram("a", packet(1), 0.0)
    result = relay.on_datagram("b", packet(2), FLOOR_RELEASE_S)
    assert isinstance(result, Forward)
    assert [a.msg for a in result.actions if a.conn == "a"] == [Floor(slot=None), Floor(slot=2)]


def test_nobody_holds_the_floor_past_max_floor_s() -> None:
    """A stuck microphone, or a member sending noise the relay cannot tell from speech
    (it cannot decrypt), would keep a push-to-talk room silent. At max_floor_s the floor
    is freed (Floor null to all) and the holder is kept off it for FLOOR_LOCKOUT_S: the
    others can take it; after the lockout the holder may take a free floor again."""
    assert DEFAULT_MAX_FLOOR_S == 60.0 and RoomPolicy().max_floor_s == DEFAULT_MAX_FLOOR_S
    relay = porch(push_to_talk=True, max_floor_s=30.0)
    seat(relay, "a", ALICE)
    seat(relay, "b", BOB)
    t, seq = 0.0, 0
    while t < 30.0:  # a talks without a pause; b is refused all along
        assert isinstance(relay.on_datagram("a", packet(1, seq), t), Forward)
        assert relay.tick(t) == []
        if seq % 25 == 0:
            assert relay.on_datagram("b", packet(2, seq), t) == Dropped("not-floor-holder")
        t, seq = t + 0.06, seq + 1
    freed = relay.tick(t)
    assert sorted((a.conn, a.msg) for a in freed) == [(c, Floor(slot=None)) for c in "ab"]
    assert relay.counters.floor_timeouts == 1
    # a, still sending, is kept off; b takes the floor
    assert relay.on_datagram("a", packet(1, seq), t + 0.05) == Dropped("floor-timeout")
    taken = relay.on_datagram("b", packet(2, seq), t + 0.5)
    assert isinstance(taken, Forward) and {x.msg for x in taken.actions} == {Floor(slot=2)}
    assert relay.on_datagram("a", packet(1, seq + 1), t + 1.0) == Dropped("floor-timeout")
    # b stops; once the lockout is over a may take the free floor again
    assert relay.tick(t + 0.5 + FLOOR_RELEASE_S) != []
    assert relay.on_datagram("a", packet(1, seq + 2), t + FLOOR_LOCKOUT_S - 0.01) == Dropped(
        "floor-timeout"
    )
    again = relay.on_datagram("a", packet(1, seq + 3), t + FLOOR_LOCKOUT_S)
    assert isinstance(again, Forward) and {x.msg for x in again.actions} == {Floor(slot=1)}
    # keep-alives were never held: they carry reports while a member is silent
    assert isinstance(relay.on_datagram("b", packet(2, seq, body=16), t + 3.1), Forward)
    # no limit with 0
    relay = porch(push_to_talk=True, max_floor_s=0)
    seat(relay, "a", ALICE)
    for i in range(2000):
        assert isinstance(relay.on_datagram("a", packet(1, i), i * 0.06), Forward)
        assert relay.tick(i * 0.06) == []
    assert relay.counters.floor_timeouts == 0
    for bad in (-1, 3601, True):
        with pytest.raises(ValueError, match="max_floor_s"):
            RoomPolicy(max_floor_s=bad)  # type: ignore[arg-type]


def test_floor_is_released_when_the_holder_leaves() -> None:
    relay = porch(push_to_talk=True)
    seat(relay, "a", ALICE)
    seat(relay, "b", BOB)
    relay.on_datagram("a", packet(1), 0.0)
    msgs = sends(relay.leave("a", 0.1), "b")
    assert Floor(slot=None) in msgs and any(isinstance(m, RoomUpdate) for m in msgs)
    assert relay.rooms["porch"].floor is None


def test_open_room_without_push_to_talk_never_sends_floor() -> None:
    relay = porch()
    assert not any(isinstance(m, Floor) for m in sends(seat(relay, "a", ALICE)))
    seat(relay, "b", BOB)
    assert relay.on_datagram("a", packet(1), 0.0) == Forward(("b",))
    assert relay.on_datagram("b", packet(2), 0.0) == Forward(("a",))
    assert relay.tick(5.0) == []


# ----------------------------------------------------------------------------- signalling


def _offer(to: str | None, from_: str | None = None) -> CallOffer:
    return CallOffer(
        identity_pub=ALICE.ed25519_pub,
        ephemeral_pub=bytes(32),
        signature=bytes(64),
        supported_profiles=(),
        to=to,
        from_=from_,
    )


def test_messages_with_to_reach_that_member_only_from_the_sender() -> None:
    relay = porch()
    seat(relay, "a", ALICE)
    seat(relay, "b", BOB)
    seat(relay, "c", CAROL)
    actions = relay.on_message("a", _offer(BOB.fingerprint.hex()), 1.0)
    assert actions == [Send("b", _offer(BOB.fingerprint.hex(), ALICE.fingerprint.hex()))]
    assert relay.counters.forged_from == 0
    # a forged from is overwritten and counted
    forged = Hangup(
        reason=HangupReason.Normal, to=CAROL.fingerprint.hex(), from_=BOB.fingerprint.hex()
    )
    (send,) = relay.on_message("a", forged, 1.0)
    assert send.conn == "c" and send.msg.from_ == ALICE.fingerprint.hex()  # type: ignore[union-attr]
    assert send.msg.reason is HangupReason.Normal  # type: ignore[union-attr]
    assert relay.counters.forged_from == 1
    assert relay.counters.messages_forwarded == 2


def test_unroutable_messages_are_counted() -> None:
    relay = porch()
    seat(relay, "a", ALICE)
    seat(relay, "b", BOB)
    stranger = "0" * 32
    (reply,) = relay.on_message("a", _offer(stranger), 1.0)
    assert reply.conn == "a" and reply.msg.code == "not-in-room"  # type: ignore[union-attr]
    assert relay.on_message("a", _offer(None), 1.0) == []
    assert relay.on_message("a", UnknownMessage("Whatever"), 1.0) == []
    assert relay.on_message("a", join_msg(ALICE, "porch"), 1.0) == []
    assert relay.on_message("zz", Ping(timestamp_ms=5), 1.0) == []
    assert relay.counters.message_drops == {
        "unknown-recipient": 1,
        "no-recipient": 1,
        "unknown-message": 1,
        "duplicate-join": 1,
        "not-connected": 1,
    }
    # another room's member is not reachable
    relay2 = Relay(RELAY.fingerprint, {"porch": RoomPolicy(), "shed": RoomPolicy()})
    seat(relay2, "a", ALICE)
    seat(relay2, "c", CAROL, room="shed")
    (reply,) = relay2.on_message("a", _offer(CAROL.fingerprint.hex()), 1.0)
    assert reply.conn == "a" and reply.msg.code == "not-in-room"  # type: ignore[union-attr]


def test_ping_is_answered_with_pong() -> None:
    relay = porch()
    seat(relay, "a", ALICE)
    assert relay.on_message("a", Ping(timestamp_ms=123), 1.0) == [Send("a", Pong(timestamp_ms=123))]
    assert relay.counters.pongs_sent == 1


# ----------------------------------------------------------------------------- invariants


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["join", "leave", "send"]), st.integers(0, 5)), max_size=40
    )
)
def test_slots_stay_unique_and_updates_match_the_room(ops: list[tuple[str, int]]) -> None:
    idents = [Identity.from_seed(bytes([10 + i]) * 32) for i in range(6)]
    relay = porch(max_members=4)
    conn_of: dict[int, int] = {}
    next_conn = 0
    for now, (op, who) in enumerate(ops):
        if op == "join":
            next_conn += 1
            actions = seat(relay, next_conn, idents[who], now=float(now))
            if any(isinstance(m, RoomUpdate) for m in sends(actions, next_conn)):
                conn_of[who] = next_conn
        elif op == "leave" and who in conn_of:
            relay.leave(conn_of.pop(who), float(now))
        elif op == "send" and who in conn_of:
            member = relay.member(conn_of[who])
            if member is not None:
                result = relay.on_datagram(conn_of[who], packet(member.slot), float(now))
                assert isinstance(result, Forward)
        room = relay.rooms["porch"]
        slots = list(room.members)
        assert len(slots) == len(set(slots)) <= 4
        assert all(1 <= s <= 255 for s in slots)
        assert len(room.conns) == len(room.members) == len(room.by_fp)


def test_the_room_module_is_pure() -> None:
    """ARCHITECTURE.md: the relay's core never imports I/O (same rule as tests/
    test_architecture.py applies to proto, crypto, media ...)."""
    import ast

    import wzp.relay.room as room_module
    from tests.test_architecture import FORBIDDEN, FORBIDDEN_CALLS, _imports

    path = Path(room_module.__file__)
    tree = ast.parse(path.read_text())
    names = _imports(tree, "wzp.relay.room")
    bad = [n for n in names if any(n == f or n.startswith(f + ".") for f in FORBIDDEN)]
    assert bad == []
    calls = [
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in FORBIDDEN_CALLS
    ]
    assert calls == []
    assert "wzp.proto.header" in names and "wzp.crypto.handshake" in names


def test_keepalives_neither_take_nor_hold_the_floor() -> None:
    """A silent member's keep-alives (body = the AEAD tag alone) still reach the others
    (they carry its quality reports) but do not keep or take the floor."""
    relay = porch(push_to_talk=True)
    seat(relay, "a", ALICE)
    seat(relay, "b", BOB)
    relay.on_datagram("a", packet(1), 0.0)  # a talks: a holds the floor
    # a's PTT is released: only keep-alives from a now, and they do not hold the floor
    assert relay.on_datagram("a", packet(1, 1, body=16, report=True), 0.3) == Forward(("b",))
    assert relay.rooms["porch"].floor == 1
    released = relay.tick(FLOOR_RELEASE_S)
    assert {a.msg for a in released} == {Floor(slot=None)}
    # b's keep-alive is forwarded without taking the free floor; b's speech takes it
    assert relay.on_datagram("b", packet(2, 0, body=16), 0.6) == Forward(("a",))
    assert relay.rooms["porch"].floor is None
    taken = relay.on_datagram("b", packet(2, 1), 0.7)
    assert isinstance(taken, Forward) and relay.rooms["porch"].floor == 2
