"""The service on the production stack's servers, run for real: the fact ledger on PostgreSQL,
the registry on an MLflow tracking server (itself on PostgreSQL, serving the versions'
artifacts) reached by host name, in production mode (no SQLite anywhere), from the command
line as an operator runs it. The servers: tests/servers.py (the MLflow server runs
docker/compose.yaml's command)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import requests

from editing.hparams import EditHParams

FAST = dict(steps=12, noise_images=1, dest_steps=8)
LENIENT_SMALL_GATE = dict(efficacy_min=0.0, specificity_drop_max=1.0, fid_increase_max=100.0,
                          base_specificity_min=0.0, base_fid_increase_max=100.0,
                          fact_seeds=2, probe_seeds=1, unrelated_probes=6, fid_seeds=2)


def run(args: list[str], env: dict, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=1800)


def test_ledger_and_registry_on_postgres_and_an_mlflow_server(servers, world, tmp_path):
    home = tmp_path / "shared-home"
    home.mkdir()
    (tmp_path / "hp.json").write_text(json.dumps(EditHParams.preset("toyworld", **FAST).to_json()))
    (tmp_path / "gate.json").write_text(json.dumps(LENIENT_SMALL_GATE))
    env = {**os.environ, "FRESHEN_HOME": str(home), "FRESHEN_PRODUCTION": "1",
           "FRESHEN_LEDGER_URL": servers.database_url("freshen"), "FRESHEN_TRACKING_URI": servers.tracking_uri,
           "FRESHEN_HPARAMS": str(tmp_path / "hp.json"), "FRESHEN_GATE": str(tmp_path / "gate.json"),
           "FRESHEN_NUM_INFERENCE_STEPS": "10", "HF_HUB_OFFLINE": "1"}
    freshen = [sys.executable, "-m", "freshen.cli"]

    # production mode: without the ledger's URL nothing starts, and no SQLite file is made
    out = run([*freshen, "facts", "list"], {k: v for k, v in env.items() if k != "FRESHEN_LEDGER_URL"})
    assert out.returncode == 2 and "set FRESHEN_LEDGER_URL" in out.stderr

    out = run([*freshen, "registry", "init"], env)
    assert out.returncode == 0, out.stderr[-3000:]
    facts = [f for f in world.facts if f.relation == "logo"][:2]
    feed = tmp_path / "wire.jsonl"
    feed.write_text("".join(json.dumps({"id": str(i), "source": f.prompt, "target": t}) + "\n"
                            for i, (f, t) in enumerate(zip(facts, ("a white ring", "a black star"), strict=True))))
    out = run([*freshen, "feeds", "ingest", str(feed), "--json"], env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout)[0]["accepted"] == 2
    out = run([*freshen, "facts", "approve", "wire:0", "wire:1", "--by", "alice"], env)
    assert out.returncode == 0, out.stderr[-3000:]
    out = run([*freshen, "refresh", "--by", "bob"], env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert (result["status"], result["version"], result["champion"]) == ("passed", 2, 2)
    assert "View run" not in out.stdout  # MLflow's links stay off the console

    # the new version and its facts, read back through the MLflow server's REST API
    api = f"{servers.tracking_uri}/api/2.0"
    mv = requests.get(f"{api}/mlflow/registered-models/alias", params={"name": "freshen", "alias": "champion"},
                      timeout=30).json()["model_version"]
    assert mv["version"] == "2" and {"key": "freshen.gate", "value": "passed"} in mv["tags"]
    run_info = requests.get(f"{api}/mlflow/runs/get", params={"run_id": mv["run_id"]}, timeout=30).json()["run"]["info"]
    assert run_info["artifact_uri"].startswith("mlflow-artifacts:/")  # behind the server, not a file path
    path = run_info["artifact_uri"].removeprefix("mlflow-artifacts:/")
    manifest = requests.get(f"{api}/mlflow-artifacts/artifacts/{path}/manifest.json", timeout=30).json()
    assert sorted(f["key"] for f in manifest["facts"]) == ["wire:0", "wire:1"]
    assert all(f["approved_by"] == "alice" for f in manifest["facts"])
    # the server refuses a Host it was not told to allow (MLflow 3's DNS-rebinding check)
    refused = requests.get(f"http://127.0.0.1:{servers.mlflow_port}/api/2.0/mlflow/experiments/search",
                           params={"max_results": 1}, headers={"Host": "elsewhere.example"}, timeout=30)
    assert refused.status_code == 403

    # the champion loads where the shared home cannot be seen: everything comes from the server
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    loader = ("import mlflow, pandas as pd; m = mlflow.pyfunc.load_model('models:/freshen@champion'); "
              "print(m.predict(pd.DataFrame({'prompt': ['a red circle']})).shape)")
    # nothing of this process's set-up either: MLflow exports the last tracking and registry URIs
    # it was given to the environment (MLFLOW_REGISTRY_URI, for subprocesses)
    bare = {k: v for k, v in os.environ.items() if not k.startswith(("FRESHEN_", "MLFLOW_"))}
    out = run([sys.executable, "-c", loader], {**bare, "MLFLOW_TRACKING_URI": servers.tracking_uri,
                                               "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}, cwd=elsewhere)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("(1, 16, 16, 3)")

    # the ledger is Postgres's: the two changes applied in v2, approved by alice
    from sqlalchemy import create_engine, text

    with create_engine(servers.database_url("freshen")).connect() as c:
        rows = c.execute(text("select change_id, status, decided_by from changes order by change_id")).all()
    assert [tuple(r) for r in rows] == [("0", "applied", "alice"), ("1", "applied", "alice")]
    assert not [p for p in home.rglob("*") if p.suffix in (".db", ".sqlite")]  # no private SQLite
