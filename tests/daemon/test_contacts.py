from __future__ import annotations

import ipaddress
import logging
import stat
import tomllib
from pathlib import Path

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
