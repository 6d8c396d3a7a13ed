from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import logging
import stat
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wzp.daemon.config import MAX_CONFIG_BYTES, ConfigError, Contact, parse_address, parse_contacts
from wzp.daemon.contacts import (
    USER_CONTACTS,
    ContactsError,
    ContactStore,
    merge_contacts,
    render_contacts,
    toml_string,
)

FP = "0123:4567:89ab:cdef:0123:4567:89ab:cdef"
FP_BYTES = bytes.fromhex(FP.replace(":", ""))
FP2 = "ffffeeeeddddccccbbbbaaaa99998888"


def test_default_path() -> None:
    assert Path("/var/lib/wzp/contacts.toml") == USER_CONTACTS


def test_empty_store(tmp_path: Path) -> None:
    store = ContactStore(tmp_path / "contacts.toml")
    assert store.load() == {}
    assert store.remove("nobody") is False
    assert not store.path.exists()


def test_add_load_replace_remove(tmp_path: Path) -> None:
    store = ContactStore(tmp_path / "state" / "contacts.toml")
    alice = store.add("alice", FP, "alice.local")
    assert alice == Contact("alice", FP_BYTES, "alice.local", 4433)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o640
    bob = store.add("bob", FP2.upper(), "[2001:db8::2]:9000")
    assert store.load() == {"alice": alice, "bob": bob}
    # the file is plain TOML a person can read
    doc = tomllib.loads(store.path.read_text())
    assert doc["contacts"]["bob"] == {
        "fingerprint": "ffff:eeee:dddd:cccc:bbbb:aaaa:9999:8888",
        "address": "[2001:db8::2]:9000",
    }
    # replacing a user contact is allowed
    alice2 = store.add("alice", FP2, "10.0.0.7:5000")
    assert store.load()["alice"] == alice2
    assert store.remove("alice") is True
    assert store.remove("alice") is False
    assert store.load() == {"bob": bob}
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["contacts.toml"]


def test_add_refuses_bad_input_with_every_reason(tmp_path: Path) -> None:
    store = ContactStore(tmp_path / "contacts.toml")
    with pytest.raises(ContactsError) as info:
        store.add("bad name", "123", "2001:db8::1")
    exc = info.value
    assert isinstance(exc, ConfigError) and isinstance(exc, ValueError)
    assert [e.key for e in exc.errors] == ["name", "fingerprint", "address"]
    assert str(exc).splitlines() == [
        'name: a contact name is 1-32 letters, digits, "_" or "-", got "bad name"',
        "fingerprint: must be a fingerprint: 32 hex digits, optionally grouped by ':' "
        '(as `wzp` prints it on the peer), got "123"',
        'address: an IPv6 address needs brackets: write "[2001:db8::1]:4433", got "2001:db8::1"',
    ]
    assert not store.path.exists()


def test_add_refuses_names_of_the_config_file(tmp_path: Path) -> None:
    store = ContactStore(tmp_path / "contacts.toml")
    with pytest.raises(ContactsError) as info:
        store.add("alice", FP, "h", reserved={"alice"})
    assert str(info.value) == (
        'name: "alice" is a contact of the config file; choose another name or edit it there'
    )
    assert not store.path.exists()
    assert store.add("alice2", FP, "h", reserved={"alice"}).name == "alice2"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'[contacts.a]\nfingerprint = "x\n', "line 2: TOML syntax error: "),
        (
            b'# ok\n[contacts.a]\nfingerprint = "%s"\naddress = "h:0"\n' % FP.encode(),
            'line 4: contacts.a.address: port must be a number 1..65535, got "0"',
        ),
        (b"[audio]\nvolume_db = 1\n", "line 1: audio: unknown key"),
        (b"[contact.a]\n", "line 1: contact: unknown key (did you mean [contacts]?)"),
        (b'[contacts.a]\naddress = "h"\n', "line 1: contacts.a.fingerprint: missing"),
        (b"\n\n\xff\xfe", "line 3: is not UTF-8 text"),
        (b"x = " + b"[" * 3000 + b"]" * 3000, ": TOML nested too deeply"),
    ],
)
def test_corrupt_file_names_the_line(tmp_path: Path, content: bytes, expected: str) -> None:
    store = ContactStore(tmp_path / "contacts.toml")
    store.path.write_bytes(content)
    with pytest.raises(ContactsError) as info:
        store.load()
    assert f"{store.path}{'' if expected.startswith(':') else ' '}{expected}" in str(info.value)
    # a corrupt file is never overwritten by add/remove
    with pytest.raises(ContactsError):
        store.add("b", FP, "h")
    with pytest.raises(ContactsError):
        store.remove("a")
    assert store.path.read_bytes() == content


def test_unusable_files(tmp_path: Path) -> None:
    huge = ContactStore(tmp_path / "huge.toml")
    huge.path.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ContactsError, match="at most 1048576 bytes"):
        huge.load()
    folder = ContactStore(tmp_path / "dir")
    folder.path.mkdir()
    with pytest.raises(ContactsError, match="is a directory"):
        folder.load()


def test_toml_string_escapes_what_toml_requires() -> None:
    for text in ['"', "\\", "\n", "\t", "\x00", "\x1f", "\x7f", "é", "😀", "a'b", "\u2028"]:
        rendered = toml_string(text)
        assert tomllib.loads(f"k = {rendered}\n")["k"] == text
    assert toml_string("\x7f") == '"\\u007f"'


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_toml_string_round_trips(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates cannot be stored as UTF-8 at all
        return
    assert tomllib.loads(f"k = {toml_string(text)}\n")["k"] == text


_names = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)
_labels = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
_hostnames = (
    st.lists(_labels, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda h: not all(c.isdigit() or c == "." for c in h))
)
_hosts = st.one_of(
    _hostnames,
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
_ports = st.integers(min_value=1, max_value=65535)
_contacts = st.builds(
    lambda name, fp, host, port: Contact(name, fp, host, port),
    _names,
    st.binary(min_size=16, max_size=16),
    _hosts,
    _ports,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_names, _contacts, max_size=6))
def test_render_parse_round_trip(by_name: dict[str, Contact]) -> None:
    contacts = {name: Contact(name, c.fingerprint, c.host, c.port) for name, c in by_name.items()}
    assert parse_contacts(render_contacts(contacts)) == contacts


@settings(max_examples=100, deadline=None)
@given(_names, _hosts, st.one_of(st.none(), _ports), st.binary(min_size=16, max_size=16))
def test_store_round_trip(
    tmp_path_factory: pytest.TempPathFactory, name: str, host: str, port: int | None, fp: bytes
) -> None:
    store = ContactStore(tmp_path_factory.mktemp("store") / "contacts.toml")
    if ":" in host:
        address = f"[{host}]" if port is None else f"[{host}]:{port}"
    else:
        address = host if port is None else f"{host}:{port}"
    added = store.add(name, fp.hex(), address)
    assert added == Contact(name, fp, host, 4433 if port is None else port)
    assert store.load() == {name: added}
    assert parse_address(added.address) == (added.host, added.port)
    if ":" in host:
        assert ipaddress.IPv6Address(added.host) == ipaddress.IPv6Address(host)


def test_merge_contacts_config_wins(caplog: pytest.LogCaptureFixture) -> None:
    cfg = {"a": Contact("a", FP_BYTES, "cfg", 1), "b": Contact("b", FP_BYTES, "b", 2)}
    user = {"a": Contact("a", FP_BYTES, "user", 1), "c": Contact("c", FP_BYTES, "c", 3)}
    with caplog.at_level(logging.WARNING, logger="wzp.daemon.contacts"):
        merged = merge_contacts(cfg, user)
    assert merged == {"a": cfg["a"], "b": cfg["b"], "c": user["c"]}
    assert any("contact a" in r.getMessage() for r in caplog.records)
    assert merge_contacts({}, {}) == {}
    # same entry on both sides: no warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wzp.daemon.contacts"):
        assert merge_contacts(cfg, {"b": cfg["b"]}) == cfg
    assert caplog.records == []


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """``read_only(folder)``: creating a file in ``folder`` fails as on a read-only file
    system (the tests may run as root, whom a chmod does not stop)."""
    real = tempfile.mkstemp
    folders: list[Path] = []

    def mkstemp(*args: Any, **kw: Any) -> tuple[int, str]:
        folder = Path(kw.get("dir") or ".")
        if folder in folders:
            raise OSError(errno.EROFS, "Read-only file system", str(folder / ".x.tmp"))
        return real(*args, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return folders.append


def test_a_file_system_that_refuses_is_a_contacts_error_and_one_warning(
    tmp_path: Path, read_only: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    store = ContactStore(tmp_path / "contacts.toml")
    store.add("alice", FP, "alice.local")
    before = store.path.read_bytes()
    read_only(tmp_path)
    caplog.set_level(logging.DEBUG)
    expected = f"cannot save contacts: {store.path}: Read-only file system"
    with pytest.raises(ContactsError) as add:
        store.add("bob", FP2, "bob.local")
    assert str(add.value) == expected
    with pytest.raises(ContactsError) as remove:
        store.remove("alice")
    assert str(remove.value) == expected
    assert [(r.levelno, r.getMessage(), r.exc_info) for r in caplog.records] == [
        (logging.WARNING, expected, None)
    ] * 2
    assert store.path.read_bytes() == before


async def test_contacts_over_the_socket_on_a_read_only_file_system(
    tmp_path: Path, read_only: Callable[[Path], None], caplog: pytest.LogCaptureFixture
) -> None:
    """`wzp contacts add/remove` against a daemon whose contacts folder is read-only: a
    plain refusal naming the file, a warning line in the log, no traceback."""
    import numpy as np
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    from wzp.board.board import Board
    from wzp.board.profile import load_profile
    from wzp.crypto.identity import Identity
    from wzp.daemon.config import Config
    from wzp.daemon.control import ControlError, request
    from wzp.daemon.demo import DemoAudio
    from wzp.daemon.handset import Handset

    cfg = dataclasses.replace(
        Config.default(),
        board_profile="breadboard",
        pin_factory="mock",
        listen_hosts=("127.0.0.1",),
        listen_port=0,
        control_socket=tmp_path / "c.sock",
        control_group=None,
    )
    store = ContactStore(tmp_path / "state" / "contacts.toml")
    store.add("alice", FP, "alice.local")
    board = Board(load_profile("breadboard"), MockFactory(pin_class=MockPWMPin))
    audio = DemoAudio(np.zeros(0, np.int16))
    handset = Handset(cfg, Identity.generate(), board, audio, contacts=store)
    await handset.start()
    try:
        read_only(store.path.parent)
        caplog.set_level(logging.DEBUG)
        caplog.clear()
        expected = f"cannot save contacts: {store.path}: Read-only file system"
        sock = cfg.control_socket
        with pytest.raises(ControlError) as add:
            await asyncio.to_thread(
                request, sock, "contacts_add", name="bob", fingerprint=FP2, address="bob.local"
            )
        assert str(add.value) == expected
        with pytest.raises(ControlError) as remove:
            await asyncio.to_thread(request, sock, "contacts_remove", name="alice")
        assert str(remove.value) == expected
        assert [r.exc_info for r in caplog.records] == [None] * len(caplog.records)
        assert [r.levelno for r in caplog.records if r.levelno >= logging.WARNING] == [
            logging.WARNING
        ] * 2
        assert [r["name"] for r in await asyncio.to_thread(request, sock, "contacts_list")] == [
            "alice"
        ]
    finally:
        await handset.stop()
