#!/bin/bash
# wzp first-boot hook, placed on the boot partition as wzp/firstboot.sh by
# `wzp sdcard prepare`.
#
#   firstboot.sh setup [--now]   from Imager's firstrun.sh (Bookworm) or cloud-init's runcmd
#                                (Trixie): installs and enables wzp-firstboot.service, which
#                                runs `firstboot.sh run` once the network is up; --now also
#                                starts it (the system is already up under cloud-init)
#   firstboot.sh run             the service: blinks the ACT LED, runs this folder's install.sh
#                                with this folder's wheel (and wheels/ and debs/ when the card
#                                was prepared --offline), writes ../wzp-firstboot.log and removes
#                                the service once the install succeeded (else it runs again
#                                at the next boot)
#
# Rehearsal (tests): WZP_FIRSTBOOT_ROOT=DIR stages everything under DIR the way
# `install.sh --root DIR` does ("would run: ..." instead of systemctl), and then does what
# the handset's service does when it starts (identity, boot config) with
# $WZP_FIRSTBOOT_PYTHON and this folder's wheel. WZP_FIRSTBOOT_LEDS replaces /sys/class/leds,
# WZP_FIRSTBOOT_NET_HOST the name whose lookup means "online", WZP_FIRSTBOOT_NET_WAIT the
# seconds to wait for it.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BOOT=$(dirname "$HERE")
ROOT=${WZP_FIRSTBOOT_ROOT:-}
LOG=$BOOT/wzp-firstboot.log
UNIT=wzp-firstboot.service
UNIT_DIR=/etc/systemd/system
LEDS=${WZP_FIRSTBOOT_LEDS:-/sys/class/leds}
NET_HOST=${WZP_FIRSTBOOT_NET_HOST:-pypi.org}
NET_WAIT=${WZP_FIRSTBOOT_NET_WAIT:-120}

log() { printf '%s %s\n' "$(date '+%F %T')" "$*" | tee -a "$LOG"; }

# commands that change the live system; printed only when staged
run() {
    if [ -n "$ROOT" ]; then
        log "would run: $*"
    else
        log "run: $*"
        "$@"
    fi
}

setup() {
    local now=${1:-} unit_path wants
    unit_path=$ROOT$UNIT_DIR/$UNIT
    wants=$ROOT$UNIT_DIR/multi-user.target.wants
    mkdir -p "$(dirname "$unit_path")" "$wants"
    cat >"$unit_path" <<UNIT
# added by wzp's first-boot hook ($HERE/firstboot.sh); it removes itself once the
# handset is installed
[Unit]
Description=wzp first boot: install the handset from the boot partition
Wants=network-online.target
After=network-online.target time-sync.target
ConditionPathExists=$HERE/firstboot.sh

[Service]
Type=oneshot
ExecStart=/bin/bash $HERE/firstboot.sh run
# a Zero 2 W building pyalsaaudio takes minutes
TimeoutStartSec=0

[Install]
WantedBy=multi-user.target
UNIT
    chmod 0644 "$unit_path"
    ln -sfn "$UNIT_DIR/$UNIT" "$wants/$UNIT"
    log "setup: $UNIT_DIR/$UNIT installed and enabled (runs once the network is up)"
    if [ "$now" = --now ]; then
        run systemctl daemon-reload
        run systemctl start --no-block "$UNIT"
    fi
}

# --- the ACT LED: three short blinks, a pause, while installing ------------------------
LED=""
LED_TRIGGER=""
LED_PID=""
led_start() {
    local name
    for name in ACT led0; do
        if [ -w "$LEDS/$name/brightness" ] && [ -w "$LEDS/$name/trigger" ]; then
            LED=$LEDS/$name
            break
        fi
    done
    [ -n "$LED" ] || { log "no ACT LED under $LEDS: no blinking"; return 0; }
    LED_TRIGGER=$(sed -n 's/.*\[\([^]]*\)\].*/\1/p' "$LED/trigger")
    [ -n "$LED_TRIGGER" ] || LED_TRIGGER=$(tr -d '\n' <"$LED/trigger")
    echo none >"$LED/trigger"
    (
        while :; do
            for _ in 1 2 3; do
                echo 1 >"$LED/brightness"
                sleep 0.12
                echo 0 >"$LED/brightness"
                sleep 0.18
            done
            sleep 0.9
        done
    ) &
    LED_PID=$!
    log "ACT LED: blinking three times, pause, while installing ($LED)"
}
led_stop() {
    [ -n "$LED" ] || return 0
    if [ -n "$LED_PID" ]; then
        kill "$LED_PID" 2>/dev/null
        wait "$LED_PID" 2>/dev/null
    fi
    echo 0 >"$LED/brightness"
    [ -z "$LED_TRIGGER" ] || echo "$LED_TRIGGER" >"$LED/trigger"
    LED=""
}

online() {
    local waited=0
    while ! getent ahosts "$NET_HOST" >/dev/null 2>&1; do
        [ "$waited" -lt "$NET_WAIT" ] || return 1
        sleep 5
        waited=$((waited + 5))
    done
}

boot_config_result() {
    local reason
    if [ -f "$BOOT/wzp.toml.error" ] && [ ! -f "$BOOT/wzp.toml" ]; then
        reason=$(sed -n 's/^# wzp: //p' "$BOOT/wzp.toml.error")
        log "wzp.toml: REFUSED, renamed wzp.toml.error; the handset runs on its defaults:"
        printf '%s\n' "$reason" | tee -a "$LOG"
    elif [ -f "$BOOT/wzp.toml.applied" ] && [ ! -f "$BOOT/wzp.toml" ]; then
        log "wzp.toml: applied (renamed wzp.toml.applied)"
    elif [ -f "$BOOT/wzp.toml" ]; then
        log "wzp.toml: not applied yet (the handset's service did not start: see above)"
    fi
}

# what the handset's service does when it starts, for a staged root (rehearsal)
staged_service_start() {
    local py=${WZP_FIRSTBOOT_PYTHON:-}
    if [ -z "$py" ]; then
        log "staged: WZP_FIRSTBOOT_PYTHON not set: identity and boot config not rehearsed"
        return 0
    fi
    log "staged: the service's start (identity, boot config) with $py and $WHEEL"
    PYTHONPATH=$WHEEL "$py" -m wzp.sdcard.bootapply "$BOOT" "$ROOT" 2>&1 | tee -a "$LOG"
}

first_run() {
    local wheels=() debs=() args=() rc
    log "wzp first boot: installing the handset from $HERE"
    WHEEL=""
    for w in "$HERE"/wzp-*.whl; do
        [ -f "$w" ] && WHEEL=$w
    done
    if [ -z "$WHEEL" ]; then
        log "FAILED: no wzp wheel in $HERE: prepare the card again (wzp sdcard prepare)"
        return 1
    fi
    args=(--wheel "$WHEEL")
    wheels=("$HERE"/wheels/*)
    if [ -e "${wheels[0]}" ]; then
        args+=(--offline "$HERE/wheels")
        log "offline install: ${#wheels[@]} files from $HERE/wheels (no index)"
        # libopus0 and the headers pyalsaaudio builds with, should apt-get have no network
        debs=("$HERE"/debs/*.deb)
        if [ -e "${debs[0]}" ]; then
            args+=(--debs "$HERE/debs")
            log "offline Debian packages: ${#debs[@]} from $HERE/debs"
        fi
    elif ! online; then
        log "NO NETWORK: $NET_HOST cannot be reached after ${NET_WAIT}s. The install needs the"
        log "  internet (set Wi-Fi in Raspberry Pi Imager, or plug in Ethernet), or a card"
        log "  prepared with --offline. It tries again at the next boot."
        return 1
    fi
    [ -z "$ROOT" ] || args+=(--root "$ROOT")
    led_start
    log "run: bash $HERE/install.sh ${args[*]}"
    bash "$HERE/install.sh" "${args[@]}" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 0 ] && [ -n "$ROOT" ]; then
        staged_service_start
        rc=$?
    fi
    led_stop
    if [ "$rc" -ne 0 ]; then
        log "FAILED: install.sh exited $rc (above); $UNIT tries again at the next boot"
        return 1
    fi
    boot_config_result
    rm -f "$ROOT$UNIT_DIR/multi-user.target.wants/$UNIT" "$ROOT$UNIT_DIR/$UNIT"
    run systemctl daemon-reload
    log "done: the handset is installed; its status LED takes over from here"
}

main() {
    case "${1:-}" in
        setup)
            setup "${2:-}"
            ;;
        run)
            trap led_stop EXIT
            first_run
            local rc=$?
            sync
            return "$rc"
            ;;
        *)
            echo "usage: firstboot.sh setup [--now] | run" >&2
            return 2
            ;;
    esac
}

main "$@"
