"""The `zflora tasks` subcommand: list the registered tasks as a table or as JSON.

zflora tasks            # aligned table: name, category, metric, source, description
zflora tasks --json     # the same rows as a JSON list (for scripts and pipelines)
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from zflora.harness.data.suite import describe_tasks

COLUMNS = ("name", "category", "metric", "source", "description")


def format_table(rows: list[dict[str, str]]) -> str:
    """Rows as a plain aligned text table with a header line."""
    widths = {column: max(len(column), *(len(row[column]) for row in rows)) for column in COLUMNS[:-1]}
    lines = []
    for row in [dict(zip(COLUMNS, COLUMNS)), *rows]:
        cells = [row[column].ljust(widths[column]) for column in COLUMNS[:-1]] + [row["description"]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def run_tasks_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print the task table (or JSON with --json)."""
    out = out or sys.stdout
    rows = describe_tasks()
    if getattr(args, "json", False):
        json.dump(rows, out, indent=2)
        out.write("\n")
    else:
        out.write(format_table(rows) + "\n")
    return 0


def add_tasks_parser(subparsers: Any) -> None:
    """Register `tasks` (with --json) on an argparse subparsers object; sets `func`."""
    parser = subparsers.add_parser(
        "tasks", help="list the tasks (embedded and paper suite) with their data sources"
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    parser.set_defaults(func=run_tasks_command)
