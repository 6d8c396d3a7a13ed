"""A relay and two handset daemons, each its own process, on loopback; each handset
reaches the relay through its own link (A's loses 30 % each way) and neither
knows an address of the other: they meet in the relay's room. A calls B with
`wzp call`; B answers by itself; each side's speech file arrives at the other's speaker file.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.integration.test_call_over_quic import STOI_MIN, _stoi
from wzp.audio.files import read_audio
from wzp.bench.speech import DEFAULT_SPEECH
from wzp.crypto.identity import Identity
from wzp.daemon.control import NotRunning, request
from wzp.daemon.identity_store import write_seed
from wzp.net.udpproxy import UdpLossyProxy
from wzp.sim.link import LinkConfig

WZP = [sys.executable, "-m", "wzp.cli"]
LOSS = 0.3


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _until(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while True:
        try:
            if await asyncio.to_thread(cond):
                return
        except (NotRunning, OSError):
            pass
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def _handset_config(
    tmp: Path, name: str, ident: Path, relay_port: int, relay_fp: str, peer: str, peer_fp: str,
    capture: str, playback: str, extra: str = "",
) -> Path:  # fmt: skip
    cfg = tmp / f"{name}.toml"
    cfg.write_text(
        f"""
[identity]
path = "{ident}"
[board]
pin_factory = "mock"
[audio]
capture = "{capture}"
playback = "{playback}"
[call]
mode = "full-duplex"
listen_port = {_free_port()}
listen_hosts = ["127.0.0.1"]
{extra}
[control]
socket = "{tmp / (name + ".sock")}"
group = ""
[relay]
address = "127.0.0.1:{relay_port}"
fingerprint = "{relay_fp}"
room = "porch"
[contacts.{peer}]
fingerprint = "{peer_fp}"
"""
    )
    return cfg


def _scene(tmp: Path) -> tuple[dict[str, Identity], int, Path, dict[str, str]]:
    """Identities a, b and the relay (seed files in ``tmp``), a relay config whose room
    "porch" admits a and b, and the environment for the processes."""
    ids = {n: Identity.generate() for n in ("a", "b", "relay")}
    for n, ident in ids.items():
        write_seed(tmp / f"{n}.seed", ident.seed_bytes())
    relay_port = _free_port()
    relay_cfg = tmp / "relay.toml"
    relay_cfg.write_text(
        f"""listen = ["127.0.0.1"]
port = {relay_port}
identity = "{tmp / "relay.seed"}"
control_socket = "{tmp / "relay.sock"}"
[rooms.porch]
allow = ["{ids["a"].fingerprint_text}", "{ids["b"].fingerprint_text}"]
"""
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    return ids, relay_port, relay_cfg, env


async def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``wzp *args`` (a command to a running daemon), run off the event loop."""
    return await asyncio.to_thread(
        subprocess.run, [*WZP, *args], capture_output=True, text=True, env=env
    )


def _spawner(env: dict[str, str], procs: list[subprocess.Popen[str]]):  # type: ignore[no-untyped-def]
    """``spawn(*args)``: a ``wzp`` process, remembered in ``procs`` for the clean-up."""

    def spawn(*args: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [*WZP, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        procs.append(p)
        return p

    return spawn


@pytest.mark.slow
async def test_two_handsets_call_through_a_relay_process_over_lossy_links(tmp_path: Path) -> None:
    assert DEFAULT_SPEECH.exists(), "run ./install.sh --dev (codec2-examples)"
    ids, relay_port, relay_cfg, env = _scene(tmp_path)
    procs: list[subprocess.Popen[str]] = []
    spawn = _spawner(env, procs)

    # A reaches the relay over a 30 % lossy link, B over a clean one (both 50 ms away)
    proxies = [
        UdpLossyProxy(("127.0.0.1", relay_port), LinkConfig(loss=loss, delay_s=0.05), seed=31)
        for loss in (LOSS, 0.0)
    ]
    heard = tmp_path / "heard_by_b.wav"
    heard_a = tmp_path / "heard_by_a.wav"
    try:
        spawn("relay", "--config", str(relay_cfg))
        await asyncio.sleep(1.0)
        for p in proxies:
            await p.start()
        relay_fp = ids["relay"].fingerprint_text
        cfg_a = _handset_config(
            tmp_path, "a", tmp_path / "a.seed", proxies[0].port, relay_fp, "bob",
            ids["b"].fingerprint_text, f"file:{DEFAULT_SPEECH}", f"file:{heard_a}",
        )  # fmt: skip
        cfg_b = _handset_config(
            tmp_path, "b", tmp_path / "b.seed", proxies[1].port, relay_fp, "alice",
            ids["a"].fingerprint_text, f"file:{DEFAULT_SPEECH}", f"file:{heard}",
            "auto_answer_s = 0.0",
        )  # fmt: skip
        spawn("run", "--config", str(cfg_a))
        spawn("run", "--config", str(cfg_b))
        sock_a, sock_b = tmp_path / "a.sock", tmp_path / "b.sock"

        def joined() -> bool:
            a = request(sock_a, "status", timeout=2)["relay"]
            b = request(sock_b, "status", timeout=2)["relay"]
            return a["state"] == b["state"] == "joined" and len(a["members"]) == 2

        await _until(joined, 40, "both handsets in the room")
        res = await _cli(env, "call", "bob", "--socket", str(sock_a))
        assert res.returncode == 0, res.stderr

        def active() -> bool:
            a = request(sock_a, "status", timeout=2)["state"]
            b = request(sock_b, "status", timeout=2)["state"]
            return a == b == "active"

        await _until(active, 30, "the call through the relay")
        await asyncio.sleep(13.0)  # the whole recording (10.8 s) crosses
        st = await asyncio.to_thread(request, sock_b, "status")
        assert st["call"]["direction"] == "incoming" and st["call"]["peer"] == "alice"
        res = await _cli(env, "hangup", "--socket", str(sock_a))
        assert res.returncode == 0, res.stderr
        await _until(
            lambda: request(sock_b, "status", timeout=2)["last_call"] is not None, 15, "hang-up"
        )
        last = (await asyncio.to_thread(request, sock_b, "status"))["last_call"]
        assert last["ended"] == "Normal"
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        outs = [p.communicate(timeout=20) for p in procs]
        for p in proxies:
            p.close()
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    sent = read_audio(DEFAULT_SPEECH)
    # both ways: each side's speaker file holds the other's speech (both full duplex)
    for path in (heard, heard_a):
        assert path.exists()
        score = _stoi(sent, path, skip_s=3.0)
        assert score >= STOI_MIN[LOSS], (path.name, score)
        assert np.abs(read_audio(path).astype(np.float64)).max() > 1000


@pytest.mark.slow
async def test_relay_process_restart_mid_call(tmp_path: Path) -> None:
    """The relay process is stopped and started again mid-call: both handset daemons
    rejoin by themselves and B hears A again within 10 s, nobody pressing anything."""
    ids, relay_port, relay_cfg, env = _scene(tmp_path)
    procs: list[subprocess.Popen[str]] = []
    spawn = _spawner(env, procs)

    relay_fp = ids["relay"].fingerprint_text
    cfg_a = _handset_config(
        tmp_path, "a", tmp_path / "a.seed", relay_port, relay_fp, "bob",
        ids["b"].fingerprint_text, f"file:{DEFAULT_SPEECH}", "null",
    )  # fmt: skip
    cfg_b = _handset_config(
        tmp_path, "b", tmp_path / "b.seed", relay_port, relay_fp, "alice",
        ids["a"].fingerprint_text, "null", "null", "auto_answer_s = 0.0",
    )  # fmt: skip
    sock_a, sock_b = tmp_path / "a.sock", tmp_path / "b.sock"

    def status(sock: Path) -> dict:  # type: ignore[type-arg]
        return request(sock, "status", timeout=2)  # type: ignore[no-any-return]

    def joined() -> bool:
        a, b = status(sock_a)["relay"], status(sock_b)["relay"]
        return a["state"] == b["state"] == "joined" and len(a["members"]) == 2

    def b_hears() -> bool:
        call = status(sock_b)["call"]
        return bool(call) and call["state"] == "active" and call["rx_kbps"] > 5

    relay = spawn("relay", "--config", str(relay_cfg))
    try:
        await asyncio.sleep(1.0)
        spawn("run", "--config", str(cfg_a))
        spawn("run", "--config", str(cfg_b))
        await _until(joined, 40, "both handsets in the room")
        res = await _cli(env, "call", "bob", "--socket", str(sock_a))
        assert res.returncode == 0, res.stderr
        await _until(b_hears, 20, "B to hear A through the relay")
        # the relay goes away and comes back on the same address
        relay.terminate()
        relay.wait(timeout=15)
        await asyncio.sleep(1.0)
        spawn("relay", "--config", str(relay_cfg))
        t0 = time.monotonic()
        await _until(joined, 15, "the rejoin")
        await _until(b_hears, 15, "A's audio at B again")
        assert time.monotonic() - t0 < 10.0
        a_st, b_st = status(sock_a), status(sock_b)
        assert a_st["state"] == b_st["state"] == "active"  # the same call, never ended
        assert a_st["relay"]["joins"] == 2 and b_st["relay"]["joins"] == 2
        await _cli(env, "hangup", "--socket", str(sock_a))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.communicate(timeout=20)
