"""The daemon's configuration: /etc/wzp/wzp.toml, an overlay from the boot partition, defaults.

Every key is optional and every value is checked before the daemon starts: a bad value, an
unknown key or a TOML syntax error becomes a :class:`ConfigError` that names the file, the
line and the key, and all of them are reported together (:class:`ConfigErrors`), so a user
fixes everything in one go and the daemon never runs half-configured.

Layers, later wins: built-in defaults, ``/etc/wzp/wzp.toml``, then the overlay that
``wzp config apply-boot`` copies from a ``wzp.toml`` on the boot partition. ``[contacts.*]``
tables merge by name.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import logging
import math
import os
import re
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..crypto.identity import parse_fingerprint

log = logging.getLogger(__name__)

ETC_CONFIG = Path("/etc/wzp/wzp.toml")
# Written by apply_boot_config from the boot partition's wzp.toml; read after ETC_CONFIG.
OVERLAY = Path("/etc/wzp/boot.toml")
BOOT_DIRS = (Path("/boot/firmware"), Path("/boot"))
BOOT_NAME = "wzp.toml"
MAX_CONFIG_BYTES = 1 << 20
MAX_ERRORS = 50  # per file; more are counted, not listed
MAX_KEY_DEPTH = 16  # parts of the most deeply nested key
DEFAULT_PORT = 4433
CONTACT_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
PIN_FACTORIES = ("lgpio", "rpigpio", "mock")
MODES = ("half-duplex", "full-duplex")
ACCEPT_POLICIES = ("contacts", "anyone")
UNIX_SOCKET_MAX = 107  # sun_path holds 108 bytes including the final NUL

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_GROUP_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_PROFILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_ZONE_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_TOML_POS_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TOML_END_RE = re.compile(r"\s*\(at end of document\)$")
_UTF8_BOM = b"\xef\xbb\xbf"
_WZP_COMMENT = "# wzp: "


# --------------------------------------------------------------------------- errors


class ConfigError(ValueError):
    """One problem in one place: ``path line N: key: message``.

    ``errors`` is always a list of single errors (here: just this one), so callers can
    report ``for e in exc.errors`` whatever they caught. A ValueError, so code that
    treats bad input as ValueError handles it too.
    """

    def __init__(self, path: Path | None, line: int | None, key: str, message: str) -> None:
        self.path = path
        self.line = line
        self.key = key
        self.message = message
        self.errors: list[ConfigError] = [self]
        super().__init__(self._text())

    def _text(self) -> str:
        where = " ".join(
            part
            for part in (
                str(self.path) if self.path is not None else "",
                f"line {self.line}" if self.line is not None else "",
            )
            if part
        )
        parts = [p for p in (where, self.key, self.message) if p]
        return ": ".join(parts)

    def __str__(self) -> str:
        return self._text()


class ConfigErrors(ConfigError):
    """Several problems at once (at least one). ``str`` lists them one per line.

    ``path``, ``line``, ``key`` and ``message`` are those of the first error.
    """

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        flat = [single for e in errors for single in e.errors]
        if not flat:
            raise ValueError("ConfigErrors needs at least one error")
        first = flat[0]
        super().__init__(first.path, first.line, first.key, first.message)
        self.errors = flat

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Contact:
    """A peer the handset may call (and, with ``accept = "contacts"``, that may call it)."""

    name: str
    fingerprint: bytes
    host: str
    port: int

    @property
    def direct(self) -> bool:
        """Whether the contact has an address of its own (else: only through the relay)."""
        return bool(self.host)

    @property
    def address(self) -> str:
        """``host:port``, ``[v6]:port`` for an IPv6 address, or ``relay room`` for a
        contact reached only through the relay."""
        if not self.host:
            return "relay room"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Config:
    """The daemon's settings, all checked. ``sources`` (files read) is left out of ``==``."""

    identity_path: Path
    board_profile: str
    pin_factory: str
    gpio_chip: int | None
    audio_capture: str
    audio_playback: str
    volume_db: float
    mode: str
    default_contact: str | None
    listen_port: int
    listen_hosts: tuple[str, ...]
    accept: str
    auto_answer_s: float | None
    control_socket: Path
    control_group: str | None
    max_cpu_pct: float
    max_temp_c: float
    #: the relay room this handset joins at start ([relay]; None: no relay)
    relay_address: tuple[str, int] | None = None
    relay_fingerprint: bytes | None = None
    relay_room: str | None = None
    contacts: Mapping[str, Contact] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    sources: tuple[Path, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.contacts, MappingProxyType):
            object.__setattr__(self, "contacts", MappingProxyType(dict(self.contacts)))

    @classmethod
    def default(cls) -> Config:
        """Every key at its default: what a missing /etc/wzp/wzp.toml means."""
        fields = {k.field: k.check(k.default) for table in SCHEMA.values() for k in table.values()}
        return cls(**fields)


def _show(value: object) -> str:
    """A short, single-line rendering of a TOML value for error messages."""
    if isinstance(value, str):
        shown = value if len(value) <= 48 else value[:45] + "..."
        return json.dumps(shown)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        text = str(value) if abs(value) < 10**30 else "a huge integer"
        return text
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a date/time ({value})"


def _dotted(parts: Iterable[str]) -> str:
    """A key path as TOML writes it: bare parts plain, others quoted and escaped."""
    return ".".join(p if _BARE_KEY_RE.fullmatch(p) else json.dumps(p) for p in parts)


# --------------------------------------------------------------------------- validators
# Each takes the raw TOML value and returns the checked value or raises ValueError with a
# message a user can act on.


def _string(value: object, what: str = "a string") -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be {what}, got {_show(value)}")
    return value


def _printable(value: object, *, allow_empty: bool = False, max_len: int = 256) -> str:
    text = _string(value)
    if not text and not allow_empty:
        raise ValueError("must not be empty")
    if len(text) > max_len:
        raise ValueError(f"is longer than {max_len} characters")
    if any(not c.isprintable() for c in text):
        raise ValueError(f"must not contain control characters, got {_show(text)}")
    if text != text.strip():
        raise ValueError(f"has spaces at the start or end, got {_show(text)}")
    return text


def _abs_path(value: object) -> Path:
    text = _string(value, "a path (a string)")
    if not text:
        raise ValueError("must not be empty")
    if any(not c.isprintable() for c in text):
        raise ValueError(f"must not contain control characters, got {_show(text)}")
    if not text.startswith("/"):
        raise ValueError(f"must be an absolute path (starting with /), got {_show(text)}")
    return Path(text)


def _socket_path(value: object) -> Path:
    path = _abs_path(value)
    size = len(os.fsencode(path))
    if size > UNIX_SOCKET_MAX:
        raise ValueError(
            f"is {size} bytes long; a Unix socket path holds at most {UNIX_SOCKET_MAX}"
        )
    return path


def _choice(options: Sequence[str]) -> Callable[[object], str]:
    quoted = [json.dumps(o) for o in options]
    listed = " or ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 2 else quoted)

    def check(value: object) -> str:
        if isinstance(value, str) and value in options:
            return value
        hint = ""
        if isinstance(value, str):
            close = difflib.get_close_matches(value.lower(), options, n=1)
            if close:
                hint = f" (did you mean {json.dumps(close[0])}?)"
        raise ValueError(f"must be {listed}, got {_show(value)}{hint}")

    return check


def _number(lo: float, hi: float) -> Callable[[object], float]:
    def check(value: object) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not lo <= value <= hi  # also refuses nan
        ):
            raise ValueError(f"must be a number between {lo:g} and {hi:g}, got {_show(value)}")
        return float(value)

    return check


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"must be a port number 1..65535, got {_show(value)}")
    return value


def _gpio_chip(value: object) -> int | None:
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 63:
        hint = ""
        if isinstance(value, str):
            m = re.fullmatch(r"\s*(?:/dev/)?(?:gpiochip)?([0-9]{1,2})\s*", value)
            if m:
                hint = f" (write gpio_chip = {int(m.group(1))}, a number without quotes)"
        raise ValueError(f'must be "auto" or a chip number 0..63, got {_show(value)}{hint}')
    return value


def _profile(value: object) -> str:
    text = _printable(value)
    if "/" in text or text.endswith(".toml"):
        if not text.startswith("/"):
            raise ValueError(f"a profile file must be an absolute path, got {_show(text)}")
        if not text.endswith(".toml"):
            raise ValueError(f"a profile file ends in .toml, got {_show(text)}")
        return text
    if not _PROFILE_NAME_RE.fullmatch(text):
        raise ValueError(
            "must be a board profile name (letters, digits, '_', '-', '.') "
            f"or the absolute path of a .toml file, got {_show(text)}"
        )
    return text


def _optional_contact_name(value: object) -> str | None:
    if value == "":
        return None
    return check_contact_name(value)


def _optional_address(value: object) -> tuple[str, int] | None:
    return None if value == "" else parse_address(value)


def _optional_fingerprint(value: object) -> bytes | None:
    return None if value == "" else check_fingerprint(value)


_ROOM_RE = re.compile(r"[a-z0-9-]{1,63}")


def _optional_room(value: object) -> str | None:
    if value == "":
        return None
    if not isinstance(value, str) or not _ROOM_RE.fullmatch(value):
        raise ValueError(f"must be 1-63 characters of a-z, 0-9 and -, got {_show(value)}")
    return value


def _listen_hosts(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(
            f'must be an array of IP addresses like ["0.0.0.0", "::"], got {_show(value)}'
        )
    if not value:
        raise ValueError('must list at least one address (e.g. ["0.0.0.0", "::"])')
    if len(value) > 16:
        raise ValueError(f"lists {len(value)} addresses; at most 16")
    hosts: list[str] = []
    for index, item in enumerate(value, 1):
        if not isinstance(item, str):
            raise ValueError(f"item {index} must be a string, got {_show(item)}")
        try:
            ip = ipaddress.ip_address(item)
        except ValueError:
            hint = ""
            if item.startswith("[") and item.endswith("]"):
                hint = " (write it without brackets here)"
            raise ValueError(f"item {index} is not an IP address: {_show(item)}{hint}") from None
        text = str(ip)
        if text in hosts:
            raise ValueError(f"item {index} repeats {_show(item)}")
        hosts.append(text)
    return tuple(hosts)


def _auto_answer(value: object) -> float | None:
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (value == -1 or (value >= 0 and math.isfinite(value)))
    ):
        return None if value == -1 else float(value)
    raise ValueError(f"must be -1 (off) or a number of seconds >= 0, got {_show(value)}")


def _group(value: object) -> str | None:
    text = _string(value)
    if text == "":
        return None
    if not _GROUP_RE.fullmatch(text):
        raise ValueError(f'must be a group name (or "" for the daemon\'s own), got {_show(text)}')
    return text


def check_contact_name(value: object) -> str:
    """A contact name: 1-32 letters, digits, ``_`` or ``-``. Raises ValueError."""
    if isinstance(value, str) and CONTACT_NAME_RE.fullmatch(value):
        return value
    raise ValueError(f'a contact name is 1-32 letters, digits, "_" or "-", got {_show(value)}')


def check_fingerprint(value: object) -> bytes:
    """A peer's fingerprint as ``wzp.crypto.identity.parse_fingerprint`` reads it."""
    if isinstance(value, str):
        try:
            return parse_fingerprint(value)
        except ValueError:
            pass
    raise ValueError(
        "must be a fingerprint: 32 hex digits, optionally grouped by ':' "
        f"(as `wzp` prints it on the peer), got {_show(value)}"
    )


def _check_host(host: str) -> str:
    if not host:
        raise ValueError("has no host before the ':'")
    if all(c.isdigit() or c == "." for c in host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{_show(host)} is not a valid IPv4 address") from None
        return host
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in name.split(".")):
        raise ValueError(f"{_show(host)} is not a valid host name or IPv4 address")
    return host


def _port_text(text: str) -> int:
    if not _PORT_RE.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"port must be a number 1..65535, got {_show(text)}")
    return int(text)


def parse_address(value: object, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> (host, port). Raises ValueError."""
    if not isinstance(value, str):
        raise ValueError(f'must be a string like "host:port", got {_show(value)}')
    if not value:
        raise ValueError('is empty; write "host", "host:port" or "[IPv6]:port"')
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"must not contain spaces or control characters, got {_show(value)}")
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError(f'has "[" without a closing "]", got {_show(value)}')
        host, rest = value[1:end], value[end + 1 :]
        addr, _, zone = host.partition("%")
        try:
            ipaddress.IPv6Address(addr)
        except ValueError:
            raise ValueError(
                f"brackets hold an IPv6 address, and {_show(host)} is not one"
            ) from None
        if "%" in host and not _ZONE_RE.fullmatch(zone):
            raise ValueError(f"{_show(zone)} is not an interface name")
        if rest == "":
            return host, default_port
        if not rest.startswith(":"):
            raise ValueError(f'expected ":port" after "]", got {_show(rest)}')
        return host, _port_text(rest[1:])
    if value.count(":") > 1:
        try:
            ipaddress.IPv6Address(value.partition("%")[0])
        except ValueError:
            raise ValueError(
                f'has more than one ":"; an IPv6 address goes in brackets, '
                f'e.g. "[2001:db8::1]:{DEFAULT_PORT}", got {_show(value)}'
            ) from None
        raise ValueError(
            f"an IPv6 address needs brackets: write {_show(f'[{value}]:{default_port}')}, "
            f"got {_show(value)}"
        )
    host, sep, port = value.partition(":")
    return _check_host(host), (_port_text(port) if sep else default_port)


def make_contact(name: object, fingerprint: object, address: object) -> Contact:
    """A contact from user text, every field checked; raises ConfigErrors keyed
    ``name``, ``fingerprint``, ``address`` (all problems at once)."""
    errors: list[ConfigError] = []
    checked: dict[str, Any] = {}
    for key, check, value in (
        ("name", check_contact_name, name),
        ("fingerprint", check_fingerprint, fingerprint),
        ("address", parse_address, address),
    ):
        try:
            checked[key] = check(value)
        except ValueError as exc:
            errors.append(ConfigError(None, None, key, str(exc)))
    if errors:
        raise ConfigErrors(errors)
    host, port = checked["address"]
    return Contact(checked["name"], checked["fingerprint"], host, port)


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class _Key:
    field: str  # the Config attribute
    default: Any  # as written in TOML (and in the template)
    check: Callable[[Any], Any]


SCHEMA: dict[str, dict[str, _Key]] = {
    "identity": {
        "path": _Key("identity_path", "/var/lib/wzp/identity.seed", _abs_path),
    },
    "board": {
        "profile": _Key("board_profile", "breadboard", _profile),
        "pin_factory": _Key("pin_factory", "lgpio", _choice(PIN_FACTORIES)),
        "gpio_chip": _Key("gpio_chip", "auto", _gpio_chip),
    },
    "audio": {
        "capture": _Key("audio_capture", "auto", _printable),
        "playback": _Key("audio_playback", "auto", _printable),
        "volume_db": _Key("volume_db", 0.0, _number(-40, 20)),
    },
    "call": {
        "mode": _Key("mode", "half-duplex", _choice(MODES)),
        "default_contact": _Key("default_contact", "", _optional_contact_name),
        "listen_port": _Key("listen_port", DEFAULT_PORT, _port),
        "listen_hosts": _Key("listen_hosts", ["0.0.0.0", "::"], _listen_hosts),
        "accept": _Key("accept", "contacts", _choice(ACCEPT_POLICIES)),
        "auto_answer_s": _Key("auto_answer_s", -1.0, _auto_answer),
    },
    "control": {
        "socket": _Key("control_socket", "/run/wzp/control.sock", _socket_path),
        "group": _Key("control_group", "wzp", _group),
    },
    "resources": {
        "max_cpu_pct": _Key("max_cpu_pct", 70.0, _number(1, 400)),
        "max_temp_c": _Key("max_temp_c", 75.0, _number(40, 100)),
    },
    "relay": {
        "address": _Key("relay_address", "", _optional_address),
        "fingerprint": _Key("relay_fingerprint", "", _optional_fingerprint),
        "room": _Key("relay_room", "", _optional_room),
    },
}
RELAY_KEYS = ("address", "fingerprint", "room")
CONTACT_KEYS = ("fingerprint", "address")


def _suggest(table: str | None, key: str) -> str:
    """`` (did you mean ...?)`` for an unknown key, or ``""``."""
    if table is None:
        close = difflib.get_close_matches(key, [*SCHEMA, "contacts"], n=1)
        if close:
            return f" (did you mean [{close[0]}]?)"
        leaves = {k: t for t, keys in SCHEMA.items() for k in keys}
        match = (
            key
            if key in leaves
            else next(iter(difflib.get_close_matches(key, list(leaves), n=1)), None)
        )
        if match:
            return f" (did you mean {leaves[match]}.{match}? keys go under their [table])"
        return ""
    keys = list(CONTACT_KEYS) if table == "contacts" else list(SCHEMA.get(table, {}))
    close = difflib.get_close_matches(key, keys, n=1)
    if close:
        return f" (did you mean {close[0]}?)"
    if table == "contacts":
        return ' (write address = "host:port")' if key in ("host", "port") else ""
    owners = [t for t, k in SCHEMA.items() if key in k]
    return f" (it belongs in [{owners[0]}])" if owners else ""


# --------------------------------------------------------------------------- key lines

_TOKEN_RE = re.compile(
    r"""(?P<nl>\n)
    |(?P<ws>[ \t\r]+)
    |(?P<comment>\#[^\n]*)
    |(?P<mlb>\"\"\"(?:[^"\\]|\\[\s\S]|"(?!""))*\"{3,5})
    |(?P<mll>'''(?:[^']|'(?!''))*'{3,5})
    |(?P<basic>"(?:[^"\\\n]|\\.)*")
    |(?P<literal>'[^'\n]*')
    |(?P<punct>[\[\]{},=])
    |(?P<word>[^\s\#\[\]{},="']+)
    """,
    re.VERBOSE,
)
_ESCAPE_RE = re.compile(r"\\(u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", "e": "\x1b"}


def _unescape(body: str) -> str:
    def one(m: re.Match[str]) -> str:
        esc = m.group(1)
        if esc[0] in "uU" and len(esc) > 1:
            try:
                return chr(int(esc[1:], 16))
            except (ValueError, OverflowError):
                return m.group(0)
        return _ESCAPES.get(esc, esc)

    return _ESCAPE_RE.sub(one, body)


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, value, line) for TOML text that tomllib already accepted. kind: nl, s, p, w."""
    out: list[tuple[str, str, int]] = []
    pos, line, end = 0, 1, len(text)
    while pos < end:
        m = _TOKEN_RE.match(text, pos)
        if m is None:  # not expected for valid TOML; skip one character
            pos += 1
            continue
        kind, tok = m.lastgroup, m.group()
        if kind == "nl":
            out.append(("nl", "", line))
        elif kind == "basic":
            out.append(("s", _unescape(tok[1:-1]), line))
        elif kind == "literal":
            out.append(("s", tok[1:-1], line))
        elif kind in ("mlb", "mll"):
            out.append(("s", "", line))
        elif kind == "punct":
            out.append(("p", tok, line))
        elif kind == "word":
            out.append(("w", tok, line))
        line += tok.count("\n") if kind != "nl" else 1
        pos = m.end()
    return out


def _read_key(toks: list[tuple[str, str, int]], i: int, stop: str) -> tuple[list[str], int, int]:
    """Key parts from ``toks[i]`` up to ``stop``: (parts, index after ``stop``, depth), where
    depth is 1 + the dots seen (so garbage such as ``"" ""`` is not a deep key)."""
    parts: list[str] = []
    dots = 0
    while i < len(toks):
        kind, val, _ = toks[i]
        if kind == "nl" or (kind == "p" and val == stop):
            return parts, i + 1, dots + 1
        if kind == "s":
            parts.append(val)
        elif kind == "w":
            dots += val.count(".")
            parts.extend(p for p in val.split(".") if p)
        i += 1
    return parts, i, dots + 1


_KEEP_DEPTH = 4  # key paths are kept this deep (the schema's deepest key has 3 parts)


def _walk_keys(
    text: str, max_depth: int = MAX_KEY_DEPTH
) -> tuple[dict[tuple[str, ...], int], int, int]:
    """(lines, depth, line): lines as :func:`key_lines`; then the depth (dotted parts and
    inline tables) and line of the first key nested deeper than ``max_depth``, or 0, 0."""
    toks = _tokens(text)
    lines: dict[tuple[str, ...], int] = {}
    too_deep, too_deep_line = 0, 0

    def record(path: tuple[str, ...], depth: int, line: int) -> None:
        nonlocal too_deep, too_deep_line
        if depth > max_depth and not too_deep:
            too_deep, too_deep_line = depth, line
        for k in range(1, min(len(path), _KEEP_DEPTH) + 1):
            lines.setdefault(path[:k], line)

    # frames: [kind ("arr" | "tbl"), base path (None inside arrays), its depth, expecting_key]
    stack: list[tuple[str, tuple[str, ...] | None, int, bool]] = []
    table: tuple[str, ...] = ()
    table_depth = 0
    at_start = True
    i, n = 0, len(toks)

    def open_value(j: int, base: tuple[str, ...] | None, depth: int) -> int:
        """Push a frame if toks[j] opens an array or inline table; return the next index."""
        if j < n and toks[j][0] == "p":
            if toks[j][1] == "[":
                stack.append(("arr", None, depth, False))
                return j + 1
            if toks[j][1] == "{":
                stack.append(("tbl", base, depth, True))
                return j + 1
        return j + 1 if j < n and toks[j][0] != "nl" else j

    while i < n:
        kind, val, line = toks[i]
        if stack:
            frame, base, depth, expecting_key = stack[-1]
            if kind == "nl":
                i += 1
            elif frame == "arr":
                if kind == "p" and val == "]":
                    stack.pop()
                    i += 1
                elif kind == "p" and val in "[{":
                    i = open_value(i, None, depth)
                else:
                    i += 1
            elif kind == "p" and val == "}":
                stack.pop()
                i += 1
            elif expecting_key:
                parts, i, key_depth = _read_key(toks, i, "=")
                path = None if base is None else (base + tuple(parts[:_KEEP_DEPTH]))[:_KEEP_DEPTH]
                if path is not None:
                    record(path, depth + key_depth, line)
                stack[-1] = (frame, base, depth, False)
                i = open_value(i, path, depth + key_depth)
            else:
                if kind == "p" and val == ",":
                    stack[-1] = (frame, base, depth, True)
                i += 1
            continue
        if kind == "nl":
            at_start = True
            i += 1
            continue
        if not at_start:  # rest of a value (e.g. the time of a date-time)
            i += 1
            continue
        at_start = False
        if kind == "p" and val == "[":
            j = i + 1
            if j < n and toks[j][:2] == ("p", "["):
                j += 1
            parts, i, table_depth = _read_key(toks, j, "]")
            table = tuple(parts[:_KEEP_DEPTH])
            record(table, table_depth, line)
            continue
        parts, i, key_depth = _read_key(toks, i, "=")
        path = (table + tuple(parts[:_KEEP_DEPTH]))[:_KEEP_DEPTH]
        record(path, table_depth + key_depth, line)
        i = open_value(i, path, table_depth + key_depth)
    return lines, too_deep, too_deep_line


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """The line where each key path (and every prefix of it) is first written.

    Covers ``[table]`` and ``[[array]]`` headers, dotted keys and keys inside inline
    tables; paths are kept up to 4 parts deep. Linear in the text and iterative, so
    deep nesting cannot exhaust the stack. Best effort for text tomllib accepts.
    """
    return _walk_keys(text)[0]


# --------------------------------------------------------------------------- parsing


@dataclass
class _Layer:
    """One file's validated keys, its errors, and where its keys are written."""

    text: str
    path: Path | None
    values: dict[str, Any] = field(default_factory=dict)
    errors: list[ConfigError] = field(default_factory=list)
    dropped: int = 0  # errors past MAX_ERRORS, counted only
    contact_names: set[str] = field(default_factory=set)  # present, valid or not
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """Errors found so far, shown or not."""
        return len(self.errors) + self.dropped

    def line_of(self, parts: Sequence[str]) -> int | None:
        for k in range(len(parts), 0, -1):
            found = self.lines.get(tuple(parts[:k]))
            if found is not None:
                return found
        return None

    def error(self, parts: Sequence[str], message: str) -> None:
        if len(self.errors) >= MAX_ERRORS:
            self.dropped += 1
            return
        self.errors.append(ConfigError(self.path, self.line_of(parts), _dotted(parts), message))

    def unknown(self, parts: Sequence[str], table: str | None, allowed: Sequence[str]) -> None:
        """An unknown key, with a suggestion (computed only while errors are still shown)."""
        if len(self.errors) >= MAX_ERRORS:
            self.dropped += 1
            return
        key = parts[-1]
        if table is None and list(allowed) != [*SCHEMA, "contacts"]:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean [{close[0]}]?)" if close else ""
        else:
            hint = _suggest(table, key)
        self.error(parts, f"unknown key{hint}")

    def all_errors(self) -> list[ConfigError]:
        shown = sorted(self.errors, key=lambda e: e.line or 0)
        if self.dropped:
            more = f"{self.dropped} more problem{'s' if self.dropped > 1 else ''} not shown"
            shown.append(ConfigError(self.path, None, "", more))
        return shown


def _syntax_error(exc: ValueError, text: str, path: Path | None) -> ConfigError:
    message = str(exc)
    line: int | None = None
    m = _TOML_POS_RE.search(message)
    if m:
        line = int(m.group(1))
        message = message[: m.start()] + f" (column {m.group(2)})"
    else:
        m = _TOML_END_RE.search(message)
        if m:
            line = text.count("\n") + (0 if text.endswith("\n") else 1) or 1
            message = message[: m.start()] + " (at the end of the file)"
    message = message.replace("\n", " ")
    return ConfigError(path, line, "", f"TOML syntax error: {message}")


def _too_big(path: Path | None, size: int) -> ConfigError:
    return ConfigError(
        path,
        None,
        "",
        f"is {size} bytes; a config file is at most {MAX_CONFIG_BYTES} bytes "
        "(is this the right file?)",
    )


def _parse_layer(text: str, path: Path | None, tables: Sequence[str] | None = None) -> _Layer:
    """Check one file's text; ``tables`` limits the allowed top-level tables."""
    layer = _Layer(text, path)
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_CONFIG_BYTES:
        layer.errors.append(_too_big(path, size))
        return layer
    try:
        layer.lines, depth, depth_line = _walk_keys(text)
    except Exception:  # a locator bug must never hide the real error
        log.debug("cannot locate keys in %s", path, exc_info=True)
        depth, depth_line = 0, 0
    if depth:  # tomllib takes quadratic time on very long dotted keys
        layer.errors.append(
            ConfigError(
                path,
                depth_line,
                "",
                f"a key nested {depth} levels deep; wzp reads at most {MAX_KEY_DEPTH}",
            )
        )
        return layer
    try:
        doc = tomllib.loads(text)
    except RecursionError:
        layer.errors.append(ConfigError(path, None, "", "TOML nested too deeply"))
        return layer
    except ValueError as exc:  # tomllib.TOMLDecodeError and invalid dates
        layer.errors.append(_syntax_error(exc, text, path))
        return layer
    allowed = [*SCHEMA, "contacts"] if tables is None else list(tables)
    for name, value in doc.items():
        if name not in allowed:
            layer.unknown([name], None, allowed)
        elif name == "contacts":
            _parse_contacts(layer, value)
        elif not isinstance(value, dict):
            layer.error([name], f"must be a table ([{name}]), got {_show(value)}")
        else:
            _parse_table(layer, name, value)
    return layer


def _parse_table(layer: _Layer, name: str, table: dict[str, Any]) -> None:
    schema = SCHEMA[name]
    out: dict[str, Any] = {}
    for key, value in table.items():
        spec = schema.get(key)
        if spec is None:
            layer.unknown([name, key], name, list(schema))
            continue
        try:
            out[key] = spec.check(value)
        except ValueError as exc:
            layer.error([name, key], str(exc))
    layer.values[name] = out


def _parse_contacts(layer: _Layer, value: object) -> None:
    contacts: dict[str, Contact] = {}
    layer.values["contacts"] = contacts
    if not isinstance(value, dict):
        layer.error(["contacts"], f"must hold [contacts.NAME] tables, got {_show(value)}")
        return
    for name, entry in value.items():
        layer.contact_names.add(name)
        where = ["contacts", name]
        before = layer.count
        try:
            check_contact_name(name)
        except ValueError as exc:
            layer.error(where, str(exc))
        if not isinstance(entry, dict):
            layer.error(where, f"must be a table with fingerprint and address, got {_show(entry)}")
            continue
        checked: dict[str, Any] = {}
        for key, field_value in entry.items():
            if key not in CONTACT_KEYS:
                layer.unknown([*where, key], "contacts", CONTACT_KEYS)
                continue
            check = check_fingerprint if key == "fingerprint" else parse_address
            try:
                checked[key] = check(field_value)
            except ValueError as exc:
                layer.error([*where, key], str(exc))
        if "fingerprint" not in entry:
            layer.error([*where, "fingerprint"], "missing (a contact needs a fingerprint)")
        if layer.count == before:
            # no address: the contact is reached through the relay room only
            host, port = checked.get("address", ("", 0))
            contacts[name] = Contact(name, checked["fingerprint"], host, port)


def parse_config(text: str, path: Path | None = None) -> dict[str, Any]:
    """One config file's keys, each checked, as ``{table: {key: value}, "contacts": {...}}``.

    Only keys present in ``text`` appear; values are converted (paths to Path, ``"auto"``
    to None, ...). Cross-file rules (``default_contact`` names a contact) are checked by
    :func:`load_config`. Raises :class:`ConfigErrors` listing every problem.
    """
    layer = _parse_layer(text, path)
    if layer.errors or layer.dropped:
        raise ConfigErrors(layer.all_errors())
    return layer.values


def parse_contacts(text: str, path: Path | None = None) -> dict[str, Contact]:
    """A file holding only ``[contacts.NAME]`` tables. Raises :class:`ConfigErrors`."""
    layer = _parse_layer(text, path, tables=("contacts",))
    if layer.errors or layer.dropped:
        raise ConfigErrors(layer.all_errors())
    return dict(layer.values.get("contacts", {}))


def read_config_text(path: Path) -> str | None:
    """A config file's text, None if it does not exist. Refuses files over 1 MiB and
    text that is not UTF-8 (ConfigError). A leading UTF-8 BOM is dropped."""
    data = _read_limited(path)
    if data is None:
        return None
    return _decode(data, path)


def _read_limited(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ConfigError(path, None, "", "is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(path, None, "", f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        try:
            size = path.stat().st_size
        except OSError:
            size = len(data)
        raise _too_big(path, size)
    return data


def _decode(data: bytes, path: Path | None) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            path, line, "", f"is not UTF-8 text (bad byte at offset {exc.start})"
        ) from None


def _merge(layers: Sequence[_Layer], read_errors: list[ConfigError]) -> Config:
    """Defaults, then each layer in order; checks default_contact; raises ConfigErrors."""
    fields: dict[str, Any] = {}
    setter: dict[tuple[str, str], _Layer] = {}
    for table, keys in SCHEMA.items():
        for key, spec in keys.items():
            fields[spec.field] = spec.check(spec.default)
            for layer in layers:
                if key in layer.values.get(table, {}):
                    fields[spec.field] = layer.values[table][key]
                    setter[(table, key)] = layer
    contacts: dict[str, Contact] = {}
    present: set[str] = set()
    for layer in layers:
        contacts.update(layer.values.get("contacts", {}))
        present |= layer.contact_names
    wanted = fields["default_contact"]
    if wanted is not None and wanted not in present:
        names = sorted(present)
        close = difflib.get_close_matches(wanted, names, n=1)
        if close:
            hint = f"did you mean {close[0]}?"
        elif names:
            shown = ", ".join(_dotted([n]) for n in names[:10])
            hint = f"known: {shown}{', ...' if len(names) > 10 else ''}"
        else:
            hint = f"add a [contacts.{wanted}] table"
        setter[("call", "default_contact")].error(
            ["call", "default_contact"], f"no contact named {_show(wanted)} ({hint})"
        )
    relay = {k: fields[SCHEMA["relay"][k].field] for k in RELAY_KEYS}
    if any(v is not None for v in relay.values()) and not all(
        v is not None for v in relay.values()
    ):
        missing = [k for k, v in relay.items() if v is None]
        given = next(k for k, v in relay.items() if v is not None)
        layer = setter[("relay", given)]
        layer.error(
            ["relay", missing[0]],
            f"missing: a relay needs address, fingerprint and room (missing {', '.join(missing)})",
        )
    errors = read_errors + [e for layer in layers for e in layer.all_errors()]
    if errors:
        raise ConfigErrors(errors)
    return Config(**fields, contacts=contacts, sources=tuple(x.path for x in layers if x.path))


def _load_layers(paths: Sequence[Path | None]) -> tuple[list[_Layer], list[ConfigError]]:
    layers: list[_Layer] = []
    errors: list[ConfigError] = []
    for index, path in enumerate(paths):
        if path is None:
            continue
        try:
            text = read_config_text(path)
        except ConfigError as exc:
            errors.append(exc)
            continue
        if text is None:
            if index == 0:
                log.info("%s does not exist: using the built-in defaults", path)
            else:
                log.debug("no overlay at %s", path)
            continue
        log.info("reading %s", path)
        layers.append(_parse_layer(text, path))
    return layers, errors


def load_config(path: Path = ETC_CONFIG, overlay: Path | None = None) -> Config:
    """The daemon's configuration: defaults, ``path``, then ``overlay`` (either may be
    missing). Raises :class:`ConfigErrors` listing every problem in both files."""
    layers, errors = _load_layers([path, overlay])
    return _merge(layers, errors)


def render_template() -> str:
    """The commented configuration template (every key at its default)."""
    return resources.files(__package__).joinpath("wzp.toml.template").read_text("utf-8")


# --------------------------------------------------------------------------- files


def write_file_atomic(
    path: Path, data: bytes, mode: int = 0o640, group_of: Path | None = None
) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename).

    ``mode`` and the group of ``group_of`` (if given) are applied where the file system
    allows it: a FAT boot partition refuses chmod/chown, which is tolerated.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(fd, mode)
        except OSError:
            log.debug("cannot chmod %s (file system without modes?)", tmp)
        if group_of is not None:
            try:
                os.fchown(fd, -1, group_of.stat().st_gid)
            except OSError:
                log.debug("cannot give %s the group of %s", tmp, group_of)
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


@dataclass(frozen=True)
class BootResult:
    """What :func:`apply_boot_config` did with a boot-partition ``wzp.toml``."""

    applied: bool
    source: Path
    renamed_to: Path
    error: str | None


def find_boot_config(boot_dirs: Iterable[Path] = BOOT_DIRS) -> Path | None:
    """The first ``DIR/wzp.toml`` that exists among ``boot_dirs``."""
    for folder in boot_dirs:
        candidate = folder / BOOT_NAME
        if candidate.is_file():
            return candidate
    return None


def _strip_old_notes(data: bytes) -> tuple[bytes, int]:
    """Drop a BOM and the ``# wzp:`` lines an earlier failed apply put at the top."""
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    dropped = 0
    marker = _WZP_COMMENT.encode()
    while data.startswith(marker):
        cut = data.find(b"\n")
        data = b"" if cut < 0 else data[cut + 1 :]
        dropped += 1
    return data, dropped


def apply_boot_config(
    boot_file: Path, etc_config: Path = ETC_CONFIG, overlay: Path = OVERLAY
) -> BootResult:
    """Check ``boot_file`` together with ``etc_config``; if good, copy it to ``overlay``
    and rename it ``wzp.toml.applied``, else rename it ``wzp.toml.error`` with the reasons
    as ``# wzp:`` comments at its top (the overlay stays as it was). Never raises for the
    boot file's content or for file-system errors: they come back in ``error``."""
    applied_path = boot_file.with_name(boot_file.name + ".applied")
    error_path = boot_file.with_name(boot_file.name + ".error")
    errors: list[ConfigError] = []
    data: bytes | None = None
    try:
        data = _read_limited(boot_file)
        if data is None:
            return BootResult(False, boot_file, boot_file, f"{boot_file} does not exist")
    except ConfigError as exc:
        errors.append(exc)
    if data is not None:
        layers, errors = _load_layers([etc_config])
        try:
            layers.append(_parse_layer(_decode(data, boot_file), boot_file))
        except ConfigError as exc:
            errors.append(exc)
        try:
            _merge(layers, errors)
        except ConfigErrors as exc:
            errors = exc.errors
    if not errors and data is not None:
        try:
            write_file_atomic(overlay, data, 0o640, group_of=overlay.parent)
        except OSError as exc:
            errors.append(ConfigError(overlay, None, "", f"cannot write: {exc.strerror or exc}"))
        else:
            log.info("applied %s to %s", boot_file, overlay)
            try:
                os.replace(boot_file, applied_path)
            except OSError as exc:
                reason = f"applied, but cannot rename {boot_file}: {exc.strerror or exc}"
                log.warning("%s", reason)
                return BootResult(True, boot_file, boot_file, reason)
            return BootResult(True, boot_file, applied_path, None)
    return _reject_boot_file(boot_file, error_path, data, errors)


def _reject_boot_file(
    boot_file: Path, error_path: Path, data: bytes | None, errors: list[ConfigError]
) -> BootResult:
    intro = "this file was not applied; fix the lines below, then rename it wzp.toml"
    if data is None:  # unreadable or too big: rename only
        reason = "\n".join(str(e) for e in errors)
        try:
            os.replace(boot_file, error_path)
        except OSError as exc:
            reason += f"\ncannot rename {boot_file}: {exc.strerror or exc}"
            log.error("boot config not applied: %s", reason)
            return BootResult(False, boot_file, boot_file, reason)
        log.error("boot config not applied: %s", reason)
        return BootResult(False, boot_file, error_path, reason)
    body, dropped = _strip_old_notes(data)
    shift = 1 + len(errors) - dropped  # line numbers as they read in the .error file
    renumbered = [
        ConfigError(
            error_path,
            None if e.line is None else max(1, e.line + shift),
            e.key,
            e.message,
        )
        if e.path == boot_file
        else e
        for e in errors
    ]
    notes = [intro, *(str(e).replace("\n", " ") for e in renumbered)]
    header = "".join(f"{_WZP_COMMENT}{note}\n" for note in notes).encode("utf-8", "replace")
    reason = "\n".join(notes[1:])
    try:
        write_file_atomic(error_path, header + body, 0o640)
    except OSError as exc:
        reason += f"\ncannot write {error_path}: {exc.strerror or exc}"
        log.error("boot config not applied: %s", reason)
        return BootResult(False, boot_file, boot_file, reason)
    try:
        boot_file.unlink()
    except OSError as exc:
        reason += f"\ncannot remove {boot_file}: {exc.strerror or exc}"
        log.error("boot config not applied: %s", reason)
        return BootResult(False, boot_file, boot_file, reason)
    log.error("boot config not applied: %s", reason)
    return BootResult(False, boot_file, error_path, reason)
