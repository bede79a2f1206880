"""`report` stage: accuracy table and plot (task x method, base included) and latency tables in reports/.

python -m flows report [--params params.yaml]
"""

from __future__ import annotations

from tasks.io import write_json
from tasks.report import build_report
from tasks.tracking import stage_run
from zflora.method.atomic import atomic_dir

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
            tuned_tasks=params.tune.tasks or params.data.tasks,
            per_task=params.tune.per_task,
        )
    with atomic_dir(
        METRICS / "accuracy"
    ) as tmp:  # one small file per method: `dvc metrics show metrics/accuracy`
        for method, scores in summary.items():
            write_json(tmp / f"{method}.json", scores)
    print((REPORTS / "accuracy.md").read_text())
    return summary
