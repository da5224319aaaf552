"""The rooms of the tree and the one-way arrows between them (see each room's README):

- runtime/ (the torch-free core) imports none of its rooms (cli/, serve/, integrations/), nor export/,
  models/ (but for its root, which only locates the shipped model files) or bench/;
- runtime/cli/, runtime/serve/ and runtime/integrations/ import the core and never each other;
- export/ imports the runtime core only (never its rooms) and never bench/;
- no module in runtime/ or export/ is over ~400 lines.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("cli", "serve", "integrations")
MAX_LINES = 400


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions (relative ones resolved)."""
    package = "rewardrt." + ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    package = package.replace("rewardrt.runtime.namespace", "rewardrt")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import room`
    return found


def _room(module: str) -> str | None:
    """'core', a room's name, 'export', 'models', 'bench', 'namespace' — or None (not ours)."""
    parts = module.split(".")
    if parts[0] != "rewardrt":
        return None
    if len(parts) == 1:
        return "namespace"
    if parts[1] == "runtime":
        return parts[2] if len(parts) > 2 and parts[2] in ROOMS else "core"
    if parts[1] == "models" and (len(parts) == 2 or not (ROOT / "models" / f"{parts[2]}.py").exists()):
        return "model-files"  # the package root only locates the shipped model files (torch-free)
    if parts[1] in ("export", "models", "bench"):
        return parts[1]
    return "namespace"


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _room_of_file(path: Path) -> str:
    rel = path.relative_to(ROOT / "runtime").parts
    if rel[0] == "namespace":
        return "namespace"
    return rel[0] if rel[0] in ROOMS else "core"


ALLOWED = {  # "model-files": rewardrt.models' root, where the embedded model's files are found
    "core": {"core", "model-files"},
    "cli": {"core", "cli", "model-files"},
    "serve": {"core", "serve", "namespace", "model-files"},  # the namespace only for __version__
    "integrations": {"core", "integrations", "model-files"},
}


@pytest.mark.parametrize("path", [p for p in _files("runtime") if _room_of_file(p) != "namespace"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_runtime_imports_point_one_way(path):
    room = _room_of_file(path)
    wrong = sorted(m for m in _imports(path) if (_room(m) or room) not in ALLOWED[room])
    assert not wrong, f"{path.relative_to(ROOT)} ({room}) imports {wrong}; allowed: {sorted(ALLOWED[room])}"


@pytest.mark.parametrize("path", _files("export"), ids=lambda p: str(p.relative_to(ROOT)))
def test_export_uses_the_runtime_core_only(path):
    wrong = sorted(m for m in _imports(path) if _room(m) in (*ROOMS, "bench"))
    assert not wrong, f"{path.relative_to(ROOT)} imports {wrong} (export may use the runtime core, never its rooms or bench)"


def test_the_rule_sees_a_violation(tmp_path):
    """The checker itself: an upward import inside a function is caught."""
    fake = ROOT / "runtime" / "serve" / "_layout_probe.py"
    fake.write_text("def f():\n    from rewardrt.runtime.cli import jsonl\n")
    try:
        assert "rewardrt.runtime.cli.jsonl" in _imports(fake)
        assert _room("rewardrt.runtime.cli.jsonl") == "cli" and _room_of_file(fake) == "serve"
    finally:
        fake.unlink()


@pytest.mark.parametrize("folder", ["runtime", "export"])
def test_no_module_over_the_size_limit(folder):
    big = {str(p.relative_to(ROOT)): n for p in _files(folder)
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split them by job): {big}"


def test_every_package_folder_is_installed():
    """A folder with an __init__.py that pyproject does not list would be missing from a wheel."""
    import tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {name: ROOT / folder for name, folder in setup["package-dir"].items()}
    listed = set(setup["packages"])
    found = set()
    for name, folder in dirs.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder).parts
            if "namespace" in rel and name != "rewardrt":
                continue  # the namespace folder is its own mapping
            found.add(".".join((name, *rel)))
    assert found - listed == set(), f"package folders missing from pyproject's packages: {sorted(found - listed)}"
    assert listed - found == set(), f"pyproject lists packages with no folder: {sorted(listed - found)}"


def test_the_embedded_model_files_are_package_data():
    """The editable install used here finds any file in the source tree; a wheel holds only what
    package-data names: the default artifact, its weights file and the delta must all match."""
    import tomllib

    from rewardrt.models import model_dir
    from rewardrt.runtime.integrity import weights_file

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = setup["package-data"]["rewardrt.models"]
    folder = model_dir()
    needed = list(folder.glob("*.onnx"))
    needed += [w for p in needed if (w := weights_file(p)) is not None]
    needed += [folder / "delta.safetensors", folder / "recipe.json"]
    for path in needed:
        rel = path.relative_to(folder.parent).as_posix()
        assert any(fnmatch.fnmatch(rel, g) for g in globs), f"{rel} matches no package-data glob {globs}"
