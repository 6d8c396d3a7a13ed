"""The one rule (ARCHITECTURE.md): the pure core never imports I/O.

proto, fec, crypto (and later codec, media) take bytes, frames and an explicit
``now``; they never touch a socket, a thread, a file, a process or the wall clock.
"""

from __future__ import annotations

import ast
from pathlib import Path

import wzp

PURE = ("proto", "fec", "crypto", "codec", "media", "sim")
FORBIDDEN = {
    "socket",
    "ssl",
    "select",
    "selectors",
    "asyncio",
    "threading",
    "multiprocessing",
    "subprocess",
    "time",
    "datetime",
    "os",
    "shutil",
    "tempfile",
    "pathlib",
    "signal",
    "alsaaudio",
    "gpiozero",
    "aioquic",
    "wzp.net",
    "wzp.audio",
    "wzp.board",
    "wzp.daemon",
    "wzp.relay",
}
FORBIDDEN_CALLS = {"open", "print", "input"}


def _pure_files() -> list[Path]:
    root = Path(wzp.__file__).parent
    return [p for pkg in PURE for p in sorted((root / pkg).rglob("*.py"))]


def _imports(tree: ast.AST, module: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.rsplit(".", node.level)[0]
                names.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                names.add(node.module)
    return names


def test_pure_core_has_no_io() -> None:
    files = _pure_files()
    assert len(files) >= 10
    root = Path(wzp.__file__).parent.parent
    offenders = []
    for path in files:
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        tree = ast.parse(path.read_text(), filename=str(path))
        for name in _imports(tree, module):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                offenders.append(f"{module} imports {name}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in FORBIDDEN_CALLS
            ):
                offenders.append(f"{module} calls {node.func.id}() at line {node.lineno}")
    assert offenders == []
