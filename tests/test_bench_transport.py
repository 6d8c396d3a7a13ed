"""The connect measurement of ``wzp bench transport`` (the full run takes minutes)."""

from __future__ import annotations

import pytest

import wzp.bench.transport as bt


async def test_a_connect_point_counts_its_tries_and_times(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bt, "HANDSHAKE_TRIES", 4)
    point = await bt._handshake_point(0.1, "random", 1.0, 3.0, seed=1)
    assert point["tries"] == 4
    assert point["connected"] == 4  # 10 % loss: every try gets through in the 15 s
    assert 0.6 <= point["seconds_p50"] <= point["seconds_p90"] <= point["seconds_max"] < 15
    assert point["attempt_every_s"] == 3.0 and point["mean_burst"] == 1.0
