"""The package boundaries the architecture promises."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_models_never_import_service():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "models").rglob("*.py")
        if "service" in _imports(p)
    ]
    assert offenders == []


def test_no_print_in_library_code():
    offenders = []
    for pkg in ("models", "service"):
        for p in (ROOT / pkg).rglob("*.py"):
            if "commands" in p.parts:  # CLI subcommands print their results for the user
                continue
            tree = ast.parse(p.read_text())
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id == "print"
                ):
                    offenders.append(f"{p.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
