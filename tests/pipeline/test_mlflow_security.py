"""Another local user cannot write to the MLflow servers the project starts (docs/reliability.md, "Security").

`make mlflow-ui` (python -m flows.mlflow_server ui) runs MLflow's basic-auth app. Another
user is a real other uid: the attacks are `curl` run as `nobody` (these tests run as root
in CI; elsewhere they skip). Each attack must be refused with 401, and the registry and
the artifact folder must be unchanged afterwards; the owner, with the workspace's login,
still reads everything.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest

from .conftest import on_a_free_port, start_server

IS_ROOT = os.getuid() == 0
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not IS_ROOT, reason="acting as another user (nobody) needs root"),
]
ROOT = Path(__file__).resolve().parents[2]
MODEL = "zflora-tiny"


def make_registry(workspace: Path) -> dict:
    """A workspace's MLflow store after a run: one registered model with one version."""
    script = f"""
import json, mlflow
from mlflow import MlflowClient
mlflow.set_tracking_uri("sqlite:///mlflow.db")
experiment = mlflow.create_experiment("zflora", artifact_location=(__import__("pathlib").Path("mlartifacts").resolve().as_uri()))
with mlflow.start_run(experiment_id=experiment) as run:
    mlflow.log_text("weights", "model/model.safetensors")
client = MlflowClient()
client.create_registered_model({MODEL!r})
client.create_model_version({MODEL!r}, f"runs:/{{run.info.run_id}}/model", run_id=run.info.run_id)
print(json.dumps({{"experiment": experiment, "run": run.info.run_id}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=workspace, capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def registry_state(workspace: Path) -> list:
    """Every registered model and version, and every artifact file, as the owner sees them on disk."""
    import sqlite3

    with sqlite3.connect(workspace / "mlflow.db") as db:
        models = db.execute("SELECT name FROM registered_models ORDER BY name").fetchall()
        versions = db.execute(
            "SELECT name, version, source FROM model_versions ORDER BY name, version"
        ).fetchall()
    files = sorted(
        str(p.relative_to(workspace)) for p in (workspace / "mlartifacts").rglob("*") if p.is_file()
    )
    return [models, versions, files]


def as_nobody(*curl_args: str) -> int:
    """HTTP status of a curl request made by the unprivileged user `nobody`."""
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *curl_args],
        user="nobody",
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    return int(out.stdout or 0)


def answers_health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5):
            return True
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def mlflow_ui(tmp_path_factory):
    """`make mlflow-ui` in a workspace whose store holds a registered model (one server for the module)."""
    tmp_path = tmp_path_factory.mktemp("mlflow-ui")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    ids = make_registry(workspace)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(ROOT)

    def start(port: int) -> tuple[int, str, subprocess.Popen]:
        url = f"http://127.0.0.1:{port}"
        server = start_server(
            [sys.executable, "-m", "flows.mlflow_server", "ui", "--port", str(port)],
            url,
            answers_health,
            tmp_path / f"ui-{port}.log",
            cwd=workspace,
            env=env,
            start_new_session=True,
        )
        return port, url, server

    port, url, server = on_a_free_port(start)
    try:
        yield {"workspace": workspace, "url": url, "pgid": server.pid, "port": port, **ids}
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


def owner_get(server: dict, path: str) -> tuple[int, dict]:
    login = {}
    for word in shlex.split((server["workspace"] / ".mlflow" / "login.env").read_text(), comments=True):
        key, _, value = word.partition("=")
        login[key] = value
    token = b64encode(
        f"{login['MLFLOW_TRACKING_USERNAME']}:{login['MLFLOW_TRACKING_PASSWORD']}".encode()
    ).decode()
    request = urllib.request.Request(f"{server['url']}{path}", headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read() or b"{}")


def test_another_user_cannot_create_upload_or_register_anything(mlflow_ui):
    server, workspace = mlflow_ui, mlflow_ui["workspace"]
    before = registry_state(workspace)
    api = f"{server['url']}/api/2.0/mlflow"
    post = ["-X", "POST", "-H", "Content-Type: application/json", "--data"]
    attacks = {
        "create a registered model": as_nobody(
            *post, json.dumps({"name": "planted"}), f"{api}/registered-models/create"
        ),
        "upload an artifact": as_nobody(
            "-X",
            "PUT",
            "--data-binary",
            "import os  # code of the other user's choosing",
            f"{server['url']}/api/2.0/mlflow-artifacts/artifacts/{server['experiment']}/{server['run']}/artifacts/model/python_model.py",
        ),
        "register a new version": as_nobody(
            *post,
            json.dumps({"name": MODEL, "source": f"runs:/{server['run']}/model", "run_id": server["run"]}),
            f"{api}/model-versions/create",
        ),
        "read the registry": as_nobody(f"{api}/registered-models/search"),
    }
    assert attacks == {name: 401 for name in attacks}
    assert registry_state(workspace) == before
    # the owner, with the workspace's login, still sees the model
    status, body = owner_get(server, "/api/2.0/mlflow/registered-models/search")
    assert status == 200 and [m["name"] for m in body["registered_models"]] == [MODEL]


def test_the_login_is_private_and_not_the_example_one(mlflow_ui):
    folder = mlflow_ui["workspace"] / ".mlflow"
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    for name in ("login.env", "auth.ini", "secret_key"):
        assert oct((folder / name).stat().st_mode & 0o777) == "0o600", name
    text = (folder / "login.env").read_text()
    assert "password1234" not in text and "MLFLOW_TRACKING_PASSWORD=" in text
    # a browser without the login is asked for it (Basic auth: once per browser), even for the page
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{mlflow_ui['url']}/", timeout=30)
    assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"].startswith("Basic")
    assert as_nobody(f"{mlflow_ui['url']}/ajax-api/2.0/mlflow/experiments/search?max_results=10") == 401
    assert owner_get(mlflow_ui, "/ajax-api/2.0/mlflow/experiments/search?max_results=10")[0] == 200


def test_make_mlflow_ui_listens_on_loopback_only(mlflow_ui):
    """What `make mlflow-ui` runs, and the address its server process really listens on."""
    from .test_security import listening_addresses

    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nmlflow-ui:", 1)[1].split("\n\n", 1)[0]
    assert "-m flows.mlflow_server ui" in recipe
    addresses = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == mlflow_ui["pgid"]:
                    addresses |= listening_addresses(int(entry.name))
            except (OSError, ProcessLookupError):
                continue
    assert addresses == {f"127.0.0.1:{mlflow_ui['port']}"}
