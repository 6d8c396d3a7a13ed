"""`wzp test audio` and `wzp config check` with no daemon: the devices the daemon would
open, a failed check fails the command, a config path that is not there is refused."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import wzp.audio.cards as cards
import wzp.audio.probe as probe
from wzp.audio.cards import Card
from wzp.daemon.commands import cmd_test

USB = Card(1, "Device", "USB Audio Device", "C-Media USB Audio Device", driver="USB-Audio")


def _args(tmp_path: Path, audio: str = "") -> argparse.Namespace:
    cfg = tmp_path / "wzp.toml"
    cfg.write_text(audio)
    return argparse.Namespace(what="audio", config=str(cfg), socket=str(tmp_path / "none.sock"))


def _result(**kw: object) -> probe.ProbeResult:
    base: dict[str, object] = {
        "capture_dbfs": -30.0,
        "peak_dbfs": -20.0,
        "tone_detected": True,
        "rates": {},
        "error": None,
    }
    return probe.ProbeResult(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("found", "want"),
    [([USB], "plughw:CARD=Device,DEV=0"), ([], "default")],
)
def test_auto_opens_what_the_daemon_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, found: list[Card], want: str
) -> None:
    """The default config says "auto": the test used to open an ALSA device named "auto"
    and failed on every Pi."""
    opened: list[tuple[str, str]] = []

    def fake(capture: str, playback: str) -> probe.ProbeResult:
        opened.append((capture, playback))
        return _result(capture_device=capture, playback_device=playback)

    monkeypatch.setattr(cards, "list_cards", lambda: found)
    monkeypatch.setattr(probe, "play_tone_and_measure", fake)
    assert cmd_test(_args(tmp_path)) == 0
    assert opened == [(want, want)]


@pytest.mark.parametrize(
    "kw", [{"tone_detected": False}, {"silent": True}, {"error": "cannot be opened"}]
)
def test_a_failed_check_fails_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kw: dict[str, object]
) -> None:
    monkeypatch.setattr(cards, "list_cards", lambda: [])
    monkeypatch.setattr(probe, "play_tone_and_measure", lambda c, p: _result(**kw))
    assert cmd_test(_args(tmp_path)) == 1


def test_alsa_null_device_is_really_opened_and_the_tone_is_not_heard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ALSA's null device: it opens, plays and captures, and hears nothing."""
    pytest.importorskip("alsaaudio")
    args = _args(tmp_path, '[audio]\ncapture = "null"\nplayback = "null"\n')
    assert cmd_test(args) == 1
    out = capsys.readouterr().out
    assert "not heard" in out or "silent" in out, out


def test_config_check_refuses_a_path_that_is_not_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``wzp config check --config typo.toml`` said "configuration OK (defaults)"."""
    from wzp.daemon.commands import EXIT_CONFIG, cmd_config

    args = argparse.Namespace(action="check", config=str(tmp_path / "typo.toml"))
    assert cmd_config(args) == EXIT_CONFIG
    assert "typo.toml does not exist" in capsys.readouterr().err
    (tmp_path / "typo.toml").write_text('[audio]\ncapture = "null"\n')
    assert cmd_config(args) == 0
    assert f"configuration OK ({tmp_path / 'typo.toml'})" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("audio", "want"),
    [
        ('[audio]\ncapture = "null"\nplayback = "null"\n', "✓ sound      no sound card; the"),
        ("", "✗ sound      no sound card found"),  # "auto" needs a card
    ],
)
def test_status_without_a_daemon_knows_which_configs_need_a_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, audio: str, want: str
) -> None:
    """``wzp status`` with no daemon said "no sound card found" (✗) even for a config
    on ALSA's null device, which needs none."""
    from wzp.daemon.commands import _local_checks

    monkeypatch.setattr(cards, "list_cards", lambda: [])
    assert want in _local_checks(_args(tmp_path, audio))
