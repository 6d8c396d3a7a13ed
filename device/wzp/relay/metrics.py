"""The relay's Prometheus ``/metrics`` (via ``prometheus-client``), off unless configured.

``metrics = "127.0.0.1:9464"`` in relay.toml turns it on (see :mod:`wzp.relay.config`).

* :class:`RelayCollector` is a custom collector: it reads the relay's own counters
  (:class:`wzp.relay.room.RelayCounters`) and rooms at scrape time; nothing is counted
  twice and the packet path does no Prometheus work.
* :class:`MetricsServer` serves ``GET /metrics`` from the relay's asyncio event loop, so
  the collector reads the live counters on the loop's own thread (a scrape from
  ``prometheus_client``'s threaded server could see a dict change size mid-iteration).
  A scrape is a few milliseconds of formatting; reading the request is bounded
  (:data:`MAX_REQUEST_BYTES`, :data:`REQUEST_TIMEOUT_S`) and so is the number of
  scrapers at once (:data:`MAX_CLIENTS`), so a slow or hostile client never holds the
  loop. The process metrics (CPU seconds, memory, open files) come from
  ``prometheus_client``'s ``ProcessCollector``.

Metrics (``_total`` are counters, the rest gauges; ``reason`` labels are the relay's
counter keys, e.g. ``not-a-member``, ``malformed``, ``wrong-stream``, ``not-floor-holder``
and, for copies a member's send buffer could not take, ``send-buffer-full``)::

    wzp_relay_rooms                              rooms the relay has now
    wzp_relay_members{room}                      members per room
    wzp_relay_pending_connections                connected, not yet joined
    wzp_relay_connections_total
    wzp_relay_joins_total
    wzp_relay_joins_refused_total{reason}        by the Error code sent
    wzp_relay_closed_before_join_total{reason}   join-first, join-timeout
    wzp_relay_leaves_total, wzp_relay_superseded_total
    wzp_relay_datagrams_received_total
    wzp_relay_datagrams_forwarded_total          received packets accepted for forwarding
    wzp_relay_forwarded_packets_total            copies sent (one per other member)
    wzp_relay_forwarded_bytes_total
    wzp_relay_dropped_packets_total{reason}
    wzp_relay_dropped_bytes_total{reason}
    wzp_relay_messages_received_total, wzp_relay_messages_forwarded_total
    wzp_relay_messages_dropped_total{reason}, wzp_relay_forged_from_total
    wzp_relay_floor_changes_total, wzp_relay_floor_timeouts_total,
    wzp_relay_send_errors_total
    wzp_relay_member_packets_total{room,slot,fingerprint}   (and _bytes_total, _dropped_total)
    wzp_relay_member_loss_ratio{room,slot,fingerprint}      from the member's last report
    wzp_relay_member_rtt_seconds{...}, wzp_relay_member_jitter_seconds{...}
    wzp_relay_member_report_age_seconds{...}

The ``member_*`` report gauges exist for members whose forwarded packets carried a
quality report (SPEC 1.3): the loss (before FEC), RTT and jitter that member measures
of what it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from wzp.crypto.identity import fingerprint_text

from .room import Relay

__all__ = [
    "MAX_CLIENTS",
    "MAX_REQUEST_BYTES",
    "REQUEST_TIMEOUT_S",
    "SEND_BUFFER_FULL",
    "MetricsServer",
    "RelayCollector",
    "make_registry",
]

log = logging.getLogger(__name__)

#: the ``reason`` label of copies dropped because a member's send buffer was full
SEND_BUFFER_FULL = "send-buffer-full"
MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT_S = 5.0
MAX_CLIENTS = 8

_MEMBER_LABELS = ("room", "slot", "fingerprint")


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _by_reason(name: str, doc: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=("reason",))
    for reason, value in sorted(values.items()):
        family.add_metric((reason,), value)
    return family


class RelayCollector(Collector):
    """Reads a :class:`Relay`'s counters and rooms at scrape time.

    Call :meth:`collect` on the thread that runs the relay (its event loop):
    :class:`MetricsServer` does.
    """

    def __init__(
        self,
        relay: Relay,
        *,
        clock: Callable[[], float] = time.monotonic,
        send_errors: Callable[[], int] = lambda: 0,
        handshakes: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self.relay = relay
        self._clock = clock
        self._send_errors = send_errors
        self._handshakes = handshakes

    def collect(self) -> Iterator[Metric]:
        relay = self.relay
        c = relay.counters
        yield GaugeMetricFamily(
            "wzp_relay_rooms", "Rooms the relay has now", value=len(relay.rooms)
        )
        members = GaugeMetricFamily("wzp_relay_members", "Members per room", labels=("room",))
        for name, room in sorted(relay.rooms.items()):
            members.add_metric((name,), len(room.members))
        yield members
        yield GaugeMetricFamily(
            "wzp_relay_pending_connections",
            "Connections that have not joined yet",
            value=relay.pending,
        )
        yield _counter("wzp_relay_connections", "Connections accepted", c.connections)
        yield _counter("wzp_relay_joins", "Joins accepted", c.joins)
        yield _by_reason("wzp_relay_joins_refused", "Joins refused, by Error code", c.joins_refused)
        yield _by_reason(
            "wzp_relay_closed_before_join",
            "Connections closed before a Join, by reason",
            c.closed_before_join,
        )
        yield _counter("wzp_relay_leaves", "Members that left", c.leaves)
        yield _counter(
            "wzp_relay_superseded", "Members whose old connection a new join replaced", c.superseded
        )
        yield _counter(
            "wzp_relay_datagrams_received", "Media datagrams received", c.datagrams_received
        )
        yield _counter(
            "wzp_relay_datagrams_forwarded",
            "Received media datagrams accepted for forwarding",
            c.datagrams_forwarded,
        )
        yield _counter(
            "wzp_relay_forwarded_packets",
            "Datagram copies sent to members (one per other member)",
            c.forwarded_copies - c.send_drops,
        )
        yield _counter(
            "wzp_relay_forwarded_bytes",
            "Bytes of the datagram copies sent to members",
            c.forwarded_bytes - c.send_drop_bytes,
        )
        yield _by_reason(
            "wzp_relay_dropped_packets",
            "Datagrams dropped, by reason",
            {**c.datagram_drops, SEND_BUFFER_FULL: c.send_drops},
        )
        yield _by_reason(
            "wzp_relay_dropped_bytes",
            "Bytes of the datagrams dropped, by reason",
            {**c.datagram_drop_bytes, SEND_BUFFER_FULL: c.send_drop_bytes},
        )
        yield _counter(
            "wzp_relay_messages_received", "Signalling messages received", c.messages_received
        )
        yield _counter(
            "wzp_relay_messages_forwarded",
            "Signalling messages routed to a member",
            c.messages_forwarded,
        )
        yield _by_reason(
            "wzp_relay_messages_dropped", "Signalling messages dropped, by reason", c.message_drops
        )
        yield _counter(
            "wzp_relay_forged_from",
            "Routed messages whose forged from was overwritten",
            c.forged_from,
        )
        yield _counter("wzp_relay_floor_changes", "Push-to-talk floor changes", c.floor_changes)
        yield _counter(
            "wzp_relay_floor_timeouts",
            "Push-to-talk floors freed because the holder reached max_floor_s",
            c.floor_timeouts,
        )
        yield _counter(
            "wzp_relay_send_errors", "Messages that could not be sent", self._send_errors()
        )
        hs = self._handshakes()
        yield GaugeMetricFamily(
            "wzp_relay_handshakes_in_progress",
            "QUIC handshakes started and not finished",
            value=hs.get("in_progress", 0),
        )
        yield _counter(
            "wzp_relay_retries",
            "New handshakes asked to prove their address first (too many in progress)",
            hs.get("retries", 0),
        )
        yield _counter(
            "wzp_relay_bad_retry_tokens", "Initials with a forged or stale Retry token",
            hs.get("bad_tokens", 0),
        )  # fmt: skip
        yield _counter(
            "wzp_relay_not_quic", "Datagrams without a QUIC header, dropped", hs.get("not_quic", 0)
        )
        yield from self._members()

    def _members(self) -> Iterator[Metric]:
        packets = CounterMetricFamily(
            "wzp_relay_member_packets", "Datagrams forwarded from the member", labels=_MEMBER_LABELS
        )
        sent = CounterMetricFamily(
            "wzp_relay_member_bytes", "Bytes forwarded from the member", labels=_MEMBER_LABELS
        )
        dropped = CounterMetricFamily(
            "wzp_relay_member_dropped", "Datagrams of the member dropped", labels=_MEMBER_LABELS
        )
        loss = GaugeMetricFamily(
            "wzp_relay_member_loss_ratio",
            "Loss before FEC the member reports (0-1), from its last quality report",
            labels=_MEMBER_LABELS,
        )
        rtt = GaugeMetricFamily(
            "wzp_relay_member_rtt_seconds",
            "Round-trip time the member reports, from its last quality report",
            labels=_MEMBER_LABELS,
        )
        jitter = GaugeMetricFamily(
            "wzp_relay_member_jitter_seconds",
            "Interarrival jitter the member reports, from its last quality report",
            labels=_MEMBER_LABELS,
        )
        age = GaugeMetricFamily(
            "wzp_relay_member_report_age_seconds",
            "Seconds since the member's last quality report",
            labels=_MEMBER_LABELS,
        )
        now = self._clock()
        for name, room in sorted(self.relay.rooms.items()):
            for slot, m in sorted(room.members.items()):
                labels = (name, str(slot), fingerprint_text(m.fingerprint))
                packets.add_metric(labels, m.packets)
                sent.add_metric(labels, m.bytes)
                dropped.add_metric(labels, m.dropped)
                if m.report is not None and m.report_at is not None:
                    loss.add_metric(labels, m.report.loss_percent / 100)
                    rtt.add_metric(labels, m.report.rtt_ms / 1000)
                    jitter.add_metric(labels, m.report.jitter_ms / 1000)
                    age.add_metric(labels, max(0.0, now - m.report_at))
        yield from (packets, sent, dropped, loss, rtt, jitter, age)


def make_registry(collector: Collector, *, process: bool = True) -> CollectorRegistry:
    """A registry of its own (never the global one) with ``collector`` and, when
    ``process``, the process metrics (``process_cpu_seconds_total``, memory...)."""
    registry = CollectorRegistry()
    registry.register(collector)
    if process:
        ProcessCollector(registry=registry)
    return registry


class MetricsServer:
    """``GET /metrics`` over HTTP/1.x on the running event loop. ``await start()``,
    then ``await close()``."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self.refused = 0
        """Connections closed at once because :data:`MAX_CLIENTS` were being served."""

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self._port, limit=MAX_REQUEST_BYTES
        )

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._clients):
            task.cancel()
        for task in list(self._clients):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # a plain callback: asyncio.start_server runs coroutines it gets as tasks of its own
        if len(self._clients) >= MAX_CLIENTS:
            self.refused += 1
            writer.close()
            return
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._clients.add(task)
        task.add_done_callback(self._clients.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
                status, ctype, body, is_head = self._respond(head)
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
                )
                if not is_head:
                    writer.write(body)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a scraper that went away or never finished its request: nothing to answer
        except Exception:  # a bug in a collector must not end the relay
            log.exception("metrics scrape failed")
        finally:
            writer.close()

    def _respond(self, head: bytes) -> tuple[str, str, bytes, bool]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        text = "text/plain; charset=utf-8"
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return "400 Bad Request", text, b"bad request\n", False
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", text, b"GET /metrics\n", False
        if target.split("?", 1)[0] != "/metrics":
            return "404 Not Found", text, b"GET /metrics\n", method == "HEAD"
        accept = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        encoder, ctype = choose_encoder(accept)
        return "200 OK", ctype, encoder(self.registry), method == "HEAD"
