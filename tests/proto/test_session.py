from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wzp.proto.session import (
    LIVE,
    TIMEOUTS,
    Direction,
    EndReason,
    Session,
    SessionError,
    StaleEvent,
    State,
)

CALL = bytes.fromhex("00112233445566778899aabbccddeeff")
OTHER = bytes(16)
PEER = bytes(range(16))


def test_outgoing_call_lifecycle() -> None:
    s = Session()
    assert s.dial(CALL, PEER, 0.0).new is State.CONNECTING
    assert s.deadline == TIMEOUTS[State.CONNECTING]
    assert s.connected(CALL, 0.5).new is State.HANDSHAKING
    assert s.remote_ringing(CALL, 0.9).new is State.ALERTING
    assert s.answered(CALL, 5.0).new is State.ACTIVE
    assert s.deadline is None
    assert s.rekey_started(CALL, 600.0).new is State.REKEYING
    assert s.rekey_done(CALL, 600.4).new is State.ACTIVE
    assert s.rekeys == 1
    t = s.close(EndReason.NORMAL, 700.0)
    assert t is not None and t.new is State.CLOSED and t.reason is EndReason.NORMAL
    assert s.close(EndReason.NORMAL, 700.1) is None  # already closed: nothing more
    assert s.reset(701.0).new is State.IDLE
    assert s.call_id is None
    assert [h.new for h in s.history] == [
        State.CONNECTING,
        State.HANDSHAKING,
        State.ALERTING,
        State.ACTIVE,
        State.REKEYING,
        State.ACTIVE,
        State.CLOSED,
        State.IDLE,
    ]


def test_answer_may_arrive_without_ringing() -> None:
    s = Session()
    s.dial(CALL, PEER, 0.0)
    s.connected(CALL, 0.1)
    assert s.answered(CALL, 0.2).new is State.ACTIVE


def test_incoming_call_rings_then_answers() -> None:
    s = Session()
    assert s.incoming(CALL, PEER, 1.0).new is State.RINGING
    assert s.direction is Direction.INCOMING
    assert s.answer(3.0).new is State.ACTIVE


def test_busy_handset_refuses_second_offer() -> None:
    s = Session()
    s.incoming(CALL, PEER, 1.0)
    with pytest.raises(SessionError, match="busy"):
        s.incoming(OTHER, PEER, 1.5)
    assert s.call_id == CALL and s.state is State.RINGING


@pytest.mark.parametrize("state", sorted(TIMEOUTS, key=lambda s: s.value))
def test_every_waiting_state_times_out(state: State) -> None:
    s = Session()
    if state is State.RINGING:
        s.incoming(CALL, PEER, 0.0)
    else:
        s.dial(CALL, PEER, 0.0)
        steps = {
            State.HANDSHAKING: [s.connected],
            State.ALERTING: [s.connected, s.remote_ringing],
            State.REKEYING: [s.connected, s.answered, s.rekey_started],
        }.get(state, [])
        for step in steps:
            step(CALL, 0.0)
    assert s.state is state
    assert s.poll(TIMEOUTS[state] - 0.001) is None
    t = s.poll(TIMEOUTS[state])
    assert t is not None
    if state is State.REKEYING:
        assert s.state is State.ACTIVE  # a failed rekey keeps the call on the old keys
    else:
        assert s.state is State.CLOSED and s.end_reason is EndReason.TIMEOUT


def test_stale_call_id_never_touches_the_next_call() -> None:
    s = Session()
    s.dial(OTHER, PEER, 0.0)
    s.close(EndReason.NORMAL, 1.0)
    s.reset(1.0)
    s.incoming(CALL, PEER, 2.0)
    s.answer(2.5)
    # a late Hangup of the previous call arrives
    with pytest.raises(StaleEvent):
        s.close(EndReason.NORMAL, 3.0, call_id=OTHER)
    assert s.state is State.ACTIVE
    with pytest.raises(StaleEvent):
        s.rekey_started(OTHER, 3.0)
    assert s.close(EndReason.NORMAL, 4.0, call_id=CALL) is not None


def test_invalid_events_are_clear_errors() -> None:
    s = Session()
    with pytest.raises(SessionError, match="answer is not valid in state idle"):
        s.answer(0.0)
    s.dial(CALL, PEER, 0.0)
    with pytest.raises(SessionError, match="dial is not valid"):
        s.dial(CALL, PEER, 0.0)
    with pytest.raises(SessionError):
        s.answered(CALL, 0.1)  # no offer sent yet
    with pytest.raises(SessionError):
        s.reset(0.2)  # a live call is not reset: it is closed first


_ACTIONS = st.sampled_from(
    ["dial", "connected", "ringing", "answered", "incoming", "answer", "rekey", "rekey_done",
     "close", "reset", "poll", "stale"]
)  # fmt: skip


def _apply(s: Session, action: str, now: float) -> object:
    calls = {
        "dial": lambda: s.dial(CALL, PEER, now),
        "connected": lambda: s.connected(CALL, now),
        "ringing": lambda: s.remote_ringing(CALL, now),
        "answered": lambda: s.answered(CALL, now),
        "incoming": lambda: s.incoming(CALL, PEER, now),
        "answer": lambda: s.answer(now),
        "rekey": lambda: s.rekey_started(CALL, now),
        "rekey_done": lambda: s.rekey_done(CALL, now),
        "close": lambda: s.close(EndReason.NORMAL, now),
        "reset": lambda: s.reset(now),
        "poll": lambda: s.poll(now),
        "stale": lambda: s.close(EndReason.NORMAL, now, call_id=OTHER),
    }
    return calls[action]()


@settings(max_examples=300)
@given(st.lists(st.tuples(_ACTIONS, st.floats(0, 100)), max_size=40))
def test_random_event_sequences_keep_invariants(steps: list[tuple[str, float]]) -> None:
    s = Session()
    now = 0.0
    for action, dt in steps:
        now += dt
        before = s.state
        try:
            _apply(s, action, now)
        except StaleEvent:
            assert s.state is before  # stale events change nothing
        except SessionError:
            assert s.state is before  # refused events change nothing
        # invariants
        assert (s.deadline is not None) == (s.state in TIMEOUTS)
        if s.state in LIVE:
            assert s.call_id == CALL and s.direction is not None
        if s.state is State.IDLE:
            assert s.call_id is None
