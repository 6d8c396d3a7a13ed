"""`wzp run` as a real process (mock pins, ALSA's null device), driven by the `wzp` command:
systemd's READY/STATUS, `wzp status` (text and JSON), control commands, SIGTERM; a bad
config refused with the key and line; `wzp status` without a daemon; the demo."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wzp.daemon.control import request

WZP = [sys.executable, "-m", "wzp.cli"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wzp(
    *args: str, timeout: float = 30, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WZP, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def test_bad_config_is_refused_naming_key_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "wzp.toml"
    cfg.write_text(
        '[audio]\ncapture = "plughw:CARD=Device"\nvolume_db = "loud"\n\n[call]\nmode = "simplex"\n'
    )
    res = _wzp("run", "--config", str(cfg))
    assert res.returncode == 78  # EX_CONFIG: the unit does not restart-loop on it
    assert "line 3" in res.stderr and "audio.volume_db" in res.stderr
    assert "line 6" in res.stderr and "call.mode" in res.stderr
    check = _wzp("config", "check", "--config", str(cfg))
    assert check.returncode == 78 and "audio.volume_db" in check.stderr
    template = _wzp("config", "template")
    assert template.returncode == 0 and "[call]" in template.stdout


def test_status_without_a_daemon_says_so_and_checks_locally(tmp_path: Path) -> None:
    res = _wzp(
        "status", "--socket", str(tmp_path / "none.sock"), "--config", str(tmp_path / "x.toml")
    )
    assert res.returncode == 3
    assert "not running" in res.stdout and "config" in res.stdout
    res = _wzp("status", "--json", "--socket", str(tmp_path / "none.sock"))
    assert res.returncode == 3 and json.loads(res.stdout)["running"] is False
    res = _wzp("answer", "--socket", str(tmp_path / "none.sock"))
    assert res.returncode == 3 and "not running" in res.stderr


def test_daemon_process_end_to_end(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    ident = tmp_path / "state" / "identity.seed"
    cfg = tmp_path / "wzp.toml"
    cfg.write_text(
        f"""
[identity]
path = "{ident}"
[board]
profile = "breadboard"
pin_factory = "mock"
[audio]
capture = "null"
playback = "null"
[call]
listen_port = {_free_port()}
listen_hosts = ["127.0.0.1"]
[control]
socket = "{sock}"
group = ""
"""
    )
    notify_path = tmp_path / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "2000000"}
    env.pop("JOURNAL_STREAM", None)
    proc = subprocess.Popen(
        [*WZP, "run", "--config", str(cfg)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        messages = []
        while not any(m.startswith("READY=1") for m in messages):
            messages.append(notify.recv(4096).decode())
        assert "STATUS=idle" in messages[-1]
        # the watchdog is fed (WatchdogSec: every half of WATCHDOG_USEC)
        deadline = time.monotonic() + 5
        while "WATCHDOG=1" not in messages and time.monotonic() < deadline:
            messages.append(notify.recv(4096).decode())
        assert "WATCHDOG=1" in messages
        assert stat.S_IMODE(ident.stat().st_mode) == 0o600

        t = time.monotonic()
        st = request(sock, "status")
        took = time.monotonic() - t
        assert took < 0.2, took
        assert st["state"] == "idle" and st["audio"]["state"] == "ok"
        assert st["gpio"]["profile"] == "breadboard"

        text = _wzp("status", "--socket", str(sock))
        assert text.returncode == 0
        for section in ("daemon", "call", "audio", "gpio", "resources", "network"):
            assert section in text.stdout
        assert "✓ daemon" in text.stdout
        js = _wzp("status", "--json", "--socket", str(sock))
        doc = json.loads(js.stdout)
        assert doc["running"] is True and doc["fingerprint"] == st["fingerprint"]
        res = _wzp("call", "carol", "--socket", str(sock))
        assert res.returncode == 1 and "no contact named 'carol'" in res.stderr
        res = _wzp("ptt", "down", "--socket", str(sock))
        assert res.returncode == 0 and "ptt down" in res.stdout
        res = _wzp("contacts", "list", "--socket", str(sock))
        assert res.returncode == 0 and "no contacts" in res.stdout
        # the daemon holds the pins: the LED test goes through it
        res = _wzp("test", "leds", "--socket", str(sock))
        assert res.returncode == 0 and "cycling LEDs" in res.stdout
        assert "directly" not in res.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        notify.close()
    assert proc.returncode == 0, err
    assert not sock.exists()
    seed = ident.read_bytes()
    for chunk in (seed.hex(), seed.hex()[:16]):
        assert chunk not in out and chunk not in err


@pytest.mark.slow
async def test_demo_runs_to_its_summary(tmp_path: Path) -> None:
    from wzp.daemon.demo import run_demo

    lines: list[str] = []
    result = await run_demo(tmp_path, talk_s=4.0, say=lines.append)
    text = "\n".join(lines)
    for what in ("A presses CALL", "B LEDs  status ● ringing", "in_call", "tx ●", "summary"):
        assert what in text, what
    # the mid-call status names what the handsets really use, and is taken while B's
    # speech comes in: A measures the loss of the 30 % link on it, not on keep-alives
    snap = text.split("status of A while B talks")[1].split("B releases PTT")[0]
    assert snap.count("files (demo)") == 1 and "files (demo): capture" in snap, snap
    assert "auto:" not in snap and "gpio       mock pins (no hardware)" in snap, snap
    loss = float(snap.split("loss ")[1].split(" %")[0])
    assert 15 <= loss <= 45, snap
    assert result["calls"]["A"]["ended"] == "Normal" and result["calls"]["B"]["ended"] == "Normal"
    for direction in ("A->B", "B->A"):
        assert 20 <= result["link"][direction]["loss_pct"] <= 40
    # 30 % loss: the words still get through (STOI 1.0 = all intelligible)
    assert result["stoi_A_to_B"] > 0.8 and result["stoi_B_to_A"] > 0.8, result
    assert (tmp_path / "b_heard_a.wav").exists() and (tmp_path / "summary.json").exists()


def test_refused_boot_file_is_reported_until_a_newer_one_is_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wzp.daemon import commands, config

    monkeypatch.setattr(config, "BOOT_DIRS", (tmp_path / "firmware", tmp_path))
    assert commands._refused_boot_file() is None
    err = tmp_path / "wzp.toml.error"
    err.write_text("# wzp: line 2: call.mode: ...\n")
    assert commands._refused_boot_file() == err
    applied = tmp_path / "wzp.toml.applied"
    applied.write_text("")
    os.utime(err, (1, 1))  # the error is older than the file applied since
    assert commands._refused_boot_file() is None


def test_leds_off_even_with_a_refused_config(tmp_path: Path) -> None:
    cfg = tmp_path / "wzp.toml"
    cfg.write_text('[board]\npin_factory = "mock"\n')
    assert _wzp("leds", "off", "--config", str(cfg)).returncode == 0
    cfg.write_text('[board]\npin_factory = "mock"\nbogus = 1\n')
    # the defaults (lgpio) are tried instead; this machine has no GPIO chip: a clear error
    # (lgpio writes its .lgd-nfy pipe into the working directory: a scratch one)
    res = _wzp("leds", "off", "--config", str(cfg), cwd=tmp_path)
    assert res.returncode == 1 and "gpio" in res.stderr.lower(), res.stderr


def test_listen_and_dial_on_alsa_devices(tmp_path: Path) -> None:
    """`wzp listen/dial --audio DEVICE`: the sound card path of the command line (ALSA's
    null device here), a call of a few seconds, hung up by the dialer."""
    port = _free_port()
    b_seed = tmp_path / "b.seed"
    fp = _wzp("identity", "--path", str(b_seed)).stdout.strip()
    listener = subprocess.Popen(
        [*WZP, "listen", "--identity", str(b_seed), "--host", "127.0.0.1", "--port", str(port),
         "--audio", "null", "--once"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(1.5)
        dial = _wzp(
            "dial", f"127.0.0.1:{port}", "--peer", fp, "--identity", str(tmp_path / "a.seed"),
            "--audio", "null", "--duration", "3", timeout=60,
        )  # fmt: skip
        assert dial.returncode == 0, dial.stderr
        assert "call ended: Normal" in dial.stdout and "state=active" in dial.stdout
        out, err = listener.communicate(timeout=20)
        assert listener.returncode == 0, err
        assert "call ended: Normal" in out
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.communicate()


def test_hardware_tests_use_the_pins_when_no_daemon_runs(tmp_path: Path) -> None:
    cfg = tmp_path / "wzp.toml"
    cfg.write_text('[board]\npin_factory = "mock"\n')
    none = str(tmp_path / "none.sock")
    res = _wzp("test", "leds", "--config", str(cfg), "--socket", none, timeout=30)
    assert res.returncode == 0, res.stderr
    assert "using the pins directly" in res.stdout and "status, link, tx" in res.stdout
    res = _wzp("test", "buttons", "--seconds", "0.5", "--config", str(cfg), "--socket", none)
    assert res.returncode == 0 and "press the buttons" in res.stdout
