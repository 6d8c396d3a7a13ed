"""wzp.bench.relay: a tiny run (2 calls, 1 s) of the relay benchmark, relay in its own process."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from wzp.bench.relay import DATAGRAM_BYTES, _packet, run_relay_bench
from wzp.proto.header import Datagram, parse_datagram
from wzp.proto.profiles import GOOD


def test_bench_packets_are_valid_good_tier_datagrams_with_the_slot_as_stream() -> None:
    for seq in range(10):
        data = _packet(3, 2, seq, 12.5)
        assert len(data) == DATAGRAM_BYTES
        parsed = parse_datagram(data, encrypted=True)
        assert isinstance(parsed, Datagram)
        assert parsed.header.stream == 2 and parsed.header.codec == int(GOOD.codec)
        assert (parsed.report is not None) == (seq % 5 == 0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_tiny_run_writes_every_measure(tmp_path: Path) -> None:
    out = tmp_path / "relay.json"
    lines: list[str] = []
    report = run_relay_bench(out, 1, lines.append, calls=(2,), measure_s=1.0, warmup_s=0.3)
    assert json.loads(out.read_text()) == report
    (point,) = report["points"]
    assert point["calls"] == 2 and point["members"] == 4
    for side in ("relay", "baseline"):
        got = point[side]
        # 4 members at 50 packets/s for 1 s (give or take the packet at each edge)
        assert 196 <= got["sent"] <= 204, got
        assert got["received"] + got["lost"] == got["sent"]
        assert got["lost"] <= 2, got
        assert 0 < got["p50_ms"] <= got["p99_ms"] <= got["max_ms"]
        assert got["server_cpu_percent"] > 0 and got["clients_cpu_percent"] > 0
    relay = point["relay"]
    counters = relay["relay_counters"]
    # the relay forwarded (at least) every packet that arrived, and dropped none
    assert counters["datagrams_forwarded"] >= relay["received"]
    assert counters["datagram_drops"] == {} and counters["send_drops"] == 0
    assert point["added_p99_ms"] == round(relay["p99_ms"] - point["baseline"]["p99_ms"], 3)
    assert report["settings"]["calls"] == [2] and report["settings"]["seed"] == 1
    assert "target_met" in report and report["cpus"] >= 1
    assert isinstance(report["contended_points"], list)
    assert "end-to-end p50/p99 " in lines[0] and "{" not in lines[0]
    assert lines and lines[0].startswith("2 calls: relay CPU")
    assert _children() == []  # the relay and forwarder processes were stopped and reaped


def _children() -> list[int]:
    mine = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                mine.append(int(entry.name))
    return mine
