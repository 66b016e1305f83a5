"""The layering DESIGN.md asks for, checked on the source: imports at module top, and the cache
stage reached only from the cache command."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mmsr", "mmsr_store", "mmsr_cli")


def _modules(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name


@pytest.mark.parametrize("path", _modules("mmsr", "cli"), ids=lambda p: str(p.relative_to(ROOT)))
def test_project_imports_are_at_module_top_unless_deferred_with_a_reason(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    tree = ast.parse("\n".join(lines))
    local = []
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node, module in _imports(function):
            if module.split(".")[0] not in PACKAGES:
                continue
            said = " ".join(lines[max(0, node.lineno - 3):node.lineno]).lower()  # the line or a comment just above
            if "deferred" not in said:
                local.append(f"{path.name}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not local, "function-local imports of mmsr modules without a 'deferred: why' comment: " + "; ".join(local)


@pytest.mark.parametrize("path", _modules("mmsr"), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_cache_build_path_imports_the_cache_stage(path):
    # A study builds the caches its variants read, as `mmsr cache build` would; it trains nothing itself.
    if path.name == "cache_stage.py" or path.relative_to(ROOT).as_posix() == "mmsr/study/runner.py":
        return
    modules = {module for _, module in _imports(ast.parse(path.read_text(encoding="utf-8")))}
    assert "mmsr.cache_stage" not in modules, f"{path}: read caches through mmsr.caches / mmsr.train.feeds"


def test_every_mmsr_module_is_checked():
    # The parametrisations above are built from the tree; an empty list would pass vacuously.
    assert len(_modules("mmsr")) > 30 and len(_modules("cli")) >= 5


def test_every_package_folder_is_in_the_wheel():
    # pyproject lists the packages by hand (cli/ and store/ install under other names); an editable
    # install imports a forgotten one anyway, a wheel or the Docker image does not have it.
    import tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    installed_as = {folder: name for name, folder in setup["package-dir"].items()}
    found = set()
    for folder in installed_as:
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((installed_as[folder], *parts)))
    assert {"mmsr.study", "mmsr.plots", "mmsr_cli"} <= found  # the walk itself sees the tree
    assert sorted(found - set(setup["packages"])) == [], "add these to [tool.setuptools] packages in pyproject.toml"
