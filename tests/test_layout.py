"""The package boundaries the architecture promises."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, by its full name: ``from v1motion import service`` names
    ``v1motion.service`` too, and relative imports are resolved against the file's package (both
    passed the boundary check unseen)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ["v1motion", *path.relative_to(ROOT).parent.parts]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _is_service(name: str) -> bool:
    return name == "v1motion.service" or name.startswith("v1motion.service.")


def test_the_import_check_sees_every_form_of_import(monkeypatch):
    probe = ROOT / "models" / "motion" / "_layout_probe.py"  # never written: its text is patched in
    for source in (
        "import v1motion.service.app",
        "from v1motion.service import app",
        "from v1motion import service",
        "from ...service import settings",  # models/motion -> v1motion.service
        "from ..language import rglm\nfrom ... import service",
    ):
        monkeypatch.setattr(Path, "read_text", lambda self, s=source: s)
        assert any(_is_service(n) for n in _imports(probe)), source
    monkeypatch.setattr(Path, "read_text", lambda self: "from ..language import rglm")
    assert _imports(probe) == {"v1motion.models.language", "v1motion.models.language.rglm"}


def test_models_never_import_service():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "models").rglob("*.py")
        if any(_is_service(n) for n in _imports(p))
    ]
    assert offenders == []


def test_importing_every_models_module_loads_nothing_of_service():
    """The same boundary at run time: what the modules import, however they import it."""
    import subprocess
    import sys

    code = (
        "import pkgutil, importlib, sys, v1motion.models as m\n"
        "for info in pkgutil.walk_packages(m.__path__, 'v1motion.models.'):\n"
        "    importlib.import_module(info.name)\n"
        "print(sorted(n for n in sys.modules if n.startswith('v1motion.service')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


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


def test_routers_reach_the_application_state_only_through_the_deps_module():
    """Routes declare what they need (v1motion.service.deps); none digs into app.state by itself, and none
    builds or tears down state (the lifespan in v1motion.service.app does)."""
    offenders = []
    for path in sorted((ROOT / "service" / "routers").glob("*.py")):
        text = path.read_text()
        for word in (
            "app.state",
            "def setup(",
            "def teardown(",
            "def start_jobs(",
            "def stop_jobs(",
        ):
            if word in text:
                offenders.append(f"{path.name}: {word}")
    assert not offenders, offenders


def test_no_library_code_touches_matplotlibs_global_state():
    """Figures are drawn on plain Figure objects (models/reports/plotting.py): no module chooses a
    backend for the whole process or keeps figures in pyplot's registry."""
    offenders = []
    for top in ("models", "service"):
        for path in (ROOT / top).rglob("*.py"):
            tree = ast.parse(path.read_text())
            imports_pyplot = "matplotlib.pyplot" in _imports(path) or any(
                isinstance(n, ast.ImportFrom)
                and n.module == "matplotlib"
                and any(a.name == "pyplot" for a in n.names)
                for n in ast.walk(tree)
            )
            calls_use = any(
                isinstance(n, ast.Attribute) and n.attr == "use"
                and isinstance(n.value, ast.Name) and n.value.id == "matplotlib"
                for n in ast.walk(tree)
            )  # fmt: skip
            if imports_pyplot or calls_use:
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders


def test_every_package_folder_is_installed_under_the_v1motion_namespace():
    """pyproject.toml lists the packages explicitly (their folders sit at the project root): a new
    sub-package that is not listed would be missing from the wheel and the container."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {
        "v1motion." + ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("models", "service")
        for p in (ROOT / top).rglob("__init__.py")
    }
    found.add("v1motion.models.weights")  # data only: the shipped weights and their cards
    assert (ROOT / "models" / "weights").is_dir()
    assert found == listed, {"not listed": found - listed, "no folder": listed - found}


def test_nothing_imports_the_folders_by_their_bare_names():
    """`models` and `service` are installed as `v1motion.models` and `v1motion.service`; importing
    a bare name would only work from the project folder, and would load a second copy."""
    offenders = []
    for top in ("models", "service", "tests", "bench", "docker"):
        for path in (ROOT / top).rglob("*.py"):
            for name in _imports(path):
                if name.split(".")[0] in ("models", "service"):
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders, offenders


def test_routers_define_no_classes_but_request_and_response_schemas():
    """State (stores, pools, sessions) lives outside the routers; a router holds routes and the
    pydantic models of its requests and responses."""
    offenders = []
    for path in sorted((ROOT / "service" / "routers").glob("*.py")):
        schemas = {"BaseModel", "RequestBody"}  # RequestBody: v1motion.service.schemas
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
                if bases & schemas:
                    schemas.add(node.name)
                else:
                    offenders.append(f"{path.name}: {node.name}")
    assert not offenders, offenders


def test_committed_reports_name_no_machines_paths():
    """Reports, model cards and benchmark outputs record commands and files relative to the project
    (a benchmark once recorded its output as a temporary file of the machine it ran on)."""
    pattern = re.compile(r"(?:^|[^\w.])/(?:tmp|home|root|work|Users|mnt|opt)/")
    files = [
        p
        for folder in ("docs", "models/weights")
        for p in (ROOT / folder).rglob("*")
        if p.suffix in (".md", ".json")
    ]
    assert len(files) > 20
    found = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in files + [ROOT / "README.md"]
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []
