"""The call engine: session state, signed handshake, signalling, rekey and media, pure.

One :class:`CallEngine` is one handset's side of calls, one call at a time. It never
touches a socket: the transport feeds it what arrived (:meth:`on_connected`,
:meth:`on_message`, :meth:`on_datagram`, :meth:`on_transport_closed`), the user's
actions (:meth:`dial`, :meth:`answer`, :meth:`hangup`), captured audio and the time;
it answers with signalling messages and datagrams to send (:meth:`take_messages`,
:meth:`take_datagrams`), audio to play, and :class:`CallEvent` records of what
happened, which the daemon turns into LEDs and status. The CLI, the daemon, the demo,
the tests and (through :attr:`CallEngine.media`) the relay's members share this one
implementation.

Handshake (SPEC 6): the caller sends ``CallOffer`` signed for the callee's
fingerprint; the callee checks the signature, its accept policy and that it is idle,
answers ``Ringing`` and rings; when the user answers it sends ``CallAnswer`` signed
for the caller and both derive the direction keys. Every message carries the call id
and a message for another call id is ignored (counted), so a late Hangup never ends
the next call. The caller rekeys after 2^15 packets or 10 minutes (SPEC 6.6); media
that arrives under the next epoch before its keys is held (up to 2 s) and opened
once they are installed, so a rekey leaves no gap.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ..crypto.handshake import (
    Ephemeral,
    EpochKeys,
    HandshakeError,
    Role,
    initial_keys,
    new_call_id,
    next_epoch_keys,
    sign_answer,
    sign_offer,
    sign_rekey,
    verify_answer,
    verify_offer,
    verify_rekey,
)
from ..crypto.identity import Identity, fingerprint, fingerprint_text
from ..crypto.media import MediaCrypto
from ..proto import signal as sig
from ..proto.header import Datagram, DropReason, parse_datagram
from ..proto.profiles import PHASE1_PROFILES, Profile
from ..proto.session import EndReason, Session, SessionError, StaleEvent, State
from .endpoint import MediaEndpoint
from .ladder import LADDER, Tier, tier_for_profile
from .playout import FrameDecoder
from .sender import TierEncoder

#: call ids remembered to refuse a replayed CallOffer
SEEN_CALL_IDS = 4096
#: how long media under a not-yet-known epoch is held for its keys
HOLD_NEXT_EPOCH_S = 2.0
MAX_HELD = 256
#: an unanswered Rekey goes out again this often, on a stream of its own, until the answer
#: arrives (a rekey that times out is resumed with the same key, never replaced: the peer
#: may already hold the epoch it answered with). At 60 % loss each way one copy and its
#: answer each needed over 10 s of QUIC's backed-off retransmissions now and then
REKEY_RESEND_S = 0.5
#: peer rekey keys remembered, so a late copy of a Rekey already used is known as one
REKEY_SEEN = 16
#: Call set-up, the same way: the caller sends its CallOffer again this often (each copy
#: on a stream of its own) until the callee's Ringing or CallAnswer comes; the callee
#: answers every copy of the offer it is handling with its reply so far (Ringing, or its
#: CallAnswer), and sends its CallAnswer again by itself until the caller's first
#: authenticated datagram shows the answer arrived. QUIC alone retransmits a lost stream
#: on its backed-off probe timer: at 65 % loss each way a connected call got only three
#: or four tries at the offer and answer within the 10 s set-up limit, and 22 of 36 calls
#: between two daemons timed out in "handshaking" (QA, this session)
SETUP_RESEND_S = 0.5
#: a call in which nothing authenticated (media, keep-alive or message) has come from the
#: peer for this long ends with Timeout. A direct call's QUIC connection gives up after
#: the same 30 s of silence; through a relay only this ends the call of a peer that died
#: (the relay connection itself stays up). Longer than the 20 s path outages a call
#: survives. A peer sends a keep-alive about once a second even when it does not talk.
PEER_SILENT_S = 30.0


@dataclass(frozen=True, slots=True)
class CallEvent:
    at: float
    kind: str  # "state", "refused", "rekey", "stale", "error"
    state: State
    detail: str = ""


@dataclass
class CallStats:
    messages_in: Counter[str] = field(default_factory=Counter)
    messages_out: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    stale: int = 0
    rekeys: int = 0
    held_for_rekey: int = 0


def _hex(b: bytes) -> str:
    return b.hex()


class CallEngine:
    """One handset's calls (pure; time is passed in)."""

    def __init__(
        self,
        identity: Identity,
        encoder_factory: Callable[[], TierEncoder],
        decoder_factory: Callable[[], FrameDecoder],
        *,
        accept: Callable[[bytes], bool] = lambda fp: True,
        refusal: str = "is not a contact",
        alias: str | None = None,
        ladder: tuple[Tier, ...] = LADDER,
        rekey_after_s: float | None = None,
        seen_calls: OrderedDict[bytes, None] | None = None,
        transport_peer: bytes | None = None,
        relayed: bool = False,
    ) -> None:
        self.identity = identity
        self.encoder_factory = encoder_factory
        self.decoder_factory = decoder_factory
        self.accept = accept
        #: what a caller ``accept`` refuses is, in the refusal's event
        self.refusal = refusal
        self.alias = alias
        self.ladder = ladder
        self.rekey_after_s = rekey_after_s  # override SPEC's 10 minutes (tests, demo)
        self.session = Session()
        self.stats = CallStats()
        self.media: MediaEndpoint | None = None
        self.peer_identity: bytes | None = None
        self.role: Role | None = None
        self._expected_peer: bytes | None = None
        self._eph: Ephemeral | None = None
        self._offer: sig.CallOffer | None = None
        self._keys: EpochKeys | None = None
        self._crypto: MediaCrypto | None = None
        self._rekey_eph: Ephemeral | None = None
        #: the caller's Rekey under way (sent again until answered) and when it goes next
        self._rekey_msg: sig.Rekey | None = None
        self._rekey_next = 0.0
        #: the caller's CallOffer and the callee's CallAnswer, sent again until the
        #: other side shows it has them (SETUP_RESEND_S)
        self._offer_sent: sig.CallOffer | None = None
        self._answer_sent: sig.CallAnswer | None = None
        self._setup_next = 0.0
        #: the callee's answer to the newest Rekey (pub it answered, the answer), sent
        #: again when a copy of that Rekey comes in
        self._rekey_answer: tuple[bytes, sig.Rekey] | None = None
        #: every side's record of the peer's rekey keys already used
        self._rekey_seen: deque[bytes] = deque(maxlen=REKEY_SEEN)
        #: when the call's media started or the peer's last message was taken
        self._msg_heard_at = 0.0
        self._held: list[tuple[float, bytes]] = []
        self._out_msgs: list[sig.Message] = []
        self._out_dgrams: list[bytes] = []
        self.events: list[CallEvent] = []
        #: call ids already offered (a replayed CallOffer is refused); a handset shares one
        #: table between the engines of all its connections
        self._seen_calls: OrderedDict[bytes, None] = (
            seen_calls if seen_calls is not None else OrderedDict()
        )
        #: on a direct connection, the fingerprint the peer's certificate proved: an offer
        #: made in another identity's name on it is refused (None: not known, e.g. relay)
        self.transport_peer = transport_peer
        #: through a relay room (SPEC 8.4): messages go out with ``to`` = the peer, the
        #: relay's ``from`` says who sent each one, media carries the member's slot as its
        #: stream byte and only the peer's slot is accepted
        self.relayed = relayed
        self.media_stream = 0
        self.peer_streams: frozenset[int] | None = frozenset({0})
        #: who holds the floor of a push-to-talk room (set_floor); None: free, or no room
        self.floor: int | None = None
        self._epoch_started = 0.0
        self.rtt_ms = 0.0

    # -- outputs ----------------------------------------------------------------------

    def take_messages(self) -> list[sig.Message]:
        out, self._out_msgs = self._out_msgs, []
        return out

    def take_datagrams(self) -> list[bytes]:
        out, self._out_dgrams = self._out_dgrams, []
        return out

    def take_events(self) -> list[CallEvent]:
        out, self.events = self.events, []
        return out

    @property
    def state(self) -> State:
        return self.session.state

    @property
    def call_id(self) -> bytes | None:
        return self.session.call_id

    def _send(self, msg: sig.Message, to: bytes | None = None) -> None:
        peer = to or self.peer_fingerprint
        if self.relayed and peer is not None and hasattr(msg, "to"):
            msg = replace(msg, to=peer.hex())  # type: ignore[type-var]
        self.stats.messages_out[type(msg).__name__] += 1
        self._out_msgs.append(msg)

    @property
    def peer_fingerprint(self) -> bytes | None:
        """Who this call is with: the dialled fingerprint, or the caller's."""
        if self._expected_peer is not None:
            return self._expected_peer
        return fingerprint(self.peer_identity) if self.peer_identity is not None else None

    def set_streams(self, mine: int, peer: int | None) -> None:
        """Relay slots (8.3): ours as the stream byte, the peer's as the only one accepted.
        Called again after a rejoin, when the relay may have handed out new slots."""
        self.media_stream = mine
        self.peer_streams = frozenset({peer}) if peer is not None else None
        if self.media is not None:
            self.media.sender.stream = mine
            self.media.receiver.streams_allowed = self.peer_streams

    def set_floor(self, slot: int | None) -> None:
        """A push-to-talk room's relay says who holds the floor (None: free); the
        receiver tells the relay's drops from the link's loss by it."""
        self.floor = slot
        if self.media is not None:
            self.media.receiver.floor_changed(slot)

    def _event(self, now: float, kind: str, detail: str = "") -> None:
        self.events.append(CallEvent(now, kind, self.session.state, detail))

    # -- user actions -----------------------------------------------------------------

    def dial(self, peer_fingerprint: bytes, now: float) -> bytes:
        """Start a call to ``peer_fingerprint``; the transport now connects to the peer."""
        call_id = new_call_id()
        self.session.dial(call_id, peer_fingerprint, now)
        self.role = Role.CALLER
        self._expected_peer = peer_fingerprint
        self._event(now, "state", "dialing")
        return call_id

    def answer(self, now: float) -> None:
        """The user answers the ringing call."""
        if self.session.state is not State.RINGING or self._offer is None:
            raise SessionError("nothing is ringing")
        offer = self._offer
        eph = Ephemeral.generate()
        caller_fp = fingerprint(offer.identity_pub)
        chosen = _choose_profile(offer.supported_profiles)
        answer = sig.CallAnswer(
            identity_pub=self.identity.ed25519_pub,
            ephemeral_pub=eph.public,
            signature=sign_answer(self.identity, eph, caller_fp),
            chosen_profile=chosen,
            call_id=_hex(self.session.call_id or b""),
        )
        self._send(answer)
        self._answer_sent, self._setup_next = answer, now + SETUP_RESEND_S
        keys = initial_keys(eph, offer.ephemeral_pub, Role.CALLEE)
        self.session.answer(now)
        self._start_media(keys, Role.CALLEE, chosen, now)

    def hangup(self, now: float, reason: EndReason = EndReason.NORMAL, detail: str = "") -> None:
        """End the call (user, failure); tells the peer when a call id exists."""
        if not self.session.live:
            return
        if self.session.call_id is not None:
            self._send(sig.Hangup(reason=reason.value, call_id=_hex(self.session.call_id)))
        self._close(reason, now, detail or "hung up here")

    def _close(self, reason: EndReason, now: float, detail: str) -> None:
        if self.session.close(reason, now, detail) is not None:
            self._event(now, "state", f"{reason.value}: {detail}")
        self.media = None
        self._crypto = None
        self._keys = None
        self._held.clear()
        self._rekey_eph = self._rekey_msg = self._rekey_answer = None
        self._rekey_seen.clear()
        self._offer_sent = self._answer_sent = None

    def reset(self, now: float) -> None:
        """After a closed call, back to idle for the next one."""
        if self.session.state is State.CLOSED:
            self.session.reset(now)
            self._offer = None
            self.peer_identity = None
            self.role = None
            self._event(now, "state", "idle")

    # -- transport events -------------------------------------------------------------

    def on_connected(self, now: float, peer_fingerprint: bytes | None = None) -> None:
        """The caller's transport is up (peer certificate checked): send the offer."""
        if self.session.state is not State.CONNECTING or self.session.call_id is None:
            return
        if (
            peer_fingerprint is not None
            and self._expected_peer is not None
            and peer_fingerprint != self._expected_peer
        ):
            self.hangup(now, EndReason.ERROR, "peer certificate does not match the contact")
            return
        self._eph = Ephemeral.generate()
        callee = self._expected_peer or b""
        offer = sig.CallOffer(
            identity_pub=self.identity.ed25519_pub,
            ephemeral_pub=self._eph.public,
            signature=sign_offer(self.identity, self._eph, callee),
            supported_profiles=PHASE1_PROFILES,
            call_id=_hex(self.session.call_id),
            alias=self.alias,
        )
        self._send(offer)
        self._offer_sent, self._setup_next = offer, now + SETUP_RESEND_S
        self.session.connected(self.session.call_id, now)
        self._event(now, "state", "offer sent")

    def on_peer_closed(self, reason: EndReason, now: float, detail: str) -> None:
        """The peer closed the connection saying it hung up (its Hangup was lost)."""
        if self.session.live:
            self._close(reason, now, detail)

    def on_transport_closed(self, now: float, reason: str) -> None:
        """The connection died (idle timeout, reset): the call ends with ``Timeout``."""
        if self.session.live:
            self._close(EndReason.TIMEOUT, now, reason)

    def on_message(self, msg: sig.Message | sig.UnknownMessage, now: float) -> None:
        """One signalling message from the peer. Never raises."""
        name = type(msg).__name__
        self.stats.messages_in[name] += 1
        try:
            if self.relayed and not isinstance(msg, sig.CallOffer | sig.UnknownMessage):
                sender = _from_of(msg)
                peer = self.peer_fingerprint
                if peer is not None and sender is not None and sender != peer:
                    raise StaleEvent(f"{name} from another room member")
            handler = _HANDLERS.get(type(msg))
            if handler is None:
                self._event(now, "error", f"ignored message {getattr(msg, 'name', name)}")
                return
            handler(self, msg, now)
            self._msg_heard_at = now
        except StaleEvent as exc:
            self.stats.stale += 1
            self._event(now, "stale", str(exc))
        except (SessionError, HandshakeError, ValueError) as exc:
            self.stats.refused[name] += 1
            self._event(now, "refused", f"{name}: {exc}")

    def _call_id_of(self, msg: object) -> bytes | None:
        cid = getattr(msg, "call_id", None)
        return bytes.fromhex(cid) if cid else None

    def _on_offer(self, msg: sig.CallOffer, now: float) -> None:
        caller_fp = fingerprint(msg.identity_pub)
        call_id = self._call_id_of(msg)
        if call_id is None:
            raise HandshakeError("offer without call_id")
        first = self._offer
        if (
            first is not None
            and call_id == self.session.call_id
            and (msg.identity_pub, msg.ephemeral_pub, msg.signature)
            == (first.identity_pub, first.ephemeral_pub, first.signature)
        ):
            self._reply_to_copy(call_id)  # a copy of the offer in hand (set-up resends)
            return
        if self.session.live and call_id != self.session.call_id:
            self.stats.refused["busy"] += 1
            self._send(sig.Hangup(reason="Busy", call_id=_hex(call_id)), to=caller_fp)
            self._event(now, "refused", "busy")
            return
        try:
            verify_offer(msg.identity_pub, msg.ephemeral_pub, msg.signature, self.identity)
        except HandshakeError:
            self.stats.refused["bad-signature"] += 1
            self._send(sig.Hangup(reason="Error", call_id=_hex(call_id)), to=caller_fp)
            self._event(now, "refused", "bad signature on CallOffer")
            return
        proven = _from_of(msg) if self.relayed else self.transport_peer
        if self.relayed and proven is None:
            raise HandshakeError("relayed CallOffer without the relay's from")
        if proven is not None and caller_fp != proven:
            # a valid offer of someone else's, replayed or relayed on this connection
            self.stats.refused["identity-mismatch"] += 1
            self._send(sig.Hangup(reason="Error", call_id=_hex(call_id)), to=proven)
            self._event(
                now, "refused", "CallOffer identity does not match the connection's certificate"
            )
            return
        if call_id in self._seen_calls:  # checked after the signature: no forged blocking
            self.stats.refused["replayed-offer"] += 1
            self._event(now, "refused", f"replayed CallOffer for call {call_id.hex()}")
            return  # no answer at all: a replay gets nothing to work with
        if not self.accept(caller_fp):
            self.stats.refused["not-allowed"] += 1
            self._send(sig.Hangup(reason="Declined", call_id=_hex(call_id)), to=caller_fp)
            self._event(now, "refused", f"caller {fingerprint_text(caller_fp)} {self.refusal}")
            return
        self._seen_calls[call_id] = None
        while len(self._seen_calls) > SEEN_CALL_IDS:
            self._seen_calls.popitem(last=False)
        if self.session.state is State.CLOSED:
            self.reset(now)
        self.session.incoming(call_id, caller_fp, now)
        self.role = Role.CALLEE
        self._offer = msg
        self.peer_identity = msg.identity_pub
        self._send(sig.Ringing(call_id=_hex(call_id)))
        self._event(now, "state", f"ringing: {msg.alias or caller_fp.hex()}")

    def _reply_to_copy(self, call_id: bytes) -> None:
        """Answer a copy of the offer being handled as the first one was answered: the
        caller resends until it hears back, and what it heard may have been lost."""
        state = self.session.state
        if state is State.RINGING:
            self._send(sig.Ringing(call_id=_hex(call_id)))
        elif self._answer_sent is not None and state in (State.ACTIVE, State.REKEYING):
            self._send(self._answer_sent)
        # else: the call is over; a late copy gets nothing

    def _on_ringing(self, msg: sig.Ringing, now: float) -> None:
        cid = self._call_id_of(msg)
        if cid == self.session.call_id and self.session.state in _PAST_RINGING:
            return  # a copy: the callee repeats its reply to every copy of the offer
        self.session.remote_ringing(cid or b"", now)
        self._event(now, "state", "peer is ringing")

    def _on_answer(self, msg: sig.CallAnswer, now: float) -> None:
        cid = self._call_id_of(msg) or b""
        if cid != self.session.call_id:
            raise StaleEvent(f"CallAnswer for call {cid.hex()}")
        if self.session.state in (State.ACTIVE, State.REKEYING, State.CLOSED):
            return  # a copy of the answer the call runs on (the callee resends it)
        if self._eph is None:
            raise SessionError("CallAnswer before an offer was sent")
        if self._expected_peer and fingerprint(msg.identity_pub) != self._expected_peer:
            self.hangup(now, EndReason.ERROR, "answer from another identity")
            return
        try:
            verify_answer(msg.identity_pub, msg.ephemeral_pub, msg.signature, self.identity)
            keys = initial_keys(self._eph, msg.ephemeral_pub, Role.CALLER)
        except HandshakeError as exc:
            self.hangup(now, EndReason.ERROR, f"CallAnswer refused: {exc.reason}")
            return
        self.session.answered(cid, now)
        self.peer_identity = msg.identity_pub
        self._start_media(keys, Role.CALLER, msg.chosen_profile, now)

    def _on_hangup(self, msg: sig.Hangup, now: float) -> None:
        cid = self._call_id_of(msg)
        if cid is None or cid != self.session.call_id:
            raise StaleEvent(f"Hangup for call {cid.hex() if cid else 'none'}")
        reason = EndReason(msg.reason.value)
        # the reason comes from the peer ("ended: Busy from the peer", not "Busy peer")
        self._close(reason, now, "peer hung up" if reason is EndReason.NORMAL else "from the peer")

    def _on_ping(self, msg: sig.Ping, now: float) -> None:
        self._send(sig.Pong(timestamp_ms=msg.timestamp_ms))

    def _on_pong(self, msg: sig.Pong, now: float) -> None:
        self.rtt_ms = max(0.0, now * 1000 - msg.timestamp_ms)
        if self.media is not None:
            self.media.rtt_ms = self.rtt_ms

    def _on_quality_update(self, msg: sig.QualityUpdate, now: float) -> None:
        if self.media is not None:
            self.media.on_quality_update(msg, now)

    def _on_rekey(self, msg: sig.Rekey, now: float) -> None:
        """SPEC 6.6, made safe to repeat: the caller starts a rekey and sends its Rekey
        until the answer arrives; the callee answers each new key once and repeats that
        same answer for copies of it; a key already used is never used again."""
        cid = self._call_id_of(msg) or b""
        if cid != self.session.call_id:
            raise StaleEvent(f"Rekey for call {cid.hex()}")
        if self.peer_identity is None or self._keys is None or self.role is None:
            raise SessionError("Rekey outside an active call")
        verify_rekey(self.peer_identity, msg.new_ephemeral_pub, msg.signature, cid)
        pub = msg.new_ephemeral_pub
        if self.role is Role.CALLEE:
            if self._rekey_answer is not None and self._rekey_answer[0] == pub:
                self._send(self._rekey_answer[1])  # our answer was lost: the same again
                self._event(now, "rekey", "answered again")
                return
            if pub in self._rekey_seen:
                raise StaleEvent("copy of an earlier Rekey")
            if self.session.state is not State.ACTIVE:
                raise SessionError(f"Rekey in state {self.session.state.value}")
            self._send_rekey(cid, now)
            assert self._rekey_msg is not None
            self._rekey_answer = (pub, self._rekey_msg)
            self._rekey_msg = None  # an answer is sent again only when asked again
            # the initiator holds both keys only once our answer has arrived, so this side
            # sends under the new epoch once the initiator's first new packet shows it
            self._finish_rekey(pub, now, switch_send=False)
            return
        # the caller: this is the answer to the rekey under way, or a late copy
        if pub in self._rekey_seen or self._rekey_eph is None:
            raise StaleEvent("Rekey answer with no rekey under way")
        if self.session.state is State.ACTIVE:  # the answer came after the rekey timed out
            self.session.rekey_started(cid, now)
        self._finish_rekey(pub, now, switch_send=True)

    # -- media ------------------------------------------------------------------------

    def _start_media(self, keys: EpochKeys, role: Role, profile: Profile, now: float) -> None:
        self._keys = keys
        self._crypto = MediaCrypto(role, keys, now)
        self._epoch_started = now
        self.media = MediaEndpoint(
            self.encoder_factory(),
            self.decoder_factory,
            self._crypto,
            self._crypto,
            self.ladder,
            tier_for_profile(profile, self.ladder),
            stream=self.media_stream,
            streams_allowed=self.peer_streams,
        )
        self.media.rtt_ms = self.rtt_ms
        self.media.receiver.floor_changed(self.floor)
        self._msg_heard_at = now
        self._event(now, "state", "in call")

    def start_rekey(self, now: float) -> None:
        """The caller's side of SPEC 6.6 (also callable by tests). A rekey that timed out
        unanswered is resumed with the same key."""
        cid = self.session.call_id
        if self.session.state is not State.ACTIVE or cid is None or self._keys is None:
            return
        if self.role is not Role.CALLER:
            return  # SPEC 6.6: the caller starts rekeys; two starters could cross
        resumed = self._rekey_msg is not None
        self._send_rekey(cid, now)
        self._event(now, "rekey", "resumed" if resumed else "started")

    def _send_rekey(self, cid: bytes, now: float) -> None:
        """Enter REKEYING and send our new X25519 key, signed (SPEC 6.6): a fresh one, or
        the one of the caller's unanswered rekey."""
        self.session.rekey_started(cid, now)
        if self._rekey_msg is None or self._rekey_eph is None:
            self._rekey_eph = Ephemeral.generate()
            self._rekey_msg = sig.Rekey(
                new_ephemeral_pub=self._rekey_eph.public,
                signature=sign_rekey(self.identity, self._rekey_eph, cid),
                call_id=_hex(cid),
            )
        self._send(self._rekey_msg)
        self._rekey_next = now + REKEY_RESEND_S

    def _finish_rekey(self, peer_new_pub: bytes, now: float, switch_send: bool = True) -> None:
        assert self._rekey_eph is not None and self._keys is not None and self.role is not None
        new = next_epoch_keys(self._keys, self._rekey_eph, peer_new_pub, self.role)
        self._keys = new
        if self._crypto is not None:
            self._crypto.install(new, now, switch_send=switch_send)
        self._rekey_seen.append(peer_new_pub)
        self._rekey_eph = None
        self._rekey_msg = None
        self._epoch_started = now
        self.stats.rekeys += 1
        cid = self.session.call_id or b""
        self.session.rekey_done(cid, now)
        self._event(now, "rekey", f"epoch {new.generation}")
        held, self._held = self._held, []
        for at, data in held:  # media that came under the new epoch before its keys
            if self.media is not None and now - at < HOLD_NEXT_EPOCH_S:
                self.media.on_datagram(data, now)

    def on_datagram(self, data: bytes, now: float) -> None:
        """A media datagram. Never raises; drops are counted by the receiver."""
        if self.media is None:
            return
        before = self.media.receiver.drops[DropReason.UNKNOWN_EPOCH]
        self.media.on_datagram(data, now)
        if self.media.receiver.drops[DropReason.UNKNOWN_EPOCH] > before and self._keys:
            parsed = parse_datagram(data)
            nxt = (self._keys.generation + 1) & 0xFF
            if (
                isinstance(parsed, Datagram)
                and parsed.header.epoch == nxt
                and len(self._held) < MAX_HELD
            ):
                self._held.append((now, data))
                self.stats.held_for_rekey += 1

    def capture(self, pcm48: np.ndarray, now: float) -> None:
        if self.media is not None and self.session.state in (State.ACTIVE, State.REKEYING):
            self._out_dgrams.extend(self.media.capture(pcm48, now))

    def stop_sending(self) -> None:
        if self.media is not None:
            self._out_dgrams.extend(self.media.stop_sending())

    @property
    def frame_samples(self) -> int:
        return self.media.frame_samples if self.media is not None else 960

    def heard_at(self) -> float | None:
        """When the peer was last heard in this call (an authenticated datagram or a
        message taken); None outside a call's media."""
        if self.media is None:
            return None
        last = self.media.receiver.last_heard
        return self._msg_heard_at if last is None else max(last, self._msg_heard_at)

    def _resend_setup(self, now: float) -> None:
        """Another copy of the CallOffer (caller, until the callee replies) or of the
        CallAnswer (callee, until the caller's first media arrives) every SETUP_RESEND_S."""
        if now < self._setup_next:
            return
        state = self.session.state
        if self._offer_sent is not None and state is State.HANDSHAKING:
            self._send(self._offer_sent)
        elif (
            self._answer_sent is not None
            and state is State.ACTIVE
            and (self.media is None or self.media.receiver.last_heard is None)
        ):
            self._send(self._answer_sent)
        else:
            return
        self._setup_next = now + SETUP_RESEND_S

    def playout(self, now: float) -> np.ndarray:
        if self.media is None:
            return np.zeros(960, dtype=np.int16)
        return self.media.playout(now)

    def tick(self, now: float) -> None:
        """Timeouts, reports, rekey schedule, signalling produced by the media loop."""
        t = self.session.poll(now)
        if t is not None and t.new is State.CLOSED:
            cid = self.session.call_id
            if cid is not None:
                self._send(sig.Hangup(reason="Timeout", call_id=_hex(cid)))
            self.media = None
            self._event(now, "state", f"Timeout: {t.detail}")
        self._resend_setup(now)
        if self.media is None:
            return
        heard = self.heard_at()
        if heard is not None and now - heard >= PEER_SILENT_S:
            cid = self.session.call_id
            if cid is not None:  # should the peer hear us after all
                self._send(sig.Hangup(reason="Timeout", call_id=_hex(cid)))
            self._close(
                EndReason.TIMEOUT, now, f"nothing heard from the peer for {PEER_SILENT_S:.0f} s"
            )
            return
        self._out_dgrams.extend(self.media.tick(now))
        for msg in self.media.take_signals():
            self._send(msg)
        self._held = [(at, d) for at, d in self._held if now - at < HOLD_NEXT_EPOCH_S]
        if (
            self.session.state is State.REKEYING
            and self._rekey_msg is not None
            and now >= self._rekey_next
        ):
            self._send(self._rekey_msg)  # not answered yet: another copy
            self._rekey_next = now + REKEY_RESEND_S
        if self.role is Role.CALLER and self.session.state is State.ACTIVE and self._crypto:
            due = self._crypto.rekey_due(now)
            if self.rekey_after_s is not None:
                due = due or now - self._epoch_started >= self.rekey_after_s
            if due:
                self.start_rekey(now)


#: a caller's states after the callee's Ringing (a later copy of it changes nothing)
_PAST_RINGING = frozenset({State.ALERTING, State.ACTIVE, State.REKEYING, State.CLOSED})


def _from_of(msg: object) -> bytes | None:
    """The ``from`` a relay wrote on a routed message, as a fingerprint (None: absent or
    malformed)."""
    frm = getattr(msg, "from_", None)
    try:
        return bytes.fromhex(frm) if frm else None
    except ValueError:
        return None


def _choose_profile(offered: tuple[Profile, ...]) -> Profile:
    """The callee's choice: the first offered profile (wzp's order is best first)."""
    return offered[0] if offered else PHASE1_PROFILES[0]


_HANDLERS: dict[type, Callable[[CallEngine, object, float], None]] = {
    sig.CallOffer: CallEngine._on_offer,  # type: ignore[dict-item]
    sig.Ringing: CallEngine._on_ringing,  # type: ignore[dict-item]
    sig.CallAnswer: CallEngine._on_answer,  # type: ignore[dict-item]
    sig.Hangup: CallEngine._on_hangup,  # type: ignore[dict-item]
    sig.Ping: CallEngine._on_ping,  # type: ignore[dict-item]
    sig.Pong: CallEngine._on_pong,  # type: ignore[dict-item]
    sig.QualityUpdate: CallEngine._on_quality_update,  # type: ignore[dict-item]
    sig.Rekey: CallEngine._on_rekey,  # type: ignore[dict-item]
}
