"""Start-up failures of the daemons (`wzp run`, `wzp relay`) in words, with the exit
status that tells systemd whether a restart can help (78: it cannot; the units say
RestartPreventExitStatus=78)."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable

#: the exit status of a start-up problem that needs a person (the config, the identity):
#: sysexits EX_CONFIG; the units do not restart on it
EXIT_CONFIG = 78

#: errors with the identity's folder that a restart cannot fix (a full disk or an I/O
#: error may pass; these need someone to change the file system or the configuration)
_LASTING_ERRNOS = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EEXIST,
        errno.ELOOP,
        errno.ENAMETOOLONG,
    }
)


def identity_problem(exc: Exception) -> tuple[str, int]:
    """What to print for an identity that cannot be loaded or created, and the exit status.

    A seed file refused (mode, size, unreadable: ``SeedFileError``) or a folder where it
    cannot be created exits :data:`EXIT_CONFIG`, so that systemd does not restart it
    every 2 s forever (RestartPreventExitStatus=78); other errors exit 1 (restarted).
    """
    from .identity_store import SeedFileError

    if isinstance(exc, SeedFileError):
        return str(exc), EXIT_CONFIG
    if isinstance(exc, OSError):
        text = f"cannot create it: {exc.strerror or exc}"
        return text, EXIT_CONFIG if exc.errno in _LASTING_ERRNOS else 1
    return str(exc), 1


def listen_error(exc: OSError, hosts: Iterable[str], port: int, who: str) -> str | None:
    """``exc`` from binding the UDP listening sockets as a sentence naming the protocol,
    port and address (``who`` is the usual other user of the port); None when ``exc``
    is not a bind error or no address fails again."""
    if port == 0 or exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
        return None
    for host in hosts:
        err = _udp_bind_error(host, port)
        if err is None:
            continue
        if err.errno == errno.EADDRINUSE:
            return f"UDP port {port} on {host} is in use ({who}, or another program)"
        if err.errno == errno.EADDRNOTAVAIL:
            return f"cannot listen on UDP port {port} on {host}: this machine has no such address"
        return f"cannot listen on UDP port {port} on {host}: {err.strerror or err}"
    return None


def _udp_bind_error(host: str, port: int) -> OSError | None:
    """Why a UDP socket cannot be bound to ``(host, port)`` now (as ``wzp.net.quic`` binds
    its listening sockets: IPv6 ones IPv6-only), or None."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP) as s:
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(addr)
    except OSError as exc:
        return exc
    return None
