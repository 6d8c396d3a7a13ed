"""The call session state machine (wzp's, extended for a handset that rings).

States (wzp phase 1: Idle -> Connecting -> Handshaking -> Active <-> Rekeying -> Closed)::

    caller:  IDLE -dial-> CONNECTING -connected-> HANDSHAKING -ringing-> ALERTING
             (HANDSHAKING | ALERTING) -answered-> ACTIVE
    callee:  IDLE -offer-> RINGING -answer-> ACTIVE
    both:    ACTIVE -rekey_start-> REKEYING -rekey_done-> ACTIVE
             any live state -hangup / failure / timeout-> CLOSED -reset-> IDLE

Every state but IDLE, ACTIVE and CLOSED has a deadline; :meth:`Session.poll` turns a
passed deadline into a close with reason ``Timeout``. Every event that belongs to a
call carries its call id, and an event for another call id is refused as stale, so
a late Hangup never ends the next call. Pure: time is always an explicit ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class State(Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    HANDSHAKING = "handshaking"
    ALERTING = "alerting"  # caller: the callee is ringing
    RINGING = "ringing"  # callee: this handset is ringing
    ACTIVE = "active"
    REKEYING = "rekeying"
    CLOSED = "closed"


class Direction(Enum):
    OUTGOING = "outgoing"
    INCOMING = "incoming"


class EndReason(Enum):
    """Why a call ended; the first five are SPEC 3.3's Hangup reasons."""

    NORMAL = "Normal"
    BUSY = "Busy"
    DECLINED = "Declined"
    TIMEOUT = "Timeout"
    ERROR = "Error"


#: How long each waiting state may last, in seconds.
TIMEOUTS: dict[State, float] = {
    State.CONNECTING: 10.0,
    State.HANDSHAKING: 10.0,
    State.ALERTING: 60.0,
    State.RINGING: 60.0,
    State.REKEYING: 10.0,
}

LIVE = frozenset(
    {
        State.CONNECTING,
        State.HANDSHAKING,
        State.ALERTING,
        State.RINGING,
        State.ACTIVE,
        State.REKEYING,
    }
)


class SessionError(Exception):
    """An event that is not valid in the current state (a bug or a confused peer)."""


class StaleEvent(SessionError):
    """An event for a call id that is not the current call's: ignore it."""


@dataclass(frozen=True, slots=True)
class Transition:
    old: State
    new: State
    event: str
    at: float
    reason: EndReason | None = None
    detail: str = ""


@dataclass
class Session:
    """One handset's call state. Create once; it goes back to IDLE with :meth:`reset`."""

    state: State = State.IDLE
    direction: Direction | None = None
    call_id: bytes | None = None
    peer: bytes | None = None  # the peer's fingerprint
    deadline: float | None = None
    entered_at: float = 0.0
    end_reason: EndReason | None = None
    end_detail: str = ""
    rekeys: int = 0
    history: list[Transition] = field(default_factory=list)
    timeouts: dict[State, float] = field(default_factory=lambda: dict(TIMEOUTS))

    # -- helpers ---------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        return self.state in LIVE

    def _go(
        self,
        new: State,
        event: str,
        now: float,
        reason: EndReason | None = None,
        detail: str = "",
    ) -> Transition:
        t = Transition(self.state, new, event, now, reason, detail)
        self.state = new
        self.entered_at = now
        limit = self.timeouts.get(new)
        self.deadline = now + limit if limit is not None else None
        self.history.append(t)
        del self.history[:-64]
        return t

    def _require(self, event: str, *states: State) -> None:
        if self.state not in states:
            allowed = ", ".join(s.value for s in states)
            raise SessionError(f"{event} is not valid in state {self.state.value} (only {allowed})")

    def _check_call(self, call_id: bytes) -> None:
        if call_id != self.call_id:
            raise StaleEvent(
                f"call id {call_id.hex()} is not the current call "
                f"({self.call_id.hex() if self.call_id else 'none'})"
            )

    # -- caller side -----------------------------------------------------------------------

    def dial(self, call_id: bytes, peer: bytes, now: float) -> Transition:
        self._require("dial", State.IDLE)
        self.direction, self.call_id, self.peer = Direction.OUTGOING, call_id, peer
        self.end_reason, self.end_detail, self.rekeys = None, "", 0
        return self._go(State.CONNECTING, "dial", now)

    def connected(self, call_id: bytes, now: float) -> Transition:
        """The transport is up and the CallOffer has been sent."""
        self._check_call(call_id)
        self._require("connected", State.CONNECTING)
        return self._go(State.HANDSHAKING, "offer-sent", now)

    def remote_ringing(self, call_id: bytes, now: float) -> Transition:
        self._check_call(call_id)
        self._require("ringing", State.HANDSHAKING)
        return self._go(State.ALERTING, "ringing", now)

    def answered(self, call_id: bytes, now: float) -> Transition:
        """A valid CallAnswer arrived (signature and keys checked by the caller)."""
        self._check_call(call_id)
        self._require("answered", State.HANDSHAKING, State.ALERTING)
        return self._go(State.ACTIVE, "answered", now)

    # -- callee side -----------------------------------------------------------------------

    def incoming(self, call_id: bytes, peer: bytes, now: float) -> Transition:
        """A valid CallOffer arrived; the handset rings. Busy handsets refuse it."""
        if self.state is not State.IDLE:
            raise SessionError("busy")
        self.direction, self.call_id, self.peer = Direction.INCOMING, call_id, peer
        self.end_reason, self.end_detail, self.rekeys = None, "", 0
        return self._go(State.RINGING, "offer", now)

    def answer(self, now: float) -> Transition:
        """The user answered (CALL button or ``wzp answer``)."""
        self._require("answer", State.RINGING)
        return self._go(State.ACTIVE, "answer", now)

    # -- both ------------------------------------------------------------------------------

    def rekey_started(self, call_id: bytes, now: float) -> Transition:
        self._check_call(call_id)
        self._require("rekey", State.ACTIVE)
        return self._go(State.REKEYING, "rekey", now)

    def rekey_done(self, call_id: bytes, now: float) -> Transition:
        self._check_call(call_id)
        self._require("rekey-done", State.REKEYING)
        self.rekeys += 1
        return self._go(State.ACTIVE, "rekey-done", now)

    def close(
        self, reason: EndReason, now: float, detail: str = "", call_id: bytes | None = None
    ) -> Transition | None:
        """End the call (local hang-up, peer Hangup, failure). None if nothing is live.

        With ``call_id`` (a peer's Hangup), a Hangup for another call is stale.
        """
        if call_id is not None:
            self._check_call(call_id)
        if not self.live:
            return None
        self.end_reason, self.end_detail = reason, detail
        return self._go(State.CLOSED, "close", now, reason, detail)

    def reset(self, now: float) -> Transition:
        """Back to IDLE after a call has closed, ready for the next."""
        self._require("reset", State.CLOSED, State.IDLE)
        self.direction = None
        self.call_id = None
        self.peer = None
        return self._go(State.IDLE, "reset", now)

    def poll(self, now: float) -> Transition | None:
        """Apply a passed deadline. REKEYING falls back to ACTIVE; the rest close."""
        if self.deadline is None or now < self.deadline:
            return None
        if self.state is State.REKEYING:
            return self._go(State.ACTIVE, "rekey-timeout", now, detail="rekey timed out")
        return self.close(EndReason.TIMEOUT, now, f"no progress in {self.state.value}")
