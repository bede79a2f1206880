"""The layering the design promises, read from the source with `ast` (no import runs).

- zflora/method imports nothing from zflora.harness: the method stands alone, the harness
  builds on it (DESIGN.md section 3). Every import counts, also one inside a function,
  a relative one, or importlib.import_module("zflora.harness...").
- No test skips itself when a hard dependency (pyproject's `dependencies`) is missing:
  `make install` installs them, so a missing one is a broken install and must fail.
"""

from __future__ import annotations

import ast
import re
from importlib.metadata import packages_distributions, requires
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "zflora" / "method"
FORBIDDEN = "zflora.harness"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `path`, wherever it sits in the file."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this file's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from zflora import harness` imports the module zflora.harness
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def harness_imports(folder: Path, root: Path = ROOT) -> list[str]:
    """'file:line imports module' for each import statement that reaches zflora.harness."""
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*.py")):
        for line, name in imported_modules(path, root):
            if name == FORBIDDEN or name.startswith(FORBIDDEN + "."):
                found.setdefault(f"{path.relative_to(root)}:{line}", name)
    return [f"{where} imports {name}" for where, name in found.items()]


def test_the_method_layer_imports_nothing_from_the_harness():
    assert len(list(METHOD.rglob("*.py"))) > 10  # the scan sees the method's files
    assert harness_imports(METHOD) == []


def test_the_scan_sees_every_form_of_import(tmp_path):
    """Each form below is one the scan must catch; a clean file passes."""
    folder = tmp_path / "zflora" / "method"
    folder.mkdir(parents=True)
    forms = [
        "import zflora.harness.generation",
        "from zflora.harness.generation import generate_text",
        "from zflora import harness",
        "from ..harness import generation",
        "def f():\n    from zflora.harness import demo",
        "import importlib\nimportlib.import_module('zflora.harness.train')",
    ]
    for i, form in enumerate(forms):
        (folder / f"m{i}.py").write_text(form + "\n")
    (folder / "clean.py").write_text("from zflora.method.fusion import swap_adapter\nfrom . import layer\n")
    found = harness_imports(folder, tmp_path)
    assert [line.split(":")[0] for line in found] == [f"zflora/method/m{i}.py" for i in range(len(forms))]


def hard_dependencies() -> set[str]:
    """Normalised distribution names of zflora's required (not optional) dependencies."""
    names = set()
    for requirement in requires("zflora") or []:
        if "extra ==" in requirement:
            continue
        names.add(re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def test_no_test_skips_itself_over_a_hard_dependency():
    hard = hard_dependencies()
    assert {"torch", "gguf", "transformers"} <= hard
    distributions = packages_distributions()
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "importorskip"):
                continue
            if not (node.args and isinstance(node.args[0], ast.Constant)):
                continue
            module = str(node.args[0].value).split(".")[0]
            owners = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
            if owners & hard:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} importorskip({module!r})")
    assert offenders == [], "hard dependencies: import them plainly, a missing one is a broken install"
