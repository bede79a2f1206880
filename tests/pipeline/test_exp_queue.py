"""`dvc exp run --queue` + `dvc queue start --jobs 2`: every queued experiment completes and can be compared.

Each queued experiment runs in a temporary copy of the workspace. Its stages share the
workspace's Prefect server (DVC_ROOT: flows/__init__.py) instead of starting one each (two
copies raced for the same "next free" port, and left servers `make stop` could not reach),
and log to the workspace's MLflow store (tasks/tracking.py), which outlives the copy.
Metrics are cached outputs, so `dvc exp show` reads them for each experiment.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import sys
import time

import pytest

from .conftest import BIN, copy_project, prefect_servers_of

pytestmark = pytest.mark.slow
TARGET = "evaluate@embedded-math-zflora"


def test_two_queued_experiments_run_at_once_and_compare(tmp_path):
    project = copy_project(tmp_path / "ws")
    dvc = str(BIN / "dvc")
    for rank in (8, 2):  # up to one evaluate stage: base, prepare, tune, train, evaluate (5 of the 13 stages)
        project.run(dvc, "exp", "run", "--queue", "-S", f"adapter.r={rank}", "-q", TARGET, timeout=300)
    project.run(dvc, "queue", "start", "--jobs", "2", timeout=300)
    deadline = time.monotonic() + 1500
    while True:
        status = project.run(dvc, "queue", "status", timeout=120).stdout
        if "Running" not in status and "Queued" not in status:
            break
        assert time.monotonic() < deadline, status
        time.sleep(5)
    if status.count("Success") != 2:
        tasks = [
            line.split()[0]
            for line in status.splitlines()[1:]
            if line.strip() and not line.startswith("Worker")
        ]
        logs = "".join(
            project.run(dvc, "queue", "logs", task, check=False, timeout=120).stdout[-3000:] for task in tasks
        )
        raise AssertionError(status + logs)
    try:
        # both experiments' metrics, readable (no '!')
        table = list(
            csv.DictReader(io.StringIO(project.run(dvc, "exp", "show", "--csv", timeout=300).stdout))
        )
        experiments = {row["Experiment"]: row for row in table if row["Experiment"]}
        assert len(experiments) == 2, table
        # DVC names a metric by its key alone while no other file has that key
        column = next(
            (c for c in ("metrics/eval/embedded-math/zflora.json:accuracy", "accuracy") if c in table[0]),
            None,
        )
        assert column, sorted(table[0])
        assert all(row[column] not in ("", "!") for row in experiments.values()), experiments
        assert {row["adapter.r"] for row in experiments.values()} == {"8", "2"}
        first, second = experiments
        diff = json.loads(project.run(dvc, "metrics", "diff", first, second, "--json", timeout=300).stdout)
        assert any(path.startswith("metrics/train/") for path in diff), diff  # the ranks trained differently
        # their MLflow runs are in the workspace's store, tagged with the experiment
        with sqlite3.connect(project.root / "mlflow.db") as db:
            tagged = dict(
                db.execute("SELECT value, COUNT(*) FROM tags WHERE key = 'dvc_experiment' GROUP BY value")
            )
        assert set(tagged) == set(experiments) and all(count >= 5 for count in tagged.values()), tagged
        # one Prefect server served both: the workspace's, which `make stop` stops
        home = project.root / ".prefect"
        assert (home / "server.pid").is_file()
        pid = int((home / "server.pid").read_text())
        assert sorted(prefect_servers_of(home)) == [pid]
    finally:
        project.run(sys.executable, "-m", "flows.server", "stop", check=False)
        project.run(sys.executable, "-m", "flows.warm", "stop", check=False)
    assert prefect_servers_of(home) == []  # nothing left running
