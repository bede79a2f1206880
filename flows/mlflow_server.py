"""The MLflow servers this project starts, behind MLflow's own basic-auth app.

    python -m flows.mlflow_server ui [--port 5000]     # make mlflow-ui: this workspace's runs and registry
    python -m flows.mlflow_server login                 # where the login is

The registry holds models-from-code: whoever can register a version decides what code the
next `mlflow models serve` runs. On a machine shared with other users loopback is not
private, so every MLflow server the project starts (`make mlflow-ui`, and the cluster's
tracking server, flows/cluster.py) runs MLflow's basic-auth app (`--app-name basic-auth`,
the `mlflow[auth]` extra): requests without the workspace's login get 401.

What it keeps, in a folder only this user can open (`.mlflow/` for the UI):
- `auth.ini` (0600): MLflow's auth config (MLFLOW_AUTH_CONFIG_PATH): its user database
  inside that folder, the admin user `zflora` with a generated password (never MLflow's
  example admin/password1234), and no permissions for any other user;
- `login.env` (0600): `export MLFLOW_TRACKING_USERNAME=zflora MLFLOW_TRACKING_PASSWORD=...`,
  MLflow's own client variables: `source .mlflow/login.env` before pointing
  MLFLOW_TRACKING_URI at the server (stages, `zflora generate --model models:/...`,
  `mlflow models serve`); the browser asks for the same user and password once;
- `secret_key` (0600): the Flask secret key (MLFLOW_FLASK_SERVER_SECRET_KEY) that signs
  the UI's CSRF tokens.
A login file that is not private to this user is never trusted: a new login replaces it,
and the user database it no longer matches is recreated.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import sys
from pathlib import Path

from .private import private_folder, read_private, write_private

USER = "zflora"
DEFAULT_PORT = 5000


def login_path(folder: Path) -> Path:
    return folder / "login.env"


def read_login(folder: Path) -> dict[str, str] | None:
    """MLFLOW_TRACKING_USERNAME / _PASSWORD from the folder's login file, if it is private and complete."""
    values = {}
    for line in (read_private(login_path(folder)) or "").splitlines():
        for word in shlex.split(line, comments=True):
            key, _, value = word.partition("=")
            if key.startswith("MLFLOW_TRACKING_"):
                values[key] = value
    if values.get("MLFLOW_TRACKING_USERNAME") and len(values.get("MLFLOW_TRACKING_PASSWORD", "")) >= 16:
        return values
    return None


def auth_env(folder: Path) -> dict[str, str]:
    """The server's environment for the basic-auth app, creating the login on first use."""
    folder = private_folder(folder)
    login = read_login(folder)
    if login is None:
        password = secrets.token_urlsafe(24)
        login = {"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": password}
        (folder / "basic_auth.db").unlink(missing_ok=True)  # its admin has the old password
        write_private(
            login_path(folder),
            "# MLflow's client login for this workspace's MLflow server: source it, then set MLFLOW_TRACKING_URI\n"
            + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in login.items()),
        )
    write_private(
        folder / "auth.ini",
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{(folder / 'basic_auth.db').resolve()}\n"
        f"admin_username = {login['MLFLOW_TRACKING_USERNAME']}\n"
        f"admin_password = {login['MLFLOW_TRACKING_PASSWORD']}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
    )
    secret = (read_private(folder / "secret_key") or "").strip()
    if len(secret) < 32:
        secret = secrets.token_hex(32)
        write_private(folder / "secret_key", secret + "\n")
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str((folder / "auth.ini").resolve()),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secret,
    }


def server_command(kind: str, host: str, port: int, *store: str) -> list[str]:
    """`mlflow ui|server ... --app-name basic-auth` bound to `host`:`port` (loopback unless asked)."""
    return [
        str(Path(sys.executable).with_name("mlflow")),
        kind,
        *store,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--app-name",
        "basic-auth",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="this workspace's MLflow UI, behind MLflow's basic-auth app")
    parser.add_argument("action", choices=["ui", "login"])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--folder", default=".mlflow", help="where the login and the user database live")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    try:
        env = auth_env(folder)
    except OSError as e:
        print(f"zflora: error: {e}", file=sys.stderr)
        return 2
    if args.action == "login":
        print(login_path(folder))
        return 0
    print(
        f"MLflow UI: http://127.0.0.1:{args.port} - log in as {USER} with the password in {login_path(folder)} "
        f"(cat it; clients: source it and set MLFLOW_TRACKING_URI=http://127.0.0.1:{args.port})",
        file=sys.stderr,
        flush=True,
    )
    command = server_command(
        "ui",
        "127.0.0.1",
        args.port,
        "--backend-store-uri",
        "sqlite:///mlflow.db",
        "--default-artifact-root",
        "./mlartifacts",
    )
    os.execve(command[0], command, {**os.environ, **env})


if __name__ == "__main__":
    sys.exit(main())
