from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wzp.audio.cards import (
    Card,
    Holder,
    busy_holders,
    card_of,
    card_present,
    hw_name,
    list_cards,
    parse_cards,
)

PI_CARDS = """\
 0 [Headphones     ]: bcm2835_headpho - bcm2835 Headphones
                      bcm2835 Headphones
 1 [vc4hdmi        ]: vc4-hdmi - vc4-hdmi
                      vc4-hdmi
 2 [Device         ]: USB-Audio - USB Audio Device
                      C-Media Electronics Inc. USB Audio Device at usb-0000:01:00.0-1.3, full speed
"""

RUNNING_STATUS = """\
state: RUNNING
owner_pid   : 812
trigger_time: 1234.567890123
tstamp      : 1240.000000000
delay       : 1920
avail       : 0
avail_max   : 960
-----
hw_ptr      : 288000
appl_ptr    : 289920
"""


def make_proc(tmp_path: Path, cards_text: str = PI_CARDS) -> Path:
    asound = tmp_path / "proc" / "asound"
    asound.mkdir(parents=True)
    (asound / "cards").write_text(cards_text)
    return asound


def test_parses_a_pi_with_a_usb_card(tmp_path: Path) -> None:
    cards = list_cards(make_proc(tmp_path))
    assert [c.id for c in cards] == ["Headphones", "vc4hdmi", "Device"]
    usb = cards[2]
    assert usb == Card(
        index=2,
        id="Device",
        name="USB Audio Device",
        longname="C-Media Electronics Inc. USB Audio Device at usb-0000:01:00.0-1.3, full speed",
        driver="USB-Audio",
    )
    assert cards[1].name == "vc4-hdmi" and cards[1].driver == "vc4-hdmi"


def test_no_cards_and_no_proc(tmp_path: Path) -> None:
    assert list_cards(make_proc(tmp_path, "--- no soundcards ---\n")) == []
    assert list_cards(tmp_path / "nowhere") == []


def test_every_call_reads_afresh(tmp_path: Path) -> None:
    proc = make_proc(tmp_path, PI_CARDS.split(" 2 [")[0])
    assert [c.id for c in list_cards(proc)] == ["Headphones", "vc4hdmi"]
    (proc / "cards").write_text(PI_CARDS)  # the USB card is plugged in later
    assert [c.id for c in list_cards(proc)] == ["Headphones", "vc4hdmi", "Device"]


@given(st.text())
def test_parser_never_fails_on_garbage(text: str) -> None:
    for card in parse_cards(text):
        assert isinstance(card.index, int)


@pytest.mark.parametrize(
    ("name", "ref"),
    [
        ("plughw:CARD=Device,DEV=0", "Device"),
        ("hw:CARD=Device", "Device"),
        ('hw:CARD="Device",DEV=0', "Device"),
        ("dsnoop:CARD=Device,DEV=0", "Device"),
        ("dmix:CARD=vc4hdmi,DEV=0", "vc4hdmi"),
        ("sysdefault:CARD=Device", "Device"),
        ("hw:Device,0", "Device"),
        ("hw:2,0", "2"),
        ("plughw:DEV=0,CARD=Device", "Device"),
        ("default", None),
        ("null", None),
        ("pulse", None),
    ],
)
def test_card_of(name: str, ref: str | None) -> None:
    assert card_of(name) == ref


def test_card_present(tmp_path: Path) -> None:
    cards = list_cards(make_proc(tmp_path))
    assert card_present("plughw:CARD=Device,DEV=0", cards)
    assert card_present("dsnoop:CARD=Device,DEV=0", cards)
    assert card_present("hw:CARD=vc4hdmi", cards)
    assert card_present("hw:2,0", cards)  # by index, for completeness
    assert not card_present("plughw:CARD=Headset,DEV=0", cards)
    assert not card_present("hw:CARD=device", cards)  # ALSA compares ids exactly
    assert not card_present("hw:7", cards)
    assert card_present("default", cards)  # no CARD=: ALSA decides
    assert card_present("null", [])
    assert not card_present("plughw:CARD=Device,DEV=0", [])


@pytest.mark.parametrize(
    ("name", "hw"),
    [
        ("plughw:CARD=Device,DEV=0", "hw:CARD=Device,DEV=0"),
        ("plughw:CARD=Device", "hw:CARD=Device,DEV=0"),
        ("dsnoop:CARD=Device,DEV=1", "hw:CARD=Device,DEV=1"),
        ("dmix:CARD=Device,DEV=0", "hw:CARD=Device,DEV=0"),
        ("plughw:Device,1", "hw:CARD=Device,DEV=1"),
        ("sysdefault:CARD=Device", "hw:CARD=Device"),
        ("hw:CARD=Device,DEV=0", "hw:CARD=Device,DEV=0"),
        ("default", "default"),
        ("null", "null"),
    ],
)
def test_hw_name(name: str, hw: str) -> None:
    assert hw_name(name) == hw


def test_busy_holders_names_the_process(tmp_path: Path) -> None:
    proc = make_proc(tmp_path)
    capture = proc / "card2" / "pcm0c" / "sub0"
    playback = proc / "card2" / "pcm0p" / "sub0"
    capture.mkdir(parents=True)
    playback.mkdir(parents=True)
    (capture / "status").write_text(RUNNING_STATUS)
    (playback / "status").write_text("closed\n")
    (tmp_path / "proc" / "812").mkdir()
    (tmp_path / "proc" / "812" / "comm").write_text("pipewire\n")
    holders = busy_holders("Device", proc)
    assert holders == [Holder(pid=812, comm="pipewire", stream="pcm0c/sub0", state="RUNNING")]
    assert holders[0].describe() == "pipewire (pid 812, pcm0c/sub0 RUNNING)"
    assert busy_holders("2", proc) == holders  # an index works too
    assert busy_holders("vc4hdmi", proc) == []  # nothing open there
    assert busy_holders("Headset", proc) == []  # no such card


def test_busy_holder_with_unreadable_comm(tmp_path: Path) -> None:
    proc = make_proc(tmp_path)
    sub = proc / "card0" / "pcm0p" / "sub0"
    sub.mkdir(parents=True)
    (sub / "status").write_text(RUNNING_STATUS.replace("812", "4242"))
    assert busy_holders("Headphones", proc) == [
        Holder(pid=4242, comm="?", stream="pcm0p/sub0", state="RUNNING")
    ]


def test_auto_picks_the_usb_card_by_name_else_default() -> None:
    from wzp.audio.cards import resolve_device

    cards = parse_cards(PI_CARDS)
    # card 0 is the Pi's headphone jack (no microphone): "auto" must not mean index 0
    assert resolve_device("auto", cards) == "plughw:CARD=Device,DEV=0"
    # the same card replugged under another index is found by its name again
    replugged = parse_cards(PI_CARDS.replace(" 2 [Device", " 3 [Device"))
    assert resolve_device("auto", replugged) == "plughw:CARD=Device,DEV=0"
    no_usb = parse_cards("\n".join(PI_CARDS.splitlines()[:4]) + "\n")
    assert resolve_device("auto", no_usb) == "default"
    assert resolve_device("auto", []) == "default"
    assert resolve_device("dsnoop:CARD=Device", cards) == "dsnoop:CARD=Device"
