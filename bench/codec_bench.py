"""Time every codec tier and the resampler, per 20 ms of audio, on real speech.

Usage::

    PYTHONPATH=device python bench/codec_bench.py --out bench/results/codec.json

Input is hts1a.raw from codec2-examples (8 kHz), upsampled to 48 kHz with our resampler.
For each tier at its SPEC frame duration (Opus complexity 5 unless ``--complexity``), the
whole file is encoded then decoded packet by packet, ``--repeat`` times; the figure is the
median over repeats of CPU time (``time.process_time_ns``) per packet, scaled to 20 ms of
audio. Also reported: mean payload bytes, the nominal codec delay (samples at 48 kHz) and
the resampler's cost per 20 ms frame each way. Fixed settings, no tuning.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT / "device"))

from wzp.codec.opus import libopus_version  # noqa: E402
from wzp.codec.resample import DELAY_48K, Downsampler, Upsampler, upsample  # noqa: E402
from wzp.codec.tiers import codec_delay_48k, make_decoder, make_encoder  # noqa: E402
from wzp.proto.codecs import CODEC_INFO, CodecId  # noqa: E402

SPEECH = Path("/usr/share/codec2/raw/hts1a.raw")
TIERS = [
    CodecId.Opus64k,
    CodecId.Opus24k,
    CodecId.Opus16k,
    CodecId.Opus6k,
    CodecId.Codec2_3200,
    CodecId.Codec2_1200,
]


def _cpu_us_per_20ms(fn: Any, items: list[Any], frame_ms: int, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.process_time_ns()
        for item in items:
            fn(item)
        runs.append((time.process_time_ns() - start) / len(items))
    return statistics.median(runs) / 1000.0 * 20 / frame_ms


def bench_tier(codec: CodecId, x: np.ndarray, complexity: int, repeat: int) -> dict[str, Any]:
    frame_ms = CODEC_INFO[codec].frame_ms
    n = frame_ms * 48
    frames = [x[i : i + n] for i in range(0, len(x) - n + 1, n)]
    enc = make_encoder(codec, complexity=complexity)
    packets = [enc.encode(f) for f in frames]  # warm-up, and the packets to decode

    def encode_all(f: np.ndarray, enc: Any = enc) -> None:
        enc.encode(f)

    enc_us = _cpu_us_per_20ms(encode_all, frames, frame_ms, repeat)
    dec = make_decoder(codec)
    for p in packets:
        dec.decode(p)
    dec_us = _cpu_us_per_20ms(dec.decode, packets, frame_ms, repeat)
    return {
        "codec": codec.name,
        "frame_ms": frame_ms,
        "encode_us_per_20ms": round(enc_us, 1),
        "decode_us_per_20ms": round(dec_us, 1),
        "mean_payload_bytes": round(float(np.mean([len(p) for p in packets])), 1),
        "delay_samples_48k": codec_delay_48k(codec),
    }


def bench_resampler(x: np.ndarray, repeat: int) -> dict[str, Any]:
    frames48 = [x[i : i + 960] for i in range(0, len(x) - 959, 960)]
    down = Downsampler()
    frames8 = [down.process(f) for f in frames48]
    up = Upsampler()
    return {
        "down_48k_to_8k_us_per_20ms": round(
            _cpu_us_per_20ms(Downsampler().process, frames48, 20, repeat), 1
        ),
        "up_8k_to_48k_us_per_20ms": round(_cpu_us_per_20ms(up.process, frames8, 20, repeat), 1),
        "delay_samples_48k_each_way": DELAY_48K,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=_ROOT / "bench" / "results" / "codec.json")
    ap.add_argument("--complexity", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if not SPEECH.is_file():
        sys.exit(f"{SPEECH} missing: run ./install.sh --dev (codec2-examples)")
    x = upsample(np.fromfile(SPEECH, dtype="<i2").astype(np.int16))
    result = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "libopus": libopus_version(),
        "input": SPEECH.name,
        "opus_complexity": args.complexity,
        "tiers": [bench_tier(c, x, args.complexity, args.repeat) for c in TIERS],
        "resampler": bench_resampler(x, args.repeat),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
