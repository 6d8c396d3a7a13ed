#!/usr/bin/env bash
# wzp installer.
#   ./install.sh --dev    in a checkout: system packages (when root), .venv, wzp + test tools
# The Raspberry Pi install (system user, /opt/wzp, systemd unit) comes with the handset daemon.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3}

# Debian / Raspberry Pi OS packages the project needs at run time and for its tests:
#   libopus0 (opuslib loads it), libasound2-dev + gcc + python3-dev (pyalsaaudio builds
#   from source on a Pi), codec2-examples (real speech for the quality benchmark).
DEV_APT=(libopus0 libasound2-dev gcc codec2-examples)

say() { printf 'install.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

usage() {
    cat >&2 <<USAGE
usage: ./install.sh --dev
  --dev   make .venv in this checkout with wzp (editable) and the test tools;
          installs missing Debian packages first when run as root
USAGE
}

missing_debs() {
    local p
    command -v dpkg-query >/dev/null 2>&1 || return 0
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}

install_debs() {
    local missing
    missing=$(missing_debs "$@")
    [ -z "$missing" ] && return 0
    # shellcheck disable=SC2086
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing Debian packages: $(echo $missing)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
        say "warning: missing Debian packages: $(echo $missing)"
        say "         run: sudo apt-get install $(echo $missing)"
    fi
}

check_python() {
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (need Python >= 3.11)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "$("$PYTHON" -V 2>&1) is too old: wzp needs Python >= 3.11"
}

dev() {
    check_python
    local debs=("${DEV_APT[@]}")
    # Debian's own python3 needs python3-venv for `python3 -m venv`
    "$PYTHON" -c 'import ensurepip' 2>/dev/null || debs+=(python3-venv)
    install_debs "${debs[@]}"

    local venv="$here/.venv"
    if [ ! -x "$venv/bin/python" ]; then
        say "creating $venv"
        "$PYTHON" -m venv "$venv"
    fi
    # pip only when the project's requirements changed since the last run
    local stamp="$venv/.wzp-dev-stamp" want
    want=$(cat "$here/pyproject.toml" "$here/install.sh" | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$venv/bin/python" -c 'import wzp' 2>/dev/null; then
        say "installing wzp and its test tools into $venv"
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$here[dev]"
        echo "$want" >"$stamp"
    fi
    say "ready: $venv/bin/wzp, $venv/bin/pytest"
}

case "${1:-}" in
    --dev) dev ;;
    -h | --help) usage ;;
    "") usage; exit 2 ;;
    *) say "unknown option: $1"; usage; exit 2 ;;
esac
