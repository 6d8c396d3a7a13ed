"""The ``wzp`` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__

if TYPE_CHECKING:  # the call machinery loads only for the commands that need it
    from .media.call import CallEngine
    from .net.quic import WzpConnection
    from .proto.session import EndReason

#: Where the daemon keeps its identity on a handset (systemd StateDirectory=wzp).
SYSTEM_IDENTITY = Path("/var/lib/wzp/identity.seed")


def default_identity_path() -> Path:
    """``$WZP_IDENTITY``; else the system path for root and on an installed handset (its
    state folder exists, even when this user may not look inside); else the user's data
    folder."""
    env = os.environ.get("WZP_IDENTITY")
    if env:
        return Path(env)
    if os.geteuid() == 0 or _installed(SYSTEM_IDENTITY.parent):
        return SYSTEM_IDENTITY
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "wzp" / "identity.seed"


def _why(exc: BaseException) -> str:
    """An exception as a reason; a bare timeout says so (its text is empty)."""
    text = str(exc)
    if text:
        return text
    return "no answer (timed out)" if isinstance(exc, TimeoutError) else type(exc).__name__


def _ended(reason: EndReason | None, engine: CallEngine, conn: WzpConnection) -> str:
    """The line ``wzp listen``/``dial`` print when a connection's call is over."""
    if reason is None:  # the connection ended before any call came up on it
        why = engine.session.end_detail or conn.close_reason or "no call offered"
        return f"connection closed with no call ({why})"
    return f"call ended: {reason.value} ({engine.session.end_detail}); rekeys {engine.stats.rekeys}"


def _installed(state_dir: Path) -> bool:
    """Whether the handset's state folder is there. It is 0700 for the daemon's user: a
    test of the seed file itself raises PermissionError for others (Python 3.11) or says
    False (3.13), and a user's own new identity would then be made and shown instead."""
    try:
        return state_dir.is_dir()
    except OSError:
        return False


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
        print(
            f"wzp identity: no identity at {path} (run without --no-create to make one)",
            file=sys.stderr,
        )
        return 1
    except PermissionError as exc:
        # the daemon's seed is readable by the daemon only: ask it for the fingerprint
        fp = _daemon_fingerprint()
        if fp is not None:
            print(fp)
            return 0
        print(
            f"wzp identity: {path} is readable by root and the daemon only, and no daemon "
            f"answered: run sudo wzp identity ({exc.strerror or exc})",
            file=sys.stderr,
        )
        return 2
    except (SeedFileError, IsADirectoryError, NotADirectoryError) as exc:
        print(f"wzp identity: {exc}", file=sys.stderr)
        return 2
    if created:
        print(f"wzp identity: created a new identity at {path} (mode 0600)", file=sys.stderr)
    print(ident.fingerprint_text)
    return 0


def _daemon_fingerprint() -> str | None:
    from .daemon.commands import DEFAULT_SOCKET
    from .daemon.control import ControlError, NotRunning, request

    path = Path(os.environ.get("WZP_CONTROL") or DEFAULT_SOCKET)
    try:
        return str(request(path, "identity", timeout=2.0)["fingerprint"])
    except (NotRunning, ControlError, OSError, KeyError, TypeError):
        return None


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

    listen = sub.add_parser(
        "listen",
        help="answer calls (audio from/to files)",
        description="Wait for calls and answer them; print call state and link statistics "
        "once a second.",
    )
    _call_args(listen)
    listen.add_argument("--port", type=int, default=DEFAULT_PORT)
    listen.add_argument(
        "--host", action="append", help="address to listen on (repeatable; default: 0.0.0.0 and ::)"
    )
    listen.add_argument(
        "--answer-after",
        type=float,
        default=0.0,
        metavar="S",
        help="answer this long after ringing starts (default 0)",
    )
    listen.add_argument(
        "--allow",
        action="append",
        metavar="FINGERPRINT",
        help="accept only these callers (repeatable; default: anyone)",
    )
    listen.add_argument("--once", action="store_true", help="exit after the first call")
    listen.set_defaults(func=_cmd_listen)

    dial = sub.add_parser(
        "dial",
        help="call a peer (audio from/to files)",
        description="Call HOST[:PORT], whose identity must be FINGERPRINT; print call state "
        "and link statistics once a second.",
    )
    dial.add_argument("target", metavar="HOST[:PORT]")
    dial.add_argument("--peer", required=True, metavar="FINGERPRINT")
    _call_args(dial)
    dial.set_defaults(func=_cmd_dial)

    bench = sub.add_parser("bench", help="reproducible benchmarks that write JSON results")
    bsub = bench.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    q = bsub.add_parser(
        "quality",
        help="real speech through the whole pipeline over a simulated lossy link",
        description="Speech quality (PESQ, STOI), residual loss, delay and wire rate at "
        "0-70 % loss, random and bursty, 300 ms one-way delay, against two Opus baselines.",
    )
    q.add_argument("--out", type=Path, required=True, help="JSON results file")
    q.add_argument("--speech", type=Path, help="8 or 16 kHz mono WAV, or raw s16 at 8 kHz")
    q.add_argument("--seed", type=int, default=1)
    q.add_argument("--keep-audio", type=Path, metavar="DIR", help="write reference and outputs")
    q.add_argument(
        "--pin",
        metavar="TIERS",
        help="instead: each of these tiers alone (comma-separated, e.g. heavy,dense,severe), "
        "random vs bursty at 10/20/30 %% loss, and the PESQ gap between them",
    )
    q.add_argument(
        "--pin-losses",
        metavar="PCTS",
        default="10,20,30",
        help="with --pin: the loss points, in %% (comma-separated, 1-75; default 10,20,30)",
    )
    q.set_defaults(func=_cmd_bench_quality)
    t = bsub.add_parser(
        "transport", help="datagrams over real QUIC through a lossy link: delivery, queueing, CPU"
    )
    t.add_argument("--out", type=Path, required=True, help="JSON results file")
    t.add_argument("--seed", type=int, default=1)
    t.set_defaults(func=_cmd_bench_transport)
    c = bsub.add_parser("cpu", help="CPU per second of audio for each tier, and FEC backends")
    c.add_argument("--out", type=Path, required=True, help="JSON results file")
    c.add_argument("--speech", type=Path, help="8 or 16 kHz mono WAV, or raw s16 at 8 kHz")
    c.set_defaults(func=_cmd_bench_cpu)
    r = bsub.add_parser(
        "relay", help="concurrent two-member calls through a relay process: CPU, added latency"
    )
    r.add_argument("--out", type=Path, required=True, help="JSON results file")
    r.add_argument("--seed", type=int, default=1)
    r.set_defaults(func=_cmd_bench_relay)

    from .daemon.commands import add_parsers
    from .relay.commands import add_relay_parser
    from .sdcard.commands import add_sdcard_parser

    add_parsers(sub)
    add_relay_parser(sub)
    add_sdcard_parser(sub)
    return parser


DEFAULT_PORT = 4433


def _call_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--identity", type=Path, help="seed file (default as for `wzp identity`)")
    p.add_argument(
        "--in",
        dest="in_",
        type=Path,
        metavar="FILE",
        help="audio to send: mono WAV (8/16/48 kHz) or raw s16 at 8 kHz",
    )
    p.add_argument("--out", type=Path, metavar="FILE", help="write what was heard (48 kHz WAV)")
    p.add_argument(
        "--audio",
        metavar="DEVICE",
        help="ALSA device for what --in/--out do not cover: 'auto' (the first USB card) or a "
        "name such as plughw:CARD=Device,DEV=0 (default: silence out, nothing kept)",
    )
    p.add_argument("--duration", type=float, metavar="S", help="hang up after this long")
    p.add_argument("--alias", help="name shown to the peer")
    p.add_argument(
        "--rekey-after",
        type=float,
        metavar="S",
        help="rekey this often (default: SPEC's 2^15 packets or 10 minutes)",
    )


def _call_setup(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Identity and audio for listen/dial; raises SystemExit with a clear message."""
    from .audio.files import AudioFileError, Discard, FileSink, FileSource, Silence
    from .crypto.identity import Identity
    from .daemon.identity_store import SeedFileError, load_or_create_seed, load_seed

    path = args.identity or default_identity_path()
    try:
        ident = (
            Identity.from_seed(load_seed(path)) if path.exists() else load_or_create_seed(path)[0]
        )
    except (SeedFileError, OSError) as exc:
        raise SystemExit(f"wzp: identity: {exc}") from None

    try:
        source = FileSource(args.in_) if args.in_ else Silence()
    except AudioFileError as exc:
        raise SystemExit(f"wzp: --in: {exc}") from None
    sink = FileSink(args.out) if args.out else Discard()
    device = None
    if args.audio and not (args.in_ and args.out):
        from .daemon.commands import make_audio_device

        device = make_audio_device(args.audio, args.audio)
        device.start()
        source = source if args.in_ else device
        sink = sink if args.out else device
    return ident, source, sink, device


def _close_audio(sink, device) -> None:  # type: ignore[no-untyped-def]
    """Audio threads first (rule 4), then the file."""
    if device is not None:
        device.stop()
    if sink is not device:
        sink.close()


def _print_status(status) -> None:  # type: ignore[no-untyped-def]
    print(status.line(), flush=True)


def _cmd_listen(args: argparse.Namespace) -> int:
    import asyncio

    from .crypto.identity import parse_fingerprint
    from .media.call import CallEngine
    from .media.codecs import make_frame_decoder, make_tier_encoder
    from .net.callrunner import CallRunner
    from .net.quic import serve_wzp

    ident, source, sink, device = _call_setup(args)
    try:
        allowed = {parse_fingerprint(f) for f in args.allow or []}
    except ValueError as exc:
        print(f"wzp listen: --allow: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        active: list[CallRunner] = []
        done = asyncio.Event()

        async def on_connection(conn) -> None:  # type: ignore[no-untyped-def]
            engine = CallEngine(
                ident,
                make_tier_encoder,
                make_frame_decoder,
                accept=(lambda fp: fp in allowed) if allowed else (lambda fp: True),
                refusal="is not in --allow",
                alias=args.alias,
                rekey_after_s=args.rekey_after,
            )
            runner = CallRunner(
                engine,
                conn,
                source,
                sink,
                busy=lambda: bool(active) and active[0] is not runner,
                on_status=_print_status,
                answer_after=args.answer_after,
            )
            first = not active
            if first:
                active.append(runner)
            try:
                reason = await runner.run(args.duration)
            finally:
                await conn.aclose(runner.close_phrase())
                if first:
                    active.clear()
                    _close_audio(sink, device)
            print(_ended(reason, engine, conn), flush=True)
            for ev in engine.take_events():
                if ev.kind in ("refused", "stale", "error"):
                    print(f"  {ev.kind}: {ev.detail}", flush=True)
            if args.once and first:
                done.set()

        server = await serve_wzp(args.host or None, args.port, ident, on_connection)
        print(f"listening on port {args.port} as {ident.fingerprint_text}", flush=True)
        try:
            await done.wait()
        finally:
            server.close()
        return 0

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 130


def _cmd_dial(args: argparse.Namespace) -> int:
    import asyncio

    from .crypto.identity import parse_fingerprint
    from .media.call import CallEngine
    from .media.codecs import make_frame_decoder, make_tier_encoder
    from .net.callrunner import CallRunner
    from .net.quic import PeerFingerprintMismatch, connect_wzp

    try:
        peer = parse_fingerprint(args.peer)
    except ValueError as exc:
        print(f"wzp dial: --peer: {exc}", file=sys.stderr)
        return 2
    host, _, port_s = (
        args.target.rpartition(":")
        if args.target.count(":") == 1
        else (args.target.strip("[]"), "", "")
    )
    if not host:
        host, port_s = args.target, ""
    try:
        port = int(port_s) if port_s else DEFAULT_PORT
    except ValueError:
        print(f"wzp dial: bad port in {args.target!r}", file=sys.stderr)
        return 2
    ident, source, sink, device = _call_setup(args)

    async def main() -> int:
        try:
            conn = await connect_wzp(host, port, ident, expected_fingerprint=peer)
        except PeerFingerprintMismatch as exc:
            print(f"wzp dial: refused: {exc}", file=sys.stderr)
            return 1
        except (OSError, ConnectionError, TimeoutError) as exc:
            print(
                f"wzp dial: cannot reach {host}:{port}: {_why(exc)}",
                file=sys.stderr,
            )
            return 1
        engine = CallEngine(
            ident,
            make_tier_encoder,
            make_frame_decoder,
            alias=args.alias,
            rekey_after_s=args.rekey_after,
        )
        runner = CallRunner(engine, conn, source, sink, on_status=_print_status)
        runner.dial(peer)
        try:
            reason = await runner.run(args.duration)
        finally:
            await conn.aclose(runner.close_phrase())
            _close_audio(sink, device)
        print(_ended(reason, engine, conn), flush=True)
        return 0 if reason is not None and reason.value == "Normal" else 1

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 130


def _bench_log(line: str) -> None:
    print(line, flush=True)


def _cmd_bench_quality(args: argparse.Namespace) -> int:
    from .bench.quality import run_pinned, run_quality
    from .bench.speech import SpeechError

    if args.pin:
        try:
            losses = tuple(int(x) for x in args.pin_losses.split(",") if x.strip())
        except ValueError:
            losses = ()
        # 75 %: the most the bursty model (mean burst 3) can hold
        if not losses or not all(1 <= x <= 75 for x in losses):
            print(
                f"wzp bench quality: --pin-losses wants whole percentages from 1 to 75, "
                f"comma-separated (got {args.pin_losses!r})",
                file=sys.stderr,
            )
            return 2
        try:
            pinned = run_pinned(
                args.out, tuple(t.strip() for t in args.pin.split(",") if t.strip()),
                losses, speech=args.speech, seed=args.seed, log=_bench_log,
            )  # fmt: skip
        except (SpeechError, KeyError) as exc:
            print(f"wzp bench quality: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.out}: bursty - random PESQ per tier alone (target >= -0.3)")
        for row in pinned["rows"]:
            print(f"  {row['tier']:8s} {row['loss_pct']:2d} %: {row['pesq_gap']:+.2f}")
        return 0
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


def _cmd_bench_transport(args: argparse.Namespace) -> int:
    from .bench.transport import run_transport

    run_transport(args.out, args.seed, log=_bench_log)
    print(f"wrote {args.out}")
    return 0


def _cmd_bench_relay(args: argparse.Namespace) -> int:
    from .bench.relay import run_relay_bench

    report = run_relay_bench(args.out, args.seed, log=_bench_log)
    met = "met" if report["target_met"] else "NOT met"
    print(f"wrote {args.out}: 20-call target {met}; contended points {report['contended_points']}")
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
