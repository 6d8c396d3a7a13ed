from __future__ import annotations

import numpy as np
import pytest

from wzp.bench.speech import DEFAULT_SPEECH, load_speech, resample, to_int16


@pytest.fixture(scope="session")
def speech48() -> np.ndarray:
    """Real recorded speech at 48 kHz (Debian's codec2-examples, via ./install.sh --dev)."""
    assert DEFAULT_SPEECH.exists(), f"{DEFAULT_SPEECH} missing: run ./install.sh --dev"
    raw, rate = load_speech(DEFAULT_SPEECH)
    return to_int16(resample(raw, rate, 48_000))
