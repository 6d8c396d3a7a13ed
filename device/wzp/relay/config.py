"""The relay's configuration: ``/etc/wzp/relay.toml``.

Example::

    listen = ["0.0.0.0", "::"]        # one socket per address; IPv6 sockets are IPv6-only
    port = 4433
    identity = "/var/lib/wzp-relay/identity.seed"
    control_socket = "/run/wzp-relay/control.sock"
    metrics = ""                      # Prometheus /metrics at "IP:PORT", e.g.
                                      # "127.0.0.1:9464" or "[::1]:9464"; "" = off
    open_rooms = false                # true: a Join for an unknown room creates it (open,
                                      # 8 members, no push-to-talk); removed when empty
    max_pending = 64                  # connections not joined yet, at most; more are
                                      # refused with Error "busy" (counted)

    [rooms.porch]
    allow = ["0123:4567:89ab:cdef:0123:4567:89ab:cdef", "..."]   # or allow = "open"
    max_members = 8
    push_to_talk = false
    max_floor_s = 60                  # push-to-talk: longest hold of the floor (0: none)

Every top-level key is optional (defaults above). ``metrics`` is off by default: the
metrics name rooms and member fingerprints, so the operator chooses where they are
served (a loopback address for a local Prometheus or an SSH tunnel).

In ``[rooms.NAME]``, NAME follows SPEC 8.1 (1-63 characters of a-z, 0-9 and -), ``allow``
is required (a list of fingerprints, with or without colons, or ``"open"``),
``max_members`` is 1..255 (default 8), ``push_to_talk`` a boolean (default false),
``max_floor_s`` 0..3600 seconds (default 60; 0: no limit): in a push-to-talk room the
longest a member holds the floor at a time, after which the others get 3 s to take it. Every
problem is reported at once, each naming the file, the line and the key
(:class:`wzp.daemon.config.ConfigErrors`).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from wzp.daemon.config import (
    MAX_CONFIG_BYTES,
    ConfigError,
    ConfigErrors,
    check_fingerprint,
    key_lines,
)
from wzp.daemon.startup import EXIT_CONFIG  # the handset's, for the same unit setting

from .room import (
    DEFAULT_MAX_FLOOR_S,
    DEFAULT_MAX_MEMBERS,
    DEFAULT_MAX_PENDING,
    MAX_SLOT,
    RoomPolicy,
    valid_room_name,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_CONTROL_SOCKET",
    "DEFAULT_IDENTITY",
    "DEFAULT_LISTEN",
    "DEFAULT_PORT",
    "EXIT_CONFIG",
    "ConfigError",
    "ConfigErrors",
    "RelayConfig",
    "check_config",
    "load_config",
    "parse_config",
]

DEFAULT_CONFIG_PATH = Path("/etc/wzp/relay.toml")
DEFAULT_LISTEN = ("0.0.0.0", "::")
DEFAULT_PORT = 4433
DEFAULT_IDENTITY = Path("/var/lib/wzp-relay/identity.seed")
DEFAULT_CONTROL_SOCKET = Path("/run/wzp-relay/control.sock")
UNIX_SOCKET_MAX = 107  # sun_path holds 108 bytes including the final NUL

TOP_KEYS = (
    "listen",
    "port",
    "identity",
    "control_socket",
    "metrics",
    "open_rooms",
    "max_pending",
    "rooms",
)
MAX_PENDING_LIMIT = 65535
ROOM_KEYS = ("allow", "max_members", "push_to_talk", "max_floor_s")


@dataclass(frozen=True)
class RelayConfig:
    listen: tuple[str, ...] = DEFAULT_LISTEN
    port: int = DEFAULT_PORT
    identity: Path = DEFAULT_IDENTITY
    control_socket: Path = DEFAULT_CONTROL_SOCKET
    metrics: tuple[str, int] | None = None
    """``(IP, port)`` of the Prometheus endpoint, or ``None`` (off)."""
    open_rooms: bool = False
    max_pending: int = DEFAULT_MAX_PENDING
    rooms: Mapping[str, RoomPolicy] = field(default_factory=dict)
    source: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "rooms", MappingProxyType(dict(self.rooms)))


def _show(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 48 else value[:45] + "...")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value) if abs(value) < 10**30 else "a huge number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a date/time ({value})"


# --------------------------------------------------------------------------- validators


def _listen(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(
            f'must be a non-empty array of IP addresses like ["0.0.0.0", "::"], got {_show(value)}'
        )
    hosts: list[str] = []
    for index, item in enumerate(value, 1):
        if not isinstance(item, str):
            raise ValueError(f"item {index} must be a string, got {_show(item)}")
        try:
            text = str(ipaddress.ip_address(item))
        except ValueError:
            raise ValueError(f"item {index} is not an IP address: {_show(item)}") from None
        if text in hosts:
            raise ValueError(f"item {index} repeats {_show(item)}")
        hosts.append(text)
    return tuple(hosts)


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"must be a port number 1..65535, got {_show(value)}")
    return value


def _abs_path(value: object) -> Path:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"must be an absolute path (a string starting with /), got {_show(value)}")
    if any(not c.isprintable() for c in value):
        raise ValueError(f"must not contain control characters, got {_show(value)}")
    return Path(value)


def _socket_path(value: object) -> Path:
    path = _abs_path(value)
    if len(os.fsencode(path)) > UNIX_SOCKET_MAX:
        raise ValueError(f"is longer than {UNIX_SOCKET_MAX} bytes, too long for a Unix socket")
    return path


def _metrics(value: object) -> tuple[str, int] | None:
    if not isinstance(value, str):
        raise ValueError(
            f'must be a string like "127.0.0.1:9464" (or "" for off), got {_show(value)}'
        )
    if value == "":
        return None
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            host = "?"  # brackets are for IPv6 only
    elif ":" in host:
        host = "?"  # an IPv6 address needs brackets: "[::1]:9464"
    try:
        text = str(ipaddress.ip_address(host)) if sep else ""
    except ValueError:
        text = ""
    if not text or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(
            f'must be "IP:PORT" like "127.0.0.1:9464" or "[::1]:9464" (or "" for off), '
            f"got {_show(value)}"
        )
    return text, int(port)


def _max_pending(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PENDING_LIMIT:
        raise ValueError(f"must be a number 1..{MAX_PENDING_LIMIT}, got {_show(value)}")
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false (no quotes), got {_show(value)}")
    return value


def _allow(value: object) -> frozenset[bytes] | None:
    if value == "open":
        return None
    if not isinstance(value, list):
        raise ValueError(f'must be "open" or an array of fingerprints, got {_show(value)}')
    if not value:
        raise ValueError('is empty: nobody could join; list fingerprints or write "open"')
    fps: set[bytes] = set()
    for index, item in enumerate(value, 1):
        try:
            fps.add(check_fingerprint(item))
        except ValueError as exc:
            raise ValueError(f"item {index} {exc}") from None
    return frozenset(fps)


def _max_floor(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 3600:
        raise ValueError(f"must be a number of seconds 0..3600 (0: no limit), got {_show(value)}")
    return float(value)


def _max_members(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SLOT:
        raise ValueError(f"must be a number 1..{MAX_SLOT}, got {_show(value)}")
    return value


_TOP_CHECKS = {
    "listen": _listen,
    "port": _port,
    "identity": _abs_path,
    "control_socket": _socket_path,
    "metrics": _metrics,
    "open_rooms": _bool,
    "max_pending": _max_pending,
}


# --------------------------------------------------------------------------- parsing


class _Errors:
    def __init__(self, text: str, path: Path | None) -> None:
        self.path = path
        self.errors: list[ConfigError] = []
        try:
            self.lines = key_lines(text)
        except Exception:  # the locator is best effort: never hide the real error
            self.lines = {}

    def add(self, parts: tuple[str, ...], message: str) -> None:
        line = None
        for k in range(len(parts), 0, -1):
            line = self.lines.get(parts[:k])
            if line is not None:
                break
        key = ".".join(
            p if valid_room_name(p) or p.isidentifier() else json.dumps(p) for p in parts
        )
        self.errors.append(ConfigError(self.path, line, key, message))

    def unknown(self, parts: tuple[str, ...], allowed: tuple[str, ...]) -> None:
        close = difflib.get_close_matches(parts[-1], allowed, n=1)
        self.add(parts, "unknown key" + (f" (did you mean {close[0]}?)" if close else ""))


def _parse_room(errs: _Errors, name: str, table: object) -> RoomPolicy | None:
    where = ("rooms", name)
    ok = True
    if not valid_room_name(name):
        errs.add(where, "a room name is 1-63 characters of a-z, 0-9 and - (SPEC 8.1)")
        ok = False
    if not isinstance(table, dict):
        errs.add(where, f"must be a table ([rooms.{name}]), got {_show(table)}")
        return None
    values: dict[str, Any] = {}
    checks = {
        "allow": _allow,
        "max_members": _max_members,
        "push_to_talk": _bool,
        "max_floor_s": _max_floor,
    }
    for key, value in table.items():
        check = checks.get(key)
        if check is None:
            errs.unknown((*where, key), ROOM_KEYS)
            ok = False
            continue
        try:
            values[key] = check(value)
        except ValueError as exc:
            errs.add((*where, key), str(exc))
            ok = False
    if "allow" not in table:
        errs.add(
            (*where, "allow"),
            'missing: list the fingerprints that may join, or write allow = "open"',
        )
        ok = False
    if not ok:
        return None
    return RoomPolicy(
        allow=values["allow"],
        max_members=values.get("max_members", DEFAULT_MAX_MEMBERS),
        push_to_talk=values.get("push_to_talk", False),
        max_floor_s=values.get("max_floor_s", DEFAULT_MAX_FLOOR_S),
    )


def parse_config(text: str, path: Path | None = None) -> RelayConfig:
    """Check the text of a relay.toml. Raises :class:`ConfigErrors` listing every problem."""
    errs = _Errors(text, path)
    if len(text.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES:
        raise ConfigErrors([ConfigError(path, None, "", "is too big for a config file")])
    try:
        doc = tomllib.loads(text)
    except (ValueError, RecursionError) as exc:
        message = str(exc).replace("\n", " ")
        raise ConfigErrors([ConfigError(path, None, "", f"TOML syntax error: {message}")]) from None
    values: dict[str, Any] = {}
    rooms: dict[str, RoomPolicy] = {}
    for key, value in doc.items():
        if key == "rooms":
            if not isinstance(value, dict):
                errs.add(("rooms",), f"must hold [rooms.NAME] tables, got {_show(value)}")
                continue
            for name, table in value.items():
                policy = _parse_room(errs, name, table)
                if policy is not None:
                    rooms[name] = policy
            continue
        check = _TOP_CHECKS.get(key)
        if check is None:
            hint = " (room settings belong in [rooms.NAME])" if key in ROOM_KEYS else ""
            if hint:
                errs.add((key,), "unknown key" + hint)
            else:
                errs.unknown((key,), TOP_KEYS)
            continue
        try:
            values[key] = check(value)
        except ValueError as exc:
            errs.add((key,), str(exc))
    if errs.errors:
        raise ConfigErrors(sorted(errs.errors, key=lambda e: e.line or 0))
    return RelayConfig(**values, rooms=rooms, source=path)


def load_config(path: Path) -> RelayConfig:
    """Read and check ``path``. Raises :class:`ConfigErrors` (unreadable files included)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigErrors([ConfigError(path, None, "", f"cannot read: {exc.strerror}")]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigErrors([ConfigError(path, None, "", "is too big for a config file")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigErrors([ConfigError(path, None, "", f"not UTF-8 (byte {exc.start})")]) from None
    return parse_config(text.removeprefix("\ufeff"), path)


def check_config(path: Path) -> str:
    """``wzp relay --check-config``: a one-line summary, or :class:`ConfigErrors`."""
    cfg = load_config(path)
    names = ", ".join(sorted(cfg.rooms)) or "none"
    listen = ", ".join(f"[{h}]:{cfg.port}" if ":" in h else f"{h}:{cfg.port}" for h in cfg.listen)
    unknown = "created on join" if cfg.open_rooms else "refused"
    metrics = f"http://{_host_port(*cfg.metrics)}/metrics" if cfg.metrics else "off"
    return (
        f"{path}: configuration OK; listen {listen}; rooms: {names}; other rooms {unknown}; "
        f"metrics {metrics}"
    )


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
