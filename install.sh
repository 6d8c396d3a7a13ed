#!/usr/bin/env bash
# wzp installer.
#   ./install.sh --dev                 in a checkout: system packages (when root), .venv,
#                                      wzp + test tools (what CI runs)
#   sudo ./install.sh                  on a Raspberry Pi (Raspberry Pi OS / Debian): user wzp,
#                                      /opt/wzp/venv, /etc/wzp, identity, systemd unit
#   ./install.sh --root DIR            the same, staged under DIR: files are written there with
#                                      their modes; commands that change the live system are
#                                      printed as "would run: ..." instead (details below)
#   sudo ./install.sh --wheel FILE [--offline DIR [--debs DIR]]
#                                      the same from a built wheel instead of this checkout,
#                                      with its dependencies from a folder of wheels (no index)
#                                      and, with no network, the Debian packages from a folder
#                                      of .debs: what the first-boot hook of `wzp sdcard
#                                      prepare` runs
#   sudo ./install.sh --uninstall [--purge] [--root DIR]
#   sudo ./install.sh --relay [--root DIR] [--wheel FILE [--offline DIR [--debs DIR]]]
#                                      a relay instead of the handset (any Debian host): user
#                                      wzp-relay, the same /opt/wzp/venv, /etc/wzp/relay.toml,
#                                      its identity, the wzp-relay unit; a host may run both
#   sudo ./install.sh --relay --uninstall [--purge] [--root DIR]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# the Pi install builds its venv from the system Python (apt's python3-lgpio is for it)
PI_PYTHON=${PYTHON:-/usr/bin/python3}
PYTHON=${PYTHON:-python3}

# Debian / Raspberry Pi OS packages the project needs at run time and for its tests:
#   libopus0 (opuslib loads it), libasound2-dev + gcc + python3-dev (pyalsaaudio builds
#   from source on a Pi), codec2-examples (real speech for the quality benchmark).
#   mtools, dosfstools, fdisk, e2fsprogs, cloud-init: `wzp sdcard prepare` writes FAT images
#   with mtools, and its tests build synthetic cards and check user-data with cloud-init.
#   debian-archive-keyring: `wzp sdcard prepare --offline` fetches the Pi's arm64 .debs with
#   apt-get and checks their signatures with it. shellcheck: the tests lint this script.
DEV_APT=(libopus0 libasound2-dev gcc codec2-examples python3-dev mtools dosfstools fdisk
    e2fsprogs cloud-init debian-archive-keyring shellcheck)

# On the handset: the build needs above plus python3-venv (Debian's python3 lacks ensurepip),
# python3-lgpio (Raspberry Pi OS archive only: the venv sees it through
# --system-site-packages), alsa-utils (aplay/arecord/amixer for checking a card by hand).
# Raspberry Pi OS Lite lacks libopus0, python3-dev and libasound2-dev: with no network,
# --debs DIR supplies them (offline_debs below).
PI_APT=(libopus0 python3-venv python3-dev gcc libasound2-dev python3-lgpio alsa-utils)

# On a relay host: no sound card and no GPIO, but the same package, and pyalsaaudio is one
# of its core dependencies: pip builds it from source on any host without a wheel for it
# (a Pi, and amd64 too), so gcc, python3-dev and libasound2-dev are needed all the same.
# libopus0: opuslib (another core dependency) loads it at import; `wzp relay` itself does
# not import it, the rest of `wzp` does. python3-venv: Debian's python3 lacks ensurepip.
RELAY_APT=(libopus0 python3-venv python3-dev gcc libasound2-dev)

UNIT=wzp-phone.service
OPT=/opt/wzp
VENV=$OPT/venv
ETC=/etc/wzp
STATE=/var/lib/wzp
SEED=$STATE/identity.seed
RUNDIR=/run/wzp
UNIT_DIR=/etc/systemd/system
BIN_LINK=/usr/local/bin/wzp
RELAY_UNIT=wzp-relay.service
RELAY_USER=wzp-relay
RELAY_STATE=/var/lib/wzp-relay
RELAY_SEED=$RELAY_STATE/identity.seed
RELAY_CONF=$ETC/relay.toml
RELAY_RUNDIR=/run/wzp-relay

say() { printf 'install.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

usage() {
    cat >&2 <<USAGE
usage: ./install.sh --dev
       sudo ./install.sh [--root DIR] [--wheel FILE [--offline DIR [--debs DIR]]]
       sudo ./install.sh --uninstall [--purge] [--root DIR]
       sudo ./install.sh --relay [--root DIR] [--wheel FILE [--offline DIR [--debs DIR]]]
       sudo ./install.sh --relay --uninstall [--purge] [--root DIR]
  --dev        make .venv in this checkout with wzp (editable) and the test tools;
               installs missing Debian packages first when run as root
  (no option)  install the handset on this Raspberry Pi: Debian packages, system user wzp
               (groups audio, gpio), $VENV, $ETC/wzp.toml (only if absent),
               the identity (only if absent), $UNIT enabled and (re)started.
               Running it again changes only what differs.
  --root DIR   stage into DIR instead of /: files are written under DIR, commands that
               would change the live system are printed as "would run: ..." lines
  --wheel FILE install this wzp wheel instead of building this checkout
  --offline DIR  with --wheel: pip takes every dependency from the wheels in DIR (no index),
               and a failed apt-get (no network) is a warning, not an error
  --debs DIR   with --offline: when apt-get fails, the Debian packages come from the .debs
               in DIR: a missing library (libopus0) is installed with dpkg -i; the -dev
               packages are only unpacked into a temporary folder whose headers pip's build
               of pyalsaaudio uses (CPATH, LIBRARY_PATH), never installed
  --uninstall  stop and remove the service, $VENV, $ETC/boot.toml and the user wzp;
               keeps $SEED and $ETC/wzp.toml
  --purge      with --uninstall: remove $STATE and $ETC too (the identity is lost)
  --relay      a relay instead of the handset (any Debian host): Debian packages, system
               user $RELAY_USER, the same $VENV, $RELAY_CONF (only if absent), the
               relay identity $RELAY_SEED (only if absent), $RELAY_UNIT
               enabled and (re)started. With --uninstall: removes the relay's unit and
               user, keeps its identity and relay.toml (--purge removes them too).
  A host may run both: neither uninstall removes the other's files, and $VENV
  stays while the other one is installed.
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
    # shellcheck disable=SC2086,SC2116
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
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "${here}[dev]"
        echo "$want" >"$stamp"
    fi
    say "ready: $venv/bin/wzp, $venv/bin/pytest"
}


# ------------------------------------------------------------------ Raspberry Pi mode
#
# Every path below is a path on the target system; R PATH is where it lives now ($ROOT is
# empty for a live install, the staging directory for --root). Staged runs never execute
# what changes the live system (apt-get, groupadd, useradd, usermod, userdel, python -m
# venv, pip, chown, runuser, systemctl): `run` prints those as "would run: ..." lines on
# stdout, in order. Ownership is never applied to staged files, even by root: the staging
# root has no user wzp, and the uid wzp gets on the target is unknown. The staged files
# belong to whoever ran install.sh; the chown lines say what they must belong to.

ROOT=""
STAGED=0
WHEEL=""
WHEELHOUSE=""
DEBS=""
WHAT=handset # or relay (--relay)

R() { printf '%s%s' "$ROOT" "$1"; }

note() { printf '%s\n' "$*"; }

# a command line as one would type it: plain words bare, anything else in single quotes
show_cmd() {
    local a out=""
    for a in "$@"; do
        if [[ "$a" =~ ^[A-Za-z0-9_./:=,@+%-]+$ ]]; then
            out+=" $a"
        else
            out+=" '${a//\'/\'\\\'\'}'"
        fi
    done
    printf '%s\n' "${out# }"
}

run() {
    if [ "$STAGED" -eq 1 ]; then
        printf 'would run: %s\n' "$(show_cmd "$@")"
    else
        printf 'run: %s\n' "$(show_cmd "$@")"
        "$@"
    fi
}

mode_of() { stat -c %a "$1"; }
same_mode() { [ "$((8#$(mode_of "$1")))" -eq "$((8#$2))" ]; }

# ensure_dir PATH MODE: create PATH with MODE, or fix its mode
ensure_dir() {
    local dest=$1 mode=$2 path
    path=$(R "$dest")
    if [ ! -d "$path" ]; then
        mkdir -p "$path"
        chmod "$mode" "$path"
        note "$dest: created ($mode)"
    elif ! same_mode "$path" "$mode"; then
        chmod "$mode" "$path"
        note "$dest: mode set to $mode"
    else
        note "$dest: unchanged"
    fi
}

# ensure_owner PATH USER:GROUP [-R]: chown when something differs. -R takes in the files
# below too: after an uninstall and a reinstall the user wzp may have a new uid, and the
# kept identity must be readable before systemd's own StateDirectory= chown at start.
ensure_owner() {
    local dest=$1 owner=$2 recurse=${3:-} user group
    user=${owner%:*}
    group=${owner#*:}
    if [ "$STAGED" -eq 1 ]; then
        run chown ${recurse:+"$recurse"} "$owner" "$dest"
    elif [ -n "$recurse" ]; then
        if [ -n "$(find "$dest" \( ! -user "$user" -o ! -group "$group" \) -print -quit)" ]; then
            run chown -R "$owner" "$dest"
        fi
    elif [ "$(stat -c %U:%G "$dest")" != "$owner" ]; then
        run chown "$owner" "$dest"
    fi
}

# install_file SRC PATH MODE: PATH gets SRC's bytes and MODE, replaced atomically, only
# when they differ. Sets CHANGED=1 when it wrote anything.
CHANGED=0
install_file() {
    local src=$1 dest=$2 mode=$3 path tmp
    path=$(R "$dest")
    CHANGED=0
    if [ -f "$path" ] && [ ! -L "$path" ] && cmp -s "$src" "$path"; then
        if same_mode "$path" "$mode"; then
            note "$dest: unchanged"
        else
            chmod "$mode" "$path"
            note "$dest: mode set to $mode"
            CHANGED=1
        fi
        return 0
    fi
    mkdir -p "$(dirname "$path")"
    tmp=$(mktemp "$path.XXXXXX")
    cat "$src" >"$tmp"
    chmod "$mode" "$tmp"
    if [ -e "$path" ]; then
        mv -f "$tmp" "$path"
        note "$dest: updated"
    else
        mv -f "$tmp" "$path"
        note "$dest: installed"
    fi
    CHANGED=1
}

# the user and group database: the live one, or the staging root's files
has_group() {
    if [ "$STAGED" -eq 1 ]; then
        grep -q "^$1:" "$(R /etc/group)" 2>/dev/null
    else
        getent group "$1" >/dev/null
    fi
}
has_user() {
    if [ "$STAGED" -eq 1 ]; then
        grep -q "^$1:" "$(R /etc/passwd)" 2>/dev/null
    else
        getent passwd "$1" >/dev/null
    fi
}
in_group() { # USER GROUP
    if [ "$STAGED" -eq 1 ]; then
        awk -F: -v g="$2" '$1 == g { print $4 }' "$(R /etc/group)" 2>/dev/null |
            tr ',' '\n' | grep -qx "$1"
    else
        id -nG "$1" 2>/dev/null | tr ' ' '\n' | grep -qx "$2"
    fi
}

systemd_running() { [ "$STAGED" -eq 1 ] || [ -d /run/systemd/system ]; }

# os_field FILE KEY: a value of os-release (read, never sourced: it may come from --root)
os_field() { sed -n "s/^$2=//p" "$1" | head -n1 | tr -d "\"'"; }

check_os() {
    local release id like pretty
    release=$(R /etc/os-release)
    if [ ! -r "$release" ]; then
        [ "$STAGED" -eq 1 ] || die "cannot read /etc/os-release: Debian or Raspberry Pi OS expected"
        note "os: not checked ($release is absent)"
    else
        id=$(os_field "$release" ID)
        like=$(os_field "$release" ID_LIKE)
        pretty=$(os_field "$release" PRETTY_NAME)
        pretty=${pretty:-${id:-unknown}}
        case " $id $like " in
            *" debian "* | *" raspbian "*) note "os: $pretty" ;;
            *)
                if [ "$STAGED" -eq 0 ]; then
                    die "$pretty: the $WHAT install supports Debian and Raspberry Pi OS"
                fi
                note "os: $pretty (not Debian; staged anyway)"
                ;;
        esac
    fi
    PYTHON=$PI_PYTHON check_python
    note "python: $("$PI_PYTHON" -V 2>&1)"
    if [ "$STAGED" -eq 0 ]; then
        case "$(uname -m)" in
            armv6l | armv7l)
                say "warning: 32-bit system: PyPI has no wheels for most of wzp's dependencies here;"
                say "         pip will build them from source (slow). 64-bit Raspberry Pi OS Lite is the target."
                ;;
        esac
    fi
}

apt_available() { # PACKAGE: the archive has a candidate for it
    local cand
    cand=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }')
    [ -n "$cand" ] && [ "$cand" != "(none)" ]
}

no_lgpio_warning() {
    say "warning: python3-lgpio is not in this system's archive (plain Debian?): GPIO"
    say "         buttons and LEDs need it (Raspberry Pi OS ships it; elsewhere try"
    say "         $VENV/bin/pip install lgpio, or pin_factory = \"mock\" in $ETC/wzp.toml)"
}

pi_apt() { # PACKAGE...
    local missing p install=()
    if [ "$STAGED" -eq 1 ]; then
        run apt-get update
        run apt-get install -y --no-install-recommends "$@"
        if [ -n "$DEBS" ]; then
            # what an offline first boot does once apt-get has failed; the staged system's
            # packages are unknown, so every one counts as missing
            note "staged: with no network, the Debian packages come from $DEBS:"
            offline_debs "$@"
            if [ -n "$STILL_MISSING" ]; then
                note "staged: not in $DEBS (the image must have them): $STILL_MISSING"
            fi
        fi
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: Debian or Raspberry Pi OS expected"
    missing=$(missing_debs "$@")
    # plain Debian: python3-lgpio is missing for good; no apt-get update on every run for it
    if [ "$missing" = python3-lgpio ] && compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null &&
        ! apt_available python3-lgpio; then
        no_lgpio_warning
        missing=""
    fi
    if [ -z "$missing" ]; then
        note "debian packages: unchanged"
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    # first: a fresh image's package lists may be empty
    if [ -n "$WHEELHOUSE" ]; then
        # offline: an index that cannot be fetched is an error (plain apt-get update only
        # warns, and the install after it fails on empty lists), and --debs takes over
        if ! run apt-get -o APT::Update::Error-Mode=any update -qq; then
            apt_offline "apt-get update failed" "$missing"
            return 0
        fi
    else
        run apt-get update -qq
    fi
    for p in $missing; do
        if [ "$p" = python3-lgpio ] && ! apt_available "$p"; then
            no_lgpio_warning
            continue
        fi
        install+=("$p")
    done
    [ "${#install[@]}" -gt 0 ] || return 0
    if [ -z "$WHEELHOUSE" ]; then
        run apt-get install -y -qq --no-install-recommends "${install[@]}"
    elif ! run apt-get install -y -qq --no-install-recommends "${install[@]}"; then
        apt_offline "apt-get install failed" "$(missing_debs "${install[@]}")"
    fi
}

# apt_offline WHY MISSING: an --offline install without the Debian archive: what --debs
# supplies, then a warning naming the rest; the install goes on with the wheels
apt_offline() {
    local missing=$2
    if [ -n "$DEBS" ] && [ -n "$missing" ]; then
        # shellcheck disable=SC2086
        offline_debs $missing
        missing=$STILL_MISSING
    fi
    if [ -z "$missing" ]; then
        note "debian packages: $1 (no network?); $DEBS had what was missing"
        return 0
    fi
    # shellcheck disable=SC2086,SC2116
    say "warning: $1 (no network?): missing Debian packages: $(echo $missing)"
    say "         continuing with the wheels in $WHEELHOUSE"
}

# deb_of NAME: the .deb of package NAME in $DEBS, if there is one
deb_of() {
    local f
    for f in "$DEBS/$1"_*.deb; do
        if [ -f "$f" ]; then
            printf '%s\n' "$f"
            break
        fi
    done
    return 0
}

# offline_debs PACKAGE...: the packages --debs supplies with no network. A library
# (libopus0: it needs only libc6) is installed from its .deb with dpkg -i. python3-dev and
# libasound2-dev never are: each pins the exact version of its runtime library, which an
# image from another month does not have; their headers serve pip's build of pyalsaaudio
# instead (dev_headers). Sets STILL_MISSING to the rest, space-separated.
STILL_MISSING=""
offline_debs() {
    local p deb rest=() headers=()
    for p in "$@"; do
        case "$p" in
            python3-dev | libasound2-dev)
                headers+=("$p")
                continue
                ;;
        esac
        deb=$(deb_of "$p")
        if [ -z "$deb" ]; then
            rest+=("$p")
        elif ! run dpkg -i "$deb"; then
            say "warning: dpkg -i $deb failed (above)"
            rest+=("$p")
        fi
    done
    if [ "${#headers[@]}" -gt 0 ]; then
        dev_headers
        for p in "${headers[@]}"; do
            [[ " $HEADERS_FOR " == *" $p "* ]] || rest+=("$p")
        done
    fi
    STILL_MISSING="${rest[*]:-}"
}

# dev_headers: every -dev package in $DEBS unpacked (dpkg-deb -x; also when staged: it only
# writes a temporary folder, removed at exit) for pip's build of pyalsaaudio from its sdist,
# which runs in an isolated build environment that inherits this one: CPATH gets the
# unpacked include folders (Python.h, pyconfig.h, alsa/asoundlib.h), LIBRARY_PATH a folder
# where libasound.so points to the system's libasound.so.2 (for -lasound). Sets HEADERS_FOR
# to which of python3-dev and libasound2-dev that stands in for.
HEADERS=""
HEADERS_FOR=""
remove_headers() { [ -z "$HEADERS" ] || rm -rf "$HEADERS"; }
dev_headers() {
    local debs=() deb name unpacked="" multiarch py found="" f d lib="" inc
    HEADERS_FOR=""
    for deb in "$DEBS"/*-dev_*.deb; do
        [ ! -f "$deb" ] || debs+=("$deb")
    done
    if [ "${#debs[@]}" -eq 0 ]; then
        say "warning: no -dev packages in $DEBS: pyalsaaudio has no headers to build with"
        return 0
    fi
    if ! command -v dpkg-deb >/dev/null 2>&1; then
        say "warning: dpkg-deb not found: the -dev packages in $DEBS cannot be unpacked"
        return 0
    fi
    if [ -z "$HEADERS" ]; then
        HEADERS=$(mktemp -d "${TMPDIR:-/tmp}/wzp-headers.XXXXXX")
        trap remove_headers EXIT
    fi
    for deb in "${debs[@]}"; do
        name=${deb##*/}
        if dpkg-deb -x "$deb" "$HEADERS"; then
            unpacked+="${unpacked:+, }${name%%_*}"
        else
            say "warning: $deb could not be unpacked (above)"
        fi
    done
    multiarch=$(gcc -dumpmachine 2>/dev/null) || multiarch="$(uname -m)-linux-gnu"
    inc=$HEADERS/usr/include
    [ ! -d "$HEADERS/usr/include/$multiarch" ] || inc+=":$HEADERS/usr/include/$multiarch"

    # Python.h for the Python the venv is made from: other versions' headers would build a
    # module that does not load
    py=$("$PI_PYTHON" -c 'import sys; print("python%d.%d" % sys.version_info[:2])')
    if [ -f "$HEADERS/usr/include/$py/Python.h" ]; then
        inc+=":$HEADERS/usr/include/$py"
        HEADERS_FOR=python3-dev
    else
        for f in "$HEADERS"/usr/include/python3.*/Python.h; do
            [ ! -f "$f" ] || { f=${f%/Python.h}; found+=" ${f##*/}"; }
        done
        say "warning: no $py/Python.h in $DEBS${found:+ (only:$found)}: python3-dev stays missing"
    fi

    if [ -f "$HEADERS/usr/include/alsa/asoundlib.h" ]; then
        for d in "/usr/lib/$multiarch" /usr/lib "/lib/$multiarch"; do
            if [ -e "$(R "$d")/libasound.so.2" ]; then
                lib=$HEADERS/wzp-lib
                mkdir -p "$lib"
                ln -sfn "$(R "$d")/libasound.so.2" "$lib/libasound.so"
                HEADERS_FOR+=" libasound2-dev"
                break
            fi
        done
        if [ -z "$lib" ]; then
            say "warning: libasound.so.2 (package libasound2) is not in $(R "/usr/lib/$multiarch"),"
            say "         $(R /usr/lib) or $(R "/lib/$multiarch"): libasound2-dev stays missing"
        fi
    else
        say "warning: no alsa/asoundlib.h in $DEBS: libasound2-dev stays missing"
    fi

    [ -n "$HEADERS_FOR" ] || return 0
    export CPATH="$inc${CPATH:+:$CPATH}"
    [ -z "$lib" ] || export LIBRARY_PATH="$lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
    note "build headers: unpacked $unpacked into $HEADERS for pyalsaaudio"
    note "  (CPATH=$CPATH${lib:+ LIBRARY_PATH=$LIBRARY_PATH}; removed at exit)"
}

pi_users() {
    local g
    for g in audio gpio; do
        if has_group "$g"; then
            note "group $g: unchanged"
        else
            # Raspberry Pi OS's udev rules give /dev/gpiochip* to group gpio; plain Debian
            # has neither the group nor the rule
            note "group $g: adding"
            run groupadd --system "$g"
        fi
    done
    if ! has_user wzp; then
        note "user wzp: adding (system user, no login, home $STATE, groups audio gpio)"
        run useradd --system --user-group --home-dir "$STATE" --no-create-home \
            --shell /usr/sbin/nologin --comment "wzp handset daemon" --groups audio,gpio wzp
        return 0
    fi
    local changed=0
    for g in audio gpio; do
        if ! in_group wzp "$g"; then
            note "user wzp: joining group $g"
            run usermod -a -G "$g" wzp
            changed=1
        fi
    done
    [ "$changed" -eq 1 ] || note "user wzp: unchanged"
}

# The files pip builds the package from (the same list is hashed for the stamp).
source_files() {
    local f
    (
        cd "$here"
        for f in pyproject.toml README.md LICENSE LICENSE.txt setup.cfg setup.py MANIFEST.in; do
            [ -f "$f" ] && printf '%s\0' "$f"
        done
        find device -type d \( -name __pycache__ -o -name '*.egg-info' \) -prune -o \
            -type f ! -name '*.pyc' -print0 | LC_ALL=C sort -z
    )
}

PKG_CHANGED=0
pi_venv() {
    local vpath stamp want build
    vpath=$(R "$VENV")
    if [ -x "$vpath/bin/python" ] && "$vpath/bin/python" -c 'import sys' 2>/dev/null &&
        grep -qi '^include-system-site-packages *= *true' "$vpath/pyvenv.cfg" 2>/dev/null; then
        note "$VENV: unchanged"
    else
        if [ -e "$vpath" ] && [ "$STAGED" -eq 0 ]; then
            note "$VENV: unusable (Python upgraded?), making it again"
            rm -rf "$vpath"
        else
            note "$VENV: creating (with the system site-packages, for python3-lgpio)"
        fi
        run "$PI_PYTHON" -m venv --system-site-packages "$VENV"
    fi

    # pip only when the checkout's sources (or the wheel) differ from what was installed last
    if [ "$STAGED" -eq 0 ]; then
        stamp="$vpath/.wzp-install-stamp"
        if [ -n "$WHEEL" ]; then
            want=$(sha256sum <"$WHEEL" | cut -d' ' -f1)
        else
            want=$(source_files | (cd "$here" && xargs -0 sha256sum) | sha256sum | cut -d' ' -f1)
        fi
        if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] &&
            "$vpath/bin/wzp" --version >/dev/null 2>&1; then
            note "wzp package: unchanged"
            return 0
        fi
    fi
    PKG_CHANGED=1
    if [ -n "$WHEEL" ]; then
        local index=()
        [ -z "$WHEELHOUSE" ] || index=(--no-index --find-links "$WHEELHOUSE")
        note "wzp package: installing $WHEEL into $VENV${WHEELHOUSE:+ (dependencies from $WHEELHOUSE)}"
        run "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
            ${index[@]+"${index[@]}"} "$WHEEL" || die "pip could not install $WHEEL into $VENV (see above)"
        [ "$STAGED" -eq 1 ] || echo "$want" >"$stamp"
        return 0
    fi
    note "wzp package: installing this checkout into $VENV"
    if [ "$STAGED" -eq 1 ]; then
        run "$VENV/bin/python" -m pip install --disable-pip-version-check "$here"
        return 0
    fi
    # build from a copy: a build in the checkout would leave root-owned build/ and
    # egg-info folders behind in the user's tree
    build=$(mktemp -d)
    source_files | (cd "$here" && tar --null -T - -cf -) | tar -C "$build" -xf -
    run "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$build" ||
        { rm -rf "$build"; die "pip could not install wzp into $VENV (see above)"; }
    rm -rf "$build"
    echo "$want" >"$stamp"
    if [ "$WHAT" = handset ] && ! "$VENV/bin/python" -c 'import lgpio' 2>/dev/null; then
        say "warning: lgpio does not import in $VENV: buttons and LEDs will not work"
    fi
}

pi_link() {
    local path target
    path=$(R "$BIN_LINK")
    target="$VENV/bin/wzp"
    if [ -L "$path" ] && [ "$(readlink "$path")" = "$target" ]; then
        note "$BIN_LINK: unchanged"
    elif [ -e "$path" ] || [ -L "$path" ]; then
        say "warning: $BIN_LINK exists and is not wzp's link: left alone (use $target)"
    else
        mkdir -p "$(dirname "$path")"
        ln -s "$target" "$path"
        note "$BIN_LINK: installed (-> $target)"
    fi
}

pi_config() {
    local dest="$ETC/wzp.toml" tmp
    tmp=$(mktemp)
    # the installed package's own template; the checkout's copy when staging (there is no
    # venv to run) or should the command fail
    if [ "$STAGED" -eq 1 ] || ! "$VENV/bin/wzp" config template >"$tmp" 2>/dev/null ||
        [ ! -s "$tmp" ]; then
        if [ -f "$here/device/wzp/daemon/wzp.toml.template" ]; then
            cat "$here/device/wzp/daemon/wzp.toml.template" >"$tmp"
        elif [ -f "$here/wzp.toml.template" ]; then # a card's wzp/ folder
            cat "$here/wzp.toml.template" >"$tmp"
        else
            : >"$tmp"
        fi
    fi
    if [ -e "$(R "$dest")" ]; then
        if [ -s "$tmp" ] && cmp -s "$tmp" "$(R "$dest")"; then
            note "$dest: unchanged"
        else
            note "$dest: kept (yours; never overwritten: wzp config template shows the template)"
        fi
        ensure_owner "$dest" root:wzp
    elif [ -s "$tmp" ]; then
        install_file "$tmp" "$dest" 0640
        ensure_owner "$dest" root:wzp
    else
        say "warning: no config template found: $dest not written (the daemon runs on defaults)"
    fi
    rm -f "$tmp"
}

FINGERPRINT=""
pi_identity() {
    if [ -e "$(R "$SEED")" ]; then
        note "$SEED: kept (exists; never regenerated)"
    else
        note "$SEED: creating this device's identity"
    fi
    # as wzp, so the seed belongs to the daemon's user (mode 0600); from / so nothing
    # is written into the caller's directory
    if [ "$STAGED" -eq 1 ]; then
        run runuser -u wzp -- "$VENV/bin/wzp" identity --path "$SEED"
        FINGERPRINT="(shown by: sudo -u wzp $VENV/bin/wzp identity --path $SEED)"
        return 0
    fi
    printf 'run: runuser -u wzp -- %s identity --path %s\n' "$VENV/bin/wzp" "$SEED"
    FINGERPRINT=$(cd / && runuser -u wzp -- "$VENV/bin/wzp" identity --path "$SEED") ||
        die "could not read or create the identity $SEED (see above)"
}

UNIT_CHANGED=0
pi_unit() { # UNIT: systemd/UNIT of this checkout into $UNIT_DIR
    local unit=$1 tmp
    [ -f "$here/systemd/$unit" ] || die "$here/systemd/$unit is missing from this checkout"
    tmp=$(mktemp)
    # the unit names /opt/wzp/venv; follow $VENV should it ever move
    sed "s#/opt/wzp/venv/#$VENV/#g" "$here/systemd/$unit" >"$tmp"
    install_file "$tmp" "$UNIT_DIR/$unit" 0644
    UNIT_CHANGED=$CHANGED
    rm -f "$tmp"
}

CONFIG_OK=1
pi_check_config() {
    if [ "$STAGED" -eq 1 ]; then
        run runuser -u wzp -- "$VENV/bin/wzp" config check
        return 0
    fi
    printf 'run: runuser -u wzp -- %s config check\n' "$VENV/bin/wzp"
    if ! (cd / && runuser -u wzp -- "$VENV/bin/wzp" config check); then
        CONFIG_OK=0
        say "warning: $ETC/wzp.toml is refused (above): the service is not restarted on it"
    fi
}

pi_service() { # UNIT CONFIG
    local unit=$1 config=$2
    if ! systemd_running; then
        say "warning: systemd is not running here: on the device run"
        say "         systemctl enable --now $unit"
        return 0
    fi
    if [ "$UNIT_CHANGED" -eq 1 ]; then
        run systemctl daemon-reload
    fi
    run systemctl enable --quiet "$unit"
    if [ "$CONFIG_OK" -eq 0 ]; then
        note "service: left as it was (fix $config, then: sudo systemctl restart ${unit%.service})"
    elif [ "$STAGED" -eq 1 ] || [ "$UNIT_CHANGED" -eq 1 ] || [ "$PKG_CHANGED" -eq 1 ] ||
        ! systemctl is-active --quiet "$unit"; then
        run systemctl restart "$unit"
        [ "$STAGED" -eq 1 ] || note "service: (re)started"
    else
        note "service: running, unchanged"
    fi
}

# restart_other UNIT: the venv is shared by a handset and a relay on one host; when pip
# changed the package, the other one, if running, restarts on it too (a live install only:
# a staged root has no running services)
restart_other() {
    if [ "$STAGED" -eq 1 ] || [ "$PKG_CHANGED" -eq 0 ] || ! systemd_running; then
        return 0
    fi
    if systemctl is-active --quiet "$1"; then
        run systemctl restart "$1"
        note "service ${1%.service}: restarted (it shares $VENV)"
    fi
}

boot_dir() {
    if [ -d "$(R /boot/firmware)" ]; then
        echo /boot/firmware
    elif [ -d "$(R /boot)" ]; then
        echo /boot
    fi
}

pi_summary() {
    local boot who=${SUDO_USER:-YOUR_USER}
    boot=$(boot_dir)
    cat <<DONE

wzp handset installed${ROOT:+ (staged under $ROOT)}.
  identity:   $FINGERPRINT
              (peers put this fingerprint in their contacts; the secret seed stays in $SEED)
  config:     $ETC/wzp.toml: edit it (contacts, board, audio), then
              sudo systemctl restart ${UNIT%.service}
DONE
    if [ -n "$boot" ]; then
        note "  boot file:  $boot/wzp.toml, if present, is checked and applied at the next start"
        note "              (renamed wzp.toml.applied, or wzp.toml.error with the reasons)"
    else
        note "  boot file:  no /boot/firmware or /boot here: edit $ETC/wzp.toml instead"
    fi
    cat <<DONE
  status:     wzp status        journalctl -u ${UNIT%.service} -f
  wzp without sudo: sudo usermod -aG wzp $who (then log in again)
DONE
}

pi_install() {
    if [ "$STAGED" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
        die "the handset install needs root: sudo ./install.sh (or --root DIR to stage, --dev for a checkout)"
    fi
    check_os
    pi_apt "${PI_APT[@]}"
    pi_users
    ensure_dir "$OPT" 0755
    ensure_dir "$ETC" 0755
    # group wzp: `wzp config apply-boot` (root) writes boot.toml 0640 with the folder's
    # group, and the daemon (user wzp) must read it
    ensure_owner "$ETC" root:wzp
    ensure_dir "$STATE" 0700
    ensure_owner "$STATE" wzp:wzp -R
    pi_venv
    pi_link
    pi_config
    pi_identity
    pi_unit "$UNIT"
    pi_check_config
    pi_service "$UNIT" "$ETC/wzp.toml"
    restart_other "$RELAY_UNIT"
    pi_summary
}

remove_path() { # PATH [what]: rm -rf under the root, saying what happened
    local dest=$1 path
    path=$(R "$dest")
    if [ -e "$path" ] || [ -L "$path" ]; then
        rm -rf "$path"
        note "$dest: removed${2:+ ($2)}"
    else
        note "$dest: absent"
    fi
}

# remove_shared OTHER_UNIT: $VENV and the wzp link, unless the other install (handset or
# relay) still has its unit here and runs from them
# remove_unit NAME: stop and disable the unit, remove its file, reload systemd
remove_unit() {
    local unit=$1
    if systemd_running; then
        # the unit may be unknown already (half-removed install): not an error
        run systemctl disable --now --quiet "$unit" || true
    fi
    remove_path "$UNIT_DIR/$unit"
    if systemd_running; then
        run systemctl daemon-reload
    fi
}

remove_shared() {
    local link
    if [ -e "$(R "$UNIT_DIR/$1")" ]; then
        note "$OPT: kept (${1%.service} is installed here and runs from it)"
        return 0
    fi
    link=$(R "$BIN_LINK")
    if [ -L "$link" ] && [ "$(readlink "$link")" = "$VENV/bin/wzp" ]; then
        remove_path "$BIN_LINK"
    fi
    remove_path "$OPT"
}

pi_uninstall() {
    local purge=$1 f
    if [ "$STAGED" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
        die "uninstalling needs root: sudo ./install.sh --uninstall"
    fi
    remove_unit "$UNIT"
    remove_shared "$RELAY_UNIT"
    remove_path "$ETC/boot.toml"
    remove_path "$RUNDIR"
    if has_user wzp; then
        run userdel wzp
    fi
    # userdel takes the user's own group along; one left behind goes explicitly
    if has_group wzp; then
        run groupdel wzp
    fi
    if [ "$purge" -eq 1 ]; then
        remove_path "$STATE" "purge: identity and added contacts"
        if [ -e "$(R "$RELAY_CONF")" ]; then
            # a relay's config is not the handset's to remove
            while IFS= read -r -d '' f; do
                remove_path "$ETC/${f##*/}" "purge: configuration"
            done < <(find "$(R "$ETC")" -mindepth 1 -maxdepth 1 ! -name relay.toml -print0 |
                LC_ALL=C sort -z)
            note "$RELAY_CONF: kept (the relay's: ./install.sh --relay --uninstall --purge)"
        else
            remove_path "$ETC" "purge: configuration"
        fi
    else
        note "kept: $SEED (this device's identity) and $ETC/wzp.toml;"
        note "      ./install.sh --uninstall --purge removes them"
    fi
    note "group gpio: kept (other software may use it)"
}

# ------------------------------------------------------------------------------ relay mode
#
# --relay: the same machinery for `wzp relay` (systemd/wzp-relay.service): its own system
# user wzp-relay, /etc/wzp/relay.toml, /var/lib/wzp-relay (its identity), and the handset's
# /opt/wzp/venv and /usr/local/bin/wzp, which both installs share. The handset's files are
# never touched, so one host may run both.

relay_user() {
    if has_user "$RELAY_USER"; then
        note "user $RELAY_USER: unchanged"
        return 0
    fi
    local group=(--user-group)
    # a group left behind by hand: the user joins it instead of failing on it
    if has_group "$RELAY_USER"; then
        group=(--gid "$RELAY_USER")
    fi
    note "user $RELAY_USER: adding (system user, no login, home $RELAY_STATE)"
    run useradd --system "${group[@]}" --home-dir "$RELAY_STATE" --no-create-home \
        --shell /usr/sbin/nologin --comment "wzp relay" "$RELAY_USER"
}

relay_config() {
    local dest=$RELAY_CONF tmp
    tmp=$(mktemp)
    # the installed package's template (a --wheel install has no checkout copy); the
    # checkout's when staging (there is no venv to run) or should that fail
    if [ "$STAGED" -eq 1 ] || ! "$VENV/bin/python" -c 'import sys
from importlib.resources import files
sys.stdout.write(files("wzp.relay").joinpath("relay.toml.template").read_text("utf-8"))' \
        >"$tmp" 2>/dev/null || [ ! -s "$tmp" ]; then
        if [ -f "$here/device/wzp/relay/relay.toml.template" ]; then
            cat "$here/device/wzp/relay/relay.toml.template" >"$tmp"
        elif [ -f "$here/relay.toml.template" ]; then
            cat "$here/relay.toml.template" >"$tmp"
        else
            : >"$tmp"
        fi
    fi
    if [ -e "$(R "$dest")" ]; then
        if [ -s "$tmp" ] && cmp -s "$tmp" "$(R "$dest")"; then
            note "$dest: unchanged"
        else
            note "$dest: kept (yours; never overwritten)"
        fi
    elif [ -s "$tmp" ]; then
        install_file "$tmp" "$dest" 0640
    else
        rm -f "$tmp"
        die "no relay.toml.template found: $dest not written (the relay does not start without it)"
    fi
    rm -f "$tmp"
    # root's file, readable by the relay (its group) and nobody else
    ensure_owner "$dest" "root:$RELAY_USER"
}

RELAY_FP=""
relay_identity() {
    if [ -e "$(R "$RELAY_SEED")" ]; then
        note "$RELAY_SEED: kept (exists; never regenerated)"
    else
        note "$RELAY_SEED: creating the relay's identity"
    fi
    # `wzp identity` and `wzp relay` keep the seed alike (wzp.daemon.identity_store: 32
    # bytes, mode 0600); as wzp-relay, so the seed is the relay's
    if [ "$STAGED" -eq 1 ]; then
        run runuser -u "$RELAY_USER" -- "$VENV/bin/wzp" identity --path "$RELAY_SEED"
        RELAY_FP="(shown by: sudo -u $RELAY_USER $VENV/bin/wzp identity --path $RELAY_SEED)"
        return 0
    fi
    printf 'run: runuser -u %s -- %s identity --path %s\n' "$RELAY_USER" "$VENV/bin/wzp" "$RELAY_SEED"
    RELAY_FP=$(cd / && runuser -u "$RELAY_USER" -- "$VENV/bin/wzp" identity --path "$RELAY_SEED") ||
        die "could not read or create the relay identity $RELAY_SEED (see above)"
}

RELAY_PORT=4433
relay_check_config() {
    local settings seed
    if [ "$STAGED" -eq 1 ]; then
        run runuser -u "$RELAY_USER" -- "$VENV/bin/wzp" relay --check-config --config "$RELAY_CONF"
        return 0
    fi
    printf 'run: runuser -u %s -- %s relay --check-config --config %s\n' \
        "$RELAY_USER" "$VENV/bin/wzp" "$RELAY_CONF"
    if ! (cd / && runuser -u "$RELAY_USER" -- "$VENV/bin/wzp" relay --check-config --config "$RELAY_CONF"); then
        CONFIG_OK=0
        say "warning: $RELAY_CONF is refused (above): the service is not restarted on it"
        return 0
    fi
    # the port and the identity relay.toml sets, for the summary
    settings=$(cd / && runuser -u "$RELAY_USER" -- "$VENV/bin/python" -c 'import sys
from pathlib import Path
from wzp.relay.config import load_config
cfg = load_config(Path(sys.argv[1]))
print(cfg.port)
print(cfg.identity)' "$RELAY_CONF" 2>/dev/null) || return 0
    RELAY_PORT=${settings%%$'\n'*}
    seed=${settings#*$'\n'}
    if [ "$seed" != "$RELAY_SEED" ]; then
        say "warning: $RELAY_CONF sets identity = \"$seed\": the relay's fingerprint is that seed's"
        say "         (sudo -u $RELAY_USER $VENV/bin/wzp identity --path $seed), not $RELAY_SEED's"
        RELAY_FP="(of $seed: sudo -u $RELAY_USER $VENV/bin/wzp identity --path $seed)"
    fi
}

relay_summary() {
    cat <<DONE

wzp relay installed${ROOT:+ (staged under $ROOT)}.
  fingerprint: $RELAY_FP
               (handsets pin it; the secret seed stays in $RELAY_SEED)
  rooms:       edit $RELAY_CONF: add [rooms.NAME] tables with the handsets'
               fingerprints (or allow = "open"), then check it and restart:
               sudo -u $RELAY_USER $VENV/bin/wzp relay --check-config
               sudo systemctl restart ${RELAY_UNIT%.service}
  firewall:    open UDP port $RELAY_PORT (QUIC) to the handsets, and forward it on the router
               if this host is behind NAT
  handsets:    [relay] in their /etc/wzp/wzp.toml: address = "THIS_HOST:$RELAY_PORT",
               fingerprint = the one above, room = "NAME"
  status:      sudo $VENV/bin/wzp relay --status        journalctl -u ${RELAY_UNIT%.service} -f
DONE
}

relay_install() {
    if [ "$STAGED" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
        die "the relay install needs root: sudo ./install.sh --relay (or --root DIR to stage)"
    fi
    check_os
    pi_apt "${RELAY_APT[@]}"
    relay_user
    ensure_dir "$OPT" 0755
    # /etc/wzp stays as it is owned (root:wzp when the handset is installed too)
    ensure_dir "$ETC" 0755
    ensure_dir "$RELAY_STATE" 0700
    ensure_owner "$RELAY_STATE" "$RELAY_USER:$RELAY_USER" -R
    pi_venv
    pi_link
    relay_config
    relay_identity
    pi_unit "$RELAY_UNIT"
    relay_check_config
    pi_service "$RELAY_UNIT" "$RELAY_CONF"
    restart_other "$UNIT"
    relay_summary
}

relay_uninstall() {
    local purge=$1 etc
    if [ "$STAGED" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
        die "uninstalling needs root: sudo ./install.sh --relay --uninstall"
    fi
    remove_unit "$RELAY_UNIT"
    remove_shared "$UNIT"
    remove_path "$RELAY_RUNDIR"
    if has_user "$RELAY_USER"; then
        run userdel "$RELAY_USER"
    fi
    if has_group "$RELAY_USER"; then
        run groupdel "$RELAY_USER"
    fi
    if [ "$purge" -eq 1 ]; then
        remove_path "$RELAY_STATE" "purge: the relay's identity"
        remove_path "$RELAY_CONF" "purge: the relay's configuration"
        # /etc/wzp goes only when nothing else (the handset's files) is in it
        etc=$(R "$ETC")
        if [ -d "$etc" ] && [ -z "$(ls -A "$etc")" ]; then
            rmdir "$etc"
            note "$ETC: removed (empty)"
        fi
    else
        note "kept: $RELAY_SEED (the relay's identity: handsets pin it) and $RELAY_CONF;"
        note "      ./install.sh --relay --uninstall --purge removes them"
    fi
}

# --root DIR: absolute, existing or created, never / itself
set_root() {
    [ -n "$1" ] || { say "--root needs a directory"; usage; exit 2; }
    mkdir -p "$1"
    ROOT=$(cd "$1" && pwd)
    [ "$ROOT" != / ] || { say "--root /: run without --root to install on this system"; exit 2; }
    STAGED=1
}

# set_path --wheel FILE | --offline DIR | --debs DIR: absolute, and it must exist
set_path() {
    local abs
    abs=$(cd "$(dirname "$2")" 2>/dev/null && printf '%s/%s' "$(pwd)" "$(basename "$2")") || abs=""
    if [ "$1" = --wheel ]; then
        if [ ! -f "$abs" ] || [[ "$abs" != *.whl ]]; then
            say "--wheel $2: no such wheel file"
            exit 2
        fi
        WHEEL=$abs
    else
        [ -d "$abs" ] || { say "$1 $2: no such folder"; exit 2; }
        if [ "$1" = --debs ]; then
            DEBS=$abs
        else
            WHEELHOUSE=$abs
        fi
    fi
}

main() {
    local action=install purge=0
    if [ "${1:-}" = --dev ]; then
        [ $# -eq 1 ] || { say "--dev takes no other option"; usage; exit 2; }
        dev
        return 0
    fi
    while [ $# -gt 0 ]; do
        case "$1" in
            -h | --help) usage; return 0 ;;
            --uninstall) action=uninstall ;;
            --purge) purge=1 ;;
            --relay) WHAT=relay ;;
            --dev) say "--dev takes no other option"; usage; exit 2 ;;
            --root)
                [ $# -ge 2 ] || { say "--root needs a directory"; usage; exit 2; }
                set_root "$2"
                shift
                ;;
            --root=*) set_root "${1#--root=}" ;;
            --wheel | --offline | --debs)
                if [ $# -lt 2 ] || [ -z "$2" ]; then
                    say "$1 needs a path"
                    usage
                    exit 2
                fi
                set_path "$1" "$2"
                shift
                ;;
            *) say "unknown option: $1"; usage; exit 2 ;;
        esac
        shift
    done
    if [ -n "$WHEELHOUSE" ] && [ -z "$WHEEL" ]; then
        say "--offline goes with --wheel"
        usage
        exit 2
    fi
    if [ -n "$DEBS" ] && [ -z "$WHEELHOUSE" ]; then
        say "--debs goes with --offline"
        usage
        exit 2
    fi
    if [ -n "$WHEEL" ] && [ "$action" = uninstall ]; then
        say "--wheel goes with an install, not --uninstall"
        usage
        exit 2
    fi
    if [ "$purge" -eq 1 ] && [ "$action" != uninstall ]; then
        say "--purge goes with --uninstall"
        usage
        exit 2
    fi
    case "$WHAT:$action" in
        handset:uninstall) pi_uninstall "$purge" ;;
        handset:install) pi_install ;;
        relay:uninstall) relay_uninstall "$purge" ;;
        relay:install) relay_install ;;
    esac
}

# sourced (the tests reach single functions this way): define everything, run nothing
(return 0 2>/dev/null) || main "$@"
