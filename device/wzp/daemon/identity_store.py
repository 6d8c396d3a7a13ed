"""The identity seed file: 32 bytes, mode 0600, written atomically, never logged."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..crypto.identity import SEED_LEN, Identity


class SeedFileError(Exception):
    """The seed file exists but cannot be used (wrong size, unreadable, too open)."""


def load_seed(path: Path) -> bytes:
    """Read a seed file; refuse one with the wrong size or readable by others."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SeedFileError(f"{path}: cannot stat: {exc.strerror}") from None
    if st.st_mode & 0o077:
        raise SeedFileError(
            f"{path}: mode {st.st_mode & 0o777:04o} lets other users read the identity; "
            f"run: chmod 600 {path}"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SeedFileError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) != SEED_LEN:
        raise SeedFileError(
            f"{path}: an identity seed file holds {SEED_LEN} bytes, not {len(data)}"
        )
    return data


def write_seed(path: Path, seed: bytes) -> None:
    """Write ``seed`` atomically with mode 0600 (temp file in the same folder, fsync, rename)."""
    if len(seed) != SEED_LEN:
        raise ValueError(f"an identity seed has {SEED_LEN} bytes")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".seed-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, seed)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_create_seed(path: Path) -> tuple[Identity, bool]:
    """The identity stored at ``path``, creating it if missing. Returns (identity, created)."""
    try:
        return Identity.from_seed(load_seed(path)), False
    except FileNotFoundError:
        pass
    ident = Identity.generate()
    write_seed(path, ident.seed_bytes())
    return ident, True
