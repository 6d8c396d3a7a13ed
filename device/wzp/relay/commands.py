"""``wzp relay [--config PATH] [--check-config | --status] [-v]``.

``wzp.cli`` calls :func:`add_relay_parser` with its subparsers. Without an option the relay
runs (systemd starts it so); ``--check-config`` checks the file and exits (78 when refused);
``--status`` asks the running relay over its control socket (the config's
``control_socket``) and prints its status as JSON: rooms, members with slot, alias and
fingerprint, and every counter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

#: the relay's config file (``wzp.relay.config.DEFAULT_CONFIG_PATH``; the config module is
#: imported only when a relay command runs, so that every other ``wzp`` command starts fast)
DEFAULT_CONFIG_PATH = Path("/etc/wzp/relay.toml")

#: ``--status`` when no relay answers (as ``systemctl status`` for a stopped unit)
EXIT_NOT_RUNNING = 3


def _status(path: Path) -> int:
    from wzp.daemon.control import ControlError, NotRunning, request

    from .config import DEFAULT_CONTROL_SOCKET, ConfigError, load_config

    try:
        sock = load_config(path).control_socket
    except ConfigError:
        sock = DEFAULT_CONTROL_SOCKET
    try:
        status = request(sock, "status")
    except NotRunning:
        print(f"wzp relay: the relay is not running (no answer on {sock})", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except (ControlError, OSError) as exc:
        print(f"wzp relay: {sock}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2))
    return 0


def cmd_relay(args: argparse.Namespace) -> int:
    from .config import EXIT_CONFIG, ConfigError, check_config

    path = Path(args.config)
    if args.check_config:
        try:
            print(check_config(path))
        except ConfigError as exc:
            print(f"wzp relay: configuration refused:\n{exc}", file=sys.stderr)
            return EXIT_CONFIG
        return 0
    if args.status:
        return _status(path)
    from wzp.daemon.commands import setup_logging

    from .server import run_relay

    setup_logging(args.verbose)
    return asyncio.run(run_relay(path))


def add_relay_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    relay = sub.add_parser(
        "relay",
        help="run a relay: handsets behind NAT meet in rooms (systemd starts it)",
        description="Forward media datagrams and routed signalling between the members of "
        "each room, never holding media keys. Prints the relay fingerprint that handsets "
        "pin.",
    )
    relay.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG_PATH),
        help="relay config file (default %(default)s)",
    )
    what = relay.add_mutually_exclusive_group()
    what.add_argument(
        "--check-config",
        action="store_true",
        help="check the config file and exit (78 when refused)",
    )
    what.add_argument(
        "--status",
        action="store_true",
        help="print the running relay's rooms, members and counters (JSON)",
    )
    relay.add_argument("-v", "--verbose", action="store_true")
    relay.set_defaults(func=cmd_relay)
    return relay
