"""``python -m wzp.sdcard.bootapply BOOT ROOT``: what the handset's service does when it
first starts, against a staged root (the first-boot rehearsal): the identity is created at
``ROOT/var/lib/wzp/identity.seed`` (mode 0600), and ``BOOT/wzp.toml`` is checked together
with ``ROOT/etc/wzp/wzp.toml`` and applied to ``ROOT/etc/wzp/boot.toml`` (renamed
``.applied``) or refused (renamed ``.error`` with the reasons), exactly as ``wzp config
apply-boot`` does on the Pi. On a Pi the unit's ExecStartPre and ``install.sh`` do this.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from ..daemon.config import BOOT_NAME, apply_boot_config
from ..daemon.identity_store import SeedFileError, load_or_create_seed


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m wzp.sdcard.bootapply BOOT ROOT", file=sys.stderr)
        return 2
    boot, root = Path(args[0]), Path(args[1])
    seed = root / "var/lib/wzp/identity.seed"
    try:
        ident, created = load_or_create_seed(seed)
    except (SeedFileError, OSError) as exc:
        print(f"identity {seed}: {exc}", file=sys.stderr)
        return 1
    print(f"identity: {ident.fingerprint_text} ({'created' if created else 'kept'}: {seed})")
    boot_file = boot / BOOT_NAME
    if not boot_file.exists():
        print(f"{boot_file}: none (nothing to apply)")
        return 0
    etc = root / "etc/wzp"
    result = apply_boot_config(boot_file, etc / "wzp.toml", etc / "boot.toml")
    if result.applied:
        print(f"applied {boot_file} (now {result.renamed_to})")
    else:
        print(f"refused {boot_file}, renamed {result.renamed_to}:\n{result.error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
