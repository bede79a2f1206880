"""Prefect tasks of the pipeline: thin wrappers that take and return paths, call zflora, and log to MLflow.

Layering: flows -> tasks -> zflora. Nothing here holds a model between tasks; every task
reads its inputs from disk and writes its outputs atomically.
"""

import os

# MLflow's telemetry thread edits os.environ while requests iterates it (a KeyError against a
# tracking server); `zflora generate --model models:/...` comes here without flows/
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
