"""wzp.relay.config: /etc/wzp/relay.toml, checked with errors naming the key and line."""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path

import pytest

import wzp.relay
from wzp.crypto.identity import Identity
from wzp.daemon.config import key_lines
from wzp.relay.config import (
    DEFAULT_CONTROL_SOCKET,
    DEFAULT_IDENTITY,
    ROOM_KEYS,
    TOP_KEYS,
    ConfigErrors,
    RelayConfig,
    check_config,
    load_config,
    parse_config,
)

FP_A = Identity.from_seed(bytes([1]) * 32).fingerprint
FP_B = Identity.from_seed(bytes([2]) * 32).fingerprint
TEMPLATE = Path(wzp.relay.__file__).parent / "relay.toml.template"


def _errors(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigErrors) as info:
        parse_config(text, Path("relay.toml"))
    return [(e.line, e.key, e.message) for e in info.value.errors]


def test_empty_file_gives_the_defaults() -> None:
    cfg = parse_config("")
    assert cfg == RelayConfig()
    assert cfg.listen == ("0.0.0.0", "::")  # both families, explicitly
    assert cfg.port == 4433
    assert cfg.identity == DEFAULT_IDENTITY == Path("/var/lib/wzp-relay/identity.seed")
    assert cfg.control_socket == DEFAULT_CONTROL_SOCKET
    assert cfg.open_rooms is False and dict(cfg.rooms) == {}
    assert cfg.metrics is None and cfg.max_pending == 64


def test_full_config() -> None:
    text = f"""
listen = ["127.0.0.1", "::1"]
port = 5000
identity = "/srv/relay/id.seed"
control_socket = "/run/r/c.sock"
open_rooms = true
max_pending = 10
metrics = "127.0.0.1:9464"

[rooms.porch]
allow = ["{FP_A.hex()}", "{Identity.from_seed(bytes([2]) * 32).fingerprint_text}"]
max_members = 3
push_to_talk = true
max_floor_s = 90.5

[rooms.lobby-2]
allow = "open"
"""
    cfg = parse_config(text)
    assert cfg.listen == ("127.0.0.1", "::1") and cfg.port == 5000
    assert cfg.identity == Path("/srv/relay/id.seed")
    assert cfg.control_socket == Path("/run/r/c.sock")
    assert cfg.open_rooms is True
    assert cfg.max_pending == 10 and cfg.metrics == ("127.0.0.1", 9464)
    porch = cfg.rooms["porch"]
    assert porch.allow == frozenset({FP_A, FP_B})
    assert porch.max_members == 3 and porch.push_to_talk and porch.max_floor_s == 90.5
    lobby = cfg.rooms["lobby-2"]
    assert lobby.is_open and lobby.max_members == 8 and not lobby.push_to_talk
    assert lobby.max_floor_s == 60.0


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        ('port = "4433"', 1, "port", "port number"),
        ("port = 0", 1, "port", "port number"),
        ('\n\nlisten = ["0.0.0.0", "localhost"]', 3, "listen", "item 2 is not an IP address"),
        ("listen = []", 1, "listen", "non-empty"),
        ('listen = ["::", "0::0"]', 1, "listen", "repeats"),
        ('identity = "relative/seed"', 1, "identity", "absolute path"),
        (f'control_socket = "/{"x" * 120}"', 1, "control_socket", "too long"),
        ('open_rooms = "yes"', 1, "open_rooms", "true or false"),
        ("max_pending = 0", 1, "max_pending", "1..65535"),
        ("max_pending = true", 1, "max_pending", "1..65535"),
        ('max_pending = "64"', 1, "max_pending", "1..65535"),
        ("metric = 1", 1, "metric", "did you mean metrics?"),
        ("prot = 1", 1, "prot", "did you mean port?"),
        ('allow = "open"', 1, "allow", "[rooms.NAME]"),
        ("rooms = 3", 1, "rooms", "[rooms.NAME]"),
        ('[rooms.Porch]\nallow = "open"', 1, "rooms.Porch", "a-z, 0-9"),
        ('[rooms.porch]\nallow = "opne"', 2, "rooms.porch.allow", '"open" or an array'),
        ("[rooms.porch]\nallow = []", 2, "rooms.porch.allow", "nobody could join"),
        ('[rooms.porch]\nallow = ["abcd"]', 2, "rooms.porch.allow", "item 1 must be a fing"),
        ("[rooms.porch]\nmax_members = 2", 1, "rooms.porch.allow", "missing"),
        ('[rooms.porch]\nallow = "open"\nmax_members = 0', 3, "rooms.porch.max_members", "1..255"),
        ('[rooms.porch]\nallow = "open"\nmax_members = 256', 3, "rooms.porch.max_members", ""),
        ('[rooms.porch]\nallow = "open"\npush_to_talk = 1', 3, "rooms.porch.push_to_talk", "true"),
        ('[rooms.porch]\nallow = "open"\nmax_floor_s = -1', 3, "rooms.porch.max_floor_s", "3600"),
        ('[rooms.porch]\nallow = "open"\nmax_floor_s = nan', 3, "rooms.porch.max_floor_s", "0.."),
        ('[rooms.porch]\nallow = "open"\nmax_floor_s = "60"', 3, "rooms.porch.max_floor_s", ""),
        (
            '[rooms.porch]\nallow = "open"\nmax_member = 2',
            3,
            "rooms.porch.max_member",
            "max_members",
        ),
        ("port = ", None, "", "TOML syntax error"),
    ],
)
def test_bad_values_name_the_key_and_line(
    text: str, line: int | None, key: str, fragment: str
) -> None:
    errors = _errors(text)
    assert len(errors) == 1, errors
    got_line, got_key, message = errors[0]
    assert (got_line, got_key) == (line, key)
    assert fragment in message


def test_every_problem_is_reported_at_once_in_line_order() -> None:
    text = 'port = 70000\nopen_rooms = 1\n[rooms.a]\nallow = "x"\n[rooms.B]\nallow = "open"\n'
    errors = _errors(text)
    assert [(line, key) for line, key, _ in errors] == [
        (1, "port"),
        (2, "open_rooms"),
        (4, "rooms.a.allow"),
        (5, "rooms.B"),
    ]
    with pytest.raises(ConfigErrors) as info:
        parse_config(text, Path("relay.toml"))
    assert str(info.value).splitlines()[0].startswith("relay.toml line 1: port: ")


def test_load_and_check_config(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('listen = ["127.0.0.1"]\n[rooms.porch]\nallow = "open"\n')
    assert load_config(path).source == path
    summary = check_config(path)
    assert "configuration OK" in summary and "porch" in summary and "127.0.0.1:4433" in summary
    assert summary.endswith("metrics off")
    path.write_text('metrics = "[::1]:9464"\n')
    assert check_config(path).endswith("metrics http://[::1]:9464/metrics")
    with pytest.raises(ConfigErrors, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    path.write_bytes(b"port = 1\xff")
    with pytest.raises(ConfigErrors, match="not UTF-8"):
        load_config(path)
    path.write_bytes(b"\xef\xbb\xbfport = 4434\n")  # a BOM from a Windows editor
    assert load_config(path).port == 4434


# ----------------------------------------------------------------------------- template
# install.sh copies relay.toml.template to /etc/wzp/relay.toml when that file is absent.


def _uncomment(text: str) -> str:
    return re.sub(r"(?m)^# (\[[a-z.]+\]|[a-z_]+ = )", r"\1", text)


def test_template_is_shipped_and_parses_to_the_defaults() -> None:
    shipped = resources.files("wzp.relay").joinpath("relay.toml.template")
    assert shipped.read_text("utf-8") == TEMPLATE.read_text("utf-8")
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert "relay/relay.toml.template" in pyproject["tool"]["setuptools"]["package-data"]["wzp"]
    assert load_config(TEMPLATE) == RelayConfig(source=TEMPLATE)
    assert "configuration OK" in check_config(TEMPLATE)


def test_template_lists_every_key_with_its_true_default() -> None:
    """Uncommenting every key changes nothing but the example room."""
    text = _uncomment(TEMPLATE.read_text("utf-8"))
    lines = key_lines(text)
    for key in TOP_KEYS:
        if key != "rooms":
            assert (key,) in lines, f"{key} is missing from the template"
    for key in ROOM_KEYS:
        assert ("rooms", "porch", key) in lines, f"rooms.porch.{key} is missing"
    cfg = parse_config(text)
    assert set(cfg.rooms) == {"porch"}
    porch = cfg.rooms["porch"]
    assert not porch.is_open and len(porch.allow or ()) == 2
    assert (porch.max_members, porch.push_to_talk, porch.max_floor_s) == (8, False, 60.0)
    assert RelayConfig(**{**cfg.__dict__, "rooms": {}}) == RelayConfig()


def test_template_explains_each_key_and_the_fingerprint() -> None:
    text = TEMPLATE.read_text("utf-8")
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"# [a-z_]+ = ", line):
            assert lines[i - 1].startswith("# ") and " = " not in lines[i - 1], line
    assert "`wzp relay` prints this relay's fingerprint" in text
    assert "handsets pin" in text.lower()
