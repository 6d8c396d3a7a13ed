"""``wzp sdcard prepare TARGET --config FILE [--offline] [--undo]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_sdcard(args: argparse.Namespace) -> int:
    from . import SdcardError
    from .prepare import Options, prepare, undo

    opts = Options(
        target=Path(args.target),
        config=Path(args.config) if args.config else None,
        offline=args.offline,
        undo=args.undo,
    )

    def log(line: str) -> None:
        print(line, flush=True)

    try:
        if args.undo:
            if args.config or args.offline:
                print("wzp sdcard prepare: --undo takes no --config or --offline", file=sys.stderr)
                return 2
            return undo(opts, log)
        return prepare(opts, log)
    except SdcardError as exc:
        print(f"wzp sdcard prepare: refused: {exc}", file=sys.stderr)
        return 1


def add_sdcard_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sdcard = sub.add_parser(
        "sdcard", help="prepare a Raspberry Pi OS card so that it boots into a handset"
    )
    ssub = sdcard.add_subparsers(dest="sdcard_action", metavar="ACTION", required=True)
    prep = ssub.add_parser(
        "prepare",
        help="put wzp, your config and a first-boot hook on a freshly written card",
        description="TARGET is the card's boot partition (the bootfs folder a laptop shows), "
        "an image file (.img) or an unmounted block device. Only the FAT boot partition is "
        "written; nothing is mounted. Run it again to refresh the card; --undo restores it.",
    )
    prep.add_argument("target", metavar="TARGET", help="boot folder, .img file or block device")
    prep.add_argument(
        "--config",
        metavar="FILE",
        help="the handset's wzp.toml, checked first (required, except with --undo)",
    )
    prep.add_argument(
        "--offline",
        action="store_true",
        help="also place the aarch64 wheels (Python 3.11 and 3.13) and the arm64 Debian "
        "packages Raspberry Pi OS Lite lacks (libopus0, and the headers pyalsaaudio builds "
        "with; fetched with this machine's apt-get): no internet needed at first boot",
    )
    prep.add_argument(
        "--undo", action="store_true", help="remove what prepare added, restore what it changed"
    )
    prep.set_defaults(func=cmd_sdcard)
