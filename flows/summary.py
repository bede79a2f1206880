"""What `make run` prints at the end: the accuracy table, where the reports are, how to open the UIs.

python -m flows.summary
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from .layout import METRICS, REPORTS, data_dir
from .server import auth_string, is_ours, recorded


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
    server = recorded()
    prefect = (
        f"{server['url'].removesuffix('/api')} (running; stop it with `make stop`)"
        if is_ours(server, auth_string(create=False))
        else "`make prefect-ui`, then open the address it prints"
    )
    lines = [
        "",
        "Reports:",
        f"  accuracy  {REPORTS / 'accuracy.md'}  {REPORTS / 'accuracy.png'}",
        f"  latency   {REPORTS / 'latency.md'}  {REPORTS}/latency-*.png",
        "The commands below need the project's environment first:  source .venv/bin/activate",
        "  metrics   dvc metrics show metrics/accuracy   (one row per method; every stage's: dvc metrics show)",
        "  plots     dvc plots show   (writes dvc_plots/index.html: loss curves, the accuracy plot)",
        "UIs:",
        "  MLflow    make mlflow-ui, then open http://127.0.0.1:5000 (runs, and models under Models)",
        f"  Prefect   {prefect}",
        "            log in with the auth string: cat .prefect/server.auth (once per browser)",
    ]
    lines += serving_lines()
    print("\n".join(lines))
    return 0


def serving_lines(port: int = 5001) -> list[str]:
    """How to serve the newest multi-task model and query two of its tasks (and the base) in one request."""
    registered = []
    for path in sorted((METRICS / "fuse").glob("*.json")):
        entry = json.loads(path.read_text()).get("registered_multitask")
        if entry:
            registered.append(entry)
    if not registered:
        return ['  Generate  zflora generate --model models:/zflora-tiny-embedded-math@latest --prompt "..."']
    newest = max(registered, key=lambda entry: int(entry["version"]))
    prompts = {task: first_prompt(data_dir(task) / "test.jsonl") for task in newest["tasks"]}
    shown = sorted((t for t in prompts if prompts[t]), key=lambda t: len(prompts[t]))[:2]
    records = [{"prompt": prompts[t], "task": t} for t in shown]
    if shown:
        records.append({"prompt": prompts[shown[0]]})  # no task: the base model
    body = json.dumps({"dataframe_records": records, "params": {"max_new_tokens": 32}})
    uri, task = newest["uri"], shown[0] if shown else newest["tasks"][0]
    return [
        f"Registry: {uri} (version {newest['version']}) serves {', '.join(newest['tasks'])} and the base, one model:",
        f"  Generate  zflora generate --model {uri} --task {task} --prompt {ansi_c(prompts.get(task) or '...')}",
        f"  Serve     mlflow models serve -m {uri} --env-manager local --host 127.0.0.1 --port {port}",
        f"  Query     curl -s 127.0.0.1:{port}/invocations -H 'Content-Type: application/json' -d {shlex.quote(body)}",
    ]


def ansi_c(text: str) -> str:
    """`text` as one bash $'...' word (newlines shown as \\n)."""
    return "$'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def first_prompt(path: Path) -> str | None:
    try:
        with open(path) as handle:
            return json.loads(handle.readline())["prompt"]
    except (OSError, ValueError, KeyError):
        return None


if __name__ == "__main__":
    sys.exit(main())
