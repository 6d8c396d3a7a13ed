"""``wzp sdcard prepare`` on synthetic Trixie, Bookworm and uncustomised cards, each as an
image file and as an extracted boot folder: every placed file, the original settings, a
valid cloud-config, idempotence, --undo, and refusals that leave the card untouched."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.sdcard.cards import (
    CMDLINE,
    CMDLINE_IMAGER,
    FIRSTRUN_IMAGER,
    META_DATA,
    NETWORK_CONFIG,
    SPECS,
    USER_DATA_IMAGER,
    boot_files,
    build_image,
    extract_boot,
    folder_files,
)
from wzp.sdcard import SdcardError
from wzp.sdcard.commands import add_sdcard_parser
from wzp.sdcard.hooks import BLOCK_BEGIN, CMDLINE_RUN, FIRSTRUN_NEW, HOOK_SCRIPT, RUNCMD_ENTRY
from wzp.sdcard.payload import checkout_root, hook_script
from wzp.sdcard.prepare import Options, open_target, prepare, undo

ROOT = checkout_root()
Snapshot = Callable[[], dict[str, bytes]]


def make_card(kind: str, form: str, tmp_path: Path) -> tuple[Path, Snapshot]:
    """A card of ``kind`` as an image or as a boot folder, and how to read all its files."""
    image = build_image(SPECS[kind], tmp_path / "build")
    if form == "image":
        return image, lambda: boot_files(image, tmp_path / "reads")
    folder = extract_boot(image, tmp_path / "bootfs")
    return folder, lambda: folder_files(folder)


def run_prepare(target: Path, config: Path, wheel: Path, **kw: object) -> list[str]:
    lines: list[str] = []
    prepare(Options(target, config, wheel=wheel, **kw), lines.append)  # type: ignore[arg-type]
    return lines


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_subsequence(small: list[str], big: list[str]) -> bool:
    it = iter(big)
    return all(any(line == other for other in it) for line in small)


def check_payload(files: dict[str, bytes], wheel: Path, config: Path) -> None:
    expected = {
        f"wzp/{wheel.name}": wheel.read_bytes(),
        "wzp/install.sh": (ROOT / "install.sh").read_bytes(),
        "wzp/systemd/wzp-phone.service": (ROOT / "systemd/wzp-phone.service").read_bytes(),
        "wzp/wzp.toml.template": (ROOT / "device/wzp/daemon/wzp.toml.template").read_bytes(),
        "wzp/firstboot.sh": hook_script(),
        "wzp.toml": config.read_bytes(),
    }
    for name, data in expected.items():
        assert files.get(name) == data, name
    assert b"wzp-firstboot.log" in files["wzp/README.txt"]
    assert hook_script() == (ROOT / "device/wzp/sdcard/firstboot.sh").read_bytes()


def check_manifest(
    files: dict[str, bytes], before: dict[str, bytes], release: str, mechanism: str
) -> dict[str, object]:
    manifest = json.loads(files["wzp/manifest.json"])
    assert manifest["release"] == release and manifest["mechanism"] == mechanism
    for name, digest in {**manifest["added"], **manifest["changed"]}.items():
        assert sha(files[name]) == digest, name
    for name in manifest["added"]:
        assert name not in before
    for name in manifest["changed"]:
        assert files[f"wzp/orig/{name}"] == before[name]
    return manifest


# ------------------------------------------------------------------------------ trixie


@pytest.mark.parametrize("form", ["image", "folder"])
def test_trixie_card_gets_a_runcmd_step_and_keeps_every_setting(
    form: str, tmp_path: Path, wheel: Path, config: Path
) -> None:
    target, snapshot = make_card("trixie", form, tmp_path)
    before = snapshot()
    out = "\n".join(run_prepare(target, config, wheel))
    assert "Trixie" in out and "cloud-init" in out and "user-data" in out

    files = snapshot()
    check_prepared("trixie", files, before, wheel, config, tmp_path)
    check_cloud_init_schema(files["user-data"], tmp_path)


def check_trixie(files: dict[str, bytes], before: dict[str, bytes], tmp_path: Path) -> None:
    manifest = check_manifest(files, before, "trixie", "cloud-init")
    assert manifest["changed"].keys() == {"user-data"}  # type: ignore[attr-defined]
    assert manifest["added"].keys() == {"wzp.toml"}  # type: ignore[attr-defined]
    # everything else on the partition is as Imager left it
    for name in ("network-config", "meta-data", "cmdline.txt", "config.txt", "issue.txt"):
        assert files[name] == before[name], name
    assert files["network-config"].decode() == NETWORK_CONFIG
    assert files["meta-data"].decode() == META_DATA

    text = files["user-data"].decode()
    assert text.startswith("#cloud-config\n")
    # every original line (comments, layout) is still there, in order
    assert is_subsequence(USER_DATA_IMAGER.splitlines(), text.splitlines())
    old, new = yaml.safe_load(USER_DATA_IMAGER), yaml.safe_load(text)
    assert new["runcmd"] == [*old["runcmd"], RUNCMD_ENTRY]
    assert {k: v for k, v in new.items() if k != "runcmd"} == {
        k: v for k, v in old.items() if k != "runcmd"
    }
    assert new["users"][0]["ssh_authorized_keys"] == old["users"][0]["ssh_authorized_keys"]
    assert new["hostname"] == "handset"
    assert text.count(HOOK_SCRIPT) == 1


def check_cloud_init_schema(user_data: bytes, tmp_path: Path) -> None:
    exe = shutil.which("cloud-init")
    if exe is None:
        pytest.skip("cloud-init is not installed (Debian package cloud-init)")
    path = tmp_path / "user-data-check"
    path.write_bytes(user_data)
    result = subprocess.run(
        [exe, "schema", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


# ------------------------------------------------------------------------------ bookworm


def imager_fixup(firstrun: str) -> str:
    """What Raspberry Pi OS Bookworm's initramfs (raspberrypi-sys-mods imager_fixup) does to
    firstrun.sh when cmdline.txt runs /boot/firstrun.sh: cut at the ``rm ... firstrun.sh``
    line and append its own clean-up for /boot/firmware."""
    kept: list[str] = []
    for line in firstrun.splitlines():
        if re.search(r"rm.*firstrun\.sh$", line):
            break
        kept.append(line)
    tail = [
        "rm -f /boot/firmware/firstrun.sh",
        "sed -i 's| systemd\\.[^ ]*||g' /boot/firmware/cmdline.txt",
        "exit 0",
    ]
    return "\n".join([*kept, *tail]) + "\n"


def bash_parses(text: str, tmp_path: Path) -> None:
    script = tmp_path / "check.sh"
    script.write_text(text)
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("form", ["image", "folder"])
def test_bookworm_card_chains_onto_imagers_firstrun(
    form: str, tmp_path: Path, wheel: Path, config: Path
) -> None:
    target, snapshot = make_card("bookworm", form, tmp_path)
    before = snapshot()
    out = "\n".join(run_prepare(target, config, wheel))
    assert "Bookworm" in out and "firstrun.sh" in out
    check_prepared("bookworm", snapshot(), before, wheel, config, tmp_path)


def check_bookworm(files: dict[str, bytes], before: dict[str, bytes], tmp_path: Path) -> None:
    manifest = check_manifest(files, before, "bookworm", "firstrun")
    assert manifest["changed"].keys() == {"firstrun.sh"}  # type: ignore[attr-defined]
    # Imager's cmdline.txt entry starts firstrun.sh as before
    assert files["cmdline.txt"].decode() == CMDLINE_IMAGER

    text = files["firstrun.sh"].decode()
    lines = text.splitlines()
    assert is_subsequence(FIRSTRUN_IMAGER.splitlines(), lines)
    assert text.count(BLOCK_BEGIN) == 1
    block = lines.index(BLOCK_BEGIN)
    cleanup = lines.index("rm -f /boot/firstrun.sh")
    imager_settings = lines.index(
        "   /usr/lib/raspberrypi-sys-mods/imager_custom set_hostname handset"
    )
    # Imager's own settings run first, wzp's step next, Imager's clean-up last
    assert imager_settings < block < cleanup
    bash_parses(text, tmp_path)
    # the OS rewrites the script's end at first boot: wzp's step survives that
    fixed = imager_fixup(text)
    assert BLOCK_BEGIN in fixed and f'bash "$wzp_boot/{HOOK_SCRIPT}" setup' in fixed
    bash_parses(fixed, tmp_path)


@pytest.mark.parametrize("form", ["image", "folder"])
def test_uncustomised_card_gets_imagers_mechanism(
    form: str, tmp_path: Path, wheel: Path, config: Path
) -> None:
    target, snapshot = make_card("plain", form, tmp_path)
    before = snapshot()
    run_prepare(target, config, wheel)
    check_prepared("plain", snapshot(), before, wheel, config, tmp_path)


def check_plain(files: dict[str, bytes], before: dict[str, bytes], tmp_path: Path) -> None:
    assert "firstrun.sh" not in before
    manifest = check_manifest(files, before, "bookworm", "firstrun")
    assert manifest["changed"].keys() == {"cmdline.txt"}  # type: ignore[attr-defined]
    assert manifest["added"].keys() == {"wzp.toml", "firstrun.sh"}  # type: ignore[attr-defined]
    assert files["firstrun.sh"].decode() == FIRSTRUN_NEW
    cmdline = files["cmdline.txt"].decode()
    assert cmdline == CMDLINE.rstrip("\n") + " " + CMDLINE_RUN + "\n"
    assert cmdline.count("\n") == 1  # the firmware reads one line
    assert "systemd.run=/boot/firstrun.sh" in cmdline
    bash_parses(files["firstrun.sh"].decode(), tmp_path)
    # what Imager's and this firstrun.sh remove after the first run leaves the original line
    assert re.sub(r" systemd\.run.*", "", cmdline.rstrip("\n")) + "\n" == CMDLINE


def check_prepared(
    kind: str,
    files: dict[str, bytes],
    before: dict[str, bytes],
    wheel: Path,
    config: Path,
    tmp_path: Path,
) -> None:
    """Every file prepare placed on a ``kind`` card (``files``; ``before``: the card as it
    was), and every original setting kept."""
    check_payload(files, wheel, config)
    {"trixie": check_trixie, "bookworm": check_bookworm, "plain": check_plain}[kind](
        files, before, tmp_path
    )


# ------------------------------------------------------------------------------ again, undo


@pytest.mark.parametrize("kind", ["trixie", "bookworm", "plain"])
@pytest.mark.parametrize("form", ["image", "folder"])
def test_a_second_run_writes_the_same_bytes_and_undo_restores_the_card(
    kind: str, form: str, tmp_path: Path, wheel: Path, config: Path
) -> None:
    target, snapshot = make_card(kind, form, tmp_path)
    check_again_and_undo(kind, target, snapshot, config, wheel)


def check_again_and_undo(
    kind: str, target: Path, snapshot: Snapshot, config: Path, wheel: Path
) -> dict[str, bytes]:
    """Prepare twice (the second run writes the same bytes, never a second hook), then undo
    (the card is as before). Returns what prepare placed."""
    before = snapshot()
    run_prepare(target, config, wheel)
    first = snapshot()
    out = run_prepare(target, config, wheel)
    assert any("prepared before" in line for line in out)
    second = snapshot()
    assert second == first  # user-data, cmdline.txt, firstrun.sh and all the rest
    # never a second hook
    markers = {"user-data": HOOK_SCRIPT, "firstrun.sh": BLOCK_BEGIN}
    if kind != "trixie":
        markers["cmdline.txt"] = "systemd.run="
    for name, marker in markers.items():
        if name in first:
            assert first[name].decode().count(marker) == 1, name

    lines: list[str] = []
    assert undo(Options(target, None, undo=True), lines.append) == 0
    assert snapshot() == before
    assert any("restored" in line or "removed" in line for line in lines)
    return first


def test_a_new_config_replaces_the_old_one(tmp_path: Path, wheel: Path, config: Path) -> None:
    target, snapshot = make_card("trixie", "folder", tmp_path)
    run_prepare(target, config, wheel)
    first = snapshot()
    other = tmp_path / "other.toml"
    other.write_text('[audio]\nvolume_db = -6.0\n[board]\npin_factory = "mock"\n')
    run_prepare(target, other, wheel)
    files = snapshot()
    assert files["wzp.toml"] == other.read_bytes()
    assert files["user-data"] == first["user-data"]


def test_undo_leaves_a_file_the_pi_changed_since(tmp_path: Path, wheel: Path, config: Path) -> None:
    target, _ = make_card("bookworm", "folder", tmp_path)
    run_prepare(target, config, wheel)
    # what Imager's firstrun.sh does at first boot: removes itself and its cmdline words
    (target / "firstrun.sh").unlink()
    (target / "cmdline.txt").write_text(CMDLINE)
    (target / "wzp.toml").rename(target / "wzp.toml.applied")
    lines: list[str] = []
    undo(Options(target, None, undo=True), lines.append)
    assert not (target / "firstrun.sh").exists()  # not brought back to run Imager again
    assert (target / "cmdline.txt").read_text() == CMDLINE
    assert not (target / "wzp").exists()
    assert any("firstrun.sh" in line and "not brought back" in line for line in lines)


def test_offline_places_the_wheelhouse(tmp_path: Path, wheel: Path, config: Path) -> None:
    house = tmp_path / "house"
    house.mkdir()
    names = ["numpy-2.1.0-cp311-cp311-manylinux_2_17_aarch64.whl", "pyalsaaudio-0.11.0.tar.gz"]
    for name in names:
        (house / name).write_bytes(name.encode())
    debs = tmp_path / "debs"  # prefetched: none (tests/sdcard/test_debs.py places them)
    debs.mkdir()
    target, snapshot = make_card("trixie", "image", tmp_path)
    out = "\n".join(run_prepare(target, config, wheel, offline=True, wheelhouse=house, debs=debs))
    assert "2 wheels and 0 Debian packages" in out
    files = snapshot()
    for name in names:
        assert files[f"wzp/wheels/{name}"] == name.encode()


def test_a_payload_that_does_not_fit_is_refused_before_anything_is_written(
    tmp_path: Path, wheel: Path, config: Path
) -> None:
    """The synthetic card's boot partition has a few MiB free (a real one has hundreds):
    wheels bigger than that are refused up front, not half written by a full disk (a
    folder target's check is in tests/sdcard/test_debs.py)."""
    target, snapshot = make_card("trixie", "image", tmp_path)
    before = snapshot()
    house = tmp_path / "house"
    house.mkdir()
    (house / "numpy-2.1.0-cp313-cp313-manylinux_2_17_aarch64.whl").write_bytes(bytes(8 << 20))
    with pytest.raises(SdcardError, match=r"MiB free, the payload needs \d+ MiB \(the --offline"):
        run_prepare(target, config, wheel, offline=True, wheelhouse=house, debs=house)
    assert snapshot() == before


def test_preparing_again_counts_the_room_the_old_payload_gives_back(
    tmp_path: Path, wheel: Path, config: Path
) -> None:
    """A card with room for one payload, not two, can be prepared again: the old payload
    is removed first, so its room counts."""
    target, snapshot = make_card("trixie", "image", tmp_path)
    free = open_target(target).fs.free_bytes()
    house, debs = tmp_path / "house", tmp_path / "debs"
    house.mkdir()
    debs.mkdir()
    # a wheelhouse that takes 60 % of the room: one payload fits, two would not
    (house / "numpy-2.1.0-cp313-cp313-manylinux_2_17_aarch64.whl").write_bytes(
        bytes(int(free * 0.6))
    )
    run_prepare(target, config, wheel, offline=True, wheelhouse=house, debs=debs)
    first = snapshot()
    assert open_target(target).fs.free_bytes() < free * 0.4
    run_prepare(target, config, wheel, offline=True, wheelhouse=house, debs=debs)
    assert snapshot() == first


# ------------------------------------------------------------------------------ refusals


def image_digest(path: Path) -> str:
    return sha(path.read_bytes())


@pytest.mark.parametrize(
    ("kind", "form", "message"),
    [
        ("ubuntu", "image", "not a Raspberry Pi OS boot partition"),
        ("ubuntu", "folder", "not a Raspberry Pi OS boot partition"),
        ("bullseye", "image", "bullseye"),
        ("bullseye", "folder", "older than Bookworm"),
        ("truncated", "image", "truncated"),
    ],
)
def test_refused_cards_are_left_byte_identical(
    kind: str, form: str, message: str, tmp_path: Path, wheel: Path, config: Path
) -> None:
    if form == "image":
        target = build_image(SPECS[kind], tmp_path / "build")
        digest = image_digest(target)
    else:
        image = build_image(SPECS[kind], tmp_path / "build")
        target = extract_boot(image, tmp_path / "bootfs")
        digest = json.dumps(sorted((k, sha(v)) for k, v in folder_files(target).items()))
    with pytest.raises(SdcardError, match=message):
        run_prepare(target, config, wheel)
    if form == "image":
        assert image_digest(target) == digest
    else:
        assert json.dumps(sorted((k, sha(v)) for k, v in folder_files(target).items())) == digest


def test_a_root_partition_that_is_not_raspberry_pi_os_is_refused(
    tmp_path: Path, wheel: Path, config: Path
) -> None:
    spec = SPECS["bookworm"]
    fake = type(spec)("other", spec.boot, SPECS["ubuntu"].os_release)
    image = build_image(fake, tmp_path / "build")
    digest = image_digest(image)
    with pytest.raises(SdcardError, match=re.escape("Ubuntu 24.04 (noble), not Raspberry Pi OS")):
        run_prepare(image, config, wheel)
    assert image_digest(image) == digest


def test_a_bad_config_is_refused_with_every_reason(tmp_path: Path, wheel: Path) -> None:
    image = build_image(SPECS["trixie"], tmp_path / "build")
    digest = image_digest(image)
    bad = tmp_path / "bad.toml"
    bad.write_text('[audio]\nvolume_db = "loud"\n[call]\nmode = "simplex"\n[bord]\nx = 1\n')
    with pytest.raises(SdcardError) as exc:
        run_prepare(image, bad, wheel)
    text = str(exc.value)
    assert "refused" in text and "nothing written" in text
    assert "volume_db" in text and "mode" in text and "bord" in text
    assert image_digest(image) == digest


def test_a_config_whose_board_has_no_ptt_in_half_duplex_is_refused(
    tmp_path: Path, wheel: Path
) -> None:
    from wzp.board.profile import list_profiles, load_profile

    no_ptt = [n for n in list_profiles() if "ptt" not in load_profile(n).buttons]
    if not no_ptt:
        pytest.skip("every shipped board profile has a PTT button")
    target, snapshot = make_card("trixie", "folder", tmp_path)
    before = snapshot()
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[board]\nprofile = "{no_ptt[0]}"\n[call]\nmode = "half-duplex"\n')
    with pytest.raises(SdcardError, match="needs a PTT button"):
        run_prepare(target, bad, wheel)
    assert snapshot() == before


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("user-data", "#!/bin/sh\necho hi\n", "does not start with #cloud-config"),
        ("user-data", "#cloud-config\nusers: [\n", "not valid YAML"),
        ("user-data", "#cloud-config\nruncmd: echo hi\n", "runcmd is not a list"),
        ("wzp/notes.txt", "mine\n", "wzp folder that `wzp sdcard prepare` did not make"),
    ],
)
def test_cards_wzp_cannot_edit_safely_are_refused(
    name: str, text: str, message: str, tmp_path: Path, wheel: Path, config: Path
) -> None:
    target, snapshot = make_card("trixie", "folder", tmp_path)
    (target / name).parent.mkdir(exist_ok=True)
    (target / name).write_text(text)
    before = snapshot()
    with pytest.raises(SdcardError, match=re.escape(message)):
        run_prepare(target, config, wheel)
    assert snapshot() == before


def test_a_foreign_first_boot_script_is_refused(tmp_path: Path, wheel: Path, config: Path) -> None:
    target, snapshot = make_card("plain", "folder", tmp_path)
    (target / "cmdline.txt").write_text(
        CMDLINE.rstrip("\n") + " systemd.run=/boot/firmware/other.sh\n"
    )
    before = snapshot()
    with pytest.raises(SdcardError, match=re.escape("already runs /boot/firmware/other.sh")):
        run_prepare(target, config, wheel)
    assert snapshot() == before


def test_missing_targets_and_configs_are_refused(tmp_path: Path, wheel: Path) -> None:
    with pytest.raises(SdcardError, match="no such file"):
        run_prepare(tmp_path / "nope.img", tmp_path / "c.toml", wheel)
    (tmp_path / "c.toml").write_text("")
    with pytest.raises(SdcardError, match="no such file, folder or device"):
        run_prepare(tmp_path / "nope.img", tmp_path / "c.toml", wheel)
    not_image = tmp_path / "notes.img"
    not_image.write_bytes(b"hello" * 200)
    with pytest.raises(SdcardError, match="no partition table"):
        run_prepare(not_image, tmp_path / "c.toml", wheel)
    with pytest.raises(SdcardError, match="was not prepared by wzp"):
        undo(Options(build_image(SPECS["plain"], tmp_path / "b"), None, undo=True), print)


# ------------------------------------------------------------------------------ command line


def cli(*args: str) -> int:
    parser = argparse.ArgumentParser(prog="wzp")
    add_sdcard_parser(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(list(args))
    return int(ns.func(ns))


def test_the_command_prepares_refuses_and_undoes(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, snapshot = make_card("trixie", "folder", tmp_path)
    before = snapshot()
    # builds this checkout's wheel itself
    assert cli("sdcard", "prepare", str(target), "--config", str(config)) == 0
    out = capsys.readouterr().out
    assert "found: Raspberry Pi OS Trixie" in out and "placed:" in out
    assert any(name.startswith("wzp/wzp-") and name.endswith(".whl") for name in snapshot())

    assert cli("sdcard", "prepare", str(tmp_path / "nothing"), "--config", str(config)) == 1
    assert "refused:" in capsys.readouterr().err
    assert cli("sdcard", "prepare", str(target), "--undo", "--config", str(config)) == 2
    assert cli("sdcard", "prepare", str(target), "--undo") == 0
    assert snapshot() == before
