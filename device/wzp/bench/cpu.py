"""``wzp bench cpu``: what the media path costs the processor, per tier.

For every tier of the ladder (and wzp phase 1's GOOD profile) real speech goes through
the sending half (codec, FEC, encryption) and the receiving half (decryption, FEC,
jitter buffer, decode) of a full-duplex call; process CPU time is measured for each
half separately and reported as CPU seconds per second of audio and as milliseconds
per 20 ms of audio. In the same run the FEC backends are timed on the ladder's block
shapes: the ``raptorq`` package and the pure-Python RFC 6330 code the Pi uses.
Numbers are measured, never compared to a target here: the targets are read from the
JSON by a person or by the issue's checklist.
"""

from __future__ import annotations

import contextlib
import json
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..crypto.handshake import Ephemeral, Role, initial_keys
from ..crypto.media import MediaCrypto
from ..fec.backend import FecBackend, PureBackend, load_backend
from ..fec.block import BlockEncoder, pack_symbol
from ..media.codecs import make_frame_decoder, make_tier_encoder
from ..media.ladder import LADDER, PHASE1_TIERS, Tier
from ..media.receiver import MediaReceiver
from ..media.sender import MediaSender
from ..proto.f32 import repair_count
from .speech import load_speech, resample, to_int16

SAMPLE_RATE = 48_000
PERIOD = 960


def _cpu(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, out


def measure_tier(tier: Tier, speech48: np.ndarray, backend: FecBackend) -> dict[str, float]:
    """CPU of one direction's sending and receiving halves for ``speech48``."""
    ea, eb = Ephemeral.generate(), Ephemeral.generate()
    tx = MediaCrypto(Role.CALLER, initial_keys(ea, eb.public, Role.CALLER), 0.0)
    rx = MediaCrypto(Role.CALLEE, initial_keys(eb, ea.public, Role.CALLEE), 0.0)
    sender = MediaSender(tier, make_tier_encoder(), tx, backend=backend)
    receiver = MediaReceiver(make_frame_decoder, rx, backend)
    n = sender.frame_samples
    frames = [speech48[i : i + n] for i in range(0, len(speech48) - n + 1, n)]
    seconds = len(frames) * n / SAMPLE_RATE
    rng = random.Random(7)

    def send() -> list[bytes]:
        out: list[bytes] = []
        for f in frames:
            out.extend(sender.push_frame(f))
        out.extend(sender.close_block())
        return out

    send_cpu, datagrams = _cpu(send)
    # the receiver sees the stream as sent, with 10 % of packets lost so FEC decodes run
    kept = [d for d in datagrams if rng.random() >= 0.10]
    step = len(kept) / max(1, len(frames))

    def receive() -> None:
        t = 0.3
        j = 0.0
        periods = int(seconds * 50) + 30
        for i in range(periods):
            now = 0.3 + i * 0.02
            while j < len(kept) and t <= now:
                receiver.receive(kept[int(j)], t)
                j += 1
                t = 0.3 + (j / step) * (n / SAMPLE_RATE) if step else now
            receiver.pull(now)

    recv_cpu, _ = _cpu(receive)
    per_frame_20ms = 20 / 1000 / seconds * 1000  # ms of CPU per 20 ms, per CPU second
    return {
        "audio_seconds": round(seconds, 2),
        "send_cpu_s_per_s": round(send_cpu / seconds, 5),
        "receive_cpu_s_per_s": round(recv_cpu / seconds, 5),
        "full_duplex_cpu_s_per_s": round((send_cpu + recv_cpu) / seconds, 5),
        "send_ms_per_20ms": round(send_cpu * per_frame_20ms, 4),
        "receive_ms_per_20ms": round(recv_cpu * per_frame_20ms, 4),
        "media_path_ms_per_20ms": round((send_cpu + recv_cpu) * per_frame_20ms, 4),
    }


def measure_fec(iterations: int = 300) -> list[dict[str, Any]]:
    """Per-block encode and decode time of both backends on the ladder's block shapes."""
    rng = random.Random(11)
    backends: dict[str, FecBackend] = {"pure": PureBackend()}
    with contextlib.suppress(ImportError):  # the pure backend alone on a Pi
        backends["raptorq"] = load_backend("raptorq")
    rows = []
    for tier in LADDER:
        k = tier.k
        r = repair_count(k, tier.profile.fec_ratio)
        payload = 24 if tier.opus_bitrate is None else tier.opus_bitrate * tier.frame_ms // 8000
        row: dict[str, Any] = {"tier": tier.name, "k": k, "r": r}
        for name, be in backends.items():
            enc_t, dec_t = [], []
            for _ in range(iterations):
                frames = [
                    rng.randbytes(max(1, int(payload * rng.uniform(0.7, 1.3)))) for _ in range(k)
                ]
                block = BlockEncoder(be)
                for f in frames:
                    block.add(f)
                t0 = time.perf_counter()
                bodies = block.repair_bodies(tier.profile.fec_ratio)
                enc_t.append(time.perf_counter() - t0)
                t = len(bodies[0]) - 1
                lost = set(rng.sample(range(k), min(k, r)))
                symbols = {i: pack_symbol(f, t) for i, f in enumerate(frames) if i not in lost}
                for j, body in enumerate(bodies):
                    symbols[k + j] = body[1:]
                t0 = time.perf_counter()
                be.decode(k, t, symbols)
                dec_t.append(time.perf_counter() - t0)
            row[f"{name}_encode_us"] = round(statistics.median(enc_t) * 1e6, 1)
            row[f"{name}_decode_us"] = round(statistics.median(dec_t) * 1e6, 1)
        if "raptorq" in backends:
            row["pure_over_package_decode"] = round(
                row["pure_decode_us"] / row["raptorq_decode_us"], 2
            )
        rows.append(row)
    return rows


def run_cpu(out: Path, speech: Path | None = None, log: Callable[[str], None] = print) -> dict:
    raw, rate = load_speech(speech)
    speech48 = to_int16(resample(raw, rate, SAMPLE_RATE))
    tiers: dict[str, Any] = {}
    for backend_name in ("raptorq", "pure"):
        try:
            backend = load_backend(backend_name)
        except ImportError:
            continue
        for tier in (*LADDER, PHASE1_TIERS[0]):
            m = measure_tier(tier, speech48, backend)
            tiers[f"{tier.name}/{backend_name}"] = m
            log(
                f"{tier.name:8s} fec={backend_name:7s} send {m['send_ms_per_20ms']:.3f} ms "
                f"receive {m['receive_ms_per_20ms']:.3f} ms per 20 ms of audio "
                f"({m['full_duplex_cpu_s_per_s'] * 100:.2f} % of a core, full duplex)"
            )
    fec = measure_fec()
    for row in fec:
        log(f"fec {row}")
    report = {
        "benchmark": "wzp bench cpu",
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "note": "process CPU time; full duplex = one sending half + one receiving half",
        "tiers": tiers,
        "fec_backends": fec,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    return report
