"""The simulated link: loss statistics, determinism, delay/jitter, bottleneck, blackouts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wzp.sim import Link, LinkConfig, LinkStats, derive_seed, link_pair

# --------------------------------------------------------------------------- helpers


def _payload(seq: int, size: int = 4) -> bytes:
    return seq.to_bytes(4, "big") + bytes(max(0, size - 4))


def _seq(packet: bytes) -> int:
    return int.from_bytes(packet[:4], "big")


def _run(link: Link, times: list[float], sizes: list[int] | None = None) -> list[tuple[float, int]]:
    """Send packet i at times[i] (polling deliver before each send), then drain.

    Returns ``(arrival, seq)`` in delivery order; checks nothing arrives in the future.
    """
    out: list[tuple[float, int]] = []
    for i, t in enumerate(times):
        for arrival, packet in link.deliver(t):
            assert arrival <= t
            out.append((arrival, _seq(packet)))
        link.send(_payload(i, sizes[i] if sizes else 4), t)
    out += [(a, _seq(p)) for a, p in link.drain()]
    return out


def _lost_flags(link: Link, n: int) -> np.ndarray:
    """Send n packets 20 ms apart; True where packet i never arrived."""
    received = np.zeros(n, dtype=bool)
    send = link.send
    for i in range(n):
        send(i.to_bytes(4, "big"), i * 0.02)
    for _, packet in link.drain():
        received[_seq(packet)] = True
    return ~received


def _burst_lengths(lost: np.ndarray) -> np.ndarray:
    edges = np.diff(np.concatenate(([0], lost.astype(np.int8), [0])))
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def _conserved(link: Link) -> bool:
    s = link.stats
    return s.sent + s.duplicated == s.lost + s.delivered + link.in_flight


# ------------------------------------------------------------------ loss statistics

N_STAT = 200_000


@pytest.mark.parametrize("loss", [0.05, 0.30, 0.50, 0.70])
@pytest.mark.parametrize("burst", [1.0, 3.0], ids=["random", "gilbert-b3"])
def test_long_run_loss_and_burst_length(loss: float, burst: float) -> None:
    config = LinkConfig(loss=loss, burst=burst)
    link = Link(config, seed=1234)
    lost = _lost_flags(link, N_STAT)
    assert link.stats.lost_random == int(lost.sum()) and link.stats.lost == link.stats.lost_random

    if config.gilbert is None:  # independent: natural burst 1/(1-p), no memory
        lam, p_repeat, mean_burst = 0.0, loss, 1.0 / (1.0 - loss)
        burst_var = loss / (1.0 - loss) ** 2
    else:
        q, r = config.gilbert
        lam, p_repeat, mean_burst = 1.0 - q - r, 1.0 - r, burst
        burst_var = burst * (burst - 1.0)

    # Five standard deviations; the loss-rate variance is inflated by the chain's memory
    # (second eigenvalue lam of the two-state chain).
    measured = lost.mean()
    tol_loss = 5 * math.sqrt(loss * (1 - loss) / N_STAT * (1 + lam) / (1 - lam))
    runs = _burst_lengths(lost)
    tol_burst = 5 * math.sqrt(burst_var / len(runs))
    after_loss = lost[1:][lost[:-1]]
    tol_repeat = 5 * math.sqrt(p_repeat * (1 - p_repeat) / len(after_loss))
    print(
        f"\nloss={loss:.2f} burst={burst:g}: measured loss {measured:.4f} (tol {tol_loss:.4f}), "
        f"mean burst {runs.mean():.3f} (expected {mean_burst:.3f}, tol {tol_burst:.3f}), "
        f"P(loss|loss) {after_loss.mean():.4f} (expected {p_repeat:.4f}), {len(runs)} bursts"
    )
    assert abs(measured - loss) < tol_loss
    assert abs(runs.mean() - mean_burst) < tol_burst
    assert abs(after_loss.mean() - p_repeat) < tol_repeat


def test_gilbert_formulas() -> None:
    q, r = LinkConfig(loss=0.3, burst=3.0).gilbert  # type: ignore[misc]
    assert r == pytest.approx(1 / 3) and q == pytest.approx(0.3 / (3 * 0.7))
    assert q / (q + r) == pytest.approx(0.3)  # stationary loss rate
    # burst == 1 is the independent-loss sentinel, and 0 / 1 need no chain.
    assert LinkConfig(loss=0.3).gilbert is None
    assert LinkConfig(loss=0.0, burst=5).gilbert is None
    assert LinkConfig(loss=1.0, burst=5).gilbert is None
    # burst == 1/(1-p) is Bernoulli in disguise: q == p, r == 1 - p.
    q, r = LinkConfig(loss=0.6, burst=1 / 0.4).gilbert  # type: ignore[misc]
    assert q == pytest.approx(0.6) and r == pytest.approx(0.4)


def test_loss_extremes() -> None:
    for burst in (1.0, 4.0):
        none = Link(LinkConfig(loss=0.0, burst=burst), seed=1)
        assert not _lost_flags(none, 1000).any()
        every = Link(LinkConfig(loss=1.0, burst=burst), seed=1)
        assert _lost_flags(every, 1000).all()
        assert every.stats.lost_random == 1000 and every.next_arrival() is None


# ------------------------------------------------------------------- determinism

FULL = LinkConfig(
    loss=0.3,
    burst=3.0,
    delay_s=0.15,
    jitter_s=0.04,
    duplicate=0.05,
    rate_bps=200_000,
    queue_bytes=6_000,
    overhead_bytes=60,
    blackouts=((2.0, 2.5),),
)


def _full_run(seed: int) -> tuple[list[tuple[float, int]], LinkStats]:
    link = Link(FULL, seed)
    times = [i * 0.004 for i in range(1000)]  # 250 packets/s of 200 B: over the rate
    out = _run(link, times, [200] * len(times))
    assert _conserved(link)
    return out, link.stats


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**64), st.integers(0, 2**64))
def test_same_seed_same_run_different_seed_different(seed: int, other: int) -> None:
    first, stats = _full_run(seed)
    again, stats_again = _full_run(seed)
    assert first == again and stats == stats_again
    if other != seed:
        assert _full_run(other)[0] != first
    # every mechanism was exercised
    assert stats.lost_random and stats.lost_queue and stats.lost_blackout and stats.duplicated


def test_loss_pattern_is_independent_of_other_impairments() -> None:
    """Common random numbers: the loss model ticks for every offered packet on its own
    random stream, so changing delay, jitter, rate, duplication or blackouts leaves the
    set of packets lost by the loss model unchanged."""
    times = [i * 0.02 for i in range(3000)]
    plain = Link(LinkConfig(loss=0.4, burst=4.0), seed=7)
    base = {s for _, s in _run(plain, times)}
    busy = Link(
        LinkConfig(
            loss=0.4,
            burst=4.0,
            delay_s=0.3,
            jitter_s=0.1,
            duplicate=0.2,
            rate_bps=1e6,
            blackouts=((10.0, 20.0),),
        ),
        seed=7,
    )
    got = {s for _, s in _run(busy, times)}
    in_blackout = {i for i, t in enumerate(times) if 10.0 <= t < 20.0}
    assert got == base - in_blackout
    assert busy.stats.lost_blackout == len(in_blackout)


def test_derive_seed_is_stable() -> None:
    assert derive_seed(1, "loss") == derive_seed(1, "loss")
    assert len({derive_seed(1, "a"), derive_seed(1, "b"), derive_seed(2, "a")}) == 3
    assert 0 <= derive_seed(-5, "x") < 2**64


# ------------------------------------------------------------------ delay and jitter


@st.composite
def configs(draw: st.DrawFn) -> LinkConfig:
    loss = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    burst = draw(st.sampled_from([1.0, 10.0]))
    rate = draw(st.one_of(st.none(), st.floats(8_000, 10_000_000)))
    return LinkConfig(
        loss=loss,
        burst=burst,
        delay_s=draw(st.floats(0, 1)),
        jitter_s=draw(st.sampled_from([0.0, 0.001, 0.05, 0.3])),
        reorder=draw(st.booleans()),
        duplicate=draw(st.sampled_from([0.0, 0.3, 1.0])),
        rate_bps=rate,
        queue_bytes=draw(st.one_of(st.none(), st.integers(1500, 20_000))) if rate else None,
        overhead_bytes=draw(st.integers(0, 100)),
        blackouts=draw(st.sampled_from([(), ((0.5, 1.0),), ((0.0, 0.2), (0.1, 0.3))])),
    )


@settings(max_examples=150, deadline=None)
@given(
    configs(),
    st.integers(0, 2**32),
    st.lists(st.tuples(st.floats(0, 0.05), st.integers(4, 1400)), min_size=1, max_size=80),
)
def test_invariants_for_any_config(config: LinkConfig, seed: int, sends: list) -> None:
    link = Link(config, seed)
    times, sizes, t = [], [], 0.0
    for gap, size in sends:
        t += gap
        times.append(t)
        sizes.append(size)
    out = _run(link, times, sizes)
    assert _conserved(link) and link.in_flight == 0 and link.next_arrival() is None
    assert link.stats.delivered == len(out)

    counts: dict[int, int] = {}
    for arrival, seq in out:
        counts[seq] = counts.get(seq, 0) + 1
        tx = (sizes[seq] + config.overhead_bytes) * 8 / config.rate_bps if config.rate_bps else 0
        assert arrival >= times[seq] + config.delay_s + tx - 1e-9
        assert not any(s <= times[seq] < e for s, e in config.blackouts)
    assert max(counts.values(), default=1) <= (2 if config.duplicate else 1)
    assert [a for a, _ in out] == sorted(a for a, _ in out)  # delivered in arrival order
    if not config.reorder:
        assert [s for _, s in out] == sorted(s for _, s in out)  # send order kept


def test_jitter_reorders_and_is_exponential() -> None:
    n, delay, jitter = 20_000, 0.2, 0.05
    times = [i * 0.02 for i in range(n)]
    out = _run(Link(LinkConfig(delay_s=delay, jitter_s=jitter), seed=3), times)
    extra = np.array([a - times[s] - delay for a, s in out])
    seqs = np.array([s for _, s in out])
    overtakes = int((np.diff(seqs) < 0).sum())
    print(
        f"\njitter mean {extra.mean() * 1e3:.2f} ms (configured {jitter * 1e3:.0f} ms), "
        f"P(extra > 3x) {(extra > 3 * jitter).mean():.4f} (exp(-3) = {math.exp(-3):.4f}), "
        f"{overtakes} out-of-order deliveries in {n}"
    )
    assert extra.min() >= 0
    assert extra.mean() == pytest.approx(jitter, rel=0.03)
    assert (extra > 3 * jitter).mean() == pytest.approx(math.exp(-3), abs=0.006)
    assert overtakes > n // 10


def test_no_reorder_keeps_order_and_only_stretches_gaps() -> None:
    n, delay, jitter = 5_000, 0.2, 0.05
    times = [i * 0.02 for i in range(n)]
    out = _run(Link(LinkConfig(delay_s=delay, jitter_s=jitter, reorder=False), seed=3), times)
    arrivals = [a for a, _ in out]
    assert [s for _, s in out] == list(range(n))
    assert arrivals == sorted(arrivals)
    assert all(a >= t + delay for a, t in zip(arrivals, times, strict=True))
    # Same seed with reordering: the clamped arrivals are never earlier.
    free = dict((s, a) for a, s in _run(Link(LinkConfig(delay_s=delay, jitter_s=jitter), 3), times))
    assert all(a >= free[s] for a, s in out)


def test_constant_delay_only() -> None:
    out = _run(Link(LinkConfig(delay_s=0.35), seed=0), [0.0, 0.01, 0.01, 1.0])
    assert out == [(0.35, 0), (0.36, 1), (0.36, 2), (1.35, 3)]


# ------------------------------------------------------------------------ bottleneck

RATE = 100_000.0
OVERHEAD = 60


def test_rate_under_capacity_builds_no_queue() -> None:
    """50 packets/s of 100 B + 60 B overhead = 64 kbit/s on a 100 kbit/s bottleneck."""
    link = Link(LinkConfig(rate_bps=RATE, overhead_bytes=OVERHEAD, delay_s=0.1), seed=0)
    tx = 160 * 8 / RATE  # 12.8 ms serialisation
    times = [i / 50 for i in range(500)]
    for i, t in enumerate(times):
        assert link.backlog_bytes(t) == 0.0
        link.send(_payload(i, 100), t)
    out = [(a, _seq(p)) for a, p in link.drain()]
    assert link.stats.max_backlog_bytes == pytest.approx(160)
    assert [s for _, s in out] == list(range(500))
    assert all(a == pytest.approx(times[s] + 0.1 + tx) for a, s in out)


def test_rate_over_capacity_queues_then_tail_drops() -> None:
    """200 packets/s of 200 B + 60 B = 416 kbit/s into 100 kbit/s."""
    wire, n = 260, 2000
    times = [i / 200 for i in range(n)]

    unbounded = Link(LinkConfig(rate_bps=RATE, overhead_bytes=OVERHEAD), seed=0)
    backlog = []
    for i, t in enumerate(times):
        unbounded.send(_payload(i, 200), t)
        backlog.append(unbounded.backlog_bytes(t))
    assert all(b2 > b1 for b1, b2 in itertools.pairwise(backlog))  # grows
    growth = (backlog[-1] - backlog[0]) / (times[-1] - times[0])
    assert growth == pytest.approx((416_000 - RATE) / 8, rel=0.01)  # bytes/s
    assert unbounded.stats.lost == 0

    limit = 5_000
    link = Link(LinkConfig(rate_bps=RATE, overhead_bytes=OVERHEAD, queue_bytes=limit), seed=0)
    for i, t in enumerate(times):
        link.send(_payload(i, 200), t)
        assert link.backlog_bytes(t) <= limit
    arrivals = [a for a, _ in link.drain()]
    s = link.stats
    assert s.max_backlog_bytes <= limit and s.lost_queue > 0 and s.lost == s.lost_queue
    assert s.delivered + s.lost_queue == n
    # Every packet is fully serialised after the previous one: never faster than the rate.
    assert all(b - a >= wire * 8 / RATE - 1e-12 for a, b in itertools.pairwise(arrivals))
    throughput = (len(arrivals) - 1) * wire * 8 / (arrivals[-1] - arrivals[0])
    print(
        f"\n416 kbit/s into 100 kbit/s, {limit} B queue: {s.lost_queue}/{n} tail-dropped, "
        f"throughput {throughput / 1000:.2f} kbit/s, peak backlog {s.max_backlog_bytes:.0f} B"
    )
    assert throughput <= RATE * (1 + 1e-9)
    assert throughput == pytest.approx(RATE, rel=0.001)  # the queue keeps the link busy
    assert s.lost_queue / n == pytest.approx(1 - RATE / 416_000, abs=0.02)


@settings(max_examples=60, deadline=None)
@given(
    st.floats(8_000, 5_000_000),
    st.integers(0, 100),
    st.sampled_from([0.0, 0.3]),
    st.lists(st.tuples(st.floats(0, 0.02), st.integers(4, 1400)), min_size=2, max_size=100),
)
def test_throughput_never_exceeds_rate(
    rate: float, overhead: int, loss: float, sends: list
) -> None:
    link = Link(LinkConfig(rate_bps=rate, overhead_bytes=overhead, loss=loss, delay_s=0.1), 9)
    times, sizes, t = [], [], 0.0
    for gap, size in sends:
        t += gap
        times.append(t)
        sizes.append(size)
    out = _run(link, times, sizes)
    for (a, _), (b, seq) in itertools.pairwise(out):
        assert b - a >= (sizes[seq] + overhead) * 8 / rate * (1 - 1e-9)


# --------------------------------------------------------------- duplication, blackout


def test_duplication() -> None:
    n = 20_000
    link = Link(LinkConfig(duplicate=0.2, jitter_s=0.01), seed=5)
    out = _run(link, [i * 0.02 for i in range(n)])
    counts = np.bincount([s for _, s in out], minlength=n)
    print(f"\nduplicate=0.2: {link.stats.duplicated / n:.4f} of packets duplicated")
    assert counts.min() == 1 and counts.max() == 2
    assert int((counts == 2).sum()) == link.stats.duplicated == link.stats.delivered - n
    assert link.stats.duplicated / n == pytest.approx(0.2, abs=5 * math.sqrt(0.16 / n))

    always = Link(LinkConfig(duplicate=1.0, loss=0.5), seed=5)
    out = _run(always, [i * 0.02 for i in range(1000)])
    assert always.stats.duplicated == 1000 - always.stats.lost_random
    assert all(c == 2 for c in np.bincount([s for _, s in out]) if c)


def test_blackouts() -> None:
    windows = ((1.0, 2.0), (3.0, 3.5), (3.25, 3.75))  # the last two overlap
    link = Link(LinkConfig(delay_s=0.5, blackouts=windows), seed=0)
    times = [i / 100 for i in range(500)]
    got = {s for _, s in _run(link, times)}
    dark = {i for i, t in enumerate(times) if 1.0 <= t < 2.0 or 3.0 <= t < 3.75}
    assert got == set(range(500)) - dark
    assert link.stats.lost_blackout == link.stats.lost == len(dark) == 175
    assert 100 in dark and 200 not in dark  # half-open: start lost, end delivered
    assert 99 in got  # sent at 0.99, in flight when the window opened: still arrives

    mixed = Link(LinkConfig(loss=0.3, blackouts=windows), seed=0)
    got = {s for _, s in _run(mixed, times)}
    assert mixed.stats.lost_blackout == len(dark) and not got & dark
    assert mixed.stats.lost_random > 0 and _conserved(mixed)


# ---------------------------------------------------------------------- event driven


def test_next_arrival_and_clock() -> None:
    link = Link(LinkConfig(delay_s=0.3, jitter_s=0.1), seed=11)
    assert link.next_arrival() is None and link.deliver(100.0) == [] and link.drain() == []
    link.send(b"a", 100.0)
    link.send(b"b", 100.1)
    first = link.next_arrival()
    assert first is not None and first >= 100.3
    assert link.deliver(first - 1e-9) == []
    got = link.deliver(first)
    assert len(got) >= 1 and got[0][0] == first
    assert link.now == first
    with pytest.raises(ValueError, match="backwards"):
        link.send(b"c", first - 0.001)
    with pytest.raises(ValueError, match="backwards"):
        link.deliver(first - 0.001)
    with pytest.raises(ValueError, match="backwards"):
        link.send(b"c", math.nan)
    rest = link.drain()
    assert [p for _, p in got + rest] in ([b"a", b"b"], [b"b", b"a"])
    assert link.stats.delivered == 2 and link.stats.delivered_bytes == 2


def test_link_pair() -> None:
    fwd, back = link_pair(LinkConfig(loss=0.5), seed=42, reverse=LinkConfig(loss=0.1))
    assert fwd.config.loss == 0.5 and back.config.loss == 0.1
    assert fwd.seed != back.seed
    same = link_pair(LinkConfig(loss=0.5), seed=42)
    assert same[0].seed == fwd.seed and same[1].config.loss == 0.5
    a = _lost_flags(same[0], 2000)
    b = _lost_flags(same[1], 2000)
    assert (a != b).any()  # the two directions are independent
    assert (a == _lost_flags(link_pair(LinkConfig(loss=0.5), seed=42)[0], 2000)).all()


# ------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss": -0.1}, "loss must be a probability"),
        ({"loss": 1.5}, "loss must be a probability"),
        ({"loss": math.nan}, "loss must be a probability"),
        ({"burst": 0.5}, "burst must be"),
        ({"burst": math.inf}, "burst must be"),
        ({"loss": 0.7, "burst": 2.0}, r"burst >= loss / \(1 - loss\) = 2\.33333"),
        ({"delay_s": -0.001}, "delay_s must be"),
        ({"delay_s": math.inf}, "delay_s must be"),
        ({"jitter_s": -1.0}, "jitter_s must be"),
        ({"duplicate": 2.0}, "duplicate must be a probability"),
        ({"rate_bps": 0}, "rate_bps must be"),
        ({"rate_bps": -5.0}, "rate_bps must be"),
        ({"rate_bps": 1e5, "queue_bytes": 0}, "queue_bytes must be > 0"),
        ({"rate_bps": 1e5, "queue_bytes": 10.5}, "queue_bytes must be an int"),
        ({"queue_bytes": 1000}, "queue_bytes needs rate_bps"),
        ({"overhead_bytes": -1}, "overhead_bytes must be >= 0"),
        ({"overhead_bytes": 1.5}, "overhead_bytes must be an int"),
        ({"blackouts": ((2.0, 1.0),)}, "start_s < end_s"),
        ({"blackouts": ((1.0, 1.0),)}, "start_s < end_s"),
        ({"blackouts": ((0.0, math.inf),)}, "start_s < end_s"),
        ({"blackouts": ((1.0,),)}, "pair of numbers"),
        ({"blackouts": (("a", 2.0),)}, "pair of numbers"),
    ],
)
def test_invalid_config(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LinkConfig(**kwargs)


def test_valid_edge_configs() -> None:
    LinkConfig(loss=0.7, burst=0.7 / 0.3)  # the shortest burst the chain allows
    LinkConfig(loss=1.0, burst=1.5)
    cfg = LinkConfig(blackouts=[[0, 1]])  # type: ignore[arg-type]
    assert cfg.blackouts == ((0.0, 1.0),)
    with pytest.raises(TypeError):
        Link({"loss": 0.1}, seed=0)  # type: ignore[arg-type]
