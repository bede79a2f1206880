"""Prefect flows of the pipeline: one per DVC stage (`python -m flows.<stage>`), the whole
pipeline (`python -m flows.pipeline`) and the deployments served to the Prefect UI
(`python -m flows.serve`).

Importing this package sets project defaults before Prefect reads its settings: Prefect
keeps its database in the project (`.prefect/`), sends no analytics, and, unless
PREFECT_API_URL is set, the stages share one local Prefect server on 127.0.0.1 that the
first stage starts (see flows/server.py).

The project is DVC_ROOT when DVC runs the stage: for an experiment queued with
`dvc exp run --queue`, that is the workspace the queue belongs to, not the temporary
copy DVC runs it in. So queued experiments share the workspace's Prefect server (no
server of their own, no port race) and its MLflow store (tasks/tracking.py), which
outlive the temporary copy.
"""

import os
from pathlib import Path

_ROOT = Path(os.environ.get("ZFLORA_PROJECT_ROOT") or os.environ.get("DVC_ROOT") or os.getcwd()).resolve()
os.environ.setdefault("PREFECT_HOME", str(_ROOT / ".prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("DO_NOT_TRACK", "1")
# MLflow's telemetry thread sets and unsets a variable in os.environ while requests iterates
# os.environ for proxies (KeyError '_MLFLOW_TELEMETRY_SESSION_ID' in a stage logging to a
# tracking server); it reads DO_NOT_TRACK as "true" only, so say it its own way
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "TRUE")  # Trainer must not open MLflow runs of its own
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
