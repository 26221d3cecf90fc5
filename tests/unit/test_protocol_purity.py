"""protocol/ must stay sans-I/O: walk every module's imports with ast."""

import ast
import sys
from pathlib import Path

PROTOCOL_DIR = Path(__file__).resolve().parents[2] / "protocol"

FORBIDDEN = {
    "asyncio", "socket", "selectors", "ssl", "threading", "subprocess", "os", "multiprocessing",
    "concurrent", "io", "shutil", "pathlib", "tempfile", "time", "signal", "select", "http",
    "urllib", "logging", "sqlite3", "random", "secrets",
}  # fmt: skip
ALLOWED_THIRD_PARTY = {"msgspec"}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            names.append("<dynamic __import__>")
    return names


def test_protocol_modules_import_only_pure_modules() -> None:
    modules = sorted(PROTOCOL_DIR.glob("*.py"))
    assert modules, "protocol/ has no modules"
    offenders = []
    for path in modules:
        for name in _imports(path):
            top = name.split(".")[0]
            if top in FORBIDDEN or top == "<dynamic __import__>":
                offenders.append((path.name, name))
            elif top in ("protocol", "__future__") or top in ALLOWED_THIRD_PARTY:
                continue
            elif top not in sys.stdlib_module_names:
                offenders.append((path.name, name))
    assert offenders == []


def test_purity_check_catches_a_bad_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nfrom os import path\nimport requests\n")
    assert _imports(bad) == ["asyncio", "os", "requests"]
