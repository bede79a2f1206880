"""What `make run` prints at the end: the accuracy table, where the reports are, how to open the UIs.

python -m flows.summary
"""

from __future__ import annotations

import json
import sys

from .layout import METRICS, REPORTS
from .server import healthy, local_url


def main() -> int:
    accuracy = REPORTS / "accuracy.md"
    if not accuracy.is_file():
        print("no reports yet: run `make run` (or `dvc repro`) first", file=sys.stderr)
        return 1
    print(accuracy.read_text())
    profile = METRICS / "profile.json"
    if profile.is_file():
        for target, figures in json.loads(profile.read_text()).items():
            ratios = {k: v for k, v in figures.items() if k.startswith("decode_") and k.endswith("_vs_base")}
            if ratios:
                shown = ", ".join(
                    f"{k.removeprefix('decode_').removesuffix('_vs_base')} {v:.3f}x"
                    for k, v in ratios.items()
                )
                print(f"decode latency vs base ({target}): {shown}")
    url = local_url().removesuffix("/api")
    prefect = (
        f"{url} (running; stop it with `make stop`)"
        if healthy(local_url())
        else "`make prefect-ui`, then open http://127.0.0.1:4200"
    )
    lines = [
        "",
        "Reports:",
        f"  accuracy  {REPORTS / 'accuracy.md'}  {REPORTS / 'accuracy.png'}",
        f"  latency   {REPORTS / 'latency.md'}  {REPORTS}/latency-*.png",
        "  metrics   dvc metrics show   |   plots: dvc plots show (writes dvc_plots/index.html)",
        "UIs:",
        "  MLflow    make mlflow-ui, then open http://127.0.0.1:5000 (runs, and models under Models)",
        f"  Prefect   {prefect}",
        '  Generate  zflora generate --model models:/zflora-tiny-embedded-math@latest --prompt "..."',
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
