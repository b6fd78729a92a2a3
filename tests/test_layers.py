"""The layer rule: a module imports only from its own layer or below (AST check)."""

from __future__ import annotations

import ast
from pathlib import Path

import zigllama_lib

PACKAGE = Path(zigllama_lib.__file__).parent
LAYERS = {
    "foundation": 1,
    "linear_algebra": 2,
    "neural_primitives": 3,
    "transformer": 4,
    "models": 5,
    "inference": 6,
}
TOP = 7  # cli, serve, viz and the package root may import any layer


def layer_of(parts: list[str]) -> int:
    """Layer of a module given its dotted path inside zigllama_lib (['models', 'decoder'])."""
    if not parts or parts == ["__init__"]:
        return TOP
    return LAYERS.get(parts[0], TOP)


def imported_modules(path: Path) -> list[tuple[int, list[str]]]:
    """(line, dotted path inside zigllama_lib) of every zigllama_lib import in a file."""
    rel = path.relative_to(PACKAGE).with_suffix("")
    pkg = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("zigllama_lib."):
                    out.append((node.lineno, a.name.split(".")[1:]))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.startswith("zigllama_lib."):
                    out.append((node.lineno, node.module.split(".")[1:]))
                continue
            base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
            target = base + (node.module.split(".") if node.module else [])
            if not node.module:  # from . import x / from .. import x
                for a in node.names:
                    out.append((node.lineno, target + [a.name]))
            else:
                out.append((node.lineno, target))
    return out


def test_every_layer_package_exists():
    for name in LAYERS:
        assert (PACKAGE / name / "__init__.py").is_file(), name


def test_no_module_imports_from_a_higher_layer():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        own = layer_of(list(rel.parts))
        for line, target in imported_modules(path):
            if layer_of(target) > own:
                violations.append(f"{rel}.py:{line} (layer {own}) imports {'.'.join(target)} (layer {layer_of(target)})")
    assert not violations, "layer rule broken:\n" + "\n".join(violations)


def test_the_check_catches_a_violation(tmp_path, monkeypatch):
    # The checker itself must see relative and absolute upward imports.
    fake = PACKAGE / "foundation" / "_layer_probe.py"
    fake.write_text("from ..inference import engine\nimport zigllama_lib.models.arch\n", encoding="utf-8")
    try:
        found = [layer_of(t) for _, t in imported_modules(fake)]
    finally:
        fake.unlink()
    assert found == [6, 5]
