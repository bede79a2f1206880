"""`report` stage: accuracy table and plot (task x method, base included) and latency tables in reports/.

    python -m flows report [--params params.yaml]
"""

from __future__ import annotations

from tasks.io import write_json
from tasks.report import build_report
from tasks.tracking import stage_run

from .layout import ARTIFACTS, METRICS, PROFILE, REPORTS
from .params import Params
from .stage import stage_flow


@stage_flow("report")
def report_flow(params: Params) -> dict:
    with stage_run("report", params.tracking.experiment, {"report": params.report.model_dump(mode="json")}):
        summary = build_report(
            str(ARTIFACTS / "eval"),
            str(ARTIFACTS / "train"),
            str(ARTIFACTS / "tune"),
            str(PROFILE),
            params.data.tasks,
            ["base", *params.train.methods],
            params.profile.targets,
            params.report.title,
            str(REPORTS),
        )
    write_json(METRICS / "accuracy.json", summary)
    print((REPORTS / "accuracy.md").read_text())
    return summary

