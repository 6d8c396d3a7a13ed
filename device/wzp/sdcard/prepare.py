"""``wzp sdcard prepare`` and ``--undo``: open the target, check everything, then write.

Nothing is written before every check has passed (target, release, existing hooks, config),
so a refusal leaves the card byte for byte as it was. What is written is recorded in
``wzp/manifest.json`` (with copies of changed files under ``wzp/orig/``) before the changes
themselves; a second run first puts the card back as the manifest says and then prepares it
again, so it never stacks a second hook and writes the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from . import SdcardError
from .fs import (
    BootFS,
    FolderFS,
    MtoolsFS,
    block_size,
    card_layout,
    is_block_device,
    is_read_only,
    read_root_file,
    refuse_if_mounted,
)
from .hooks import (
    FIRSTRUN_NEW,
    META_DATA,
    add_cmdline_run,
    chain_firstrun,
    merge_user_data,
)
from .payload import (
    Payload,
    build_payload,
    build_wheel,
    checkout_root,
    deb_packages,
    fetch_debs,
    fetch_wheelhouse,
)
from .release import Release, detect, names

MANIFEST = "wzp/manifest.json"
ORIG = "wzp/orig"
BOOT_CONFIG = "wzp.toml"
FORMAT = 1

Log = Callable[[str], None]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- target


@dataclass
class Target:
    fs: BootFS
    kind: str  # "folder", "image" or "device"
    os_release: str | None = None


def open_target(path: Path) -> Target:
    """The boot partition behind ``path``. Raises SdcardError for anything unusable."""
    if not path.exists():
        raise SdcardError(f"{path}: no such file, folder or device")
    if path.is_dir():
        return Target(FolderFS(path), "folder")
    if is_block_device(path):
        refuse_if_mounted(path)
        if is_read_only(path):
            raise SdcardError(
                f"{path} is read-only (write-protected): if it is an SD card in an adapter, "
                "slide the adapter's lock switch away from LOCK and insert it again"
            )
        try:
            size = block_size(path)
        except OSError as exc:
            raise SdcardError(f"cannot read {path}: {exc.strerror or exc} (need sudo?)") from None
        kind, what = "device", f"device {path}"
    elif path.is_file():
        refuse_if_mounted(path)  # attached to a loop device whose partition is mounted
        size = path.stat().st_size
        kind, what = "image", f"image {path}"
    else:
        raise SdcardError(f"{path} is neither a folder, an image file nor a block device")
    try:
        layout = card_layout(path, size, what)
    except OSError as exc:
        raise SdcardError(f"cannot read {path}: {exc.strerror or exc}") from None
    os_release = None
    if layout.root is not None:
        os_release = read_root_file(path, layout.root, ("/etc/os-release", "/usr/lib/os-release"))
    fs = MtoolsFS(path, layout.boot.start, f"the boot partition of {what}")
    return Target(fs, kind, os_release)


# --------------------------------------------------------------------------- manifest


@dataclass
class Manifest:
    release: str
    mechanism: str
    #: top-level card file -> sha256 of what prepare wrote (files it created)
    added: dict[str, str] = field(default_factory=dict)
    #: top-level card file -> sha256 of what prepare wrote (files it changed; the original
    #: is in wzp/orig/ under the same name)
    changed: dict[str, str] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        data = {
            "format": FORMAT,
            "written_by": f"wzp {__version__} sdcard prepare",
            "release": self.release,
            "mechanism": self.mechanism,
            "added": dict(sorted(self.added.items())),
            "changed": dict(sorted(self.changed.items())),
            "originals": ORIG,
        }
        return (json.dumps(data, indent=2) + "\n").encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        try:
            data = json.loads(raw)
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            return cls(
                str(data["release"]),
                str(data["mechanism"]),
                {str(k): str(v) for k, v in data["added"].items()},
                {str(k): str(v) for k, v in data["changed"].items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SdcardError(
                f"{MANIFEST} on the card is unreadable ({exc}): remove the wzp folder and "
                "restore the card by writing it again"
            ) from None


def read_manifest(fs: BootFS) -> Manifest | None:
    top = names(fs)
    if "wzp" not in top:
        return None
    raw = fs.read(MANIFEST)
    if raw is None:
        raise SdcardError(
            f"{fs.description} already has a wzp folder that `wzp sdcard prepare` did not "
            "make (no wzp/manifest.json): move it away first"
        )
    return Manifest.from_bytes(raw)


class _Pristine:
    """The card as it was before the last prepare (read-only view for the checks)."""

    def __init__(self, fs: BootFS, manifest: Manifest | None) -> None:
        self.fs = fs
        self.description = fs.description
        self.over: dict[str, bytes | None] = {}
        if manifest is None:
            return
        for name, sha in manifest.added.items():
            current = fs.read(name)
            if current is not None and _sha(current) == sha:
                self.over[name] = None
        for name, sha in manifest.changed.items():
            current = fs.read(name)
            if current is not None and _sha(current) == sha:
                self.over[name] = fs.read(f"{ORIG}/{name}")
        self.over["wzp"] = None

    def read(self, path: str) -> bytes | None:
        if path in self.over:
            return self.over[path]
        return self.fs.read(path)

    def listdir(self, path: str = "") -> dict[str, bool] | None:
        listing = self.fs.listdir(path)
        if path or listing is None:
            return listing
        out = {k: v for k, v in listing.items() if self.over.get(k, b"") is not None}
        for name, data in self.over.items():
            if data is not None:
                out.setdefault(name, False)
        return out

    def write(self, path: str, data: bytes) -> None:  # pragma: no cover - never called
        raise AssertionError("read-only view")

    delete = mkdir = rmtree = write  # type: ignore[assignment]


# --------------------------------------------------------------------------- config


def check_config(path: Path) -> bytes:
    """The config's bytes, after the checks ``wzp run`` applies: every key and value,
    cross-file rules (default_contact), the board profile and half-duplex's PTT button.
    Raises SdcardError listing every problem."""
    from ..board.profile import BoardError, load_profile
    from ..daemon.config import ConfigError, load_config, read_config_text

    try:
        if read_config_text(path) is None:
            raise SdcardError(f"--config {path}: no such file")
        cfg = load_config(path)
    except ConfigError as exc:
        raise SdcardError(
            f"--config {path} is refused (the daemon would refuse it too), nothing written:\n{exc}"
        ) from None
    problems = []
    if cfg.board_profile.startswith("/"):
        pass  # a profile file on the Pi: the daemon checks it there
    else:
        try:
            profile = load_profile(cfg.board_profile)
        except BoardError as exc:
            problems.append(f"board.profile: {exc}")
        else:
            if cfg.mode == "half-duplex" and "ptt" not in profile.buttons:
                problems.append(
                    f"call.mode = half-duplex needs a PTT button and board {profile.name!r} "
                    'has none: set mode = "full-duplex" in [call]'
                )
    if problems:
        raise SdcardError(
            f"--config {path} is refused (the daemon would refuse it too), nothing written:\n"
            + "\n".join(problems)
        )
    return path.read_bytes()


# --------------------------------------------------------------------------- plan


@dataclass
class Plan:
    release: Release
    #: top-level card file -> new bytes, and whether the card had it
    writes: dict[str, bytes]
    originals: dict[str, bytes]
    notes: list[str]


def plan_hooks(view: BootFS, release: Release, config: bytes) -> Plan:
    top = names(view)

    def current(name: str) -> tuple[str, bytes | None]:
        stored = top.get(name.lower(), name)
        return stored, (view.read(stored) if name.lower() in top else None)

    writes: dict[str, bytes] = {}
    originals: dict[str, bytes] = {}
    notes: list[str] = []

    def put(name: str, data: bytes, why: str) -> None:
        stored, old = current(name)
        if old is not None:
            if old == data:
                return
            originals[stored] = old
        writes[stored] = data
        notes.append(f"{stored}: {why}")

    put(BOOT_CONFIG, config, "your config, applied by the daemon at its first start")
    if release.mechanism == "cloud-init":
        _, user_data = current("user-data")
        text = None if user_data is None else _decode(user_data, "user-data")
        merged = merge_user_data(text).encode()
        put(
            "user-data",
            merged,
            "runcmd step added that runs wzp/firstboot.sh once"
            + ("; every other setting kept" if user_data is not None else " (new file)"),
        )
        if "meta-data" not in top:
            put("meta-data", META_DATA.encode(), "cloud-init meta-data (the card had none)")
    else:
        _, cmdline = current("cmdline.txt")
        if release.customised == "firstrun.sh":
            _, firstrun = current("firstrun.sh")
            assert firstrun is not None
            put(
                "firstrun.sh",
                chain_firstrun(_decode(firstrun, "firstrun.sh")).encode(),
                "Imager's first run kept; wzp's step chained before its clean-up",
            )
        else:
            _, firstrun = current("firstrun.sh")
            if firstrun is None:
                put("firstrun.sh", FIRSTRUN_NEW.encode(), "Imager-style first run that starts wzp")
            else:
                put(
                    "firstrun.sh",
                    chain_firstrun(_decode(firstrun, "firstrun.sh")).encode(),
                    "wzp's step chained into the existing firstrun.sh",
                )
            assert cmdline is not None
            put(
                "cmdline.txt",
                add_cmdline_run(_decode(cmdline, "cmdline.txt")).encode(),
                "runs firstrun.sh once at first boot (the words Imager uses)",
            )
    return Plan(release, writes, originals, notes)


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SdcardError(f"{name} on the card is not UTF-8 text: refusing to edit it") from None


# --------------------------------------------------------------------------- actions


def undo_card(fs: BootFS, manifest: Manifest, log: Log) -> None:
    """Put back what the manifest says prepare changed, remove what it added."""
    for name, sha in sorted(manifest.changed.items()):
        current = fs.read(name)
        original = fs.read(f"{ORIG}/{name}")
        if original is None:
            log(f"  {name}: no original copy in {ORIG}: left as it is")
        elif current is None:
            log(f"  {name}: gone since it was prepared (the Pi ran it?): not brought back")
        elif current is not None and _sha(current) != sha:
            log(f"  {name}: changed since it was prepared (has the Pi booted?): left as it is")
        else:
            fs.write(name, original)
            log(f"  {name}: restored")
    for name, sha in sorted(manifest.added.items()):
        current = fs.read(name)
        if current is None:
            log(f"  {name}: already gone")
        elif _sha(current) != sha:
            log(f"  {name}: changed since it was prepared: left as it is")
        else:
            fs.delete(name)
            log(f"  {name}: removed")
    fs.rmtree("wzp")
    log("  wzp/: removed")


@dataclass
class Options:
    target: Path
    config: Path | None
    offline: bool = False
    undo: bool = False
    #: a prebuilt wheel (tests; default: build this checkout's)
    wheel: Path | None = None
    #: extra pip arguments for --offline (tests: a local find-links folder)
    index_args: Sequence[str] = ()
    #: a prefetched wheelhouse (tests; default: fetch with pip)
    wheelhouse: Path | None = None
    #: a folder of prefetched arm64 .debs (tests; default: fetch with apt-get)
    debs: Path | None = None


def undo(opts: Options, log: Log) -> int:
    target = open_target(opts.target)
    manifest = read_manifest(target.fs)
    if manifest is None:
        raise SdcardError(f"{target.fs.description} was not prepared by wzp (no {MANIFEST})")
    log(f"undoing wzp sdcard prepare on {target.fs.description}:")
    undo_card(target.fs, manifest, log)
    log("the card is as it was before `wzp sdcard prepare`")
    return 0


def prepare(opts: Options, log: Log) -> int:
    if opts.config is None:
        raise SdcardError("--config FILE is required (the handset's wzp.toml)")
    config = check_config(opts.config)
    target = open_target(opts.target)
    fs = target.fs
    manifest = read_manifest(fs)
    view = _Pristine(fs, manifest)
    release = detect(view, target.os_release)
    plan = plan_hooks(view, release, config)

    root = checkout_root()
    with tempfile.TemporaryDirectory(prefix="wzp-sdcard-") as tmp:
        wheel = opts.wheel or build_wheel(root, Path(tmp))
        house: list[Path] | None = None
        debs: list[Path] = []
        if opts.offline:
            # the Debian packages first: a host without apt-get or Debian's keyring is
            # refused before the longer wheel downloads
            if opts.debs is not None:
                debs = sorted(p for p in opts.debs.iterdir() if p.is_file())
            else:
                log(
                    f"fetching the Pi's Debian packages (arm64, {release.codename}): "
                    f"{', '.join(deb_packages(release.codename))} ..."
                )
                debs = fetch_debs(release.codename, Path(tmp) / "debs")
            if opts.wheelhouse is not None:
                house = sorted(p for p in opts.wheelhouse.iterdir() if p.is_file())
            else:
                log("fetching the Pi's wheels (aarch64, Python 3.11 and 3.13) ...")
                house = fetch_wheelhouse(wheel, Path(tmp) / "wheels", opts.index_args)
        payload = build_payload(root, wheel, house, debs)
        _check_space(fs, payload, fs.tree_bytes("wzp") if manifest is not None else 0)

        log(f"target: {fs.description}")
        log(f"found: {release.describe()}")
        for item in release.evidence:
            log(f"  ({item})")
        if release.customised:
            log(f"  already set up there: {release.customised} (kept)")
        if manifest is not None:
            log("prepared before: putting the card back first, then preparing it again")
            undo_card(fs, manifest, lambda line: None)
        _write(fs, plan, payload)

    log("placed:")
    for note in plan.notes:
        log(f"  {note}")
    wheels = sum(1 for name in payload.files if name.startswith("wzp/wheels/"))
    if opts.offline:
        packages = len(debs)
        what = (
            f"{wheels} wheels and {packages} Debian packages (libopus0; headers for "
            "pyalsaaudio's build) for an offline install"
        )
    else:
        what = "no wheels (--offline: the first boot needs the internet)"
    log(f"  wzp/: {payload.wheel_name}, install.sh, firstboot.sh, the unit, {what}")
    log(f"  {MANIFEST}: what `wzp sdcard prepare {opts.target} --undo` restores")
    log(
        "next: put the card in the Pi and power it on; the ACT LED blinks three times, "
        "pauses, and repeats while it installs; wzp-firstboot.log on the card says what "
        "happened"
    )
    return 0


#: what one file may take beyond its bytes on the card (its last FAT cluster, 32 KiB at most)
CLUSTER_SLACK = 32 << 10


def _check_space(fs: BootFS, payload: Payload, reclaimed: int = 0) -> None:
    """Refuse before writing anything when the payload does not fit (a card that fills up
    half way is left half prepared). ``reclaimed``: what the payload of an earlier run,
    removed first, gives back."""
    need = sum(len(d) + CLUSTER_SLACK for d in payload.files.values()) + (1 << 20)
    free = fs.free_bytes() + reclaimed
    if free < need:
        bulky = any(n.startswith(("wzp/wheels/", "wzp/debs/")) for n in payload.files)
        raise SdcardError(
            f"{fs.description} has {free // (1 << 20)} MiB free, the payload needs "
            f"{need // (1 << 20) + 1} MiB"
            + (" (the --offline wheels and Debian packages are most of it)" if bulky else "")
        )


def _write(fs: BootFS, plan: Plan, payload: Payload) -> None:
    manifest = Manifest(plan.release.codename, plan.release.mechanism)
    for name, data in plan.writes.items():
        if name in plan.originals:
            manifest.changed[name] = _sha(data)
        else:
            manifest.added[name] = _sha(data)
    folders = sorted({"wzp", ORIG, *(n.rsplit("/", 1)[0] for n in payload.files)})
    for folder in folders:
        fs.mkdir(folder)
    for name, data in plan.originals.items():
        fs.write(f"{ORIG}/{name}", data)
    # the manifest before the changes: an interrupted run can still be undone
    fs.write(MANIFEST, manifest.to_bytes())
    for name, data in sorted(payload.files.items()):
        fs.write(name, data)
    for name, data in plan.writes.items():
        fs.write(name, data)
