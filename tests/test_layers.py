"""The house rules, checked on the source: imports only go down the rooms of
``tileserver`` (web → protocols → raster → inference; ingest beside inference),
nothing in ``tileserver`` imports ``training``, and no module or function grows
past the sizes a reader can hold (400 lines, 60 lines)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# low → high; a module may import its own room or a lower one. ``base`` is the top-level
# modules (errors, files, settings, degrade, the package itself).
RANK = {"base": 0, "ingest": 1, "inference": 1, "raster": 2, "protocols": 3, "web": 4, "commands": 5}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else "base"


def imported(tree: ast.AST) -> set[str]:
    """Every module a source imports, at any depth (``from a import b`` counts as ``a.b``)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def sources(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py"))


@pytest.mark.parametrize("path", sources("tileserver"), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down_the_rooms(path):
    me = module_name(path)
    wrong = []
    for target in imported(ast.parse(path.read_text())):
        if target.split(".")[0] == "training":
            wrong.append(f"{target} (the server never imports training)")
        elif target.split(".")[0] == "tileserver":
            theirs = room(target)
            if theirs != room(me) and RANK[theirs] >= RANK[room(me)]:
                wrong.append(f"{target} ({theirs} is not below {room(me)})")
    assert not wrong, f"{me} ({room(me)}) imports upward: {wrong}"


def test_every_module_has_a_room():
    rooms = {p.name for p in (ROOT / "tileserver").iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert rooms == set(RANK) - {"base"}


@pytest.mark.parametrize("path", sources("tileserver", "training") + [ROOT / "export_onnx.py"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_sizes(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
