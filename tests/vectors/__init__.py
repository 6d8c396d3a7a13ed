"""Byte-exact vectors copied from the shared SPEC (the repo must stand alone)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def load(name: str) -> Any:
    with (HERE / f"{name}.json").open() as fh:
        return json.load(fh)
