"""dvc.yaml's code deps cover every project file each stage imports.

Each stage's flow module is scanned with `modulefinder` (which also sees imports inside
functions, where the stages import torch-heavy code lazily); every project file found
must lie under one of the stage's `deps`. flows/warm.py and flows/server.py are exempt:
they start processes and servers and cannot change what a stage computes (dvc.yaml says
so too). The slow test edits one imported file per stage in the pipeline fixture's copy
of the project and checks that `dvc status` reports that stage changed.
"""

from __future__ import annotations

import json
from modulefinder import ModuleFinder
from pathlib import Path

import pytest
import yaml

from .conftest import BIN

ROOT = Path(__file__).resolve().parents[2]
PLUMBING = {"flows/warm.py", "flows/server.py"}


def stages() -> dict[str, dict]:
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in raw.items()}


def imported_files(stage: str) -> set[str]:
    finder = ModuleFinder(path=[str(ROOT)])
    finder.import_hook(f"flows.{stage}")
    files = set()
    for module in finder.modules.values():
        path = Path(module.__file__ or "")
        if path.is_file() and ROOT in path.resolve().parents:
            files.add(str(path.resolve().relative_to(ROOT)))
    return files


@pytest.mark.parametrize("stage", sorted(stages()))
def test_every_imported_project_file_is_a_dependency(stage):
    deps = [d for d in stages()[stage]["deps"] if not d.startswith("artifacts")]
    files = imported_files(stage)
    assert f"flows/{stage}.py" in files and len(files) > 10  # the scan found the stage's code
    missing = sorted(
        f for f in files - PLUMBING if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)
    )
    assert not missing, f"dvc.yaml stage {stage} imports {missing} but does not list them under deps"


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


@pytest.mark.slow
def test_editing_an_imported_file_marks_its_stage_changed(pipeline_run):
    project = pipeline_run
    edits = {
        "base": "flows/base.py",
        "prepare": "tasks/data.py",
        "tune": "flows/tune.py",
        "train": "zflora/harness/train.py",
        "fuse": "tasks/fusion.py",
        "evaluate": "tasks/evaluation.py",
        "profile": "zflora/harness/profiling/runner.py",
        "report": "tasks/report.py",
    }
    for stage, relative in edits.items():
        path = project.root / relative
        original = path.read_text()
        try:
            path.write_text(original + "\n# an edit\n")
            out = project.run(str(BIN / "dvc"), "status", "--json", timeout=120)
            changed = set(json.loads(out.stdout or "{}"))
        finally:
            path.write_text(original)
        assert any(name == stage or name.startswith(f"{stage}@") for name in changed), (
            f"editing {relative} did not mark stage {stage} changed: {sorted(changed)}"
        )
