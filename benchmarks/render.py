"""Rewrite a suite's reports (markdown, PNGs, summary) from its JSON, without measuring again.

    .venv/bin/python benchmarks/render.py cpu-2026-11-29

For when the report layout changes: every figure comes from results/<suite>.json.
"""

from __future__ import annotations

import argparse
import json

from _common import RESULTS, check_targets, write_summary

from zflora.harness.profiling import write_markdown, write_plots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", help="name of results/<suite>.json")
    args = parser.parse_args()
    data = json.loads((RESULTS / f"{args.suite}.json").read_text())
    header = data.get("header", [])
    for name, result in data["configs"].items():
        out = RESULTS / args.suite / name
        result["targets"] = check_targets(result)
        write_markdown(result, out / "profile.md")
        write_plots(result, out)
    json_path, md_path = write_summary(args.suite, data["configs"], header)
    print(f"rewrote {md_path} and the reports under {RESULTS / args.suite}")


if __name__ == "__main__":
    main()
