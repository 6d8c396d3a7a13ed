from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from wzp.daemon.identity_store import SeedFileError, load_or_create_seed, load_seed, write_seed


def test_seed_file_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "state" / "identity.seed"
    first, created = load_or_create_seed(path)
    assert created
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o600
    assert len(path.read_bytes()) == 32
    again, created_again = load_or_create_seed(path)
    assert not created_again
    assert again.fingerprint == first.fingerprint
    # no temporary files left behind
    assert sorted(p.name for p in path.parent.iterdir()) == ["identity.seed"]


def test_seed_file_refusals(tmp_path: Path) -> None:
    path = tmp_path / "identity.seed"
    write_seed(path, bytes(32))
    os.chmod(path, 0o644)
    with pytest.raises(SeedFileError, match="chmod 600"):
        load_seed(path)
    os.chmod(path, 0o600)
    path.write_bytes(b"short")
    with pytest.raises(SeedFileError, match="32 bytes"):
        load_seed(path)
    with pytest.raises(FileNotFoundError):
        load_seed(tmp_path / "missing")
