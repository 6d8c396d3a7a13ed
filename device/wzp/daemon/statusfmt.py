"""``wzp status`` for a person: one section a line, ✓ or ✗ first (``pihole -d`` style).

The input is the daemon's status dictionary (``wzp status --json`` prints it as is).
Nothing secret is in it to begin with; this only chooses words.
"""

from __future__ import annotations

import json
import math
from typing import Any

OK, BAD, INFO = "✓", "✗", " "
#: a call with nothing heard from the peer this long is shown ✗ (it ends at the status's
#: ``heard_limit_s``)
SILENT_WARN_S = 5.0
#: a full-duplex handset joined to a push-to-talk room (also the daemon's warning)
PTT_ROOM_FULL_DUPLEX = (
    "this is a push-to-talk room but the handset is full-duplex: whenever its microphone "
    'hears sound it holds the floor and nobody else can talk; set mode = "half-duplex" '
    "(push-to-talk) under [call] in /etc/wzp/wzp.toml, or use a room with push_to_talk = false"
)


def _dur(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def _db(x: Any) -> str:
    if not isinstance(x, int | float) or math.isinf(x) or x <= -96:
        return "silent"
    return f"{x:.0f} dBFS"


def _line(mark: str, name: str, text: str) -> str:
    return f" {mark} {name:<10} {text}"


def format_status(st: dict[str, Any]) -> str:
    up = _dur(st.get("uptime_s", 0))
    out = [f"wzp {st.get('version', '?')}: handset {st.get('fingerprint', '?')}, up {up}"]
    state = st.get("state", "?")
    out.append(
        _line(
            OK,
            "daemon",
            f"running, {state}, {st.get('mode', '?')}, LED {st.get('status_led', '?')}",
        )
    )

    relay = st.get("relay") or {}
    call = st.get("call")
    if call:
        if relay.get("floor_waiting"):
            doing = "PTT held, waiting for the floor"
        else:
            doing = "talking" if call.get("talking") else "listening"
        loss = call.get("loss_pct")
        res = call.get("residual_loss_pct")
        rtt = call.get("rtt_ms")
        ago = call.get("heard_ago_s")
        silent = ago is not None and ago >= SILENT_WARN_S
        out.append(
            _line(
                BAD if silent else OK,
                "call",
                f"{call.get('state')} with {call.get('peer')} ({call.get('direction')}, "
                f"{_dur(call.get('duration_s', 0))}), tier {call.get('tier') or '-'}"
                + (
                    f"; nothing heard from the peer for {ago:.0f} s (the call ends at "
                    f"{call.get('heard_limit_s', 30):.0f} s)"
                    if silent
                    else ""
                ),
            )
        )
        out.append(
            _line(
                INFO,
                "",
                f"loss {'-' if loss is None else f'{loss:.1f} %'} before FEC, "
                f"{'-' if res is None else f'{res:.1f} %'} after; "
                f"RTT {'-' if rtt is None else f'{rtt:.0f} ms'}; "
                f"jitter {call.get('jitter_ms', 0):.0f} ms; "
                f"tx {call.get('tx_kbps', 0):.1f} / rx {call.get('rx_kbps', 0):.1f} kbit/s; "
                f"rekeys {call.get('rekeys', 0)}; {doing}"
                + ("; muted" if call.get("muted") else ""),
            )
        )
    elif st.get("dialing"):
        out.append(_line(OK, "call", f"dialling {st['dialing']}"))
    else:
        out.append(_line(OK, "call", "no call"))

    audio = st.get("audio") or {}
    a_state = audio.get("state", "?")
    silent = bool(audio.get("capture_silent"))
    mark = OK if a_state == "ok" and not silent else BAD
    if audio.get("backend"):  # one port for both ways (files): named once
        text = (
            f"{audio['backend']}: capture {_db(audio.get('capture_dbfs'))}, "
            f"playback {_db(audio.get('playback_dbfs'))}, "
        )
    else:
        text = (
            f"capture {audio.get('capture_device')} ({_db(audio.get('capture_dbfs'))}), "
            f"playback {audio.get('playback_device')} ({_db(audio.get('playback_dbfs'))}), "
        )
    text += f"volume {st.get('volume_db', 0):+.0f} dB"
    if silent:
        why = audio.get("capture_problem") or "the microphone captures nothing"
        text = f"{why}; " + text
    if a_state != "ok":
        text = f"{a_state}: {audio.get('error') or 'no detail'}; " + text
    out.append(_line(mark, "audio", text))

    gpio = st.get("gpio") or {}
    out.append(_line(OK, "gpio", f"{gpio.get('factory') or '-'}, board {gpio.get('profile', '-')}"))

    res = st.get("resources")
    if res:
        temp = res.get("temp_c")
        flags = res.get("throttled_flags") or []
        reasons = res.get("reasons") or []
        capped = bool(res.get("level"))
        mark = OK if not capped else BAD
        text = (
            f"CPU {res.get('cpu_pct') or 0:.0f} %, "
            f"SoC {'-' if temp is None else f'{temp:.1f} °C'}, "
            f"{'throttling: ' + ', '.join(flags) if flags else 'not throttled'}, "
            f"Opus complexity {res.get('complexity')}"
        )
        if capped:
            text += f"; quality capped (level {res.get('level')}): {'; '.join(reasons)}"
        elif reasons:
            text += f"; watching: {'; '.join(reasons)}"
        out.append(_line(mark, "resources", text))

    net = st.get("network") or {}
    out.append(
        _line(
            OK,
            "network",
            f"listening on {', '.join(net.get('listen_hosts') or [])} "
            f"port {net.get('listen_port')}, "
            f"accepting {net.get('accept')}, default contact {net.get('default_contact') or '-'}",
        )
    )
    if relay:
        members = ", ".join(
            f"{'you' if m.get('slot') == relay.get('slot') else _member_name(m)} "
            f"(slot {m.get('slot')})"
            for m in relay.get("members") or []
        )
        floor = _floor_text(relay)
        # the room's floor goes to whoever sends: a full-duplex handset never lets go
        ptt_problem = bool(relay.get("push_to_talk")) and st.get("mode") == "full-duplex"
        out.append(
            _line(
                OK if relay.get("state") == "joined" and not ptt_problem else BAD,
                "relay",
                (f"{PTT_ROOM_FULL_DUPLEX}; " if ptt_problem else "")
                + f"{relay.get('state')} room {relay.get('room')} at {relay.get('address')}"
                + (f", slot {relay['slot']}" if relay.get("slot") else "")
                + (f"; members: {members}" if members else "")
                + (f"; {floor}" if floor else "")
                # the link's current problem; a healthy link's past one is in --json
                + (f"; {relay['error']}" if relay.get("error") else ""),
            )
        )
    last = st.get("last_call")
    if last:
        out.append(
            _line(
                INFO,
                "last call",
                f"{last.get('peer')} ({last.get('direction')}), ended {last.get('ended')} after "
                f"{_dur(last.get('duration_s', 0))}"
                + (f": {last['detail']}" if last.get("detail") else ""),
            )
        )
    if st.get("last_error"):
        out.append(_line(BAD, "last error", str(st["last_error"])))
    return "\n".join(out)


def _member_name(m: dict[str, Any]) -> str:
    """A member by its local contact name; else by the alias it gives itself, quoted and
    marked unverified beside its fingerprint (anyone may call itself "Mom")."""
    fp = (m.get("fingerprint") or "?")[:9]
    if m.get("contact"):
        return str(m["contact"])
    alias = str(m.get("alias") or "")
    if not alias:
        return fp
    # quoted: no control or bidi characters, no quote that would end it early
    return f"{json.dumps(alias, ensure_ascii=not alias.isprintable())}? {fp}"


def _floor_text(relay: dict[str, Any]) -> str:
    """Who holds a push-to-talk room's floor (README: ``wzp status`` shows floor_taken)."""
    floor = relay.get("floor")
    if floor is None:
        return "floor free" if relay.get("push_to_talk") else ""
    if floor == relay.get("slot"):
        return "floor: you have it"
    holder = next((m for m in relay.get("members") or [] if m.get("slot") == floor), None)
    who = _member_name(holder) if holder else "a member"
    text = f"floor_taken by {who} (slot {floor})"
    return text + ": your PTT waits" if relay.get("floor_waiting") else text


def format_relay_status(st: dict[str, Any]) -> str:
    """A relay's status (``wzp status --socket /run/wzp-relay/control.sock``)."""
    up = _dur(st.get("uptime_s", 0))
    out = [f"wzp relay {st.get('fingerprint', '?')}, up {up}"]
    c = st.get("counters") or {}
    out.append(
        _line(
            OK,
            "relay",
            f"listening on {', '.join(st.get('listen') or [])}; "
            f"{st.get('connections', 0)} connections, {st.get('pending', 0)} waiting to join"
            + (f"; metrics {st['metrics']}" if st.get("metrics") else ""),
        )
    )
    for name, room in (st.get("rooms") or {}).items():
        members = ", ".join(
            f"{m.get('alias') or (m.get('fingerprint') or '?')[:9]} (slot {m.get('slot')})"
            for m in room.get("members") or []
        )
        kind = "push-to-talk" if room.get("push_to_talk") else "open" if room.get("open") else ""
        out.append(_line(INFO, "room", f"{name} {kind}: {members or 'empty'}".replace("  ", " ")))
    drops = c.get("datagram_drops") or {}
    refused = c.get("joins_refused") or {}
    out.append(
        _line(
            INFO,
            "counters",
            f"forwarded {c.get('datagrams_forwarded', 0)} packets; dropped "
            + (", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none")
            + "; joins refused "
            + (", ".join(f"{k} {v}" for k, v in sorted(refused.items())) or "none"),
        )
    )
    return "\n".join(out)
