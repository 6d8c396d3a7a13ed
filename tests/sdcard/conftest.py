from __future__ import annotations

from pathlib import Path

import pytest

from wzp.sdcard.payload import build_wheel, checkout_root

GOOD_CONFIG = """# the handset's config, as a user writes it
[board]
pin_factory = "mock"

[call]
default_contact = "kitchen"

[contacts.kitchen]
fingerprint = "00112233445566778899aabbccddeeff"
address = "192.168.1.20"
"""


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout's wheel, built once for the whole session."""
    return build_wheel(checkout_root(), tmp_path_factory.mktemp("wheel"))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "handset.toml"
    path.write_text(GOOD_CONFIG)
    return path
