"""`zflora generate --model models:/...` looks the model up where the user expects, or says why not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_registry_uri_outside_the_project_is_one_line_and_leaves_no_store(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ZFLORA_"))}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "zflora.cli",
            "generate",
            "--model",
            "models:/zflora-tiny@latest",
            "--prompt",
            "x",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "no MLflow store" in out.stderr and "MLFLOW_TRACKING_URI" in out.stderr
    assert list(tmp_path.iterdir()) == []  # no stray mlflow.db
