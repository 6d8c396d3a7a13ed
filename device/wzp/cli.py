"""The ``wzp`` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__

#: Where the daemon keeps its identity on a handset (systemd StateDirectory=wzp).
SYSTEM_IDENTITY = Path("/var/lib/wzp/identity.seed")


def default_identity_path() -> Path:
    """``$WZP_IDENTITY``; else the system path for root; else the user's data folder."""
    env = os.environ.get("WZP_IDENTITY")
    if env:
        return Path(env)
    if os.geteuid() == 0 or SYSTEM_IDENTITY.exists():
        return SYSTEM_IDENTITY
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "wzp" / "identity.seed"


def _cmd_identity(args: argparse.Namespace) -> int:
    from .crypto.identity import Identity
    from .daemon.identity_store import SeedFileError, load_or_create_seed, load_seed

    path: Path = args.path or default_identity_path()
    try:
        if args.no_create:
            ident = Identity.from_seed(load_seed(path))
            created = False
        else:
            ident, created = load_or_create_seed(path)
    except FileNotFoundError:
        print(f"wzp identity: no identity at {path} (run without --no-create to make one)",
              file=sys.stderr)  # fmt: skip
        return 1
    except (SeedFileError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        print(f"wzp identity: {exc}", file=sys.stderr)
        return 2
    if created:
        print(f"wzp identity: created a new identity at {path} (mode 0600)", file=sys.stderr)
    print(ident.fingerprint_text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wzp",
        description="WZP handset: push-to-talk / intercom calls that survive very lossy links.",
    )
    parser.add_argument("--version", action="version", version=f"wzp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    ident = sub.add_parser(
        "identity",
        help="show this device's fingerprint (creating the identity if missing)",
        description="Print the identity fingerprint that peers put in their contacts. "
        "The secret seed is never printed.",
    )
    ident.add_argument(
        "--path",
        type=Path,
        help="seed file (default: $WZP_IDENTITY, /var/lib/wzp/identity.seed as root, "
        "else ~/.local/share/wzp/identity.seed)",
    )
    ident.add_argument(
        "--no-create", action="store_true", help="fail instead of creating a missing identity"
    )
    ident.set_defaults(func=_cmd_identity)

    bench = sub.add_parser("bench", help="reproducible benchmarks that write JSON results")
    bsub = bench.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    q = bsub.add_parser(
        "quality",
        help="real speech through the whole pipeline over a simulated lossy link",
        description="Speech quality (PESQ, STOI), residual loss, delay and wire rate at "
        "0-70 %% loss, random and bursty, 300 ms one-way delay, against two Opus baselines.",
    )
    q.add_argument("--out", type=Path, required=True, help="JSON results file")
    q.add_argument("--speech", type=Path, help="8 or 16 kHz mono WAV, or raw s16 at 8 kHz")
    q.add_argument("--seed", type=int, default=1)
    q.add_argument("--keep-audio", type=Path, metavar="DIR", help="write reference and outputs")
    q.set_defaults(func=_cmd_bench_quality)
    c = bsub.add_parser("cpu", help="CPU per second of audio for each tier, and FEC backends")
    c.add_argument("--out", type=Path, required=True, help="JSON results file")
    c.add_argument("--speech", type=Path, help="8 or 16 kHz mono WAV, or raw s16 at 8 kHz")
    c.set_defaults(func=_cmd_bench_cpu)
    return parser


def _bench_log(line: str) -> None:
    print(line, flush=True)


def _cmd_bench_quality(args: argparse.Namespace) -> int:
    from .bench.quality import run_quality
    from .bench.speech import SpeechError

    try:
        report = run_quality(args.out, args.speech, args.seed, args.keep_audio, log=_bench_log)
    except SpeechError as exc:
        print(f"wzp bench quality: {exc}", file=sys.stderr)
        return 2
    met = [c for c in report["checks"] if c["met"]]
    print(f"wrote {args.out}: {len(met)}/{len(report['checks'])} targets met")
    for c in report["checks"]:
        if not c["met"]:
            print(f"  not met: {c['target']} (measured {c['measured']})")
    return 0


def _cmd_bench_cpu(args: argparse.Namespace) -> int:
    from .bench.cpu import run_cpu
    from .bench.speech import SpeechError

    try:
        run_cpu(args.out, args.speech, log=_bench_log)
    except SpeechError as exc:
        print(f"wzp bench cpu: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
