"""dvc.yaml's code deps are exactly the project files each stage imports.

Each stage's flow module is scanned with `modulefinder` (which also sees imports inside
functions, where the stages import torch-heavy code lazily). Every project file found
must be a dependency, and every declared code dependency must be imported: a file the
stage imports, or a folder whose every Python file it imports. So editing report code
reruns only `report`, and editing the method reruns every stage that runs an adapter.

Not deps, on purpose: flows/__main__.py (dispatches `python -m flows <stage>`),
flows/warm.py and flows/server.py (processes and servers): they cannot change what a
stage computes. The fuse stage also depends on tasks/registry_model.py and what it
imports: MLflow loads that file by path as the registered model's code.

To see the lists a stage needs: `python -m tests.pipeline.test_dvc_deps` prints them.
The slow tests edit files in the pipeline fixture's copy of the project and ask
`dvc status` which stages changed.
"""

from __future__ import annotations

import ast
import json
from modulefinder import ModuleFinder
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PLUMBING = {"flows/__main__.py", "flows/warm.py", "flows/server.py"}
LOADED_BY_PATH = {"fuse": ["tasks.registry_model"]}  # MLflow models-from-code
# packages whose names are imported on first use (zflora/_lazy.py, zflora/__init__.py):
# `from <package> import <name>` hides the defining module from modulefinder
LAZY_PACKAGES = ("zflora", "zflora.harness.data", "zflora.harness.profiling")


def stages() -> dict[str, dict]:
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in raw.items()}


def stage_module(body: dict) -> str:
    """`python -m flows train --task ...` -> flows.train"""
    words = body["cmd"].split()
    return f"flows.{words[words.index('flows') + 1]}"


def project_files(*modules: str) -> set[str]:
    finder = ModuleFinder(path=[str(ROOT)])
    for module in modules:
        finder.import_hook(module)
    files = set()
    for module in finder.modules.values():
        path = Path(module.__file__ or "")
        if path.is_file() and ROOT in path.resolve().parents:
            files.add(str(path.resolve().relative_to(ROOT)))
    return files


def imported_files(stage: str) -> set[str]:
    body = stages()[stage]
    return project_files(stage_module(body), *LOADED_BY_PATH.get(stage, [])) - PLUMBING


def code_deps(stage: str) -> list[str]:
    return [d for d in stages()[stage]["deps"] if not d.startswith("artifacts")]


@pytest.mark.parametrize("stage", sorted(stages()))
def test_a_stage_depends_on_exactly_the_project_files_it_imports(stage):
    files = imported_files(stage)
    assert stage_module(stages()[stage]).replace(".", "/") + ".py" in files  # the scan found the stage
    deps = code_deps(stage)
    missing = sorted(f for f in files if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))
    assert not missing, f"dvc.yaml stage {stage} imports {missing} but does not list them under deps"
    for dep in deps:
        path = ROOT / dep
        if path.is_dir():
            unused = sorted(
                str(p.relative_to(ROOT)) for p in path.rglob("*.py") if str(p.relative_to(ROOT)) not in files
            )
            assert not unused, (
                f"dvc.yaml stage {stage} declares the folder {dep}, but does not import {unused}: "
                "list the files it imports instead"
            )
        else:
            assert dep in files, f"dvc.yaml stage {stage} declares {dep}, which it does not import: remove it"


def test_stage_code_imports_names_from_their_defining_modules():
    """In stage code, a name taken from a lazy package would hide its module from the scan."""
    offenders = []
    for relative in sorted(set().union(*(imported_files(stage) for stage in stages()))):
        path = ROOT / relative
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in LAZY_PACKAGES and node.level == 0:
                package = ROOT / node.module.replace(".", "/")
                for alias in node.names:
                    if not ((package / f"{alias.name}.py").is_file() or (package / alias.name).is_dir()):
                        if alias.name != "__version__" and not alias.name.endswith("Error"):
                            offenders.append(
                                f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}"
                            )
    assert not offenders, f"import these from the module that defines them: {offenders}"


@pytest.mark.parametrize(
    "params_file", ["params.yaml", *sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))]
)
def test_every_declared_param_is_in_each_shipped_params_file(params_file):
    """DVC refuses to run a stage whose declared params key is missing from the file."""
    path = ROOT / params_file if params_file == "params.yaml" else ROOT / "configs" / params_file
    data = yaml.safe_load(path.read_text())
    for stage, body in stages().items():
        for entry in body.get("params", []):
            node = data
            for part in (entry if isinstance(entry, str) else next(iter(entry))).split("."):
                assert isinstance(node, dict) and part in node, (
                    f"{params_file} lacks {entry}, which {stage} declares"
                )
                node = node[part]


def changed_stages(project, *edits: str) -> set[str]:
    """Stage names (without @item) that `dvc status` reports after appending a comment to `edits`."""
    from .conftest import BIN

    originals = {relative: (project.root / relative).read_text() for relative in edits}
    try:
        for relative, text in originals.items():
            (project.root / relative).write_text(text + "\n# an edit\n")
        out = project.run(str(BIN / "dvc"), "status", "--json", timeout=120)
        return {name.split("@")[0] for name in json.loads(out.stdout or "{}")}
    finally:
        for relative, text in originals.items():
            (project.root / relative).write_text(text)


@pytest.mark.slow
def test_editing_a_file_reruns_exactly_the_stages_that_import_it(pipeline_run):
    project = pipeline_run
    assert changed_stages(project) == set()  # the run is complete: nothing to do
    # report code: only the report, never training or evaluation
    assert changed_stages(project, "tasks/report.py") == {"report"}
    # the method's layer: every stage that runs an adapter, never data preparation or the report
    layer = "zflora/method/layer.py"
    importers = {stage.split("@")[0] for stage in stages() if layer in imported_files(stage)}
    assert {"tune", "train", "fuse", "evaluate", "profile"} <= importers
    assert not importers & {"prepare", "report"}
    assert changed_stages(project, layer) == importers
    for stage, relative in {
        "base": "tasks/base.py",
        "prepare": "tasks/data.py",
        "tune": "tasks/tuning.py",
        "train": "zflora/harness/train.py",
        "fuse": "tasks/fusion.py",
        "profile": "zflora/harness/profiling/runner.py",
    }.items():
        assert stage in changed_stages(project, relative), f"editing {relative} did not rerun {stage}"


def expected_deps() -> dict[str, list[str]]:
    return {stage: sorted(imported_files(stage)) for stage in stages()}


if __name__ == "__main__":
    print(json.dumps(expected_deps(), indent=2))
