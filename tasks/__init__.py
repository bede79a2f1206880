"""Prefect tasks of the pipeline: thin wrappers that take and return paths, call zflora, and log to MLflow.

Layering: flows -> tasks -> zflora. Nothing here holds a model between tasks; every task
reads its inputs from disk and writes its outputs atomically.
"""
