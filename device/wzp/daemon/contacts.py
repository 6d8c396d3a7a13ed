"""Contacts added at run time (``wzp contacts add NAME FINGERPRINT ADDRESS``).

They live in their own TOML file that the daemon may write (default
``/var/lib/wzp/contacts.toml``), apart from the hand-edited ``/etc/wzp/wzp.toml``. Each
contact is checked exactly like a ``[contacts.NAME]`` table of the config file, and on a
name clash the config file wins (:func:`merge_contacts`).

One writer at a time: the daemon owns the file (the CLI asks it over the control socket).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping
from pathlib import Path

from ..crypto.identity import fingerprint_text as _fingerprint_text
from .config import (
    ConfigError,
    ConfigErrors,
    Contact,
    make_contact,
    parse_contacts,
    read_config_text,
    write_file_atomic,
)

log = logging.getLogger(__name__)

USER_CONTACTS = Path("/var/lib/wzp/contacts.toml")

_HEADER = (
    "# Contacts added with `wzp contacts add`; written by the wzp daemon.\n"
    "# Contacts in /etc/wzp/wzp.toml take precedence over these on a name clash.\n"
)


class ContactsError(ConfigErrors):
    """The contacts file cannot be used, or a new contact is refused (``errors`` lists why)."""


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string.

    JSON's escapes are all valid TOML; JSON leaves DEL (U+007F) bare, which TOML forbids.
    """
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def render_contacts(contacts: Mapping[str, Contact]) -> str:
    """The contacts file's text: one ``[contacts.NAME]`` table per contact, sorted by name."""
    parts = [_HEADER]
    for name in sorted(contacts):
        contact = contacts[name]
        parts.append(
            f"\n[contacts.{toml_string(name)}]\n"
            f"fingerprint = {toml_string(_fingerprint_text(contact.fingerprint))}\n"
            f"address = {toml_string(contact.address)}\n"
        )
    return "".join(parts)


class ContactStore:
    """User-added contacts in one TOML file, rewritten atomically (mode 0640) on change."""

    def __init__(self, path: Path = USER_CONTACTS) -> None:
        self.path = path

    def load(self) -> dict[str, Contact]:
        """Every stored contact; {} when the file does not exist yet.

        Raises :class:`ContactsError` naming the file and line for a corrupt file.
        """
        try:
            text = read_config_text(self.path)
            if text is None:
                return {}
            return parse_contacts(text, self.path)
        except ConfigError as exc:
            raise ContactsError(exc.errors) from None

    def add(
        self,
        name: str,
        fingerprint_text: str,
        address: str,
        reserved: Collection[str] = (),
    ) -> Contact:
        """Add or replace the user contact ``name``; returns it.

        ``reserved`` holds the names the config file defines: those are refused, since the
        config file would win anyway. Raises :class:`ContactsError` listing every problem.
        """
        errors: list[ConfigError] = []
        contact: Contact | None = None
        try:
            contact = make_contact(name, fingerprint_text, address)
        except ConfigError as exc:
            errors.extend(exc.errors)
        if name in reserved:
            errors.append(
                ConfigError(
                    None,
                    None,
                    "name",
                    f"{json.dumps(name)} is a contact of the config file; "
                    "choose another name or edit it there",
                )
            )
        if errors or contact is None:
            raise ContactsError(errors)
        contacts = self.load()
        replaced = name in contacts
        contacts[name] = contact
        self._write(contacts)
        log.info("%s contact %s at %s", "replaced" if replaced else "added", name, contact.address)
        return contact

    def remove(self, name: str) -> bool:
        """Remove ``name``; False when there was no such user contact."""
        contacts = self.load()
        if name not in contacts:
            return False
        del contacts[name]
        self._write(contacts)
        log.info("removed contact %s", name)
        return True

    def _write(self, contacts: Mapping[str, Contact]) -> None:
        """Save ``contacts``; a file system that refuses (read-only, full, not ours) is a
        :class:`ContactsError` naming the file, logged as one warning line."""
        try:
            write_file_atomic(self.path, render_contacts(contacts).encode("utf-8"), 0o640)
        except OSError as exc:
            text = f"cannot save contacts: {self.path}: {exc.strerror or exc}"
            log.warning("%s", text)
            raise ContactsError([ConfigError(None, None, "", text)]) from None


def merge_contacts(
    config_contacts: Mapping[str, Contact], user_contacts: Mapping[str, Contact]
) -> dict[str, Contact]:
    """All contacts by name; a config-file contact wins over a user contact of that name."""
    merged = dict(user_contacts)
    for name in config_contacts.keys() & user_contacts.keys():
        if config_contacts[name] != user_contacts[name]:
            log.warning("contact %s: the config file's entry hides the user-added one", name)
    merged.update(config_contacts)
    return merged
