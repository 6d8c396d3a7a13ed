"""The daemon's ``wzp`` subcommands: run, status, call, answer, hangup, ptt, test, contacts,
config, leds, demo. ``wzp.cli`` builds the parser; these do the work.

Commands that act on a running daemon talk to it over the control socket (lgpio
claims pins exclusively, so only the daemon can read them); ``wzp status``, ``wzp test``
and ``wzp contacts`` fall back to local checks when no daemon runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from .control import ControlError, NotRunning, another_daemon_text, request, someone_listens
from .startup import EXIT_CONFIG, identity_problem, listen_error

log = logging.getLogger("wzp")

DEFAULT_CONFIG = Path("/etc/wzp/wzp.toml")
DEFAULT_SOCKET = Path("/run/wzp/control.sock")
DEFAULT_STATE = Path("/var/lib/wzp")
#: exit status of a refused configuration (sysexits EX_CONFIG); the unit does not
#: restart on it (RestartPreventExitStatus=78)
#: ``wzp status`` when no daemon answers (as ``systemctl status`` for a stopped unit)
EXIT_NOT_RUNNING = 3


def setup_logging(verbose: bool = False) -> None:
    """Logs to stderr; under systemd (``$JOURNAL_STREAM``) with ``<N>`` priority prefixes
    and no timestamps (journald adds its own)."""
    level = logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("quic", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


#: syslog priorities journald reads from a ``<N>`` prefix
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 2)
        text = super().format(record)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def socket_path(args: argparse.Namespace) -> Path:
    if getattr(args, "socket", None):
        return Path(args.socket)
    env = os.environ.get("WZP_CONTROL")
    return Path(env) if env else DEFAULT_SOCKET


def _ask(args: argparse.Namespace, cmd: str, **kw: Any) -> Any:
    """A command for the running daemon; prints the refusal and exits 1 on error."""
    try:
        return request(socket_path(args), cmd, **kw)
    except NotRunning as exc:
        print(f"wzp: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_NOT_RUNNING) from None
    except PermissionError:
        print(
            f"wzp: no permission on {socket_path(args)}: run as root or join the wzp group "
            "(sudo usermod -aG wzp $USER, then log in again)",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    except ControlError as exc:
        print(f"wzp {cmd.replace('_', ' ')}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


# -- config --------------------------------------------------------------------------------


def load_daemon_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The config the daemon runs with, or SystemExit(78) listing every bad line."""
    from .config import ConfigError, load_config

    path = Path(args.config)
    overlay = path.parent / "boot.toml"
    try:
        return load_config(path, overlay if overlay.exists() else None)
    except ConfigError as exc:
        print(f"wzp: configuration refused:\n{exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_config(args: argparse.Namespace) -> int:
    from .config import BOOT_DIRS, apply_boot_config, find_boot_config, render_template

    if args.action == "template":
        sys.stdout.write(render_template())
        return 0
    if args.action == "check":
        path = Path(args.config)
        if not path.exists() and path != DEFAULT_CONFIG:
            # the daemon starts on the defaults without a file; a path typed by hand that
            # is not there is a mistake, not a valid configuration
            print(f"wzp: configuration refused: {path} does not exist", file=sys.stderr)
            return EXIT_CONFIG
        cfg = load_daemon_config(args)
        sources = ", ".join(str(p) for p in cfg.sources)
        print(f"configuration OK ({sources or f'defaults: there is no {path}'})")
        return 0
    # apply-boot (root, from the unit's ExecStartPre)
    boot = find_boot_config(BOOT_DIRS)
    if boot is None:
        return 0
    path = Path(args.config)
    result = apply_boot_config(boot, path, path.parent / "boot.toml")
    if result.applied:
        print(f"applied {boot} (now {result.renamed_to})")
        return 0
    print(f"wzp: {boot} refused, renamed {result.renamed_to}:\n{result.error}", file=sys.stderr)
    return 0  # the daemon still starts, on the configuration it had


# -- the daemon ----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    cfg = load_daemon_config(args)
    # before the pins and the UDP port, which a running daemon holds: say what is wrong
    if someone_listens(cfg.control_socket):
        print(f"wzp: {another_daemon_text(cfg.control_socket)}", file=sys.stderr)
        return 1
    from ..board.board import Board
    from ..board.factory import GpioError, make_factory
    from ..board.profile import BoardError, load_profile
    from ..daemon.identity_store import SeedFileError, load_or_create_seed
    from .contacts import ContactStore
    from .handset import Handset
    from .notify import Notifier
    from .resources import ResourceMonitor

    try:
        profile = load_profile(cfg.board_profile)
    except BoardError as exc:
        print(f"wzp: board.profile: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if cfg.mode == "half-duplex" and "ptt" not in profile.buttons:
        print(
            f"wzp: call.mode = half-duplex needs a PTT button and board {profile.name!r} has "
            'none: set mode = "full-duplex" in [call]',
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        identity, created = load_or_create_seed(cfg.identity_path)
    except (SeedFileError, OSError) as exc:
        text, status = identity_problem(exc)
        print(f"wzp: identity {cfg.identity_path}: {text}", file=sys.stderr)
        return status
    if created:
        log.info("created a new identity at %s", cfg.identity_path)
    try:
        factory, gpio_desc = make_factory(cfg.pin_factory, cfg.gpio_chip)
    except GpioError as exc:
        print(f"wzp: GPIO: {exc}", file=sys.stderr)
        return 1
    log.info("GPIO: %s, board %s", gpio_desc, profile.name)
    board = Board(profile, factory, factory_description=gpio_desc)
    audio = _make_audio(cfg)
    state_dir = Path(os.environ.get("STATE_DIRECTORY", str(cfg.identity_path.parent)))
    handset = Handset(
        cfg,
        identity,
        board,
        audio,
        monitor=ResourceMonitor(cfg.max_cpu_pct, cfg.max_temp_c),
        notifier=Notifier(),
        contacts=ContactStore(state_dir / "contacts.toml"),
        gpio_description=gpio_desc,
    )

    refused = _refused_boot_file()
    if refused is not None:
        handset.report_problem(f"the boot partition's wzp.toml was refused: read {refused}")

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, handset.request_stop)
        try:
            await handset.start()
        except OSError as exc:
            why = listen_error(exc, cfg.listen_hosts, cfg.listen_port, "another wzp daemon")
            print(f"wzp: cannot start: {why or exc}", file=sys.stderr)
            await handset.stop()
            return 1
        try:
            await handset.run()
        finally:
            log.info("stopping")
            await handset.stop()
            factory.close()
        return 0

    return asyncio.run(main())


def _refused_boot_file() -> Path | None:
    """A ``wzp.toml.error`` on the boot partition newer than any applied file."""
    from .config import BOOT_DIRS

    for d in BOOT_DIRS:
        err, ok = d / "wzp.toml.error", d / "wzp.toml.applied"
        try:
            if err.exists() and (not ok.exists() or err.stat().st_mtime > ok.stat().st_mtime):
                return err
        except OSError:
            continue
    return None


def _make_audio(cfg):  # type: ignore[no-untyped-def]
    """The sound card, or files for ``file:PATH`` devices (the other side ``null``)."""
    cap, play = cfg.audio_capture, cfg.audio_playback
    if cap.startswith("file:") or play.startswith("file:"):
        from ..audio.files import AudioFileError, FileAudio

        for name, dev in (("capture", cap), ("playback", play)):
            if not (dev.startswith("file:") or dev == "null"):
                print(
                    f"wzp: audio.{name} = {dev!r}: with a file: device the other side must "
                    'be a file: device or "null"',
                    file=sys.stderr,
                )
                raise SystemExit(EXIT_CONFIG)
        try:
            return FileAudio(
                Path(cap[5:]) if cap.startswith("file:") else None,
                Path(play[5:]) if play.startswith("file:") else None,
            )
        except AudioFileError as exc:
            print(f"wzp: audio.capture: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_CONFIG) from None
    return make_audio_device(cap, play)


def make_audio_device(capture: str, playback: str):  # type: ignore[no-untyped-def]
    """The sound card as the daemon and ``wzp listen/dial --audio`` use it."""
    from ..audio.alsa import AudioDevice, open_pcm
    from ..audio.cards import list_cards, resolve_device

    def pcm_open(device: str, kind: str):  # type: ignore[no-untyped-def]
        # "auto" is resolved at every (re)open from a fresh card list
        return open_pcm(resolve_device(device, list_cards()), kind)

    # ring_periods=5: at most 100 ms of playback queued beyond the ALSA buffer
    return AudioDevice(capture, playback, pcm_open=pcm_open, ring_periods=5)


# -- talking to the daemon -----------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from .statusfmt import format_status

    try:
        st = request(socket_path(args), "status", timeout=2.0)
    except (NotRunning, PermissionError, ControlError, OSError) as exc:
        if args.json:
            print(json.dumps({"running": False, "error": str(exc)}))
        else:
            print(f" ✗ daemon     not running or not reachable: {exc}")
            print(_local_checks(args))
        return EXIT_NOT_RUNNING
    if args.json:
        print(json.dumps({"running": True, **st}, indent=1, sort_keys=True))
    elif "rooms" in st:  # the socket is a relay's
        from .statusfmt import format_relay_status

        print(format_relay_status(st))
    else:
        print(format_status(st))
    return 0


def _local_checks(args: argparse.Namespace) -> str:
    """What can be checked without the daemon (no pins opened: lgpio claims them)."""
    from ..audio.cards import card_of, list_cards
    from .config import ConfigError, load_config

    out = []
    path = Path(args.config)
    try:
        cfg = load_config(
            path, path.parent / "boot.toml" if (path.parent / "boot.toml").exists() else None
        )
        out.append(
            f" ✓ config     {', '.join(str(p) for p in cfg.sources) or 'defaults (no file)'}"
        )
    except ConfigError as exc:
        out.append(" ✗ config     " + str(exc).replace("\n", "\n              "))
        cfg = None
    if cfg is not None:
        ident = cfg.identity_path
        try:
            ident.stat()
            out.append(f" ✓ identity   {ident} exists")
        except FileNotFoundError:
            out.append(f" ✗ identity   {ident} missing (the daemon creates it at start)")
        except OSError as exc:  # its folder is the daemon's (0700): not for this user
            out.append(f" ? identity   {ident}: cannot look ({exc.strerror}; sudo shows it)")
    cards = list_cards()
    devices = [cfg.audio_capture, cfg.audio_playback] if cfg is not None else ["auto"]
    # "null", "file:..." or a plugin such as "pulse" name no card: none is needed for them
    needs_card = any(
        d == "auto" or (not d.startswith("file:") and card_of(d) is not None) for d in devices
    )
    if cards:
        names = ", ".join(f"{c.id} ({c.name})" for c in cards)
        out.append(f" ✓ sound      cards: {names}")
    elif needs_card:
        out.append(" ✗ sound      no sound card found in /proc/asound/cards")
    else:
        shown = ", ".join(dict.fromkeys(devices))
        out.append(f" ✓ sound      no sound card; the config uses {shown}, which needs none")
    out.append("   hint       sudo systemctl status wzp-phone; journalctl -u wzp-phone -n 50")
    return "\n".join(out)


def cmd_simple(args: argparse.Namespace) -> int:
    """call / answer / hangup / ptt."""
    if args.command == "call":
        res = _ask(args, "call", target=args.target)
        print(f"calling {res['calling']}")
    elif args.command == "answer":
        _ask(args, "answer")
        print("answered")
    elif args.command == "hangup":
        res = _ask(args, "hangup")
        print(res["done"])
    elif args.command == "ptt":
        res = _ask(args, "ptt", action=args.action)
        print(f"ptt {res['ptt']}" + (" (muted)" if res.get("muted") else ""))
    return 0


def cmd_contacts(args: argparse.Namespace) -> int:
    if args.action == "list":
        rows = _ask(args, "contacts_list")
        if not rows:
            print("no contacts")
        for r in rows:
            print(f"{r['name']:<16} {r['fingerprint']}  {r['address']}  ({r['source']})")
    elif args.action == "add":
        r = _ask(
            args, "contacts_add", name=args.name, fingerprint=args.fingerprint, address=args.address
        )
        print(f"added {r['name']}: {r['fingerprint']} at {r['address']}")
    else:
        _ask(args, "contacts_remove", name=args.name)
        print(f"removed {args.name}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    if args.what == "audio":
        return _test_audio(args)

    def show(ev: dict[str, Any]) -> None:
        print(f"  {ev['t']:8.3f}s  {ev['role']:<12} {ev['kind']}", flush=True)

    try:
        request(socket_path(args), "identity", timeout=2.0)  # is a daemon holding the pins?
        if args.what == "leds":
            r = request(socket_path(args), "test_leds")
            print(f"cycling LEDs {', '.join(r['leds'])} for {r['seconds']:.0f} s: watch the box")
        else:
            print(f"press the buttons ({args.seconds:.0f} s)...", flush=True)
            request(
                socket_path(args),
                "test_buttons",
                seconds=args.seconds,
                on_event=show,
                timeout=args.seconds + 5,
            )
        return 0
    except NotRunning:
        # no daemon holds the pins: open them here (lgpio lets one process hold a pin)
        return _test_board_locally(args, show)
    except PermissionError:
        _ask(args, "status")  # prints the permission hint and exits
        return 1
    except ControlError as exc:
        print(f"wzp test {args.what}: {exc}", file=sys.stderr)
        return 1


def _test_board_locally(args: argparse.Namespace, show: Any) -> int:
    import time

    from ..board.board import Board
    from ..board.factory import GpioError, make_factory
    from ..board.profile import BoardError, load_profile

    cfg = load_daemon_config(args)
    try:
        factory, desc = make_factory(cfg.pin_factory, cfg.gpio_chip)
        board = Board(load_profile(cfg.board_profile), factory)
    except (GpioError, BoardError) as exc:
        print(f"wzp test {args.what}: {exc}", file=sys.stderr)
        return 1
    print(f"no daemon running: using the pins directly ({desc})", flush=True)
    t0 = time.monotonic()
    try:
        if args.what == "leds":
            end = t0 + board.test_leds()
            print(f"cycling LEDs {', '.join(board.snapshot()['leds'])}: watch the box", flush=True)
        else:
            end = t0 + args.seconds
            print(f"press the buttons ({args.seconds:.0f} s)...", flush=True)
        while (now := time.monotonic()) < end:
            for ev in board.poll(now):
                show({"t": ev.at - t0, "role": ev.role, "kind": ev.kind})
            board.tick(now)
            time.sleep(0.02)
    except KeyboardInterrupt:
        pass
    finally:
        board.close()
        factory.close()
    return 0


def _test_audio(args: argparse.Namespace) -> int:
    from ..audio.cards import list_cards, resolve_device
    from ..audio.probe import play_tone_and_measure

    cfg = load_daemon_config(args)
    try:
        running = request(socket_path(args), "status", timeout=2.0)
    except (NotRunning, PermissionError, ControlError, OSError):
        running = None
    if running is not None:
        a = running["audio"]
        print(
            "the daemon holds the sound card; its view: "
            f"state {a.get('state')}, capture {a.get('capture_dbfs')} dBFS, "
            f"playback {a.get('playback_dbfs')} dBFS (stop it to run the tone test: "
            "sudo systemctl stop wzp-phone)"
        )
        return 0
    # the devices the daemon would open: "auto" is the first USB card, else ALSA's default
    cards = list_cards()
    capture = resolve_device(cfg.audio_capture, cards)
    playback = resolve_device(cfg.audio_playback, cards)
    res = play_tone_and_measure(capture, playback)
    print(res.describe())
    # a tone not heard, or a microphone that captures nothing, fails the test too
    return 0 if res.error is None and res.tone_detected and not res.silent else 1


def cmd_leds_off(args: argparse.Namespace) -> int:
    """Turn every LED off (the unit's ExecStopPost: LEDs never stay lit by a dead daemon)."""
    from ..board.board import Board
    from ..board.factory import GpioError, make_factory
    from ..board.profile import BoardError, load_profile
    from .config import Config, ConfigError, load_config

    path = Path(args.config)
    try:
        cfg = load_config(
            path, path.parent / "boot.toml" if (path.parent / "boot.toml").exists() else None
        )
    except ConfigError:
        cfg = Config.default()  # a refused config must not leave LEDs lit: try the defaults
    try:
        factory, _ = make_factory(cfg.pin_factory, cfg.gpio_chip)
        Board(load_profile(cfg.board_profile), factory).close()
        factory.close()
    except (GpioError, BoardError) as exc:
        print(f"wzp leds off: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main

    setup_logging(args.verbose) if args.verbose else logging.basicConfig(level=logging.WARNING)
    return main(args.out, args.loss, args.rtt_ms, args.seed)


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config", default=str(DEFAULT_CONFIG), help="config file (default %(default)s)"
        )

    def with_socket(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--socket", help=f"control socket (default $WZP_CONTROL or {DEFAULT_SOCKET})"
        )

    run = sub.add_parser("run", help="run the handset daemon (systemd starts it)")
    with_config(run)
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=cmd_run)

    st = sub.add_parser("status", help="what the daemon is doing, and what is wrong")
    st.add_argument("--json", action="store_true", help="machine-readable (documented in README)")
    with_config(st)
    with_socket(st)
    st.set_defaults(func=cmd_status)

    call = sub.add_parser("call", help="call a contact (name) or a fingerprint in the contacts")
    call.add_argument("target", nargs="?", help="default: the configured default contact")
    with_socket(call)
    call.set_defaults(func=cmd_simple)
    for name, text in (("answer", "answer the ringing call"), ("hangup", "hang up or decline")):
        p = sub.add_parser(name, help=text)
        with_socket(p)
        p.set_defaults(func=cmd_simple)
    ptt = sub.add_parser("ptt", help="push-to-talk from the shell (down / up)")
    ptt.add_argument("action", choices=("down", "up"))
    with_socket(ptt)
    ptt.set_defaults(func=cmd_simple)

    test = sub.add_parser("test", help="check the hardware: leds, buttons, audio")
    test.add_argument("what", choices=("leds", "buttons", "audio"))
    test.add_argument("--seconds", type=float, default=15.0, help="buttons: how long to listen")
    with_config(test)
    with_socket(test)
    test.set_defaults(func=cmd_test)

    contacts = sub.add_parser("contacts", help="list, add or remove contacts")
    csub = contacts.add_subparsers(dest="action", metavar="ACTION", required=True)
    csub.add_parser("list", help="all contacts (config file and added)")
    add = csub.add_parser("add", help="add a contact")
    add.add_argument("name")
    add.add_argument("fingerprint")
    add.add_argument("address", metavar="HOST[:PORT]")
    rm = csub.add_parser("remove", help="remove an added contact")
    rm.add_argument("name")
    for p in csub.choices.values():
        with_socket(p)
    contacts.set_defaults(func=cmd_contacts)

    config = sub.add_parser(
        "config", help="check the config, print the template, apply the boot file"
    )
    config.add_argument("action", choices=("check", "template", "apply-boot"))
    with_config(config)
    config.set_defaults(func=cmd_config)

    leds = sub.add_parser("leds", help="turn every LED off (used when the service stops)")
    leds.add_argument("action", choices=("off",))
    with_config(leds)
    leds.set_defaults(func=cmd_leds_off)

    demo = sub.add_parser(
        "demo",
        help="two handsets on this machine over a lossy link, buttons pressed by a script",
    )
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="WAVs and summary.json")
    demo.add_argument("--loss", type=float, default=0.3, help="random loss each way (0..0.9)")
    demo.add_argument("--rtt-ms", type=float, default=300.0, help="round-trip time")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("-v", "--verbose", action="store_true", help="show the daemons' logs")
    demo.set_defaults(func=cmd_demo)
