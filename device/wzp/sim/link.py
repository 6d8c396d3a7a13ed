"""A seeded, pure simulation of one direction of a bad network link.

The media pipeline is tested and benchmarked by pushing datagrams (``bytes``) through a
:class:`Link` with simulated time. Nothing here touches a socket, a thread, a sleep or the
wall clock: every call takes an explicit ``now`` (seconds, a float, never decreasing over
the life of a link), and all randomness comes from :class:`random.Random` instances owned
by the link and seeded from its ``seed``, so a run is exactly repeatable.

What happens to a packet offered with ``send(packet, now)``, in this order:

1. **Loss process tick.** The loss model (below) advances one step for *every* offered
   packet and decides whether the lossy hop would drop it. It ticks even for packets that
   a blackout or the queue drops first, so the loss pattern depends only on ``seed``,
   ``loss`` and ``burst``: two configs that differ only in delay, jitter, rate, duplication
   or blackouts see the same packets lost by the loss model ("common random numbers" for
   fair A/B benchmarks).
2. **Blackout.** A packet *sent* inside a ``[start, end)`` window of ``blackouts`` is lost
   (counted in ``stats.lost_blackout``); the link is down at the sender's end, so it does
   not use the bottleneck either. Packets already in flight when a window opens still
   arrive.
3. **Bottleneck** (only with ``rate_bps``). A FIFO queue served at ``rate_bps``; a packet
   costs ``len(packet) + overhead_bytes`` bytes of it. It leaves the bottleneck at
   ``max(now, previous departure) + wire_bytes * 8 / rate_bps``. The backlog at time ``t``
   is the number of bytes not yet serialised (including what is left of the packet being
   sent). With ``queue_bytes`` the queue tail-drops: a packet is refused (counted in
   ``stats.lost_queue``) when ``backlog + wire_bytes > queue_bytes``.
4. **Loss model verdict.** A packet the loss model chose in step 1 is lost now (counted
   in ``stats.lost_random``). It has used bottleneck capacity: the lossy hop is after the
   bottleneck, as on a congested uplink followed by a bad radio path.
5. **Delay.** Arrival = departure + ``delay_s`` + jitter, jitter ~ Exponential with mean
   ``jitter_s`` (``random.expovariate(1 / jitter_s)``; median 0.69, 99th percentile 4.6
   times ``jitter_s``). Independent jitter per packet *reorders*: a packet overtakes an
   earlier one whenever its jitter is smaller by more than the gap between them. With
   ``reorder=False`` each arrival is clamped to be no earlier than the previous arrival,
   so delivery keeps send order and jitter only stretches gaps.
6. **Duplication.** With probability ``duplicate`` a delivered packet is delivered a
   second time (``stats.duplicated``). The copy is made after the bottleneck and after
   the loss: it uses no bottleneck capacity and is never lost. It gets its own jitter
   draw, so with reordering it may arrive before the original.

Loss model (``loss = p``, ``burst = b``, both per *packet*, not per second):

* ``p == 0``: nothing is lost; ``p == 1``: everything is lost (``burst`` is ignored).
* ``b == 1``: independent Bernoulli loss, each packet lost with probability ``p``. Its
  natural mean loss-burst length (run of consecutive losses) is ``1 / (1 - p)``.
* ``b > 1``: the "simple Gilbert" model, a two-state Markov chain stepped once per
  packet, losing every packet in the bad state and none in the good state, with::

      P(bad -> good) = r = 1 / b
      P(good -> bad) = q = p / (b * (1 - p))

  A loss burst is a stay in the bad state, geometric with mean ``1 / r = b``; the
  stationary probability of the bad state, hence the long-run loss rate, is
  ``q / (q + r) = p``. The chain starts in its stationary distribution. ``q`` must be a
  probability, so ``b >= p / (1 - p)`` (e.g. at 70 % loss the mean burst is at least
  2.33); a shorter burst raises ``ValueError``. Note that ``b == 1/(1-p)`` gives
  ``q = p`` and ``r = 1 - p``: exactly Bernoulli loss again; ``1 < b < 1/(1-p)`` spreads
  losses out more evenly than independent loss would, while ``b == 1`` (the sentinel)
  means independent loss, not "isolated losses".
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import math
import random
from dataclasses import dataclass

__all__ = ["Link", "LinkConfig", "LinkStats", "derive_seed", "link_pair"]


def derive_seed(seed: int, label: str) -> int:
    """A 64-bit seed derived from ``seed`` and ``label``.

    BLAKE2b of ``"{seed}/{label}"``: the same on every platform, run and Python version
    (unlike ``hash()``), and unrelated for different labels.
    """
    digest = hashlib.blake2b(f"{seed}/{label}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


def _check_non_negative(name: str, value: float) -> None:
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class LinkConfig:
    """Impairments of one direction of a link; see the module docstring for the model.

    Every field is validated on construction (``ValueError`` with the reason).
    ``blackouts`` is normalised to a tuple of ``(float, float)`` pairs.
    """

    loss: float = 0.0
    """Mean packet loss probability, 0..1 (long-run fraction lost by the loss model)."""
    burst: float = 1.0
    """Mean loss-burst length in packets: 1.0 = independent loss, > 1 = simple Gilbert."""
    delay_s: float = 0.0
    """One-way base delay in seconds."""
    jitter_s: float = 0.0
    """Mean of the exponential extra delay per packet, in seconds (0 = none)."""
    reorder: bool = True
    """If False, arrivals keep send order (jitter only stretches gaps)."""
    duplicate: float = 0.0
    """Probability that a delivered packet is delivered a second time."""
    rate_bps: float | None = None
    """Bottleneck rate in bit/s (None = unlimited)."""
    queue_bytes: int | None = None
    """Bottleneck queue limit in bytes, tail drop (None = unbounded; needs ``rate_bps``)."""
    overhead_bytes: int = 0
    """Bytes added to every packet by the rate limit (e.g. 60 for QUIC/UDP/IP headers)."""
    blackouts: tuple[tuple[float, float], ...] = ()
    """``(start_s, end_s)`` windows: everything sent at ``start_s <= now < end_s`` is lost."""

    def __post_init__(self) -> None:
        _check_probability("loss", self.loss)
        if not (self.burst >= 1.0 and math.isfinite(self.burst)):
            raise ValueError(f"burst must be a finite mean burst length >= 1, got {self.burst!r}")
        if self.burst > 1.0 and 0.0 < self.loss < 1.0:
            minimum = self.loss / (1.0 - self.loss)
            if self.burst < minimum:
                raise ValueError(
                    f"burst={self.burst!r} is too short for loss={self.loss!r}: the simple "
                    f"Gilbert model needs burst >= loss / (1 - loss) = {minimum:.6g} "
                    f"(or burst = 1 for independent loss)"
                )
        _check_non_negative("delay_s", self.delay_s)
        _check_non_negative("jitter_s", self.jitter_s)
        _check_probability("duplicate", self.duplicate)
        if self.rate_bps is not None and not (self.rate_bps > 0 and math.isfinite(self.rate_bps)):
            raise ValueError(f"rate_bps must be a finite number > 0 or None, got {self.rate_bps!r}")
        if self.queue_bytes is not None:
            if isinstance(self.queue_bytes, bool) or not isinstance(self.queue_bytes, int):
                raise ValueError(f"queue_bytes must be an int or None, got {self.queue_bytes!r}")
            if self.queue_bytes <= 0:
                raise ValueError(f"queue_bytes must be > 0, got {self.queue_bytes!r}")
            if self.rate_bps is None:
                raise ValueError("queue_bytes needs rate_bps: without a rate limit no queue forms")
        if isinstance(self.overhead_bytes, bool) or not isinstance(self.overhead_bytes, int):
            raise ValueError(f"overhead_bytes must be an int, got {self.overhead_bytes!r}")
        if self.overhead_bytes < 0:
            raise ValueError(f"overhead_bytes must be >= 0, got {self.overhead_bytes!r}")
        windows = []
        for window in self.blackouts:
            try:
                start, end = (float(x) for x in window)
            except (TypeError, ValueError):
                raise ValueError(
                    f"each blackout must be a (start_s, end_s) pair of numbers, got {window!r}"
                ) from None
            if not (math.isfinite(start) and math.isfinite(end) and start < end):
                raise ValueError(
                    f"blackout {window!r} must have finite start_s < end_s (half-open window)"
                )
            windows.append((start, end))
        object.__setattr__(self, "blackouts", tuple(windows))

    @property
    def gilbert(self) -> tuple[float, float] | None:
        """``(P(good->bad), P(bad->good))`` of the simple Gilbert chain, or None if unused.

        None when ``burst == 1`` (independent loss) or when ``loss`` is 0 or 1.
        """
        if self.burst == 1.0 or not 0.0 < self.loss < 1.0:
            return None
        b, p = self.burst, self.loss
        return min(1.0, p / (b * (1.0 - p))), 1.0 / b


@dataclass
class LinkStats:
    """Counters of one :class:`Link`. Conservation, at any time::

    sent + duplicated == lost + delivered + link.in_flight
    """

    sent: int = 0
    """Packets offered with ``send``."""
    sent_bytes: int = 0
    """Payload bytes offered (without ``overhead_bytes``)."""
    lost_random: int = 0
    """Packets dropped by the loss model (independent or Gilbert)."""
    lost_queue: int = 0
    """Packets tail-dropped by the bottleneck queue."""
    lost_blackout: int = 0
    """Packets sent during a blackout window."""
    duplicated: int = 0
    """Extra copies created by duplication."""
    delivered: int = 0
    """Packets returned by ``deliver`` (duplicate copies included)."""
    delivered_bytes: int = 0
    """Payload bytes returned by ``deliver``."""
    max_backlog_bytes: float = 0.0
    """Peak bottleneck backlog, in wire bytes, just after admitting a packet."""

    @property
    def lost(self) -> int:
        """Packets lost for any reason."""
        return self.lost_random + self.lost_queue + self.lost_blackout

    @property
    def loss_rate(self) -> float:
        """Fraction of offered packets lost for any reason (0.0 before the first send)."""
        return self.lost / self.sent if self.sent else 0.0


class Link:
    """One direction of a simulated link: ``send`` packets in, ``deliver`` them out.

    ``now`` must never decrease across all calls of ``send`` and ``deliver`` (``ValueError``
    otherwise, also for NaN). Typical event-driven use::

        link.send(datagram, now)
        ...
        t = link.next_arrival()
        if t is not None and t <= next_event_time:
            for arrival, datagram in link.deliver(t):
                receiver.on_datagram(datagram, arrival)
    """

    def __init__(self, config: LinkConfig, seed: int) -> None:
        if not isinstance(config, LinkConfig):
            raise TypeError(f"config must be a LinkConfig, got {type(config).__name__}")
        self.config = config
        self.seed = seed
        self.stats = LinkStats()
        # Independent streams per mechanism, so that e.g. adding jitter does not change
        # which packets are lost.
        self._loss_rng = random.Random(derive_seed(seed, "loss"))
        self._jitter_rng = random.Random(derive_seed(seed, "jitter"))
        self._dup_rng = random.Random(derive_seed(seed, "duplicate"))

        p = config.loss
        gilbert = config.gilbert
        if p == 0.0:
            self._mode = 0  # never lose
        elif p == 1.0:
            self._mode = 1  # always lose
        elif gilbert is None:
            self._mode = 2  # Bernoulli
        else:
            self._mode = 3  # simple Gilbert
        self._p = p
        self._p_gb, self._p_bg = gilbert if gilbert is not None else (0.0, 1.0)
        self._bad = self._mode == 3 and self._loss_rng.random() < p  # stationary start

        # Blackouts merged into sorted disjoint windows for a bisect lookup.
        merged: list[list[float]] = []
        for start, end in sorted(config.blackouts):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self._bo_starts = [w[0] for w in merged]
        self._bo_ends = [w[1] for w in merged]

        self._rate = config.rate_bps
        self._overhead = config.overhead_bytes
        self._qlimit = config.queue_bytes
        self._delay = config.delay_s
        self._jitter_rate = 1.0 / config.jitter_s if config.jitter_s > 0 else 0.0
        self._reorder = config.reorder
        self._dup = config.duplicate

        self._now = -math.inf
        self._busy_until = -math.inf  # when the bottleneck finishes its backlog
        self._last_arrival = -math.inf  # for reorder=False
        self._heap: list[tuple[float, int, bytes]] = []
        self._seq = 0

    # ----------------------------------------------------------------------- queries

    @property
    def now(self) -> float:
        """The latest ``now`` seen (``-inf`` before the first call)."""
        return self._now

    @property
    def in_flight(self) -> int:
        """Packets (and duplicate copies) scheduled but not yet delivered."""
        return len(self._heap)

    def next_arrival(self) -> float | None:
        """Earliest pending arrival time, or None when nothing is in flight."""
        return self._heap[0][0] if self._heap else None

    def backlog_bytes(self, now: float) -> float:
        """Wire bytes not yet serialised by the bottleneck at time ``now`` (0 without one).

        A read-only query: it does not advance the link's clock.
        """
        if self._rate is None or self._busy_until <= now:
            return 0.0
        return (self._busy_until - now) * self._rate / 8.0

    # ----------------------------------------------------------------------- actions

    def send(self, packet: bytes, now: float) -> None:
        """Offer one packet to the link at time ``now``."""
        self._advance(now)
        data = bytes(packet)
        stats = self.stats
        stats.sent += 1
        stats.sent_bytes += len(data)

        lost = self._loss_step()

        if self._bo_starts:
            i = bisect.bisect_right(self._bo_starts, now) - 1
            if i >= 0 and now < self._bo_ends[i]:
                stats.lost_blackout += 1
                return

        depart = now
        rate = self._rate
        if rate is not None:
            wire = len(data) + self._overhead
            busy = self._busy_until
            backlog = (busy - now) * rate / 8.0 if busy > now else 0.0
            if self._qlimit is not None and backlog + wire > self._qlimit:
                stats.lost_queue += 1
                return
            depart = (busy if busy > now else now) + wire * 8.0 / rate
            self._busy_until = depart
            if backlog + wire > stats.max_backlog_bytes:
                stats.max_backlog_bytes = backlog + wire

        if lost:
            stats.lost_random += 1
            return

        self._schedule(depart, data)
        if self._dup and self._dup_rng.random() < self._dup:
            stats.duplicated += 1
            self._schedule(depart, data)

    def deliver(self, now: float) -> list[tuple[float, bytes]]:
        """Pop every packet with arrival time ``<= now``: ``(arrival, packet)``, in arrival
        order (ties in send order)."""
        self._advance(now)
        heap = self._heap
        out: list[tuple[float, bytes]] = []
        nbytes = 0
        while heap and heap[0][0] <= now:
            arrival, _, data = heapq.heappop(heap)
            out.append((arrival, data))
            nbytes += len(data)
        self.stats.delivered += len(out)
        self.stats.delivered_bytes += nbytes
        return out

    def drain(self) -> list[tuple[float, bytes]]:
        """Deliver everything in flight, advancing the clock to the last arrival (if later)."""
        if not self._heap:
            return []
        return self.deliver(max(self._now, max(a for a, _, _ in self._heap)))

    # ----------------------------------------------------------------------- internals

    def _advance(self, now: float) -> None:
        if not now >= self._now:  # also refuses NaN
            raise ValueError(
                f"time went backwards: now={now!r} is before the link's clock {self._now!r}"
            )
        self._now = now

    def _loss_step(self) -> bool:
        mode = self._mode
        if mode == 0:
            return False
        if mode == 1:
            return True
        u = self._loss_rng.random()
        if mode == 2:
            return u < self._p
        self._bad = u >= self._p_bg if self._bad else u < self._p_gb
        return self._bad

    def _schedule(self, depart: float, data: bytes) -> None:
        arrival = depart + self._delay
        if self._jitter_rate:
            arrival += self._jitter_rng.expovariate(self._jitter_rate)
        if not self._reorder:
            if arrival < self._last_arrival:
                arrival = self._last_arrival
            self._last_arrival = arrival
        heapq.heappush(self._heap, (arrival, self._seq, data))
        self._seq += 1


def link_pair(
    config: LinkConfig, seed: int, reverse: LinkConfig | None = None
) -> tuple[Link, Link]:
    """Two independent links for the two directions of a call: ``(a_to_b, b_to_a)``.

    ``a_to_b`` uses ``config``; ``b_to_a`` uses ``reverse`` (default: ``config``). Their
    seeds are derived from ``seed`` with :func:`derive_seed` (labels ``"a->b"`` and
    ``"b->a"``), so the directions have unrelated randomness yet the pair is repeatable.
    """
    return (
        Link(config, derive_seed(seed, "a->b")),
        Link(reverse if reverse is not None else config, derive_seed(seed, "b->a")),
    )
