from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import re
import stat
import tomllib
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wzp.daemon
from wzp.daemon import config as config_mod
from wzp.daemon.config import (
    BOOT_DIRS,
    MAX_CONFIG_BYTES,
    SCHEMA,
    BootResult,
    Config,
    ConfigError,
    ConfigErrors,
    Contact,
    apply_boot_config,
    find_boot_config,
    key_lines,
    load_config,
    make_contact,
    parse_address,
    parse_config,
    read_config_text,
    render_template,
    write_file_atomic,
)

ETC = Path("/etc/wzp/wzp.toml")
FP = "0123:4567:89ab:cdef:0123:4567:89ab:cdef"
FP2 = "ffff:eeee:dddd:cccc:bbbb:aaaa:9999:8888"
MISSING = "(a contact needs a fingerprint)"
TEMPLATE = Path(wzp.daemon.__file__).parent / "wzp.toml.template"


def errors_of(text: str, path: Path | None = ETC) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        parse_config(text, path)
    assert all(isinstance(e, ConfigError) for e in info.value.errors)
    return [str(e) for e in info.value.errors]


def one_key(table: str, key: str, value: str) -> str:
    """``key = value`` on line 4, after a comment and a blank line."""
    return f"# my handset\n\n[{table}]\n{key} = {value}\n"


def _contact(name: str, fp: str, address: str) -> str:
    return f'[contacts.{name}]\nfingerprint = "{fp}"\naddress = "{address}"\n'


# ----------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    cfg = Config.default()
    assert cfg.identity_path == Path("/var/lib/wzp/identity.seed")
    assert (cfg.board_profile, cfg.pin_factory, cfg.gpio_chip) == ("breadboard", "lgpio", None)
    assert (cfg.audio_capture, cfg.audio_playback, cfg.volume_db) == ("auto", "auto", 0.0)
    assert (cfg.mode, cfg.default_contact, cfg.accept) == ("half-duplex", None, "contacts")
    assert (cfg.listen_port, cfg.listen_hosts) == (4433, ("0.0.0.0", "::"))
    assert cfg.auto_answer_s is None
    assert (cfg.control_socket, cfg.control_group) == (Path("/run/wzp/control.sock"), "wzp")
    assert (cfg.max_cpu_pct, cfg.max_temp_c) == (70.0, 75.0)
    assert dict(cfg.contacts) == {} and cfg.sources == ()
    # frozen, hashable, contacts read-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.volume_db = 3.0  # type: ignore[misc]
    assert hash(cfg) == hash(Config.default())
    assert isinstance(cfg.contacts, MappingProxyType)
    with_dict = dataclasses.replace(cfg, contacts={"a": Contact("a", bytes(16), "h", 1)})
    assert isinstance(with_dict.contacts, MappingProxyType)


def test_missing_file_means_defaults_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "wzp.toml"
    with caplog.at_level(logging.INFO, logger="wzp.daemon.config"):
        cfg = load_config(missing, tmp_path / "boot.toml")
    assert cfg == Config.default()
    assert cfg.sources == ()
    assert any(
        str(missing) in r.getMessage() and "defaults" in r.getMessage() for r in caplog.records
    )


def test_empty_and_comment_only_files_are_defaults() -> None:
    assert parse_config("") == {}
    assert parse_config("# nothing\n\n   \n") == {}


# ----------------------------------------------------------------------------- template


def test_template_is_the_shipped_file_and_parses_to_defaults(tmp_path: Path) -> None:
    text = render_template()
    assert text == TEMPLATE.read_text("utf-8")
    path = tmp_path / "wzp.toml"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg == Config.default()
    assert cfg.sources == (path,)


def _uncomment(text: str) -> str:
    return re.sub(r"(?m)^# (\[[a-z.]+\]|[a-z_]+ = )", r"\1", text)


def test_template_lists_every_key_with_its_true_default(tmp_path: Path) -> None:
    """Uncommenting every key of the template changes nothing but the example contact."""
    text = _uncomment(render_template())
    lines = key_lines(text)
    for table, keys in SCHEMA.items():
        for key in keys:
            assert (table, key) in lines, f"{table}.{key} is missing from the template"
    path = tmp_path / "wzp.toml"
    path.write_text(text)
    cfg = load_config(path)
    assert set(cfg.contacts) == {"kitchen"}
    assert cfg.contacts["kitchen"].address == "kitchen.local:4433"
    assert dataclasses.replace(cfg, contacts={}) == Config.default()


def test_template_explains_each_key() -> None:
    text = render_template().split("# Contacts:")[0].splitlines()
    for i, line in enumerate(text):
        if re.match(r"# [a-z_]+ = ", line):
            assert text[i - 1].startswith("# ") and " = " not in text[i - 1], line


# ----------------------------------------------------------------------------- good values


@pytest.mark.parametrize(
    ("table", "key", "value", "attr", "expected"),
    [
        ("identity", "path", '"/srv/seed"', "identity_path", Path("/srv/seed")),
        ("board", "profile", '"pi5-hat"', "board_profile", "pi5-hat"),
        ("board", "profile", '"/opt/my.toml"', "board_profile", "/opt/my.toml"),
        ("board", "pin_factory", '"mock"', "pin_factory", "mock"),
        ("board", "gpio_chip", "0", "gpio_chip", 0),
        ("board", "gpio_chip", "63", "gpio_chip", 63),
        ("board", "gpio_chip", '"auto"', "gpio_chip", None),
        (
            "audio",
            "capture",
            '"plughw:CARD=Device,DEV=0"',
            "audio_capture",
            "plughw:CARD=Device,DEV=0",
        ),
        ("audio", "playback", '"dmix:CARD=Device"', "audio_playback", "dmix:CARD=Device"),
        ("audio", "volume_db", "-40", "volume_db", -40.0),
        ("audio", "volume_db", "20.0", "volume_db", 20.0),
        ("audio", "volume_db", "-3", "volume_db", -3.0),
        ("call", "mode", '"full-duplex"', "mode", "full-duplex"),
        ("call", "listen_port", "1", "listen_port", 1),
        ("call", "listen_port", "65535", "listen_port", 65535),
        ("call", "listen_hosts", '["::1"]', "listen_hosts", ("::1",)),
        (
            "call",
            "listen_hosts",
            '["fe80::1%eth0", "0.0.0.0"]',
            "listen_hosts",
            ("fe80::1%eth0", "0.0.0.0"),
        ),
        ("call", "accept", '"anyone"', "accept", "anyone"),
        ("call", "auto_answer_s", "0", "auto_answer_s", 0.0),
        ("call", "auto_answer_s", "2.5", "auto_answer_s", 2.5),
        ("call", "auto_answer_s", "-1", "auto_answer_s", None),
        ("control", "socket", '"/tmp/w.sock"', "control_socket", Path("/tmp/w.sock")),
        ("control", "group", '""', "control_group", None),
        ("control", "group", '"users"', "control_group", "users"),
        ("resources", "max_cpu_pct", "400", "max_cpu_pct", 400.0),
        ("resources", "max_cpu_pct", "1", "max_cpu_pct", 1.0),
        ("resources", "max_temp_c", "40", "max_temp_c", 40.0),
        ("resources", "max_temp_c", "100", "max_temp_c", 100.0),
    ],
)
def test_good_values(
    tmp_path: Path, table: str, key: str, value: str, attr: str, expected: object
) -> None:
    path = tmp_path / "wzp.toml"
    path.write_text(one_key(table, key, value))
    got = getattr(load_config(path), attr)
    assert got == expected and type(got) is type(expected)


def test_parse_config_returns_only_present_keys_converted() -> None:
    raw = parse_config('[audio]\nvolume_db = 3\n[board]\ngpio_chip = "auto"\n')
    assert raw == {"audio": {"volume_db": 3.0}, "board": {"gpio_chip": None}}


# ----------------------------------------------------------------------------- bad values


BAD = [
    # identity
    ("identity", "path", "5", "must be a path (a string), got 5"),
    ("identity", "path", '""', "must not be empty"),
    (
        "identity",
        "path",
        '"relative/seed"',
        'must be an absolute path (starting with /), got "relative/seed"',
    ),
    ("identity", "path", '"/a\\u0001"', 'must not contain control characters, got "/a\\u0001"'),
    # board
    ("board", "profile", '""', "must not be empty"),
    ("board", "profile", "5", "must be a string, got 5"),
    ("board", "profile", '" pi"', 'has spaces at the start or end, got " pi"'),
    ("board", "profile", '"a\\tb"', 'must not contain control characters, got "a\\tb"'),
    ("board", "profile", '"x/y.toml"', 'a profile file must be an absolute path, got "x/y.toml"'),
    ("board", "profile", '"/x/y.yaml"', 'a profile file ends in .toml, got "/x/y.yaml"'),
    (
        "board",
        "profile",
        '"bad name!"',
        "must be a board profile name (letters, digits, '_', '-', '.') "
        'or the absolute path of a .toml file, got "bad name!"',
    ),
    (
        "board",
        "pin_factory",
        '"LGPIO"',
        'must be "lgpio", "rpigpio" or "mock", got "LGPIO" (did you mean "lgpio"?)',
    ),
    ("board", "pin_factory", '"xyz"', 'must be "lgpio", "rpigpio" or "mock", got "xyz"'),
    (
        "board",
        "gpio_chip",
        '"gpiochip4"',
        'must be "auto" or a chip number 0..63, got "gpiochip4" '
        "(write gpio_chip = 4, a number without quotes)",
    ),
    ("board", "gpio_chip", "64", 'must be "auto" or a chip number 0..63, got 64'),
    ("board", "gpio_chip", "-1", 'must be "auto" or a chip number 0..63, got -1'),
    ("board", "gpio_chip", "true", 'must be "auto" or a chip number 0..63, got true'),
    ("board", "gpio_chip", "4.0", 'must be "auto" or a chip number 0..63, got 4.0'),
    # audio
    ("audio", "capture", '""', "must not be empty"),
    ("audio", "capture", "3", "must be a string, got 3"),
    ("audio", "playback", '"' + "x" * 300 + '"', "is longer than 256 characters"),
    ("audio", "volume_db", '"loud"', 'must be a number between -40 and 20, got "loud"'),
    ("audio", "volume_db", "21", "must be a number between -40 and 20, got 21"),
    ("audio", "volume_db", "-40.5", "must be a number between -40 and 20, got -40.5"),
    ("audio", "volume_db", "nan", "must be a number between -40 and 20, got nan"),
    ("audio", "volume_db", "-inf", "must be a number between -40 and 20, got -inf"),
    ("audio", "volume_db", "true", "must be a number between -40 and 20, got true"),
    ("audio", "volume_db", "[1]", "must be a number between -40 and 20, got an array"),
    ("audio", "volume_db", "{a = 1}", "must be a number between -40 and 20, got a table"),
    (
        "audio",
        "volume_db",
        "1979-05-27",
        "must be a number between -40 and 20, got a date/time (1979-05-27)",
    ),
    # call
    ("call", "mode", '"half"', 'must be "half-duplex" or "full-duplex", got "half"'),
    (
        "call",
        "mode",
        '"half_duplex"',
        'must be "half-duplex" or "full-duplex", got "half_duplex" (did you mean "half-duplex"?)',
    ),
    ("call", "accept", '"everyone"', 'must be "contacts" or "anyone", got "everyone"'),
    (
        "call",
        "default_contact",
        '"no such"',
        'a contact name is 1-32 letters, digits, "_" or "-", got "no such"',
    ),
    ("call", "default_contact", "3", 'a contact name is 1-32 letters, digits, "_" or "-", got 3'),
    ("call", "listen_port", "0", "must be a port number 1..65535, got 0"),
    ("call", "listen_port", "65536", "must be a port number 1..65535, got 65536"),
    ("call", "listen_port", '"4433"', 'must be a port number 1..65535, got "4433"'),
    ("call", "listen_port", "4433.5", "must be a port number 1..65535, got 4433.5"),
    ("call", "listen_port", "true", "must be a port number 1..65535, got true"),
    (
        "call",
        "listen_port",
        "99999999999999999999999999999999999",
        "must be a port number 1..65535, got a huge integer",
    ),
    (
        "call",
        "listen_hosts",
        '"0.0.0.0"',
        'must be an array of IP addresses like ["0.0.0.0", "::"], got "0.0.0.0"',
    ),
    ("call", "listen_hosts", "[]", 'must list at least one address (e.g. ["0.0.0.0", "::"])'),
    ("call", "listen_hosts", "[1]", "item 1 must be a string, got 1"),
    ("call", "listen_hosts", '["::", ["x"]]', "item 2 must be a string, got an array"),
    (
        "call",
        "listen_hosts",
        '["[::1]"]',
        'item 1 is not an IP address: "[::1]" (write it without brackets here)',
    ),
    ("call", "listen_hosts", '["localhost"]', 'item 1 is not an IP address: "localhost"'),
    ("call", "listen_hosts", '["::", "::0"]', 'item 2 repeats "::0"'),
    (
        "call",
        "listen_hosts",
        "[" + ", ".join(f'"10.0.0.{i}"' for i in range(17)) + "]",
        "lists 17 addresses; at most 16",
    ),
    ("call", "auto_answer_s", "-2", "must be -1 (off) or a number of seconds >= 0, got -2"),
    ("call", "auto_answer_s", "-0.5", "must be -1 (off) or a number of seconds >= 0, got -0.5"),
    ("call", "auto_answer_s", "inf", "must be -1 (off) or a number of seconds >= 0, got inf"),
    ("call", "auto_answer_s", '"5"', 'must be -1 (off) or a number of seconds >= 0, got "5"'),
    ("call", "auto_answer_s", "false", "must be -1 (off) or a number of seconds >= 0, got false"),
    # control
    (
        "control",
        "socket",
        '"run/wzp.sock"',
        'must be an absolute path (starting with /), got "run/wzp.sock"',
    ),
    (
        "control",
        "socket",
        '"/' + "a" * 107 + '"',
        "is 108 bytes long; a Unix socket path holds at most 107",
    ),
    (
        "control",
        "group",
        '"bad group"',
        'must be a group name (or "" for the daemon\'s own), got "bad group"',
    ),
    ("control", "group", "5", "must be a string, got 5"),
    # resources
    ("resources", "max_cpu_pct", "0.5", "must be a number between 1 and 400, got 0.5"),
    ("resources", "max_cpu_pct", "401", "must be a number between 1 and 400, got 401"),
    ("resources", "max_temp_c", "39", "must be a number between 40 and 100, got 39"),
    ("resources", "max_temp_c", "101", "must be a number between 40 and 100, got 101"),
]


@pytest.mark.parametrize(("table", "key", "value", "message"), BAD)
def test_bad_values_name_file_line_and_key(table: str, key: str, value: str, message: str) -> None:
    assert errors_of(one_key(table, key, value)) == [
        f"/etc/wzp/wzp.toml line 4: {table}.{key}: {message}"
    ]


def test_spec_example_message() -> None:
    text = "\n" * 11 + '[audio]\nvolume_db = "loud"\n'
    (err,) = errors_of(text)
    assert (
        err == "/etc/wzp/wzp.toml line 13: audio.volume_db: "
        'must be a number between -40 and 20, got "loud"'
    )


def test_every_error_is_reported_at_once_in_line_order() -> None:
    text = (
        "[resources]\nmax_temp_c = 5\n"  # 2
        '[audio]\nvolume_db = 99\ncapture = ""\n'  # 4, 5
        '[call]\nmode = "x"\n'  # 7
    )
    with pytest.raises(ConfigErrors) as info:
        parse_config(text, ETC)
    exc = info.value
    assert [(e.line, e.key) for e in exc.errors] == [
        (2, "resources.max_temp_c"),
        (4, "audio.volume_db"),
        (5, "audio.capture"),
        (7, "call.mode"),
    ]
    assert str(exc) == "\n".join(str(e) for e in exc.errors)
    assert (exc.path, exc.line, exc.key) == (ETC, 2, "resources.max_temp_c")
    assert exc.message == "must be a number between 40 and 100, got 5"
    assert isinstance(exc, ValueError)


def test_single_error_shape() -> None:
    err = ConfigError(ETC, 3, "audio.volume_db", "bad")
    assert err.errors == [err]
    assert str(err) == "/etc/wzp/wzp.toml line 3: audio.volume_db: bad"
    assert str(ConfigError(None, None, "name", "bad")) == "name: bad"
    assert str(ConfigError(ETC, None, "", "bad")) == "/etc/wzp/wzp.toml: bad"
    assert str(ConfigError(None, 7, "", "bad")) == "line 7: bad"
    nested = ConfigErrors([ConfigErrors([err, err]), err])
    assert len(nested.errors) == 3
    with pytest.raises(ValueError, match="at least one"):
        ConfigErrors([])


# ----------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "volume_db = 1\n",
            "line 1: volume_db: unknown key "
            "(did you mean audio.volume_db? keys go under their [table])",
        ),
        (
            "volum_db = 1\n",
            "line 1: volum_db: unknown key "
            "(did you mean audio.volume_db? keys go under their [table])",
        ),
        ("\n[audo]\nvolume_db = 1\n", "line 2: audo: unknown key (did you mean [audio]?)"),
        ("[zzzz]\n", "line 1: zzzz: unknown key"),
        (
            "[audio]\nvolum_db = 1\n",
            "line 2: audio.volum_db: unknown key (did you mean volume_db?)",
        ),
        ('[audio]\nmode = "x"\n', "line 2: audio.mode: unknown key (it belongs in [call])"),
        ("[audio]\nzzz = 1\n", "line 2: audio.zzz: unknown key"),
        ("[audio.extra]\nx = 1\n", "line 1: audio.extra: unknown key"),
        ("audio = 5\n", "line 1: audio: must be a table ([audio]), got 5"),
        ("[[audio]]\n", "line 1: audio: must be a table ([audio]), got an array"),
        (
            f'[contacts.a]\nfingerprint = "{FP}"\naddr = "h"\n',
            "line 3: contacts.a.addr: unknown key (did you mean address?)",
        ),
        (
            f'[contacts.a]\nfingerprint = "{FP}"\naddress = "h"\nhost = "h"\n',
            'line 4: contacts.a.host: unknown key (write address = "host:port")',
        ),
        (
            f'[contacts.a]\nfingerprint = "{FP}"\naddress = "h"\nzzz = 1\n',
            "line 4: contacts.a.zzz: unknown key",
        ),
    ],
)
def test_unknown_keys_and_wrong_shapes(text: str, expected: str) -> None:
    assert f"/etc/wzp/wzp.toml {expected}" in errors_of(text)


# ----------------------------------------------------------------------------- contacts


def test_contacts_parse() -> None:
    raw = parse_config(
        f'[contacts.alice]\nfingerprint = "{FP}"\naddress = "alice.local"\n'
        f'[contacts.bob-2]\nfingerprint = "{FP2.replace(":", "").upper()}"\n'
        'address = "[2001:db8::1]:5000"\n'
    )
    alice, bob = raw["contacts"]["alice"], raw["contacts"]["bob-2"]
    assert alice == Contact("alice", bytes.fromhex(FP.replace(":", "")), "alice.local", 4433)
    assert bob.host == "2001:db8::1" and bob.port == 5000
    assert bob.address == "[2001:db8::1]:5000"
    assert alice.address == "alice.local:4433"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("contacts = 5\n", ["line 1: contacts: must hold [contacts.NAME] tables, got 5"]),
        (
            "[contacts]\nalice = 5\n",
            ["line 2: contacts.alice: must be a table with fingerprint and address, got 5"],
        ),
        (
            f'[contacts."a b"]\nfingerprint = "{FP}"\naddress = "h"\n',
            [
                'line 1: contacts."a b": a contact name is 1-32 letters, digits, "_" or "-", '
                'got "a b"'
            ],
        ),
        (
            f'[contacts.{"x" * 33}]\nfingerprint = "{FP}"\naddress = "h"\n',
            [
                f"line 1: contacts.{'x' * 33}: a contact name is 1-32 letters, digits, "
                f'"_" or "-", got "{"x" * 33}"'
            ],
        ),
        (
            "\n[contacts.alice]\n",
            [
                f"line 2: contacts.alice.fingerprint: missing {MISSING}",
            ],
        ),
        (
            '[contacts.alice]\nfingerprint = "abcd"\naddress = "h"\n',
            [
                "line 2: contacts.alice.fingerprint: must be a fingerprint: 32 hex digits, "
                "optionally grouped by ':' (as `wzp` prints it on the peer), got \"abcd\""
            ],
        ),
        (
            f'[contacts.alice]\nfingerprint = "{FP}"\naddress = "2001:db8::1"\n',
            [
                "line 3: contacts.alice.address: an IPv6 address needs brackets: "
                'write "[2001:db8::1]:4433", got "2001:db8::1"'
            ],
        ),
    ],
)
def test_contact_errors(text: str, expected: list[str]) -> None:
    assert errors_of(text) == [f"/etc/wzp/wzp.toml {e}" for e in expected]


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("host", "host", 4433),
        ("pi.local:5000", "pi.local", 5000),
        ("example.com.", "example.com.", 4433),
        ("1.2.3.4:1", "1.2.3.4", 1),
        ("[::1]", "::1", 4433),
        ("[2001:db8::1]:65535", "2001:db8::1", 65535),
        ("[fe80::1%wlan0]:9", "fe80::1%wlan0", 9),
        ("a-b.c-d", "a-b.c-d", 4433),
    ],
)
def test_addresses_good(text: str, host: str, port: int) -> None:
    assert parse_address(text) == (host, port)
    contact = Contact("x", bytes(16), host, port)
    assert parse_address(contact.address) == (host, port)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (5, 'must be a string like "host:port", got 5'),
        ("", 'is empty; write "host", "host:port" or "[IPv6]:port"'),
        ("a b", 'must not contain spaces or control characters, got "a b"'),
        ("[::1", 'has "[" without a closing "]", got "[::1"'),
        ("[1.2.3.4]:5", 'brackets hold an IPv6 address, and "1.2.3.4" is not one'),
        ("[fe80::1%bad/x]", '"bad/x" is not an interface name'),
        ("[::1]x", 'expected ":port" after "]", got "x"'),
        ("[::1]:0", 'port must be a number 1..65535, got "0"'),
        (
            "2001:db8::1",
            'an IPv6 address needs brackets: write "[2001:db8::1]:4433", got "2001:db8::1"',
        ),
        (
            "a:b:c",
            'has more than one ":"; an IPv6 address goes in brackets, '
            'e.g. "[2001:db8::1]:4433", got "a:b:c"',
        ),
        (":4433", "has no host before the ':'"),
        ("1.2.3", '"1.2.3" is not a valid IPv4 address'),
        ("256.1.1.1:80", '"256.1.1.1" is not a valid IPv4 address'),
        ("-bad-.com", '"-bad-.com" is not a valid host name or IPv4 address'),
        ("under_score", '"under_score" is not a valid host name or IPv4 address'),
        ("a" * 64, f'"{"a" * 45}..." is not a valid host name or IPv4 address'),
        ("host:", 'port must be a number 1..65535, got ""'),
        ("host:+1", 'port must be a number 1..65535, got "+1"'),
        ("host:65536", 'port must be a number 1..65535, got "65536"'),
        ("host:http", 'port must be a number 1..65535, got "http"'),
    ],
)
def test_addresses_bad(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_address(value)
    assert str(info.value) == message


def test_make_contact_reports_all_fields() -> None:
    assert make_contact("a", FP, "h:1") == Contact("a", bytes.fromhex(FP.replace(":", "")), "h", 1)
    with pytest.raises(ConfigErrors) as info:
        make_contact("bad name", "xyz", "h:0")
    assert [e.key for e in info.value.errors] == ["name", "fingerprint", "address"]


def test_default_contact_must_exist(tmp_path: Path) -> None:
    path = tmp_path / "wzp.toml"
    path.write_text('[call]\nmode = "full-duplex"\ndefault_contact = "bob"\n')
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    assert str(info.value) == (
        f'{path} line 3: call.default_contact: no contact named "bob" (add a [contacts.bob] table)'
    )
    path.write_text(
        f'[call]\ndefault_contact = "alic"\n[contacts.alice]\nfingerprint = "{FP}"\naddress = "a"\n'
        f'[contacts.zed]\nfingerprint = "{FP}"\naddress = "z"\n'
    )
    with pytest.raises(
        ConfigErrors, match=r"line 2: call.default_contact: .*\(did you mean alice\?\)"
    ):
        load_config(path)
    path.write_text(
        f'[call]\ndefault_contact = "q"\n[contacts.alice]\nfingerprint = "{FP}"\naddress = "a"\n'
    )
    with pytest.raises(ConfigErrors, match=r'no contact named "q" \(known: alice\)'):
        load_config(path)
    # an invalid contact of that name is reported once, not twice
    path.write_text(
        '[call]\ndefault_contact = "alice"\n[contacts.alice]\nfingerprint = "x"\naddress = "a"\n'
    )
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    assert [e.key for e in info.value.errors] == ["contacts.alice.fingerprint"]
    path.write_text('[call]\ndefault_contact = "alice"\n' + _contact("alice", FP, "a"))
    assert load_config(path).default_contact == "alice"


# ----------------------------------------------------------------------------- syntax, files


def test_toml_syntax_errors_carry_the_line() -> None:
    assert errors_of("[audio]\nvolume_db = \n") == [
        "/etc/wzp/wzp.toml line 2: TOML syntax error: Invalid value (column 13)"
    ]
    assert errors_of('\n\na = "x') == [
        "/etc/wzp/wzp.toml line 3: TOML syntax error: Unterminated string (at the end of the file)"
    ]
    (err,) = errors_of("[call]\nmode = 'a'\n[call]\n")
    assert err.startswith("/etc/wzp/wzp.toml line 3: TOML syntax error: Cannot declare")
    (err,) = errors_of("a = 2021-02-30\n")
    assert err.startswith("/etc/wzp/wzp.toml line 1: TOML syntax error: Invalid date")


def test_file_errors(tmp_path: Path) -> None:
    folder = tmp_path / "dir.toml"
    folder.mkdir()
    with pytest.raises(ConfigErrors, match="is a directory"):
        load_config(folder)
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(ConfigErrors, match="cannot read: Not a directory"):
        load_config(afile / "wzp.toml")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"[audio]\n# caf\xe9\n")
    with pytest.raises(ConfigErrors) as info:
        load_config(binary)
    assert str(info.value) == f"{binary} line 2: is not UTF-8 text (bad byte at offset 13)"


def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "wzp.toml"
    path.write_bytes(b"\xef\xbb\xbf[audio]\r\nvolume_db = -6\r\n")
    assert load_config(path).volume_db == -6.0
    path.write_bytes(b'\xef\xbb\xbf[audio]\r\n\r\nvolume_db = "x"\r\n')
    with pytest.raises(ConfigErrors, match=r"line 3: audio.volume_db"):
        load_config(path)


def test_huge_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wzp.toml"
    path.write_bytes(b"# " + b"x" * MAX_CONFIG_BYTES + b"\n")
    with pytest.raises(ConfigErrors, match=r"is 1048579 bytes; a config file is at most 1048576"):
        load_config(path)
    with pytest.raises(ConfigErrors, match="at most 1048576 bytes"):
        parse_config("#" + "é" * (MAX_CONFIG_BYTES // 2))
    # just under the limit is fine
    assert parse_config("#" + "x" * (MAX_CONFIG_BYTES - 2) + "\n") == {}


def test_binary_garbage(tmp_path: Path) -> None:
    rng = random.Random(5)
    path = tmp_path / "wzp.toml"
    for _ in range(20):
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))))
        with pytest.raises(ConfigError):
            load_config(path)
    with pytest.raises(ConfigError):
        parse_config("\x00\x01\x02")


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    deep_table = "\n[" + ".".join(["a"] * 3000) + "]\nx = 1\n"
    assert errors_of(deep_table) == [
        "/etc/wzp/wzp.toml line 2: a key nested 3000 levels deep; wzp reads at most 16"
    ]
    assert errors_of("[" + ".".join(["a"] * 16) + "]\n") == [
        "/etc/wzp/wzp.toml line 1: a: unknown key"
    ]
    assert errors_of("x = " + "[" * 5000 + "]" * 5000 + "\n") == [
        "/etc/wzp/wzp.toml: TOML nested too deeply"
    ]
    assert errors_of("x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n") == [
        "/etc/wzp/wzp.toml line 1: a key nested 17 levels deep; wzp reads at most 16"
    ]
    # deep enough to parse, still refused cleanly
    assert errors_of("\n[call]\nlisten_hosts = " + "[" * 200 + "]" * 200 + "\n") == [
        "/etc/wzp/wzp.toml line 3: call.listen_hosts: item 1 must be a string, got an array"
    ]
    deep_contact = "[contacts.a" + ".b" * 14 + "]\n"
    assert errors_of(deep_contact) == [
        "/etc/wzp/wzp.toml line 1: contacts.a.b: unknown key",
        "/etc/wzp/wzp.toml line 1: contacts.a.fingerprint: missing (a contact needs a fingerprint)",
    ]


def test_error_flood_is_capped() -> None:
    text = "[audio]\n" + "".join(f"k{i} = 1\n" for i in range(20000))
    with pytest.raises(ConfigErrors) as info:
        parse_config(text, ETC)
    errors = info.value.errors
    assert len(errors) == config_mod.MAX_ERRORS + 1
    assert str(errors[0]) == "/etc/wzp/wzp.toml line 2: audio.k0: unknown key"
    assert (
        str(errors[-1])
        == f"/etc/wzp/wzp.toml: {20000 - config_mod.MAX_ERRORS} more problems not shown"
    )
    # past the cap, contacts are still checked (and never half-built)
    text = "".join(f'[contacts.c{i}]\nfingerprint = "x"\n' for i in range(100))
    with pytest.raises(ConfigErrors) as info:
        parse_config(text, ETC)
    assert str(info.value.errors[-1]).endswith(": 50 more problems not shown")


# ----------------------------------------------------------------------------- key lines


def test_key_lines_tricky_inputs() -> None:
    text = (
        "# [audio]\n"  # 1 a commented-out header
        "\n"  # 2
        "[board]\n"  # 3
        'profile = "x"  # volume_db = 1\n'  # 4
        "[audio]\n"  # 5
        "   # profile = 3\n"  # 6
        '  capture = """\n'  # 7
        "volume_db = 1\n"  # 8  inside a string
        '[call]"""\n'  # 9  inside a string
        "playback = '''a\n"  # 10
        "b'''\n"  # 11
        "volume_db = [\n"  # 12
        "  1,\n"  # 13
        "  2, # ]\n"  # 14
        "]\n"  # 15
        "[contacts . 'x.y']\n"  # 16
        'address = "h"\n'  # 17
        '"fingerprint" = "q"\n'  # 18
        "[contacts.z]\n"  # 19
        'address = "h"\n'  # 20
        "[call]\r\n"  # 21
        "inline = { mode = 1, nested = { deep = [1, {no = 2}] }, t = 1979-05-27 07:32:00Z }\n"  # 22
        "profile.sub = 1\n"  # 23
    )
    tomllib.loads(text)
    lines = key_lines(text)
    assert lines[("board",)] == 3
    assert lines[("board", "profile")] == 4
    assert lines[("audio",)] == 5
    assert lines[("audio", "capture")] == 7
    assert lines[("audio", "playback")] == 10
    assert lines[("audio", "volume_db")] == 12
    assert lines[("contacts",)] == 16
    assert lines[("contacts", "x.y")] == 16
    assert lines[("contacts", "x.y", "address")] == 17
    assert lines[("contacts", "x.y", "fingerprint")] == 18
    assert lines[("contacts", "z", "address")] == 20
    assert lines[("call",)] == 21
    assert lines[("call", "inline", "mode")] == 22
    assert lines[("call", "inline", "nested", "deep")] == 22
    assert lines[("call", "inline", "t")] == 22
    assert lines[("call", "profile", "sub")] == 23
    assert ("call", "inline", "nested", "deep", "no") not in lines
    assert ("audio", "volume_db") in lines and ("call", "volume_db") not in lines


def test_error_lines_for_same_key_in_two_tables_and_inline_tables() -> None:
    text = (
        "[audio]\n"
        '# capture = "x"\n'
        'capture = "ok"\n'
        "\n"
        "[contacts.capture]\n"
        f'fingerprint = "{FP}"\n'
        'address = "bad address"\n'
        "[contacts.other]\n"
        f'fingerprint = "{FP}"\n'
        'address = "bad address"\n'
        "call = { mode = 'x' }\n"
    )
    assert [line.split(": ")[0:2] for line in errors_of(text)] == [
        ["/etc/wzp/wzp.toml line 7", "contacts.capture.address"],
        ["/etc/wzp/wzp.toml line 10", "contacts.other.address"],
        ["/etc/wzp/wzp.toml line 11", "contacts.other.call"],
    ]
    dotted = '\n\naudio.volume_db = "x"\ncall = { mode = 1, accept = 2 }\n'
    assert [e.split(": ")[0] for e in errors_of(dotted)] == [
        "/etc/wzp/wzp.toml line 3",
        "/etc/wzp/wzp.toml line 4",
        "/etc/wzp/wzp.toml line 4",
    ]


def test_line_falls_back_to_the_table_then_none(monkeypatch: pytest.MonkeyPatch) -> None:
    # keys in an array of inline tables have no recorded line: the key holding them does
    (err,) = errors_of("[call]\n\nlisten_hosts = [{a = 1}]\n")
    assert err.startswith("/etc/wzp/wzp.toml line 3: call.listen_hosts: item 1")

    def broken(text: str) -> dict[tuple[str, ...], int]:
        raise RuntimeError("locator bug")

    monkeypatch.setattr(config_mod, "_walk_keys", broken)
    assert errors_of('[audio]\nvolume_db = "x"\n') == [
        '/etc/wzp/wzp.toml: audio.volume_db: must be a number between -40 and 20, got "x"'
    ]


# ----------------------------------------------------------------------------- overlay


def test_overlay_overrides_keys_and_merges_contacts(tmp_path: Path) -> None:
    etc = tmp_path / "wzp.toml"
    overlay = tmp_path / "boot.toml"
    etc.write_text(
        '[audio]\nvolume_db = -3\ncapture = "hw:CARD=A"\n[call]\nmode = "full-duplex"\n'
        'default_contact = "carol"\n'
        + _contact("alice", FP, "alice.local")
        + _contact("bob", FP, "bob.local")
    )
    overlay.write_text(
        "[audio]\nvolume_db = 6\n"
        + _contact("bob", FP2, "[::1]:7000")
        + _contact("carol", FP2, "carol.local")
    )
    cfg = load_config(etc, overlay)
    assert cfg.volume_db == 6.0
    assert cfg.audio_capture == "hw:CARD=A"
    assert cfg.mode == "full-duplex"
    assert sorted(cfg.contacts) == ["alice", "bob", "carol"]
    assert cfg.contacts["bob"].address == "[::1]:7000"
    assert cfg.contacts["alice"].address == "alice.local:4433"
    assert cfg.default_contact == "carol"
    assert cfg.sources == (etc, overlay)
    # without the overlay carol is missing: the error points at the etc file's line
    with pytest.raises(ConfigErrors, match=re.escape(f"{etc} line 6: call.default_contact")):
        load_config(etc)


def test_overlay_default_contact_error_points_at_the_overlay(tmp_path: Path) -> None:
    etc = tmp_path / "wzp.toml"
    overlay = tmp_path / "boot.toml"
    etc.write_text(_contact("alice", FP, "a"))
    overlay.write_text('\n[call]\ndefault_contact = "zed"\n')
    with pytest.raises(ConfigErrors, match=re.escape(f"{overlay} line 3: call.default_contact")):
        load_config(etc, overlay)


def test_errors_of_both_files_come_together(tmp_path: Path) -> None:
    etc = tmp_path / "wzp.toml"
    overlay = tmp_path / "boot.toml"
    etc.write_text("[audio]\nvolume_db = 50\n")
    overlay.write_text("[call]\nlisten_port = 0\n[resourcs]\n")
    with pytest.raises(ConfigErrors) as info:
        load_config(etc, overlay)
    assert [(e.path, e.line, e.key) for e in info.value.errors] == [
        (etc, 2, "audio.volume_db"),
        (overlay, 2, "call.listen_port"),
        (overlay, 3, "resourcs"),
    ]


# ----------------------------------------------------------------------------- fuzz


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_parse_raises_only_config_errors(text: str) -> None:
    try:
        parse_config(text, ETC)
    except ConfigError as exc:
        assert exc.errors and all(str(e) for e in exc.errors)


_keys = st.sampled_from(
    [k for keys in SCHEMA.values() for k in keys] + ["fingerprint", "address", "zz", "a b", "é"]
)
_tables = st.sampled_from([*SCHEMA, "contacts.alice", 'contacts."x y"', "contacts.b", "nope"])
_scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str),
    st.floats(allow_nan=True).map(repr),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(max_size=20).map(lambda s: __import__("json").dumps(s).replace("\x7f", "\\u007f")),
    st.sampled_from(['"auto"', '"::"', f'"{FP}"', '"h:1"', '"[::1]:2"', "1979-05-27T07:32:00Z"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.dictionaries(st.sampled_from(["a", "b", "mode"]), inner, max_size=2).map(
            lambda d: "{" + ", ".join(f"{k} = {v}" for k, v in d.items()) + "}"
        ),
    ),
    max_leaves=5,
)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else f'"{key}"'


_documents = st.lists(
    st.tuples(
        _tables,
        st.dictionaries(_keys, _values, max_size=4),
        st.sampled_from(["", "\n", "# c\n"]),
    ),
    max_size=5,
)


def _render(doc: list[tuple[str, dict[str, str], str]]) -> str:
    return "".join(
        f"[{table}]\n{pad}" + "".join(f"{_toml_key(k)} = {v}\n" for k, v in body.items())
        for table, body, pad in doc
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents)
def test_fuzz_structured_documents_every_error_has_a_line(
    doc: list[tuple[str, dict[str, str], str]],
) -> None:
    text = _render(doc)
    try:
        parse_config(text, ETC)
    except ConfigError as exc:
        for err in exc.errors:
            assert err.line is not None, str(err)
            assert 1 <= err.line <= text.count("\n") + 1


def _paths(doc: dict[str, object], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, value in doc.items():
        path = (*prefix, key)
        out.append(path)
        if isinstance(value, dict) and len(path) < 4:
            out.extend(_paths(value, path))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents)
def test_fuzz_key_lines_finds_every_key_tomllib_sees(
    doc: list[tuple[str, dict[str, str], str]],
) -> None:
    text = _render(doc)
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return
    lines = key_lines(text)
    for path in _paths(parsed):
        assert path in lines, (path, text)
        assert 1 <= lines[path] <= text.count("\n")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_bytes_read_as_config(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "wzp.toml"
    path.write_bytes(data)
    with contextlib.suppress(ConfigError):
        load_config(path)


# ----------------------------------------------------------------------------- boot file


@pytest.fixture
def boot(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(boot wzp.toml, /etc/wzp/wzp.toml, overlay) in a fake tree."""
    (tmp_path / "boot").mkdir()
    (tmp_path / "etc").mkdir()
    return (
        tmp_path / "boot" / "wzp.toml",
        tmp_path / "etc" / "wzp.toml",
        tmp_path / "etc" / "boot.toml",
    )


def test_find_boot_config(tmp_path: Path) -> None:
    firmware, old = tmp_path / "boot" / "firmware", tmp_path / "boot"
    assert find_boot_config((firmware, old)) is None
    old.mkdir()
    (old / "wzp.toml").write_text("")
    assert find_boot_config((firmware, old)) == old / "wzp.toml"
    firmware.mkdir()
    assert find_boot_config((firmware, old)) == old / "wzp.toml"
    (firmware / "wzp.toml").mkdir()  # a folder named wzp.toml is not a config
    assert find_boot_config((firmware, old)) == old / "wzp.toml"
    (firmware / "wzp.toml").rmdir()
    (firmware / "wzp.toml").write_text("")
    assert find_boot_config((firmware, old)) == firmware / "wzp.toml"
    assert (Path("/boot/firmware"), Path("/boot")) == BOOT_DIRS


def test_boot_apply_success(boot: tuple[Path, Path, Path]) -> None:
    boot_file, etc, overlay = boot
    etc.write_text(_contact("alice", FP, "a"))
    text = '[call]\ndefault_contact = "alice"\n[audio]\nvolume_db = -9\n'
    boot_file.write_text(text)
    result = apply_boot_config(boot_file, etc, overlay)
    applied = boot_file.with_name("wzp.toml.applied")
    assert result == BootResult(True, boot_file, applied, None)
    assert not boot_file.exists()
    assert applied.read_text() == text
    assert overlay.read_text() == text
    assert stat.S_IMODE(overlay.stat().st_mode) == 0o640
    assert sorted(p.name for p in overlay.parent.iterdir()) == ["boot.toml", "wzp.toml"]
    cfg = load_config(etc, overlay)
    assert (cfg.default_contact, cfg.volume_db) == ("alice", -9.0)
    assert find_boot_config([boot_file.parent]) is None


def test_boot_apply_is_idempotent_and_replaces_older_applied(boot: tuple[Path, Path, Path]) -> None:
    boot_file, etc, overlay = boot
    applied = boot_file.with_name("wzp.toml.applied")
    applied.write_text("# an older one\n")
    boot_file.write_text("[audio]\nvolume_db = 3\n")
    assert apply_boot_config(boot_file, etc, overlay).applied
    first = overlay.read_bytes()
    # the same file again (copied back by the user): same overlay, .applied replaced
    boot_file.write_text("[audio]\nvolume_db = 3\n")
    assert apply_boot_config(boot_file, etc, overlay).applied
    assert overlay.read_bytes() == first
    assert applied.read_text() == "[audio]\nvolume_db = 3\n"
    # nothing left to apply: nothing changes
    result = apply_boot_config(boot_file, etc, overlay)
    assert result == BootResult(False, boot_file, boot_file, f"{boot_file} does not exist")
    assert overlay.read_bytes() == first
    # a new file replaces the overlay whole (it is not merged with the previous one)
    boot_file.write_text('[call]\nmode = "full-duplex"\n')
    assert apply_boot_config(boot_file, etc, overlay).applied
    cfg = load_config(etc, overlay)
    assert (cfg.mode, cfg.volume_db) == ("full-duplex", 0.0)


def test_boot_apply_failure_keeps_overlay_and_annotates(boot: tuple[Path, Path, Path]) -> None:
    boot_file, etc, overlay = boot
    overlay.write_text("[audio]\nvolume_db = 1\n")
    original = '# from my laptop\n[audio]\nvolume_db = "loud"\n[call]\nlisten_port = 0\n'
    boot_file.write_text(original)
    result = apply_boot_config(boot_file, etc, overlay)
    error_file = boot_file.with_name("wzp.toml.error")
    assert not result.applied and result.renamed_to == error_file and result.source == boot_file
    assert not boot_file.exists()
    assert overlay.read_text() == "[audio]\nvolume_db = 1\n"
    content = error_file.read_text()
    header, body = content.split("\n", 3)[:3], content.split("\n", 3)[3]
    assert header == [
        "# wzp: this file was not applied; fix the lines below, then rename it wzp.toml",
        f"# wzp: {error_file} line 6: audio.volume_db: "
        'must be a number between -40 and 20, got "loud"',
        f"# wzp: {error_file} line 8: call.listen_port: must be a port number 1..65535, got 0",
    ]
    assert body == original
    lines = content.splitlines()
    assert lines[6 - 1] == 'volume_db = "loud"' and lines[8 - 1] == "listen_port = 0"
    assert result.error == "\n".join(h[len("# wzp: ") :] for h in header[1:])
    # the user fixes one line and tries again: the old notes are replaced, not stacked
    error_file.rename(boot_file)
    boot_file.write_text(boot_file.read_text().replace('"loud"', "-2"))
    result = apply_boot_config(boot_file, etc, overlay)
    content = error_file.read_text()
    assert content.count("# wzp:") == 2
    assert f"{error_file} line 7: call.listen_port" in content
    assert content.splitlines()[7 - 1] == "listen_port = 0"
    # fixed completely: applied, and the notes left in it are harmless comments
    error_file.rename(boot_file)
    boot_file.write_text(boot_file.read_text().replace("listen_port = 0", "listen_port = 5000"))
    assert apply_boot_config(boot_file, etc, overlay).applied
    assert load_config(etc, overlay).listen_port == 5000


def test_boot_apply_validates_with_the_etc_config(boot: tuple[Path, Path, Path]) -> None:
    boot_file, etc, overlay = boot
    # the etc file names a contact only the boot file defines: good together
    etc.write_text('[call]\ndefault_contact = "bob"\n')
    boot_file.write_text(_contact("bob", FP, "bob.local"))
    assert apply_boot_config(boot_file, etc, overlay).applied
    # a broken etc file refuses any boot file, and says where the problem is
    etc.write_text("[audio]\nvolume_db = 100\n")
    boot_file.write_text('[audio]\ncapture = "hw:CARD=X"\n')
    result = apply_boot_config(boot_file, etc, overlay)
    assert not result.applied
    assert (
        result.error
        == f"{etc} line 2: audio.volume_db: must be a number between -40 and 20, got 100"
    )
    assert overlay.read_text() == _contact("bob", FP, "bob.local")


def test_boot_apply_windows_file(boot: tuple[Path, Path, Path]) -> None:
    boot_file, etc, overlay = boot
    boot_file.write_bytes(b"\xef\xbb\xbf[audio]\r\nvolume_db = -4\r\n")
    assert apply_boot_config(boot_file, etc, overlay).applied
    assert load_config(etc, overlay).volume_db == -4.0
    boot_file.write_bytes(b"\xef\xbb\xbf[audio]\r\nvolume_db = 40\r\n")
    result = apply_boot_config(boot_file, etc, overlay)
    error_file = boot_file.with_name("wzp.toml.error")
    data = error_file.read_bytes()
    assert b"\xef\xbb\xbf" not in data
    assert data.endswith(b"[audio]\r\nvolume_db = 40\r\n")
    assert f"{error_file} line 4: audio.volume_db" in (result.error or "")
    assert data.decode().splitlines()[4 - 1] == "volume_db = 40"


def test_boot_apply_binary_and_huge_files(boot: tuple[Path, Path, Path]) -> None:
    boot_file, etc, overlay = boot
    garbage = b"[audio]\n\xff\xfe\x00junk"
    boot_file.write_bytes(garbage)
    result = apply_boot_config(boot_file, etc, overlay)
    error_file = boot_file.with_name("wzp.toml.error")
    assert not result.applied and result.renamed_to == error_file
    assert error_file.read_bytes().endswith(garbage)
    assert "not UTF-8" in (result.error or "")
    assert not overlay.exists()
    huge = b"#" * (MAX_CONFIG_BYTES + 10)
    boot_file.write_bytes(huge)
    result = apply_boot_config(boot_file, etc, overlay)
    assert not result.applied and result.renamed_to == error_file
    assert error_file.read_bytes() == huge  # renamed as it was
    assert "at most 1048576 bytes" in (result.error or "")


def test_boot_apply_tolerates_fat(
    boot: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    boot_file, etc, overlay = boot

    def no_chmod(*args: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(config_mod.os, "fchmod", no_chmod)
    monkeypatch.setattr(config_mod.os, "fchown", no_chmod)
    boot_file.write_text("[audio]\nvolume_db = 2\n")
    assert apply_boot_config(boot_file, etc, overlay).applied
    boot_file.write_text("[audio]\nvolume_db = 200\n")
    result = apply_boot_config(boot_file, etc, overlay)
    assert not result.applied and boot_file.with_name("wzp.toml.error").exists()


def test_boot_apply_cannot_write_overlay(boot: tuple[Path, Path, Path]) -> None:
    boot_file, etc, overlay = boot
    blocked = overlay.parent / "blocked"
    blocked.write_text("a file where a folder should be")
    boot_file.write_text("[audio]\nvolume_db = 2\n")
    result = apply_boot_config(boot_file, etc, blocked / "boot.toml")
    assert not result.applied
    assert result.renamed_to == boot_file.with_name("wzp.toml.error")
    assert "cannot write" in (result.error or "")
    assert result.renamed_to.read_text().endswith("[audio]\nvolume_db = 2\n")


def test_boot_apply_cannot_rename(
    boot: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    boot_file, etc, overlay = boot
    real_replace = os.replace

    def replace(src: object, dst: object) -> None:
        if Path(str(src)) == boot_file:
            raise OSError(30, "Read-only file system")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(config_mod.os, "replace", replace)
    boot_file.write_text("[audio]\nvolume_db = 2\n")
    result = apply_boot_config(boot_file, etc, overlay)
    assert result.applied and result.renamed_to == boot_file
    assert "cannot rename" in (result.error or "")
    assert load_config(etc, overlay).volume_db == 2.0

    # refusing a file on a read-only boot partition: the file stays, the reason is returned
    def unlink(*args: object, **kwargs: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(config_mod.os, "unlink", unlink)
    boot_file.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    result = apply_boot_config(boot_file, etc, overlay)
    assert not result.applied and result.renamed_to == boot_file
    assert "cannot rename" in (result.error or "")
    boot_file.write_text("[audio]\nvolume_db = 99\n")
    result = apply_boot_config(boot_file, etc, overlay)
    assert not result.applied and result.renamed_to == boot_file
    assert (result.error or "").endswith(f"cannot remove {boot_file}: Read-only file system")
    assert boot_file.read_text() == "[audio]\nvolume_db = 99\n"
    assert load_config(etc, overlay).volume_db == 2.0


def test_boot_apply_cannot_write_error_file(
    boot: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    boot_file, etc, overlay = boot

    def mkstemp(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(config_mod.tempfile, "mkstemp", mkstemp)
    boot_file.write_text("[audio]\nvolume_db = 99\n")
    result = apply_boot_config(boot_file, etc, overlay)
    assert not result.applied and result.renamed_to == boot_file
    assert (result.error or "").endswith("No space left on device")
    assert boot_file.read_text() == "[audio]\nvolume_db = 99\n"


# ----------------------------------------------------------------------------- atomic write


def test_write_file_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "sub" / "f.toml"
    write_file_atomic(target, b"one", 0o640, group_of=tmp_path)
    assert target.read_bytes() == b"one"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert target.stat().st_gid == tmp_path.stat().st_gid
    write_file_atomic(target, b"two")
    assert target.read_bytes() == b"two"

    def fail(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(config_mod.os, "fsync", fail)
    with pytest.raises(OSError, match="No space"):
        write_file_atomic(target, b"three")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.toml"]


def test_read_config_text(tmp_path: Path) -> None:
    assert read_config_text(tmp_path / "none") is None
    (tmp_path / "a").write_bytes(b"\xef\xbb\xbfx = 1\n")
    assert read_config_text(tmp_path / "a") == "x = 1\n"


def test_relay_settings_and_contacts_reached_through_the_room(tmp_path: Path) -> None:
    relay_fp = "aaaa:bbbb:cccc:dddd:eeee:ffff:0000:1111"
    path = tmp_path / "wzp.toml"
    path.write_text(
        f'[relay]\naddress = "relay.example.net:4433"\nfingerprint = "{relay_fp}"\n'
        f'room = "porch"\n\n[contacts.bob]\nfingerprint = "{FP}"\n'
    )
    cfg = load_config(path)
    assert cfg.relay_address == ("relay.example.net", 4433) and cfg.relay_room == "porch"
    assert cfg.relay_fingerprint == bytes.fromhex(relay_fp.replace(":", ""))
    bob = cfg.contacts["bob"]
    assert not bob.direct and bob.address == "relay room"
    assert Config.default().relay_address is None
    # all three keys or none, each checked
    path.write_text('[relay]\naddress = "relay.example.net"\nroom = "Porch!"\n')
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    text = str(info.value)
    assert "line 3: relay.room: must be 1-63 characters" in text
    path.write_text('[relay]\naddress = "relay.example.net"\n')
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    assert "relay.fingerprint: missing: a relay needs address, fingerprint and room" in str(
        info.value
    )
