"""The handset: buttons and the control socket in, calls over QUIC, LEDs and audio out.

One :class:`Handset` is the daemon behind ``wzp run`` (and each of the two handsets of
``wzp demo``). It owns:

- the board (buttons -> actions; call state -> status, link and TX LEDs), polled by a
  50 Hz UI task on the event loop (button edges are queued by gpiozero's thread);
- the audio port (ALSA threads in the daemon, files in the demo), read and written by
  the call's media clock; while there is no call the UI task drains the capture ring;
- a QUIC server for incoming calls and the outgoing dial, each call one
  :class:`~wzp.net.callrunner.CallRunner` around one :class:`~wzp.media.call.CallEngine`;
- the resource monitor, whose caps (Opus complexity, tiers) are applied to the call;
- the control socket (``wzp status``, ``call``, ``answer``, ``hangup``, ``ptt`` ...).

Push-to-talk: in half-duplex mode the microphone is live while PTT is held, plus a
short hangover after release, with the audio of the moment before the press sent first
(the first syllable is kept); the speaker is muted while talking. In full-duplex mode
PTT toggles the microphone's mute; through a push-to-talk room (whose floor goes to
whoever sends) the open microphone is sent only while it hears speech.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .. import __version__
from ..audio.alsa import dbfs
from ..audio.cards import AUTO, list_cards, resolve_device
from ..board.board import Board
from ..board.buttons import ButtonEvent
from ..crypto.identity import Identity, fingerprint, fingerprint_text, parse_fingerprint
from ..media.call import PEER_SILENT_S, CallEngine
from ..media.codecs import DEFAULT_COMPLEXITY, TierCodec, make_frame_decoder
from ..net.callrunner import CallRunner
from ..net.quic import PeerFingerprintMismatch, connect_wzp, serve_wzp
from ..proto import signal as sig
from ..proto.session import EndReason, State
from .config import Config, Contact
from .contacts import ContactsError, ContactStore, merge_contacts
from .control import ControlError, ControlServer
from .notify import Notifier
from .relaylink import RelayLink, RelaySettings, RoomChannel
from .resources import ResourceMonitor
from .statusfmt import PTT_ROOM_FULL_DUPLEX

log = logging.getLogger(__name__)

UI_PERIOD_S = 0.02
#: after PTT is released the microphone stays live this long (end of the last word)
PTT_HANGOVER_S = 0.3
#: a failed call shows the error pattern this long
ERROR_SHOW_S = 5.0
#: an accepted connection that has not offered a call by then is closed
OFFER_WAIT_S = 15.0
DIAL_TIMEOUT_S = 15.0
#: how long `wzp call` waits for the last call's Hangup to be acknowledged before letting
#: go of that call (it is over either way)
ENDED_CALL_GRACE_S = 1.0
VOLUME_STEP_DB = 3.0
VOLUME_RANGE_DB = (-40.0, 20.0)
#: audio port states that light the error pattern (the card is gone, held, or broken)
AUDIO_FAULTS = ("missing", "busy", "error")
#: talking with the capture level below this for MIC_SILENT_S is reported
MIC_SILENT_DBFS = -80.0
MIC_SILENT_S = 5.0
#: full duplex through a push-to-talk room: the microphone is sent (and holds the floor)
#: only while it hears more than this (speech; a quiet room stays below) ...
VOICE_DBFS = -50.0
#: ... and this long after (the pauses between words keep the floor)
VOICE_HANGOVER_S = 1.0


class AudioPort(Protocol):
    """The sound card (``wzp.audio.alsa.AudioDevice``) or files (the demo)."""

    @property
    def state(self) -> str: ...  # "ok", "missing", "busy", "error"

    @property
    def error(self) -> str | None: ...

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def read(self) -> np.ndarray: ...
    def write(self, pcm: np.ndarray) -> None: ...
    def drain(self) -> None: ...
    def levels(self) -> dict[str, float]: ...
    def status_dict(self) -> dict[str, Any]: ...


@dataclass(eq=False)
class CallInfo:
    runner: CallRunner
    conn: Any  # a WzpConnection, or a RoomChannel for a call through the relay
    direction: str  # "outgoing" | "incoming"
    peer_name: str | None
    started: float
    tier_changes: int = 0
    last_tier: str | None = None
    complexity: int = DEFAULT_COMPLEXITY
    forbidden: frozenset[str] = frozenset()
    mic_silent_since: float | None = None
    mic_warned: bool = False
    #: the microphone has captured nothing for MIC_SILENT_S while talking, and nothing
    #: since (``wzp status`` shows it until the capture level comes back)
    mic_silent: bool = False
    codecs: list[TierCodec] = field(default_factory=list)
    #: (time, frames due, concealed) samples for the post-FEC loss window
    residual: deque[tuple[float, int, int]] = field(default_factory=lambda: deque(maxlen=6))
    #: an incoming connection whose offer was accepted: it became the handset's call
    claimed: bool = False


class _CallAudio:
    """The audio the call's media clock reads and writes: PTT gating, mute, volume."""

    def __init__(self, handset: Handset) -> None:
        self.h = handset
        self.read_at = -math.inf

    def read(self) -> np.ndarray:
        self.read_at = time.monotonic()
        pcm = self.h.audio.read()
        gated = len(pcm) and self.h.voice_gated()  # the level only where it decides
        if gated and dbfs(float(np.mean(np.square(pcm, dtype=np.float64)))) > VOICE_DBFS:
            self.h.voice_at = self.read_at
        return pcm

    def write(self, pcm: np.ndarray) -> None:
        h = self.h
        if h.config.mode == "half-duplex" and h.talk_now():
            pcm = np.zeros_like(pcm)  # speaker muted while transmitting
        elif h.volume_db != 0.0:
            gain = 10 ** (h.volume_db / 20)
            pcm = np.clip(pcm.astype(np.float32) * gain, -32768, 32767).astype(np.int16)
        h.audio.write(pcm)


class Handset:
    def __init__(
        self,
        config: Config,
        identity: Identity,
        board: Board,
        audio: AudioPort,
        *,
        monitor: ResourceMonitor | None = None,
        notifier: Notifier | None = None,
        contacts: ContactStore | None = None,
        gpio_description: str = "",
        rekey_after_s: float | None = None,
        alias: str | None = None,
        control: bool = True,
        on_led_change: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self.board = board
        self.audio = audio
        self.monitor = monitor
        self.notifier = notifier or Notifier("")
        self.contacts = contacts
        self.gpio_description = gpio_description
        self.rekey_after_s = rekey_after_s
        self.alias = alias
        self.on_led_change = on_led_change
        self.volume_db = config.volume_db
        self.call: CallInfo | None = None
        self.dialing: str | None = None
        self.last_call: dict[str, Any] | None = None
        self.last_error: str | None = None
        self.events: deque[dict[str, Any]] = deque(maxlen=50)
        self.ptt_down = False
        self._call_long = False
        self._floor_noted = False
        self.ptt_released_at = -math.inf
        #: when the microphone last heard speech (full duplex in a push-to-talk room)
        self.voice_at = -math.inf
        self._ptt_room_warned = False
        self.muted = False
        self.started_at = time.monotonic()
        self.tier_changes = 0
        self.calls_total = 0
        self._error_until = -math.inf
        self._call_audio = _CallAudio(self)
        self._server: Any = None
        self._control = (
            ControlServer(config.control_socket, config.control_group) if control else None
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dial_task: asyncio.Task[Any] | None = None
        self._ui_task: asyncio.Task[Any] | None = None
        self._stop = asyncio.Event()
        self._led_state: dict[str, Any] = {}
        self._button_watchers: list[asyncio.Queue[ButtonEvent]] = []
        self._led_test_until = -math.inf
        self._offering: set[CallInfo] = set()
        #: call ids offered to this handset, across connections (replays are refused)
        self._seen_calls: OrderedDict[bytes, None] = OrderedDict()
        #: incoming calls refused, by reason (busy, bad-signature, not-allowed, ...)
        self.refused: Counter[str] = Counter()
        #: what the live call's engine refused or ignored, by kind
        self.ignored: Counter[str] = Counter()
        self.port: int | None = None
        self.relay: RelayLink | None = None
        if config.relay_address and config.relay_fingerprint and config.relay_room:
            host, rport = config.relay_address
            self.relay = RelayLink(
                RelaySettings(host, rport, config.relay_fingerprint, config.relay_room),
                identity,
                alias=alias,
                on_offer=self._relay_offer,
            )

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self.audio.start()
        self._server = await serve_wzp(
            list(self.config.listen_hosts), self.config.listen_port, self.identity, self._incoming
        )
        self.port = self._server.port
        if self._control is not None:
            self._register_control()
            await self._control.start()
        if self.relay is not None:
            self.relay.start()
        self._ui_task = asyncio.ensure_future(self._ui_loop())
        log.info(
            "handset ready: %s, listening on port %d, mode %s, gpio %s, audio %s",
            self.identity.fingerprint_text,
            self.port,
            self.config.mode,
            self.gpio_description or "-",
            self.audio.state,
        )
        self.notifier.ready(self.summary())

    async def run(self) -> None:
        await self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        """Hang up, stop the audio threads (joined), then close the network and the board."""
        self.notifier.stopping()
        if self.call is not None and self.call.runner.engine.session.live:
            self.hangup()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._wait_call_end(), 4.0)
        if self._dial_task is not None:
            self._dial_task.cancel()
        self.audio.stop()
        if self.relay is not None:
            await self.relay.stop()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._ui_task is not None:
            self._ui_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._ui_task
        if self._control is not None:
            await self._control.close()
        self.board.close()

    async def _wait_call_end(self) -> None:
        while self.call is not None:
            await asyncio.sleep(0.05)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("handset task failed", exc_info=task.exception())

    # -- contacts --------------------------------------------------------------------------

    def user_contacts(self) -> dict[str, Contact]:
        """Contacts added with ``wzp contacts add``; a corrupt file is reported, not fatal."""
        if self.contacts is None:
            return {}
        try:
            return self.contacts.load()
        except ContactsError as exc:
            text = f"contacts file unusable: {exc}"
            if self.last_error != text:  # told once (status asks for the names too)
                self._fail(text)
            return {}

    def all_contacts(self) -> dict[str, Contact]:
        return merge_contacts(dict(self.config.contacts), self.user_contacts())

    def _accept(self, fp: bytes) -> bool:
        if self.config.accept == "anyone":
            return True
        return any(c.fingerprint == fp for c in self.all_contacts().values())

    def _name_of(self, fp: bytes | None) -> str | None:
        if fp is None:
            return None
        for c in self.all_contacts().values():
            if c.fingerprint == fp:
                return c.name
        return None

    def resolve(self, target: str) -> Contact:
        contacts = self.all_contacts()
        if target in contacts:
            return contacts[target]
        try:
            fp = parse_fingerprint(target)
        except ValueError:
            raise ControlError(
                f"no contact named {target!r} (known: {', '.join(sorted(contacts)) or 'none'})"
            ) from None
        for c in contacts.values():
            if c.fingerprint == fp:
                return c
        raise ControlError(f"fingerprint {target} is not in the contacts (no address known)")

    # -- actions ---------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic()

    def _note(self, kind: str, detail: str) -> None:
        self.events.append(
            {"t": round(self.now() - self.started_at, 3), "kind": kind, "detail": detail}
        )
        # problems at warning priority: `journalctl -p warning` shows what status marks ✗
        log.log(logging.WARNING if kind == "error" else logging.INFO, "%s: %s", kind, detail)

    def _fail(self, detail: str, show_s: float = ERROR_SHOW_S) -> None:
        self.last_error = detail
        self._error_until = max(self._error_until, self.now() + show_s)
        self._note("error", detail)

    def report_problem(self, detail: str, show_s: float = 60.0) -> None:
        """Something found at start that needs attention (a refused boot-partition file):
        in ``wzp status`` and on the error pattern for ``show_s``."""
        self._fail(detail, show_s)

    async def _ended_call_gone(self) -> None:
        """A call that has ended but still holds its connection (its Hangup waits for an
        acknowledgement, callrunner.HANGUP_LINGER_S at most): give the Hangup a moment to be
        acknowledged (one round trip, usually) before `wzp call` lets go of it."""
        deadline = self.now() + ENDED_CALL_GRACE_S
        while self._ended_call() is not None and self.now() < deadline:
            await asyncio.sleep(0.05)

    def _ended_call(self) -> CallInfo | None:
        info = self.call
        if info is not None and info.runner.engine.state is State.CLOSED:
            return info
        return None

    def _let_go_of_ended_call(self) -> None:
        """A new call wants the handset while the last one, over already, still waits for
        its Hangup to be acknowledged (a lossy link, a peer gone away): stop waiting. The
        Hangup has been sent, and closing the connection sends CONNECTION_CLOSE too; the
        call button and `wzp call` are never refused as busy by a call that has ended."""
        info = self._ended_call()
        if info is not None:
            info.runner.stop()
            self._end_call(info)

    def place_call(self, target: str | None = None) -> str:
        """Call a contact (default: the configured default contact)."""
        name = target or self.config.default_contact
        if not name:
            raise ControlError("no default contact: set call.default_contact or give a name")
        contact = self.resolve(name)  # an unknown name is said as such, busy or not
        self._let_go_of_ended_call()
        if self.call is not None or self.dialing is not None:
            raise ControlError("already in a call")
        if not contact.direct and not self._in_room(contact.fingerprint):
            raise ControlError(self._room_problem(contact))
        self.dialing = contact.name
        how = contact.address if contact.direct else f"room {self._room_name()}"
        self._note("dial", f"calling {contact.name} at {how}")
        self._dial_task = self._spawn(self._dial(contact))
        return contact.name

    def _room_name(self) -> str:
        return self.relay.settings.room if self.relay is not None else "-"

    def _in_room(self, fp: bytes) -> bool:
        return self.relay is not None and self.relay.joined and fp in self.relay.members

    def _room_problem(self, contact: Contact) -> str:
        if self.relay is None:
            return f"{contact.name} has no address and no relay is configured ([relay])"
        if not self.relay.joined:
            return f"{contact.name} is reached through the relay, which is {self.relay.state}"
        return f"{contact.name} is not in room {self.relay.settings.room} now"

    async def _dial(self, contact: Contact) -> None:
        if not contact.direct:
            await self._dial_room(contact)
            return
        try:
            conn = await connect_wzp(
                contact.host,
                contact.port,
                self.identity,
                expected_fingerprint=contact.fingerprint,
                timeout=DIAL_TIMEOUT_S,
            )
        except PeerFingerprintMismatch:
            self.dialing = None
            self._fail(f"{contact.name} at {contact.address} is not the expected identity")
            return
        except (OSError, ConnectionError, TimeoutError) as exc:
            if self._in_room(contact.fingerprint):
                why = str(exc) or "no answer (timed out)"
                self._note("dial", f"{contact.address} unreachable ({why}): through the room")
                await self._dial_room(contact)
                return
            self.dialing = None
            why = str(exc) or "no answer (timed out)"
            self._fail(f"cannot reach {contact.name} at {contact.address}: {why}")
            return
        except asyncio.CancelledError:
            self.dialing = None
            self._note("dial", "cancelled")
            raise
        self.dialing = None
        info = self._new_call(conn, "outgoing", contact.name)
        self.call = info
        info.runner.dial(contact.fingerprint)
        await self._run_call(info)

    async def _dial_room(self, contact: Contact) -> None:
        """A call through the relay room (the contact is a member now)."""
        assert self.relay is not None
        ch = self.relay.channel(contact.fingerprint)
        self.dialing = None
        info = self._new_call(ch, "outgoing", contact.name, relayed=True)
        self._bind_slots(info, ch)
        self.call = info
        info.runner.dial(contact.fingerprint)
        await self._run_call(info)

    def _bind_slots(self, info: CallInfo, ch: RoomChannel) -> None:
        assert self.relay is not None and ch.peer_fingerprint is not None
        engine = info.runner.engine
        engine.set_streams(self.relay.slot or 0, self.relay.slot_of(ch.peer_fingerprint))
        ch.on_slots = engine.set_streams
        engine.set_floor(self.relay.floor)
        ch.on_floor = engine.set_floor

    def _relay_offer(self, sender: bytes, offer: sig.CallOffer) -> None:
        """A member of the room calls: ring (or refuse) as for a direct call."""
        assert self.relay is not None
        if self.call is not None or self.dialing is not None or self._offering:
            self.refused["busy"] += 1
            self._note("refused", f"call from {self._name_of(sender) or _fp_of(sender)}: busy")
            with contextlib.suppress(Exception):
                if self.relay.conn is not None:
                    self.relay.conn.send_message(
                        sig.Hangup(reason="Busy", call_id=offer.call_id, to=sender.hex())
                    )
            return
        ch = self.relay.channel(sender)
        self._spawn(self._incoming(ch, offer))

    def _new_call(
        self, conn: Any, direction: str, name: str | None, relayed: bool = False
    ) -> CallInfo:
        codecs: list[TierCodec] = []
        caps_complexity = self._caps_complexity()

        def encoder() -> TierCodec:
            codec = TierCodec(caps_complexity)
            codecs.append(codec)
            return codec

        engine = CallEngine(
            self.identity,
            encoder,
            make_frame_decoder,
            accept=self._accept,
            alias=self.alias,
            rekey_after_s=self.rekey_after_s,
            seen_calls=self._seen_calls,
            transport_peer=(
                conn.peer_fingerprint if direction == "incoming" and not relayed else None
            ),
            relayed=relayed,
        )
        info: CallInfo | None = None

        def busy() -> bool:
            # this connection offers a call: refuse when another call holds the handset
            taken = self.dialing is not None or any(
                other is not info and other.runner.engine.session.live
                for other in self._live_calls()
            )
            if taken:
                self.refused["busy"] += 1
                who = self._name_of(conn.peer_fingerprint) or _fp_of(conn.peer_fingerprint)
                self._note("refused", f"call from {who}: busy")
            return taken

        runner = CallRunner(
            engine,
            conn,
            self._call_audio,
            self._call_audio,
            busy=busy,
            answer_after=self.config.auto_answer_s,
            talk=self.talk_now,
            on_tick_late=self._tick_late,
        )
        info = CallInfo(runner, conn, direction, name, self.now(), codecs=codecs)
        info.complexity = caps_complexity
        return info

    def _live_calls(self) -> list[CallInfo]:
        return ([self.call] if self.call is not None else []) + list(self._offering)

    async def _incoming(self, conn: Any, offer: sig.CallOffer | None = None) -> None:
        relayed = isinstance(conn, RoomChannel)
        info = self._new_call(
            conn, "incoming", self._name_of(conn.peer_fingerprint), relayed=relayed
        )
        if relayed:
            self._bind_slots(info, conn)
        # the connection becomes the handset's call once its offer is accepted (it rings);
        # one that offers nothing acceptable is closed after OFFER_WAIT_S
        self._offering.add(info)
        watchdog = asyncio.get_running_loop().call_later(
            OFFER_WAIT_S, lambda: None if info.claimed else info.runner.stop()
        )
        if offer is not None and conn.on_message is not None:
            conn.on_message(offer)  # the offer that came over the room
        try:
            await self._run_call(info)
        finally:
            watchdog.cancel()
            self._offering.discard(info)
            if not info.claimed:
                # never became the call: say why it was refused (bad signature, not a
                # contact, replayed offer...)
                for ev in info.runner.engine.take_events():
                    if ev.kind == "refused":
                        self._note("refused", ev.detail)
                self.refused.update(info.runner.engine.stats.refused)

    def _claim_incoming(self) -> None:
        for info in list(self._offering):
            if info.runner.engine.session.live and self.call is None and self.dialing is None:
                self._offering.discard(info)
                self.call = info
                info.claimed = True
                pub = info.runner.engine.peer_identity
                info.peer_name = info.peer_name or self._name_of(fingerprint(pub) if pub else None)
                self._note("call", f"incoming call from {info.peer_name or 'an unknown caller'}")

    async def _run_call(self, info: CallInfo) -> None:
        runner = info.runner
        try:
            await runner.run()
        finally:
            # the call is over for the user now; the connection's closing period (three
            # probe timeouts: seconds on a 800 ms link) is no reason to hold the handset
            if self.call is info:
                self._end_call(info)
            with contextlib.suppress(Exception):
                await info.conn.aclose(runner.close_phrase())

    def _end_call(self, info: CallInfo) -> None:
        eng = info.runner.engine
        reason = eng.session.end_reason
        self.last_call = {
            "peer": info.peer_name or _fp_text(eng.peer_identity),
            "direction": info.direction,
            "ended": reason.value if reason else "NoCall",
            "detail": eng.session.end_detail or "",
            "duration_s": round(self.now() - info.started, 1),
            "rekeys": eng.stats.rekeys,
            "tier_changes": info.tier_changes,
            "residual_loss_pct": _residual_pct(info, whole_call=True),
        }
        self.calls_total += 1
        self._note("call", f"ended: {self.last_call['ended']} {self.last_call['detail']}".strip())
        if reason is not None and reason.value not in ("Normal", "Declined", "Busy"):
            self._fail(f"call with {self.last_call['peer']} ended: {reason.value}")
        self.call = None
        self.ptt_down = False
        self.muted = False

    def answer(self) -> None:
        info = self.call
        if info is None or info.runner.engine.state is not State.RINGING:
            raise ControlError("nothing is ringing")
        info.runner.engine.answer(info.runner.now())
        info.runner.flush()
        self._note("call", "answered")

    def hangup(self) -> str:
        if self.dialing is not None and self._dial_task is not None:
            self._dial_task.cancel()
            return "dial cancelled"
        info = self.call
        if info is None or not info.runner.engine.session.live:
            raise ControlError("no call to hang up")
        ringing = info.runner.engine.state is State.RINGING
        reason = EndReason.DECLINED if ringing else EndReason.NORMAL
        info.runner.engine.hangup(info.runner.now(), reason)
        info.runner.flush()
        self._note("call", "declined" if ringing else "hung up")
        return "declined" if ringing else "hung up"

    def set_ptt(self, down: bool) -> None:
        if self.config.mode == "full-duplex":
            if down:
                self.muted = not self.muted
                self._note("ptt", "muted" if self.muted else "unmuted")
            return
        if down == self.ptt_down:
            return
        self.ptt_down = down
        if not down:
            self.ptt_released_at = self.now()
        self._note("ptt", "down" if down else "up")

    def wants_to_talk(self) -> bool:
        """PTT held (or its hangover), or an unmuted full-duplex microphone (in a
        push-to-talk room: one that hears speech, else it would hold the floor all call)."""
        if self.config.mode == "full-duplex":
            if self.voice_gated():
                return not self.muted and self.now() - self.voice_at < VOICE_HANGOVER_S
            return not self.muted
        return self.ptt_down or self.now() - self.ptt_released_at < PTT_HANGOVER_S

    def in_ptt_room_full_duplex(self) -> bool:
        """Joined to a push-to-talk room with the mode of a handset that never lets go."""
        return self.config.mode == "full-duplex" and bool(self.relay and self.relay.push_to_talk)

    def voice_gated(self) -> bool:
        """A full-duplex call through a push-to-talk room: the floor goes to whoever
        sends, so the open microphone sends only while it hears speech."""
        return (
            self.in_ptt_room_full_duplex()
            and self.call is not None
            and isinstance(self.call.conn, RoomChannel)
        )

    def talk_now(self) -> bool:
        wants = self.wants_to_talk()
        if wants and self.floor_taken():
            # a push-to-talk room: another member holds the floor, the relay would drop
            # what we send; the microphone waits (status and the TX LED say so)
            if not self._floor_noted:
                self._floor_noted = True
                self._note("floor", "another member is talking: wait for the floor")
            return False
        self._floor_noted = False
        return wants

    def _check_ptt_room(self) -> None:
        if self.in_ptt_room_full_duplex() and not self._ptt_room_warned:
            self._ptt_room_warned = True  # a setting: said once, status shows it meanwhile
            self._note("error", f"room {self._room_name()}: {PTT_ROOM_FULL_DUPLEX}")

    def floor_taken(self) -> bool:
        """In a relay call, whether another member of the room holds the floor."""
        link = self.relay
        if link is None or self.call is None or not isinstance(self.call.conn, RoomChannel):
            return False
        return link.floor is not None and link.floor != link.slot

    def change_volume(self, step_db: float) -> None:
        lo, hi = VOLUME_RANGE_DB
        self.volume_db = min(hi, max(lo, self.volume_db + step_db))
        self._note("volume", f"{self.volume_db:+.0f} dB")

    # -- buttons ---------------------------------------------------------------------------

    def on_button(self, ev: ButtonEvent) -> None:
        for q in self._button_watchers:
            q.put_nowait(ev)
        try:
            self._button(ev)
        except ControlError as exc:
            self._fail(str(exc))

    def _button(self, ev: ButtonEvent) -> None:
        role, kind = ev.role, ev.kind
        if kind == "stuck":
            self._fail(f"{role} button held for a long time: ignored until released")
            if role == "ptt":
                self.set_ptt(False)
            return
        state = self.call.runner.engine.state if self.call is not None else None
        if role == "call":
            # a short press acts when released (so a long press never answers or dials
            # first); a long press hangs up as soon as it is long
            if kind == "press":
                self._call_long = False
            elif kind == "long":
                self._call_long = True
                if self.call is not None or self.dialing is not None:
                    self.hangup()
            elif kind == "release" and not self._call_long:
                if state is State.RINGING:
                    self.answer()
                elif (self.call is None or self._ended_call()) and self.dialing is None:
                    self.place_call()
        elif role == "hangup" and kind == "press":
            if self.call is not None or self.dialing is not None:
                self.hangup()
        elif role == "ptt" and kind in ("press", "release"):
            self.set_ptt(kind == "press")
        elif role == "volume_up" and kind == "press":
            self.change_volume(VOLUME_STEP_DB)
        elif role == "volume_down" and kind == "press":
            self.change_volume(-VOLUME_STEP_DB)

    # -- the UI loop: buttons, LEDs, idle audio, resources, watchdog -------------------------

    async def _ui_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_slow = 0.0
        next_watchdog = 0.0
        while True:
            now = self.now()
            try:
                self._claim_incoming()
                for ev in self.board.poll(now):
                    self.on_button(ev)
                self._update_leds(now)
                self.board.tick(now)
                if time.monotonic() - self._call_audio.read_at > 0.1:
                    self.audio.drain()  # no call is taking the microphone
                if now >= next_slow:
                    next_slow = now + 1.0
                    await self._slow_tick(now)
                wd = self.notifier.watchdog_interval_s
                if wd is not None and now >= next_watchdog:
                    next_watchdog = now + wd
                    self.notifier.watchdog()
            except Exception:  # one bad tick must not stop the buttons and LEDs
                log.exception("handset UI tick failed")
            await asyncio.sleep(max(0.0, UI_PERIOD_S - (loop.time() % UI_PERIOD_S)))

    async def _slow_tick(self, now: float) -> None:
        info = self.call
        self._check_ptt_room()
        if self.monitor is not None:
            await self.monitor.sample_async(now)
            if info is not None:
                self._apply_caps(info)
        if info is not None:
            self._drain_call_events(info)
            self._check_microphone(info, now)
            media = info.runner.engine.media
            if media is not None:
                tier = media.tier.name
                if info.last_tier is not None and tier != info.last_tier:
                    info.tier_changes += 1
                    self.tier_changes += 1
                    self._note("tier", f"{info.last_tier} -> {tier}")
                info.last_tier = tier
                due = conc = 0
                for rx in media.receiver.streams.values():
                    due += rx.playout.stats.frames_due
                    conc += rx.playout.stats.concealed
                info.residual.append((now, due, conc))
        self.notifier.status(self.summary())

    def _check_microphone(self, info: CallInfo, now: float) -> None:
        """A microphone that captures nothing while the user talks is reported, not
        silently sent (a muted mixer, the wrong device, a broken cable)."""
        talking = info.runner.talking and info.runner.engine.media is not None
        level = self.audio.levels().get("capture_dbfs", 0.0)
        if self.audio.state in AUDIO_FAULTS or level > MIC_SILENT_DBFS:
            # it captures something (or the card's own fault is what status shows)
            info.mic_silent_since = None
            info.mic_silent = False
            return
        if not talking:
            info.mic_silent_since = None
            return
        if info.mic_silent_since is None:
            info.mic_silent_since = now
        elif now - info.mic_silent_since >= MIC_SILENT_S:
            info.mic_silent = True
            if not info.mic_warned:  # told once a call; status shows it while it lasts
                info.mic_warned = True
                self._fail(_mic_silent_text(f"{level:.0f} dBFS"), show_s=30.0)

    def _drain_call_events(self, info: CallInfo) -> None:
        """What the call engine refused or ignored (stale call ids, a second offer...):
        counted, and a few of them told (a hostile peer's flood is not logged line by line)."""
        told = 0
        for ev in info.runner.engine.take_events():
            if ev.kind not in ("refused", "stale", "error"):
                continue
            self.ignored[ev.kind] += 1
            if told < 3:
                told += 1
                self._note(ev.kind, ev.detail)

    def _caps_complexity(self) -> int:
        return self.monitor.caps().complexity if self.monitor is not None else DEFAULT_COMPLEXITY

    def _apply_caps(self, info: CallInfo) -> None:
        assert self.monitor is not None
        caps = self.monitor.caps()
        if caps.complexity != info.complexity:
            info.complexity = caps.complexity
            for codec in info.codecs:
                codec.set_complexity(caps.complexity)
            self._note("resources", f"Opus complexity {caps.complexity}")
        media = info.runner.engine.media
        if media is not None and caps.forbidden_tiers != info.forbidden:
            info.forbidden = caps.forbidden_tiers
            media.forbid_tiers(set(caps.forbidden_tiers))
            self._note("resources", f"tiers forbidden: {sorted(caps.forbidden_tiers) or 'none'}")

    def _tick_late(self, late_s: float) -> None:
        if self.monitor is not None:
            self.monitor.note_deadline_miss(self.now())

    def status_led(self, now: float) -> str:
        if self.audio.state in AUDIO_FAULTS or now < self._error_until:
            return "error"
        if self.dialing is not None:
            return "connecting"
        if self.call is None:
            # a relay that refuses this handset, or stays out of reach: not "ready"
            return "error" if self.relay is not None and self.relay.fault(now) else "idle"
        state = self.call.runner.engine.state
        return {
            State.IDLE: "idle",
            State.CONNECTING: "connecting",
            State.HANDSHAKING: "connecting",
            State.ALERTING: "ringing",
            State.RINGING: "ringing",
            State.ACTIVE: "in_call",
            State.REKEYING: "rekeying",
            State.CLOSED: "idle",
        }[state]

    def _update_leds(self, now: float) -> None:
        if now < self._led_test_until:
            return
        status = self.status_led(now)
        media = self.call.runner.engine.media if self.call is not None else None
        tier = media.tier.name if media is not None else None
        tx = bool(media is not None and self.call is not None and self.call.runner.talking)
        new = {"status": status, "link": tier, "tx": tx}
        if new == self._led_state:
            return
        self._led_state = new
        self.board.set_status(status)
        self.board.set_link(tier)
        self.board.set_tx(tx)
        if self.on_led_change is not None:
            self.on_led_change(self.alias or "handset", dict(new))

    # -- status ----------------------------------------------------------------------------

    def state_name(self) -> str:
        if self.dialing is not None:
            return "dialing"
        if self.call is None:
            return "idle"
        return self.call.runner.engine.state.value.lower()

    def summary(self) -> str:
        """One line for systemd's STATUS= and the demo."""
        s = self.state_name()
        if self.call is not None:
            media = self.call.runner.engine.media
            peer = self.call.peer_name or "peer"
            s += f" with {peer}"
            if media is not None:
                s += f", tier {media.tier.name}"
        if self.audio.state in AUDIO_FAULTS:
            s += f"; audio {self.audio.state}"
        return s

    def status(self) -> dict[str, Any]:
        now = self.now()
        info = self.call
        call: dict[str, Any] | None = None
        if info is not None:
            r = info.runner
            eng = r.engine
            ls = r.status(r.now())
            residual = _residual_pct(info)
            drops = {}
            if eng.media is not None:
                drops = {k.value: v for k, v in eng.media.receiver.drops.items()}
            call = {
                "peer": info.peer_name or _fp_text(eng.peer_identity),
                "peer_fingerprint": _fp_text(eng.peer_identity),
                "direction": info.direction,
                "state": eng.state.value.lower(),
                "duration_s": round(now - info.started, 1),
                "tier": None if eng.media is None else eng.media.tier.name,
                "tier_changes": info.tier_changes,
                "loss_pct": None if ls.loss_pct is None else round(ls.loss_pct, 2),
                "residual_loss_pct": residual,
                "rtt_ms": None if ls.rtt_ms is None else round(ls.rtt_ms, 1),
                "jitter_ms": round(ls.jitter_ms, 1),
                "tx_kbps": round(ls.tx_kbps, 1),
                "rx_kbps": round(ls.rx_kbps, 1),
                "rekeys": ls.rekeys,
                "recovered": ls.recovered,
                "concealed": ls.concealed,
                "talking": r.talking if eng.media is not None else False,
                "muted": self.muted,
                "drops": drops,
                "opus_complexity": info.complexity,
                # an active call with nothing from the peer ends at PEER_SILENT_S
                "heard_ago_s": _ago(r.now(), eng.heard_at()),
                "heard_limit_s": PEER_SILENT_S,
            }
        cfg = self.config
        # room members by the local contacts' names, not by the aliases they give themselves
        contacts = (
            {c.fingerprint: c.name for c in self.all_contacts().values()}
            if self.relay is not None and self.relay.members
            else {}
        )
        return {
            "version": __version__,
            "uptime_s": round(now - self.started_at, 1),
            "fingerprint": self.identity.fingerprint_text,
            "state": self.state_name(),
            "status_led": self.status_led(now),
            "mode": cfg.mode,
            "ptt": "down" if self.ptt_down else "up",
            "volume_db": self.volume_db,
            "call": call,
            "dialing": self.dialing,
            "last_call": self.last_call,
            "last_error": self.last_error,
            "calls": self.calls_total,
            "refused": dict(self.refused),
            "ignored": dict(self.ignored),
            "audio": self._audio_status(),
            "gpio": {
                **self.board.snapshot(),
                "factory": self.gpio_description or self.board.factory_description,
            },
            "resources": self.monitor.status_dict() if self.monitor is not None else None,
            "network": {
                "listen_port": self.port,
                "listen_hosts": list(cfg.listen_hosts),
                "accept": cfg.accept,
                "default_contact": cfg.default_contact,
            },
            "relay": (
                {
                    **self.relay.status(contacts.get),
                    "floor_taken": self.floor_taken(),
                    # this handset would talk, and waits for the floor
                    "floor_waiting": self.floor_taken() and self.wants_to_talk(),
                }
                if self.relay is not None
                else None
            ),
            "control": None
            if self._control is None
            else {
                "socket": str(cfg.control_socket),
                "requests": self._control.requests,
                "bad_requests": self._control.bad_requests,
            },
            "config_sources": [str(p) for p in cfg.sources],
            "events": list(self.events)[-10:],
        }

    def _audio_status(self) -> dict[str, Any]:
        port = self.audio.status_dict()
        # a port that is not a sound card (files, the demo's recorded speech) names itself:
        # the configured devices ("auto" by default) are not what it uses
        backend = port.get("backend")
        out: dict[str, Any] = {
            "capture_device": backend or _device_text(self.config.audio_capture),
            "playback_device": backend or _device_text(self.config.audio_playback),
            **port,
        }
        info = self.call
        out["capture_silent"] = bool(info is not None and info.mic_silent)
        if out["capture_silent"]:
            out["capture_problem"] = _mic_silent_text(f"below {MIC_SILENT_DBFS:.0f} dBFS")
        return out

    # -- control socket --------------------------------------------------------------------

    def _register_control(self) -> None:
        assert self._control is not None
        c = self._control

        async def status(req: dict[str, Any]) -> Any:
            return self.status()

        async def call(req: dict[str, Any]) -> Any:
            target = req.get("target")
            if target is not None and not isinstance(target, str):
                raise ControlError("target must be a contact name or a fingerprint")
            await self._ended_call_gone()
            return {"calling": self.place_call(target)}

        async def answer(req: dict[str, Any]) -> Any:
            self.answer()
            return {"answered": True}

        async def hangup(req: dict[str, Any]) -> Any:
            return {"done": self.hangup()}

        async def ptt(req: dict[str, Any]) -> Any:
            action = req.get("action")
            if action not in ("down", "up"):
                raise ControlError('ptt takes "down" or "up"')
            self.set_ptt(action == "down")
            return {"ptt": action, "muted": self.muted}

        async def identity(req: dict[str, Any]) -> Any:
            return {"fingerprint": self.identity.fingerprint_text}

        async def contacts_list(req: dict[str, Any]) -> Any:
            user = self.user_contacts()
            return [
                {
                    "name": ct.name,
                    "fingerprint": fingerprint_text(ct.fingerprint),
                    "address": ct.address,
                    "source": "user" if ct.name in user and ct.name not in cfg_names else "config",
                }
                for ct in sorted(self.all_contacts().values(), key=lambda x: x.name)
            ]

        cfg_names = set(self.config.contacts)

        async def contacts_add(req: dict[str, Any]) -> Any:
            if self.contacts is None:
                raise ControlError("this handset has no contacts file")
            name, fp, addr = req.get("name"), req.get("fingerprint"), req.get("address")
            if not all(isinstance(x, str) for x in (name, fp, addr)):
                raise ControlError("contacts add needs name, fingerprint and address")
            assert isinstance(name, str) and isinstance(fp, str) and isinstance(addr, str)
            if name in cfg_names:
                raise ControlError(f"{name!r} is defined in the config file; edit it there")
            try:
                ct = self.contacts.add(name, fp, addr, reserved=cfg_names)
            except ValueError as exc:
                raise ControlError(str(exc)) from None
            return {
                "name": ct.name,
                "fingerprint": fingerprint_text(ct.fingerprint),
                "address": ct.address,
            }

        async def contacts_remove(req: dict[str, Any]) -> Any:
            if self.contacts is None:
                raise ControlError("this handset has no contacts file")
            name = req.get("name")
            if not isinstance(name, str):
                raise ControlError("contacts remove needs a name")
            if name in cfg_names:
                raise ControlError(f"{name!r} is defined in the config file; edit it there")
            if not self.contacts.remove(name):
                raise ControlError(f"no user contact named {name!r}")
            return {"removed": name}

        async def test_leds(req: dict[str, Any]) -> Any:
            seconds = self.board.test_leds(self.now())
            self._led_test_until = self.now() + seconds
            self._led_state = {}
            return {"seconds": seconds, "leds": sorted(self.board.snapshot().get("leds", {}))}

        async def test_audio(req: dict[str, Any]) -> Any:
            return self.audio.status_dict()

        async def test_buttons(req: dict[str, Any]):  # type: ignore[no-untyped-def]
            seconds = req.get("seconds", 10)
            if not isinstance(seconds, int | float) or not 0 < seconds <= 600:
                raise ControlError("seconds must be between 0 and 600")
            q: asyncio.Queue[ButtonEvent] = asyncio.Queue()
            self._button_watchers.append(q)
            end = self.now() + float(seconds)
            try:
                while (left := end - self.now()) > 0:
                    try:
                        ev = await asyncio.wait_for(q.get(), left)
                    except TimeoutError:
                        break
                    yield {"role": ev.role, "kind": ev.kind, "t": round(ev.at - self.started_at, 3)}
            finally:
                self._button_watchers.remove(q)

        for name, fn in {
            "status": status,
            "call": call,
            "answer": answer,
            "hangup": hangup,
            "ptt": ptt,
            "identity": identity,
            "contacts_list": contacts_list,
            "contacts_add": contacts_add,
            "contacts_remove": contacts_remove,
            "test_leds": test_leds,
            "test_audio": test_audio,
        }.items():
            c.handle(name, fn)
        c.handle_stream("test_buttons", test_buttons)


def _device_text(name: str) -> str:
    if name != AUTO:
        return name
    return f"auto: {resolve_device(name, list_cards())}"


def _residual_pct(info: CallInfo, whole_call: bool = False) -> float | None:
    """Share of the frames due that had to be concealed (lost even after FEC), in %."""
    if not info.residual:
        return None
    _, d1, c1 = info.residual[-1]
    d0 = c0 = 0
    if not whole_call:
        if len(info.residual) < 2:
            return None
        _, d0, c0 = info.residual[0]
    return round(100 * (c1 - c0) / (d1 - d0), 2) if d1 > d0 else None


def _fp_of(fp: bytes | None) -> str:
    return fingerprint_text(fp) if fp is not None else "an unknown peer"


def _fp_text(identity_pub: bytes | None) -> str | None:
    """The fingerprint text of a peer's Ed25519 identity key."""
    return fingerprint_text(fingerprint(identity_pub)) if identity_pub is not None else None


def _ago(now: float, at: float | None) -> float | None:
    return None if at is None else round(max(0.0, now - at), 1)


def _mic_silent_text(level: str) -> str:
    return (
        f"the microphone captures nothing ({level} for {MIC_SILENT_S:.0f} s while talking): "
        "check the capture device and its level (alsamixer), or run `wzp test audio`"
    )
