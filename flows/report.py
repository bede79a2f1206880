"""`report` stage: accuracy table and plot (task x method, base included) and latency tables in reports/.

python -m flows.report [--params params.yaml]
"""

from __future__ import annotations

if __name__ == "__main__":  # a warm worker, when one serves this code, runs the stage (flows/warm.py)
    from flows.warm import forward

    forward("flows.report")

import sys

from prefect import flow

from tasks.io import write_json
from tasks.report import build_report
from tasks.tracking import stage_run

from .layout import ARTIFACTS, METRICS, PROFILE, REPORTS
from .stage import params_of, parser, run, user_errors_fail


@flow(name="zflora-report", log_prints=True)
@user_errors_fail
def report_flow(params_path: str = "params.yaml") -> dict:
    params = params_of(params_path)
    with stage_run("report", params.tracking.experiment, {"report": params.report.model_dump(mode="json")}):
        summary = build_report(
            str(ARTIFACTS / "eval"),
            str(ARTIFACTS / "train"),
            str(ARTIFACTS / "tune"),
            str(PROFILE),
            params.data.tasks,
            params.train.methods,
            params.profile.targets,
            params.report.title,
            str(REPORTS),
        )
    write_json(METRICS / "accuracy.json", summary)
    print((REPORTS / "accuracy.md").read_text())
    return summary


def main(argv: list[str] | None = None) -> int:
    return run(report_flow, parser(__doc__.splitlines()[0]).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
