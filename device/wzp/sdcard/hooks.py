"""The first-boot hooks: a ``runcmd`` step merged into cloud-init's ``user-data`` (Trixie),
and a block chained into Raspberry Pi Imager's ``firstrun.sh`` (Bookworm), or that same
mechanism added where Imager set nothing.

Both hooks only run ``wzp/firstboot.sh setup`` from the boot partition, which installs a
one-shot ``wzp-firstboot.service`` that does the real install once the network is up.
Every function here is pure (text in, text out) and refuses what it cannot merge safely.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from . import SdcardError

HOOK_SCRIPT = "wzp/firstboot.sh"
#: Trixie mounts the boot partition at /boot/firmware; cloud-init runs this once per instance
RUNCMD_ENTRY = ["bash", f"/boot/firmware/{HOOK_SCRIPT}", "setup", "--now"]
RUNCMD_COMMENT = (
    "# wzp: install the handset once (added by `wzp sdcard prepare`; "
    "`wzp sdcard prepare --undo` removes it)"
)
CLOUD_CONFIG = "#cloud-config"
META_DATA = (
    "# cloud-init NoCloud meta-data (added by `wzp sdcard prepare`: the card had none)\n"
    "dsmode: local\n"
    "instance_id: rpios-image\n"
)

BLOCK_BEGIN = "# >>> wzp: install the handset at the next boot (added by `wzp sdcard prepare`)"
BLOCK_END = "# <<< wzp"
#: Bookworm mounts the boot partition at /boot/firmware, older systems at /boot
FIRSTRUN_BLOCK = f"""{BLOCK_BEGIN}
for wzp_boot in /boot/firmware /boot; do
   if [ -f "$wzp_boot/{HOOK_SCRIPT}" ]; then
      bash "$wzp_boot/{HOOK_SCRIPT}" setup
      break
   fi
done
{BLOCK_END}
"""
#: what Raspberry Pi Imager puts into cmdline.txt; the OS's initramfs (imager_fixup) turns
#: /boot/ into /boot/firmware/ on Bookworm and firstrun.sh removes the words once it ran
CMDLINE_RUN = (
    "systemd.run=/boot/firstrun.sh systemd.run_success_action=reboot "
    "systemd.unit=kernel-command-line.target"
)
#: an Imager-shaped firstrun.sh for a card Imager did not customise
FIRSTRUN_NEW = f"""#!/bin/bash
# Runs once at first boot (added by `wzp sdcard prepare`, the way Raspberry Pi Imager
# does it); the last lines remove it and its cmdline.txt entry again.

set +e

{FIRSTRUN_BLOCK}
rm -f /boot/firstrun.sh
sed -i 's| systemd.run.*||g' /boot/cmdline.txt
exit 0
"""
_FIRSTRUN_RM = re.compile(r"^\s*rm\b.*firstrun\.sh\s*$")
_EXIT0 = re.compile(r"^\s*exit\s+0\s*$")


# --------------------------------------------------------------------------- cloud-init


def _load_cloud_config(text: str) -> dict[str, Any]:
    first = text.lstrip("\ufeff").split("\n", 1)[0].strip()
    if first != CLOUD_CONFIG:
        raise SdcardError(
            f"user-data does not start with {CLOUD_CONFIG} (it starts {first[:40]!r}): wzp "
            "adds its step to cloud-config user-data only"
        )
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SdcardError(
            f"user-data is not valid YAML, so cloud-init would ignore it: {exc}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SdcardError("user-data is not a cloud-config mapping (key: value lines)")
    return data


def _is_ours(item: object) -> bool:
    if isinstance(item, list):
        return any(isinstance(x, str) and x.endswith(HOOK_SCRIPT) for x in item)
    return isinstance(item, str) and HOOK_SCRIPT in item


def _entry_yaml() -> str:
    return "[" + ", ".join(RUNCMD_ENTRY) + "]"


def merge_user_data(text: str | None) -> str:
    """``text`` (None: no user-data yet) with the wzp step added to ``runcmd``, every other
    setting kept. The text is edited in place where that gives the intended YAML (comments
    and layout survive); otherwise the whole document is written out again."""
    if text is None or not text.strip():
        return f"{CLOUD_CONFIG}\n{RUNCMD_COMMENT}\nruncmd:\n- {_entry_yaml()}\n"
    data = _load_cloud_config(text)
    runcmd = data.get("runcmd")
    if runcmd is not None and not isinstance(runcmd, list):
        raise SdcardError("user-data's runcmd is not a list: fix it or write the card again")
    if runcmd is not None and any(_is_ours(item) for item in runcmd):
        return text  # already there (a card prepared by hand or by an older run)
    want = {**data, "runcmd": [*(runcmd or []), RUNCMD_ENTRY]}

    edited = _insert_runcmd(text, runcmd is not None)
    if edited is not None:
        try:
            if yaml.safe_load(edited) == want:
                return edited
        except yaml.YAMLError:
            pass
    body = yaml.safe_dump(want, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return f"{CLOUD_CONFIG}\n{RUNCMD_COMMENT}\n{body}"


def _insert_runcmd(text: str, has_runcmd: bool) -> str | None:
    """The text edit for the usual layouts; None when there is no obvious place."""
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    item = f"- {_entry_yaml()}"
    if not has_runcmd:
        block = ["", RUNCMD_COMMENT, "runcmd:", item]
        return "\n".join([*lines, *block]) + "\n"
    starts = [i for i, line in enumerate(lines) if re.match(r"runcmd\s*:\s*(#.*)?$", line)]
    if len(starts) != 1:
        return None
    start = starts[0]
    indent = None
    end = start + 1
    for i in range(start + 1, len(lines)):
        line = lines[i]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        lead = len(line) - len(line.lstrip(" "))
        if lead == 0 and not line.startswith("-"):
            break  # the next top-level key
        if indent is None and line.lstrip(" ").startswith("- "):
            indent = lead
        end = i + 1
    if indent is None:
        return None
    pad = " " * indent
    new = [*lines[:end], f"{pad}{RUNCMD_COMMENT}", f"{pad}{item}", *lines[end:]]
    return "\n".join(new) + "\n"


# --------------------------------------------------------------------------- firstrun.sh


def chain_firstrun(text: str) -> str:
    """Imager's firstrun.sh with the wzp block placed before its closing ``rm ...
    firstrun.sh`` line: the OS's imager_fixup cuts the script at that line and rewrites
    what follows, and everything Imager set up above it still runs first."""
    if BLOCK_BEGIN in text:
        return text
    lines = text.split("\n")
    at = next((i for i, line in enumerate(lines) if _FIRSTRUN_RM.match(line)), None)
    if at is None:
        at = next((i for i in range(len(lines) - 1, -1, -1) if _EXIT0.match(lines[i])), None)
    if at is None:
        if not text.endswith("\n"):
            text += "\n"
        return text + FIRSTRUN_BLOCK
    block = FIRSTRUN_BLOCK.rstrip("\n").split("\n")
    return "\n".join([*lines[:at], *block, "", *lines[at:]])


def add_cmdline_run(cmdline: str) -> str:
    """cmdline.txt (one line) with Imager's first-run words appended."""
    body = cmdline.rstrip("\r\n")
    if "\n" in body:
        raise SdcardError("cmdline.txt has more than one line: the firmware reads only one")
    ending = cmdline[len(body) :]
    return f"{body.rstrip()} {CMDLINE_RUN}{ending}"
