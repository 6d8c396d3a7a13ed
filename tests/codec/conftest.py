"""Shared fixtures for the codec tests: real speech from codec2-examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wzp.codec.resample import upsample

RAW = Path("/usr/share/codec2/raw")


def load_raw(name: str) -> np.ndarray:
    """An 8 kHz s16 mono speech file from codec2-examples; fail (never skip) if missing."""
    path = RAW / name
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: the codec tests need real speech from the codec2-examples "
            "package; run ./install.sh --dev",
            pytrace=False,
        )
    return np.fromfile(path, dtype="<i2").astype(np.int16)


@pytest.fixture(scope="session")
def speech48() -> np.ndarray:
    """hts1a.raw (3 s of male speech) upsampled to 48 kHz with our resampler."""
    return upsample(load_raw("hts1a.raw"))


@pytest.fixture(scope="session")
def long_speech48() -> np.ndarray:
    """hts1a + hts2a + morig (about 10 s, two speakers) at 48 kHz."""
    return upsample(np.concatenate([load_raw(n) for n in ("hts1a.raw", "hts2a.raw", "morig.raw")]))
