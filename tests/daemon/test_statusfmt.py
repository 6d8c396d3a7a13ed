"""``wzp status`` text: the floor of a push-to-talk room, a relay link's stale error, a
silent microphone, and what a handset whose audio is files really uses."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from wzp.board.board import Board
from wzp.board.profile import load_profile
from wzp.crypto.identity import Identity, fingerprint_text
from wzp.daemon.config import Config
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
            {"fingerprint": fingerprint_text(PEER.fingerprint), "slot": 1, "alias": "alice"},
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
    # a member without an alias is named by its grouped fingerprint
    anon = _relay(floor=1, floor_taken=True)
    anon["members"][0]["alias"] = None
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
        assert "capture files (demo)" in text and "auto" not in _line(text, "audio")
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
