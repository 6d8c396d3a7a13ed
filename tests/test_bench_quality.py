"""The benchmarks' own measurements: the block-failure table (RaptorQ's failures on the link
model alone) and the piecewise alignment the demo scores STOI with."""

from __future__ import annotations

from math import comb
from pathlib import Path

import numpy as np
import pytest

from wzp.bench.quality import block_failures
from wzp.media.ladder import LADDER
from wzp.proto.f32 import repair_count

TABLE = block_failures(LADDER, (("random", 1.0), ("bursty", 3.0)), (10, 20, 30, 40), seed=3)


def _binomial_failure(n: int, k: int, loss: float) -> float:
    """P(fewer than k of n packets arrive) with independent loss."""
    ok = 1 - loss
    return sum(comb(n, r) * ok**r * loss ** (n - r) for r in range(k))


@pytest.mark.parametrize("loss", [20, 30, 40])
def test_random_loss_fails_blocks_as_the_binomial_says(loss: int) -> None:
    for tier in LADDER:
        n = tier.k + repair_count(tier.k, tier.profile.fec_ratio)
        expected = _binomial_failure(n, tier.k, loss / 100)
        measured = TABLE["random"][str(loss)][tier.name]
        # 40 000 packets: a few standard errors of a rate near p over ~40 000 windows
        assert measured == pytest.approx(expected, abs=max(0.002, 4 * (expected / 4000) ** 0.5))


def test_bursts_fail_the_protected_block_sizes_more_often_than_random_loss() -> None:
    # the Opus tiers with at least as many repairs as sources (clear's K 3 + R 1 is the
    # exception: with one repair, losses bunched into bursts spare more blocks than they
    # break; Codec2's 4 + 27 blocks almost never fail either way)
    protected = [
        t for t in LADDER if t.codec.is_opus and repair_count(t.k, t.profile.fec_ratio) >= t.k
    ]
    assert [t.name for t in protected] == ["light", "heavy", "dense", "severe", "deep"]
    for loss in ("10", "20", "30", "40"):
        for tier in protected:
            assert TABLE["bursty"][loss][tier.name] > TABLE["random"][loss][tier.name]
    # heavy at 20 %: random loss breaks almost no block, 3-packet bursts break several in 100
    assert TABLE["random"]["20"]["heavy"] < 0.002 < 0.01 < TABLE["bursty"]["20"]["heavy"]


def test_aligned_in_pieces_a_delay_step_is_not_scored_as_lost_speech() -> None:
    """The jitter buffer grows by 120 ms in one step: the speech after it is intact but
    late. Aligned as a whole, STOI scores the shift; aligned in pieces, only the piece
    that holds the step is still partly off. Measured on 6 s of the recording, step at
    2.7 / 3.0 / 3.5 s: 0.48 / 0.54 / 0.65 as a whole, 0.94 / 0.83 / 0.95 in pieces."""
    from pystoi import stoi

    from wzp.bench.quality import align_delay, align_in_pieces
    from wzp.bench.speech import load_speech, resample

    raw, rate = load_speech(None)
    ref = resample(raw, rate, 16_000)[: 6 * 16_000]
    step = int(3.5 * 16_000)
    deg = np.concatenate((ref[:step], np.zeros(1920), ref[step:]))
    whole = align_delay(ref, deg, 16_000, 0.4)
    pieces = align_in_pieces(ref, whole, 16_000)
    assert stoi(ref, whole, 16_000) < 0.75
    assert stoi(ref, pieces, 16_000) > 0.9
    # nothing is made up: a piece that was lost stays lost
    gone = deg.copy()
    gone[step + 1920 : step + 1920 + 16_000] = 0
    assert (
        stoi(ref, align_in_pieces(ref, align_delay(ref, gone, 16_000, 0.4), 16_000), 16_000) < 0.9
    )


def test_a_pinned_tier_runs_alone_over_both_loss_models(tmp_path: Path) -> None:
    """``wzp bench quality --pin``: the ladder cut to one tier (nothing else is ever used),
    random and bursty at the same mean, and the gap between their PESQ."""
    import json

    from wzp.bench.quality import run_pinned

    out = tmp_path / "pinned.json"
    report = run_pinned(out, ("severe",), (20,), seeds=1, log=lambda line: None)
    assert json.loads(out.read_text()) == report
    (row,) = report["rows"]
    assert row["tier"] == "severe" and row["loss_pct"] == 20
    for model in ("random", "bursty"):
        assert set(row[model]["tiers_used"]) == {"severe"}
        assert 0.15 < row[model]["link_loss_measured"] < 0.25
        assert 1.0 <= row[model]["pesq"] <= 4.6
    assert row["pesq_gap"] == pytest.approx(row["bursty"]["pesq"] - row["random"]["pesq"], abs=1e-3)
    with pytest.raises(KeyError):
        run_pinned(out, ("no-such-tier",), (20,), seeds=1, log=lambda line: None)


def test_pin_losses_are_checked_before_anything_runs(tmp_path: Path) -> None:
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("wzp")
    out = tmp_path / "p.json"
    for bad in ("80", "a,b", "0", ""):
        result = subprocess.run(
            [str(exe), "bench", "quality", "--pin", "deep", "--pin-losses", bad, "--out", str(out)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 2, (bad, result.stderr)
        assert "--pin-losses wants whole percentages from 1 to 75" in result.stderr
        assert not out.exists()


def _heard(speech48: np.ndarray, frame_ms: int, insert_after: int, insert_ms: int, skip: int):
    """A listener's output as the call simulator records it: frames played one after the
    other from t = 0.1 s, ``insert_ms`` of inserted concealment (noise) after frame
    ``insert_after`` (the buffer grew: media time held still), frame ``skip`` dropped
    (the buffer shrank: not played, the next frame follows at once)."""
    from wzp.bench.callsim import CallResult
    from wzp.media.playout import FrameFate, Played

    per = frame_ms * 48
    rng = np.random.default_rng(5)
    chunks = [np.zeros(4800)]
    played: list[Played] = []
    at = 0.1
    for i in range(len(speech48) // per):
        if i == skip:
            played.append(Played(i * frame_ms, frame_ms, at, FrameFate.SKIPPED))
            continue
        chunks.append(speech48[i * per : (i + 1) * per])
        played.append(Played(i * frame_ms, frame_ms, at, FrameFate.DECODED))
        at += frame_ms / 1000
        if i == insert_after:
            chunks.append(rng.normal(0, 30, insert_ms * 48))
            played.append(Played((i + 1) * frame_ms, insert_ms, at, FrameFate.INSERTED))
            at += insert_ms / 1000
    result = CallResult(
        output=np.concatenate(chunks), played=played, send_times={}, wire_bytes_fwd=0,
        wire_bytes_rev=0, packets_fwd=0, duration_s=1.0, tiers_used={}, tier_changes=0,
        sender_stats={}, receiver_drops={}, link_loss_fwd=0.0, recovered=0,
    )  # fmt: skip
    return result


def test_on_the_media_timeline_a_grown_buffer_is_not_lost_speech_but_skipped_media_is() -> None:
    """stoi_timeline: each played frame goes back to its media time. The 240 ms the buffer
    inserted (a pause) drops out, the speech after it lines up again; a frame the buffer
    skipped is silence where its speech was. One alignment of the whole output scores the
    step as displaced speech."""
    from wzp.bench.quality import _stoi, on_media_timeline
    from wzp.bench.speech import load_speech, resample

    raw, rate = load_speech(None)
    ref = raw[: 6 * rate].astype(np.float64)
    speech48 = resample(ref, rate, 48_000)
    result = _heard(speech48, 60, insert_after=40, insert_ms=240, skip=70)
    timeline = on_media_timeline(result, 0, 6000)
    per = 60 * 48
    # sample for sample what was heard, at its media time; the skipped frame is silent
    assert np.array_equal(timeline[: 70 * per], speech48[: 70 * per])
    assert not timeline[70 * per : 71 * per].any()
    assert np.array_equal(timeline[71 * per : 100 * per], speech48[71 * per : 100 * per])
    heard = result.output[4800:]
    whole, on_time = _stoi(ref, rate, heard), _stoi(ref, rate, timeline)
    assert whole is not None and on_time is not None
    assert whole < 0.8 < 0.95 < on_time
    # nothing is made up: with no step at all the two are the same number
    plain = _heard(speech48, 60, insert_after=-1, insert_ms=0, skip=-1)
    assert _stoi(ref, rate, plain.output[4800:]) == _stoi(
        ref, rate, on_media_timeline(plain, 0, 6000)
    )
