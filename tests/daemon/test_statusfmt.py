"""``wzp status`` text: the floor of a push-to-talk room, a relay link's stale error, a
silent microphone, and what a handset whose audio is files really uses."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from wzp.board.board import Board
from wzp.board.profile import load_profile
from wzp.crypto.identity import Identity, fingerprint_text
from wzp.daemon.config import Config, Contact
from wzp.daemon.demo import DemoAudio
from wzp.daemon.handset import Handset
from wzp.daemon.relaylink import RelayLink, RelaySettings
from wzp.daemon.statusfmt import format_status
from wzp.proto import signal as sig

ME, PEER = Identity.generate(), Identity.generate()


def _line(text: str, name: str) -> str:
    return next(ln for ln in text.splitlines() if ln[3:].startswith(name))


def _relay(**kw: Any) -> dict[str, Any]:
    base = {
        "address": "127.0.0.1:24440",
        "room": "porch",
        "state": "joined",
        "slot": 2,
        "members": [
            {
                "fingerprint": fingerprint_text(PEER.fingerprint),
                "slot": 1,
                "alias": "al",
                "contact": "alice",
            },
            {"fingerprint": fingerprint_text(ME.fingerprint), "slot": 2, "alias": None},
        ],
        "floor": None,
        "push_to_talk": True,
        "error": None,
        "last_error": None,
        "floor_taken": False,
        "floor_waiting": False,
    }
    return {**base, **kw}


def _call(**kw: Any) -> dict[str, Any]:
    return {"state": "active", "peer": "alice", "direction": "outgoing", "talking": False, **kw}


def test_the_floor_of_a_push_to_talk_room_is_shown() -> None:
    free = format_status({"relay": _relay()})
    assert "floor free" in _line(free, "relay")
    mine = format_status({"relay": _relay(floor=2)})
    assert "floor: you have it" in _line(mine, "relay")
    # another member holds it (README: `wzp status` shows floor_taken)
    taken = format_status({"relay": _relay(floor=1, floor_taken=True), "call": _call()})
    assert "floor_taken by alice (slot 1)" in _line(taken, "relay")
    assert "your PTT waits" not in taken
    # this handset's PTT is held meanwhile: nothing is sent, and status says why
    waiting = format_status(
        {"relay": _relay(floor=1, floor_taken=True, floor_waiting=True), "call": _call()}
    )
    assert "floor_taken by alice (slot 1): your PTT waits" in _line(waiting, "relay")
    assert "PTT held, waiting for the floor" in waiting
    # a member that is no contact and gives no alias is named by its grouped fingerprint
    anon = _relay(floor=1, floor_taken=True)
    anon["members"][0].update(alias=None, contact=None)
    grouped = fingerprint_text(PEER.fingerprint)[:9]
    assert f"floor_taken by {grouped} (slot 1)" in format_status({"relay": anon})
    # an open room has no floor to speak of
    assert "floor" not in format_status({"relay": _relay(push_to_talk=False)})


async def test_a_rejoin_clears_the_relay_lines_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A relay restart mid-call: the handset rejoins within a second, and the relay line
    says joined, not the closing connection's error (kept as last_error)."""
    from wzp.daemon import relaylink

    attempts: list[int] = []

    async def connect(*_a: Any, **_kw: Any) -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("server closing")  # the relay going down
        await asyncio.Event().wait()  # the next attempt: joined below by hand

    monkeypatch.setattr(relaylink, "connect_wzp", connect)
    monkeypatch.setattr(relaylink, "BACKOFF_S", (0.01,))
    settings = RelaySettings("127.0.0.1", 24440, Identity.generate().fingerprint, "porch")
    link = RelayLink(settings, ME)
    link.start()
    try:
        while len(attempts) < 2:
            await asyncio.sleep(0.01)
        down = format_status({"relay": link.status()})
        assert "✗ relay" in down and "server closing" in _line(down, "relay")

        update = sig.RoomUpdate(
            room="porch",
            you=2,
            participants=(
                sig.Participant(fingerprint=PEER.fingerprint.hex(), alias="alice", slot=1),
                sig.Participant(fingerprint=ME.fingerprint.hex(), alias=None, slot=2),
            ),
        )
        link._on_message(update, asyncio.Event())
        st = link.status()
        up = _line(format_status({"relay": st}), "relay")
        assert up.startswith(" ✓ relay") and "server closing" not in up, up
        assert st["state"] == "joined" and st.get("error") is None
        assert st["last_error"] == "relay 127.0.0.1:24440: server closing"
    finally:
        await link.stop()


def test_a_refusal_while_joined_is_not_the_links_state() -> None:
    settings = RelaySettings("127.0.0.1", 24440, Identity.generate().fingerprint, "porch")
    link = RelayLink(settings, ME)
    link.state = "joined"
    link._on_message(sig.Error(code="not-member", message="no such member"), asyncio.Event())
    assert link.last_error == "relay refused: not-member: no such member"
    assert link.status()["error"] is None


def test_a_silent_microphone_is_not_a_healthy_audio_line() -> None:
    audio = {
        "state": "ok",
        "capture_device": "null",
        "playback_device": "null",
        "capture_dbfs": -96.0,
        "capture_silent": True,
        "capture_problem": "the microphone captures nothing (below -80 dBFS for 5 s ...)",
    }
    line = _line(format_status({"audio": audio}), "audio")
    assert line.startswith(" ✗ audio") and "microphone captures nothing" in line
    ok = _line(format_status({"audio": {**audio, "capture_silent": False}}), "audio")
    assert ok.startswith(" ✓ audio") and "captures nothing" not in ok


def _handset(audio: Any, **board_kw: Any) -> Handset:
    cfg = dataclasses.replace(Config.default(), board_profile="breadboard", pin_factory="mock")
    board = Board(load_profile("breadboard"), MockFactory(pin_class=MockPWMPin), **board_kw)
    return Handset(cfg, ME, board, audio, control=False)


def test_a_file_backed_port_names_itself_not_the_configured_card() -> None:
    """The demo's handsets use recorded speech and WAV files: their status says so, not
    the "auto" sound card of the default configuration they do not open."""
    h = _handset(DemoAudio(np.zeros(0, np.int16)), factory_description="mock pins (no hardware)")
    try:
        st = h.status()
        assert st["audio"]["capture_device"] == "files (demo)"
        assert st["audio"]["playback_device"] == "files (demo)"
        assert st["audio"]["capture_silent"] is False
        text = format_status(st)
        assert "files (demo): capture" in text and "auto" not in _line(text, "audio")
        assert "mock pins (no hardware)" in _line(text, "gpio")
    finally:
        h.board.close()


def test_a_call_with_nothing_heard_from_the_peer_is_not_shown_healthy() -> None:
    from wzp.daemon.statusfmt import format_status

    call = {
        "state": "active",
        "peer": "bob",
        "direction": "outgoing",
        "duration_s": 60,
        "tier": "heavy",
        "heard_ago_s": 1.0,
        "heard_limit_s": 30.0,
    }
    fine = format_status({"call": call})
    assert " ✓ call       active with bob" in fine and "nothing heard" not in fine
    call["heard_ago_s"] = 12.4
    silent = format_status({"call": call})
    assert " ✗ call       active with bob" in silent
    assert "nothing heard from the peer for 12 s (the call ends at 30 s)" in silent


def test_a_member_is_named_by_the_contacts_not_by_the_alias_it_gives_itself() -> None:
    """A hostile member may call itself "Mom": only a contact's fingerprint earns a bare
    name; an alias is quoted and marked unverified, beside the fingerprint."""
    mom = Identity.generate()
    fp = fingerprint_text(mom.fingerprint)
    relay = _relay(floor=3, floor_taken=True)
    relay["members"].append({"fingerprint": fp, "slot": 3, "alias": "Mom", "contact": None})
    line = _line(format_status({"relay": relay}), "relay")
    assert f'"Mom"? {fp[:9]} (slot 3)' in line, line
    assert f'floor_taken by "Mom"? {fp[:9]} (slot 3)' in line, line
    assert "members: alice (slot 1), you (slot 2)," in line  # a contact, and this handset
    assert " Mom " not in line and "by Mom" not in line
    # an alias cannot end its quotes early nor start a line of its own
    relay["members"][-1]["alias"] = 'Mom" (slot 1)\n ✓ call'
    text = format_status({"relay": relay})
    assert '"Mom\\" (slot 1)\\n \\u2713 call"? ' in _line(text, "relay"), text
    assert [ln for ln in text.splitlines() if "✓ call" in ln] == [" ✓ call       no call"]

    # the handset names members from its contacts, in status JSON too
    h = _relay_handset({"mama": Contact("mama", mom.fingerprint, "", 0)})
    try:
        assert h.relay is not None
        update = sig.RoomUpdate(
            room="porch",
            you=1,
            participants=(
                sig.Participant(fingerprint=ME.fingerprint.hex(), alias=None, slot=1),
                sig.Participant(fingerprint=mom.fingerprint.hex(), alias="Dad", slot=2),
                sig.Participant(fingerprint=PEER.fingerprint.hex(), alias="mama", slot=3),
            ),
        )
        h.relay._on_message(update, asyncio.Event())
        members = {m["slot"]: m for m in h.status()["relay"]["members"]}
        assert members[2]["contact"] == "mama" and members[2]["alias"] == "Dad"
        assert members[3]["contact"] is None  # calls itself "mama", is not the contact
        line = _line(format_status(h.status()), "relay")
        peer = fingerprint_text(PEER.fingerprint)[:9]
        assert f'members: you (slot 1), mama (slot 2), "mama"? {peer} (slot 3)' in line, line
    finally:
        h.board.close()


def _relay_handset(contacts: dict[str, Contact] | None = None, **kw: Any) -> Handset:
    """A handset configured for a relay room (its link is not started)."""
    cfg = dataclasses.replace(
        Config.default(),
        board_profile="breadboard",
        pin_factory="mock",
        contacts=contacts or {},
        relay_address=("127.0.0.1", 24440),
        relay_fingerprint=Identity.generate().fingerprint,
        relay_room="porch",
        **kw,
    )
    board = Board(load_profile("breadboard"), MockFactory(pin_class=MockPWMPin))
    return Handset(cfg, ME, board, DemoAudio(np.zeros(0, np.int16)), control=False)


def test_a_full_duplex_handset_in_a_push_to_talk_room_is_flagged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its open microphone would hold the floor all call: status says so, plainly."""
    line = _line(format_status({"mode": "full-duplex", "relay": _relay()}), "relay")
    assert line.startswith(" ✗ relay") and 'set mode = "half-duplex"' in line, line
    assert "push_to_talk = false" in line
    for ok in ({"mode": "half-duplex", "relay": _relay()},
               {"mode": "full-duplex", "relay": _relay(push_to_talk=False)}):  # fmt: skip
        assert _line(format_status(ok), "relay").startswith(" ✓ relay")

    h = _relay_handset(mode="full-duplex")
    try:
        assert h.relay is not None
        h._check_ptt_room()
        assert not h.events  # not told it is a push-to-talk room yet
        h.relay._on_message(sig.Floor(slot=None), asyncio.Event())
        for _ in range(3):
            h._check_ptt_room()
        warned = [r for r in caplog.records if "push-to-talk room" in r.getMessage()]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING, warned
        assert _line(format_status(h.status()), "relay").startswith(" ✗ relay")
    finally:
        h.board.close()


def test_file_audio_is_named_once() -> None:
    """Files replace both sides of the card: the audio line names them once."""
    name = "files (speech.wav -> heard.wav)"
    audio = {
        "state": "ok",
        "backend": name,
        "capture_device": name,
        "playback_device": name,
        "capture_dbfs": -20.0,
        "playback_dbfs": -96.0,
    }
    line = _line(format_status({"audio": audio, "volume_db": 0.0}), "audio")
    assert line.count("speech.wav") == 1, line
    assert f"{name}: capture -20 dBFS, playback silent, volume +0 dB" in line, line


async def test_a_relay_restart_is_no_fault_a_lasting_outage_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A relay restart lasting a few seconds keeps the status LED on "ready"; a relay out
    of reach for DOWN_FAULT_S lights the error pattern."""
    from wzp.daemon import relaylink

    async def connect(*_a: Any, **_kw: Any) -> Any:
        raise ConnectionError("server closing")  # the relay going down, again and again

    monkeypatch.setattr(relaylink, "connect_wzp", connect)
    monkeypatch.setattr(relaylink, "BACKOFF_S", (0.01,))
    h = _relay_handset()
    link = h.relay
    assert link is not None
    link._on_message(
        sig.RoomUpdate(
            room="porch",
            you=1,
            participants=(sig.Participant(fingerprint=ME.fingerprint.hex(), alias=None, slot=1),),
        ),
        asyncio.Event(),
    )
    link.state = "joined"
    assert h.status_led(h.now()) == "idle"
    link.start()
    try:
        while link.error is None:
            await asyncio.sleep(0.01)
        assert not link.joined and not link.fault(h.now())
        assert h.status_led(h.now()) == "idle"  # a few seconds of this: no error shown
        later = h.now() + relaylink.DOWN_FAULT_S
        assert link.fault(later) and h.status_led(later) == "error"
    finally:
        await link.stop()
        h.board.close()
