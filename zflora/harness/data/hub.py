"""Rows of a real task: from the Hugging Face Hub (`datasets`) or from a local folder.

Hub: `datasets.load_dataset` with the task's dataset id and config. A few classic datasets
still hold only a loading script on their main branch, which `datasets` >= 4 refuses to
run; for those (`HubSource.parquet_export=True`) the rows come from the Hub's automatic
parquet export of the same dataset (`refs/convert/parquet`), read with the `parquet` builder.

Offline: when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set, or when a 3-second probe cannot
reach the Hub endpoint, loading runs in offline mode (a pre-downloaded `datasets` cache
still works) instead of waiting through the hub client's retries; when that fails, a
ZFLoRAError names the dataset id and how to provide it locally.

Local folder (`data_dir`): files named after the split, in the hub dataset's own schema or
in the LLM-Adapters format (a JSON list of {"instruction", "input", "output", "answer"}):
`<data_dir>/<split>.jsonl`, `.json`, `.parquet` or `.csv`, also `<split>-*.<ext>` shards
(as the Hub names them, e.g. `train-00000-of-00001.parquet`), `<split>/*.<ext>` (the
layout of a parquet export, e.g. `train/0000.parquet`) and the same names under
`<data_dir>/data/`. `<split>` is the name asked for (train / validation / test) or the
hub split it maps to (e.g. test -> validation for BoolQ). `data_dir` may also be a single
file, used for whichever split is asked.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from zflora.errors import ZFLoRAError

EXTENSIONS = ("jsonl", "json", "parquet", "csv")
HUB_PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class HubSource:
    """Where a task's rows live on the Hub.

    `config` is the dataset config ("main", "ARC-Easy", ...). With `parquet_export`, rows
    are read from `hf://datasets/<dataset_id>@refs/convert/parquet/<config or *>/<split>/`.
    """

    dataset_id: str
    config: str | None = None
    parquet_export: bool = False
    columns: tuple[str, ...] = ()  # the columns the task reads, for error messages and docs

    def describe(self) -> str:
        text = self.dataset_id + (f" (config {self.config!r})" if self.config else "")
        return text + (" via its parquet export" if self.parquet_export else "")


# ----------------------------------------------------------------------------- offline handling


def offline_requested() -> bool:
    """True when HF_HUB_OFFLINE, HF_DATASETS_OFFLINE or TRANSFORMERS_OFFLINE is set (read now, not at import)."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in names)


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub endpoint opens within `timeout` seconds.

    With an HTTP(S) proxy configured the probe cannot tell, so it answers True and leaves
    the decision to the hub client.
    """
    if any(
        os.environ.get(name)
        for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")
    ):
        return True
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def forced_offline(enabled: bool = True) -> Iterator[None]:
    """Run the hub clients (huggingface_hub, datasets, transformers) in offline mode for a while.

    They read HF_HUB_OFFLINE once, at import; this sets the flags they consult at call
    time, so a cached copy is used and a missing one fails at once instead of retrying.
    """
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    saved: list[tuple[Any, str, Any]] = [(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)]
    import datasets.config as datasets_config

    saved += [
        (datasets_config, name, getattr(datasets_config, name))
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    ]
    try:
        for module, name, _ in saved:
            setattr(module, name, True)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def should_run_offline() -> bool:
    """Offline mode when asked for, or when the Hub cannot be reached at all."""
    return offline_requested() or not hub_reachable()


# ----------------------------------------------------------------------------- hub


def load_hub_rows(
    source: HubSource, split: str, task: str, cache_dir: str | None = None
) -> Sequence[dict[str, Any]]:
    """Rows of `split` of `source` (a `datasets.Dataset`); ZFLoRAError with a way out when unavailable."""
    import datasets
    from datasets import DownloadConfig

    requested = offline_requested()
    offline = requested or not hub_reachable()
    download_config = DownloadConfig(max_retries=1, cache_dir=cache_dir)
    if source.parquet_export:
        url = (
            f"hf://datasets/{source.dataset_id}@refs/convert/parquet/{source.config or '*'}/{split}/*.parquet"
        )
        args: tuple[Any, ...] = ("parquet",)
        kwargs: dict[str, Any] = {"data_files": {split: url}}
        folder = source.config or "<config>"
        fetch = (
            f"on a connected machine run `hf download {source.dataset_id} --repo-type dataset --revision "
            f"refs/convert/parquet --local-dir <dir>` and pass data_dir=<dir>/{folder}"
        )
    else:
        args, kwargs = (source.dataset_id, source.config), {}
        call = f"datasets.load_dataset({source.dataset_id!r}" + (
            f", {source.config!r})" if source.config else ")"
        )
        fetch = (
            f"run {call} on a connected machine, copy its HF_HOME cache here and set HF_DATASETS_OFFLINE=1"
        )
    try:
        with forced_offline(offline):
            dataset = datasets.load_dataset(
                *args, split=split, cache_dir=cache_dir, download_config=download_config, **kwargs
            )
    except Exception as error:  # any failure to get the rows has the same way out
        reason = " ".join(str(error).split())[:300].rstrip(".") or type(error).__name__
        mode = "online"
        if offline:
            mode = "offline mode is set" if requested else "the Hub is unreachable from here"
        raise ZFLoRAError(
            f"task {task!r}: cannot load {source.describe()} split {split!r} from the Hugging Face Hub, "
            f"{mode}: {reason}. Provide it locally instead: pass data_dir=<folder> holding {split}.jsonl / "
            f"{split}.json / {split}.parquet with the dataset's columns ({', '.join(source.columns) or 'as on the Hub'}) "
            f"or in LLM-Adapters JSON format, or {fetch}"
        ) from error
    return dataset  # a datasets.Dataset: indexable, sized, and rows iterate as dicts


# ----------------------------------------------------------------------------- local files


def find_local_file(data_dir: str | os.PathLike, split_names: list[str], task: str) -> list[Path]:
    """The file(s) holding a split in `data_dir` (see the module docstring for the names)."""
    root = Path(data_dir).expanduser()
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ZFLoRAError(
            f"task {task!r}: data_dir {str(root)!r} does not exist; pass a folder or a file of rows"
        )
    for folder in (root, root / "data"):
        for name in split_names:
            for ext in EXTENSIONS:
                exact = folder / f"{name}.{ext}"
                if exact.is_file():
                    return [exact]
                shards = sorted(folder.glob(f"{name}-*.{ext}")) or sorted(folder.glob(f"{name}/*.{ext}"))
                if shards:
                    return shards
    wanted = ", ".join(f"{name}.{{{','.join(EXTENSIONS)}}}" for name in split_names)
    present = sorted(p.name for p in root.iterdir())[:12]
    raise ZFLoRAError(
        f"task {task!r}: no file for split {split_names[0]!r} in {str(root)!r}; expected one of {wanted} "
        f"(or <split>-*.<ext> shards or <split>/*.<ext>, also under data/); found {present}"
    )


def read_rows(path: Path, task: str) -> list[dict[str, Any]]:
    """Rows of one JSON / JSONL / parquet / CSV file as dicts."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = []
            with open(path, encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as error:  # its own line is line 1: name the file's
                        raise ZFLoRAError(
                            f"task {task!r}: {path}:{number} is not valid JSON ({error.msg} at column "
                            f"{error.colno}); fix or remove that line"
                        ) from None
            return rows
        if suffix == ".json":
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
            if isinstance(data, dict):  # {"data": [...]} or {"train": [...]} style wrappers
                lists = [value for value in data.values() if isinstance(value, list)]
                if len(lists) != 1:
                    raise ZFLoRAError(f"task {task!r}: {path} holds a JSON object; expected a list of rows")
                data = lists[0]
            if not isinstance(data, list):
                raise ZFLoRAError(f"task {task!r}: {path} must hold a JSON list of row objects")
            return data
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        if suffix == ".csv":
            import csv

            with open(path, encoding="utf-8", newline="") as handle:
                return list(csv.DictReader(handle))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, ValueError) as error:
        if isinstance(error, ZFLoRAError):
            raise
        raise ZFLoRAError(f"task {task!r}: cannot read {path}: {error}") from error
    raise ZFLoRAError(f"task {task!r}: unsupported file type {path.name!r}; use one of {list(EXTENSIONS)}")


def load_local_rows(data_dir: str | os.PathLike, split_names: list[str], task: str) -> list[dict[str, Any]]:
    """All rows of the file(s) that hold the split in `data_dir`."""
    rows: list[dict[str, Any]] = []
    paths = find_local_file(data_dir, split_names, task)
    for path in paths:
        rows.extend(read_rows(path, task))
    if not rows:
        names = ", ".join(str(path) for path in paths)
        raise ZFLoRAError(
            f"task {task!r}: {names} holds no rows; "
            f"put the {split_names[0]} split's rows there or point data_dir at the folder that holds them"
        )
    bad = next((row for row in rows if not isinstance(row, dict)), None)
    if bad is not None:
        raise ZFLoRAError(
            f"task {task!r}: rows in {data_dir} must be JSON objects, found {type(bad).__name__}"
        )
    return rows


def is_llm_adapters(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether rows are in the LLM-Adapters format: instruction / output / answer keys."""
    return len(rows) > 0 and {"instruction", "output", "answer"} <= set(rows[0])
