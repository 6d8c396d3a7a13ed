"""``wzp relay``: the parser that wzp.cli registers, --check-config and --status."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import tempfile
from pathlib import Path

import pytest

from wzp.relay.commands import EXIT_NOT_RUNNING, add_relay_parser
from wzp.relay.server import run_relay


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wzp")
    add_relay_parser(parser.add_subparsers(dest="command"))
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return int(args.func(args))


def test_defaults() -> None:
    args = _parser().parse_args(["relay"])
    assert args.config == "/etc/wzp/relay.toml"
    assert not args.check_config and not args.status and not args.verbose
    with pytest.raises(SystemExit):
        _parser().parse_args(["relay", "--check-config", "--status"])


def test_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "relay.toml"
    good.write_text('[rooms.porch]\nallow = "open"\npush_to_talk = true\n')
    assert _run(["relay", "--config", str(good), "--check-config"]) == 0
    assert "configuration OK" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('port = 1\n[rooms.porch]\nallow = "open"\npush_to_talk = "no"\n')
    assert _run(["relay", "--config", str(bad), "--check-config"]) == 78
    err = capsys.readouterr().err
    assert f"{bad} line 4: rooms.porch.push_to_talk: must be true or false" in err
    assert _run(["relay", "--config", str(tmp_path / "none.toml"), "--check-config"]) == 78


def test_status_without_a_relay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f'control_socket = "{tmp_path}/c.sock"\n')
    assert _run(["relay", "--config", str(cfg), "--status"]) == EXIT_NOT_RUNNING
    assert "not running" in capsys.readouterr().err


async def test_status_of_a_running_relay(capsys: pytest.CaptureFixture[str]) -> None:
    short = Path(tempfile.mkdtemp(prefix="wzpr-", dir="/tmp"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = short / "relay.toml"
    cfg.write_text(
        f'listen = ["127.0.0.1"]\nport = {port}\nidentity = "{short}/id.seed"\n'
        f'control_socket = "{short}/c.sock"\n[rooms.porch]\nallow = "open"\n'
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_relay(cfg, stop=stop))
    try:
        for _ in range(500):
            if (short / "c.sock").exists():
                break
            await asyncio.sleep(0.01)
        capsys.readouterr()
        assert await asyncio.to_thread(_run, ["relay", "--config", str(cfg), "--status"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["rooms"]["porch"]["members"] == []
        assert status["counters"]["connections"] == 0
        # `wzp status` pointed at the relay's socket reads it as a relay
        from wzp.cli import main as wzp_main

        capsys.readouterr()
        code = await asyncio.to_thread(wzp_main, ["status", "--socket", str(short / "c.sock")])
        text = capsys.readouterr().out
        assert code == 0 and text.startswith("wzp relay ")
        assert "room       porch open: empty" in text and "forwarded 0 packets" in text
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 5.0) == 0
        for p in short.iterdir():
            p.unlink()
        short.rmdir()


def test_the_parser_default_is_the_config_modules() -> None:
    from wzp.relay import commands, config

    assert commands.DEFAULT_CONFIG_PATH == config.DEFAULT_CONFIG_PATH
