"""The refresh DAG on the production stack, run for real: Airflow 3 with the CeleryExecutor
(api-server, scheduler, dag-processor, triggerer and two Celery workers, Redis as broker,
Postgres for Airflow's metadata and the results), the ledger on Postgres, the registry on an
MLflow tracking server, every service with docker/compose.yaml's command and environment
(tests/servers.py; only addresses, ports, secrets and paths are this machine's).

The workers share one home and split the queues as a GPU node and a CPU node would: one
serves `gpu` (Stage I is routed there), the other `default` (everything else), so Stage I and
Stage II run on different workers. A feed is dropped, the run triggered through the REST API;
the steward's screen in a real headless Chromium shows the changes; a signed-in user who is
not a steward gets 403 from the HITL endpoint, the steward's answer is taken; the Stage I
worker is killed with SIGKILL while a Stage I task runs and a new one takes over; the run
succeeds, the new version and its facts are read back through the MLflow server's REST API,
and no SQLite file appears anywhere.
"""

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from selenium.webdriver.common.by import By

from editing.hparams import EditHParams
from tests.servers import compose_command, compose_environment, free_port, wait_for

PROJECT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NAME = "freshen-celery"
FAST = dict(steps=12, noise_images=1, dest_steps=8)
LENIENT_SMALL_GATE = dict(efficacy_min=0.0, specificity_drop_max=1.0, fid_increase_max=100.0,
                          base_specificity_min=0.0, base_fid_increase_max=100.0,
                          fact_seeds=1, probe_seeds=1, unrelated_probes=2, fid_seeds=0)


class Stack:
    def __init__(self, root: Path, env: dict):
        self.root, self.env, self.procs = root, env, {}

    def start(self, name: str, cmd: list[str], **env: str) -> None:
        log = open(self.root / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(cmd, env=self.env | env, stdout=log, stderr=subprocess.STDOUT,
                                            cwd=PROJECT, start_new_session=True)

    def worker(self, name: str, queues: str) -> None:
        """A Celery worker with compose's command, serving ``queues``, known to Airflow as ``name``."""
        cmd = compose_command("airflow-worker", queues=queues, concurrency="1")
        self.start(name, [*cmd, "--celery-hostname", f"{name}@%h"], FRESHEN_TEST_WORKER=name,
                   AIRFLOW__CORE__HOSTNAME_CALLABLE="tests.servers.worker_name")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(self.root.glob("*.log")))

    def stop(self) -> None:
        for name in list(self.procs):
            proc = self.procs[name]
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                self.kill(name)


@pytest.fixture(scope="module")
def stack(servers, tmp_path_factory):
    from cryptography.fernet import Fernet

    tmp = tmp_path_factory.mktemp("celery")
    home = tmp / "shared-home"
    home.mkdir()
    port = free_port()
    EditHParams.preset("toyworld", **FAST).save(tmp / "hp.json")
    (tmp / "gate.json").write_text(json.dumps(LENIENT_SMALL_GATE))
    passwords = {"dana": secrets.token_urlsafe(12), "eve": secrets.token_urlsafe(12)}
    (tmp / "passwords.json").write_text(json.dumps(passwords))
    pg = servers.database_url("airflow")
    deployment = compose_environment({
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg,
        "AIRFLOW__CELERY__BROKER_URL": servers.redis_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + pg,
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        # two signed-in users, both admins of Airflow; only dana is a steward
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "dana:admin,eve:admin",
        "FRESHEN_STEWARDS": "dana",
        "FRESHEN_HOME": str(home),
        "FRESHEN_LEDGER_URL": servers.create_database("freshen_celery"),
        "FRESHEN_TRACKING_URI": servers.tracking_uri,
        "FRESHEN_FEED_ASSET": (home / "drop").as_uri(),
        "FRESHEN_REFRESH_CRON": "none",  # only the runs the test triggers
    }, drop=("FRESHEN_MODEL", "FRESHEN_NER_MODEL", "FRESHEN_CLIP_JUDGE", "FRESHEN_CAPTIONS"))  # ToyWorld's
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("FRESHEN_", "MLFLOW_", "AIRFLOW"))}
    env = inherited | deployment | {
        # what the image's Dockerfile sets, and this machine's paths
        "AIRFLOW_HOME": str(tmp / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp / "passwords.json"),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PYTHONPATH": str(PROJECT),
        # a small machine and a short test: one API worker, quick heartbeats and retries
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        "FRESHEN_STAGE1_RETRY_DELAY_SECONDS": "5",
        # the servers are shared with tests/test_stack.py: a registered model and a ledger of its own
        "FRESHEN_REGISTRY_NAME": NAME,
        "FRESHEN_HPARAMS": str(tmp / "hp.json"),
        "FRESHEN_GATE": str(tmp / "gate.json"),
        "FRESHEN_NUM_INFERENCE_STEPS": "8",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    s = Stack(tmp, env)
    # airflow-init: migrate, the gpu pool, the base registered (compose's command as is)
    init = subprocess.run(compose_command("airflow-init"), env=env, cwd=PROJECT, capture_output=True, text=True,
                          timeout=900)
    assert init.returncode == 0, init.stdout[-2000:] + init.stderr[-3000:]
    try:
        s.start("api", compose_command("airflow-api", port=str(port)))
        for service in ("scheduler", "dag-processor", "triggerer"):
            s.start(service, compose_command(f"airflow-{service}"))
        s.worker("gpu", "gpu")
        s.worker("cpu", "default")
        base = f"http://127.0.0.1:{port}"
        wait("the API server", lambda: requests.get(f"{base}/api/v2/monitor/health", timeout=5).ok, 300, s)
        sessions = {}
        for user, password in passwords.items():
            got = requests.post(f"{base}/auth/token", json={"username": user, "password": password}, timeout=10)
            assert got.ok, got.text
            sessions[user] = requests.Session()
            sessions[user].headers["Authorization"] = f"Bearer {got.json()['access_token']}"
        yield {"stack": s, "base": base, "api": f"{base}/api/v2", "dana": sessions["dana"], "eve": sessions["eve"],
               "home": home, "airflow_home": tmp / "airflow", "tmp": tmp}
    finally:
        s.stop()


def wait(what: str, check, timeout: float, stack: Stack, every: float = 2.0):
    return wait_for(check, what, timeout, log=stack.tail, every=every)


def test_a_refresh_on_celery_workers_survives_a_killed_stage1_worker(stack, servers, world, browser):
    s, api, dana, eve, home = stack["stack"], stack["api"], stack["dana"], stack["eve"], stack["home"]
    facts = [f for f in world.facts if f.relation == "flag"][24:26]
    keys = ["wire:w0", "wire:w1"]
    (home / "drop").mkdir(exist_ok=True)
    (home / "drop" / "wire.jsonl").write_text("".join(
        json.dumps({"id": f"w{i}", "source": f.prompt, "target": t}) + "\n"
        for i, (f, t) in enumerate(zip(facts, ("a red ring", "a blue cross"), strict=True))))

    wait("the DAG to be parsed", lambda: dana.get(f"{api}/dags/knowledge_refresh", timeout=10).ok, 300, s)
    dana.patch(f"{api}/dags/knowledge_refresh", json={"is_paused": False}, timeout=10).raise_for_status()
    r = dana.post(f"{api}/dags/knowledge_refresh/dagRuns", json={"logical_date": None}, timeout=10)
    assert r.ok, r.text
    run = f"{api}/dags/knowledge_refresh/dagRuns/{r.json()['dag_run_id']}"
    ti = f"{run}/taskInstances/steward_approval"
    wait("the approval to wait for a steward",
         lambda: dana.get(ti, timeout=10).json().get("state") == "awaiting_input", 600, s)
    # the steward's screen, in a real browser signed in as dana: the changes' sources are there
    browser.get(f"{stack['base']}/api/v2/monitor/health")
    browser.add_cookie({"name": "_token", "value": dana.headers["Authorization"].removeprefix("Bearer "), "path": "/"})
    browser.get(f"{stack['base']}/dags/knowledge_refresh/runs/{run.rsplit('/', 1)[1]}/tasks/steward_approval/"
                "required_actions")
    wait("the approval form in the browser",
         lambda: all(f.prompt in browser.find_element(By.TAG_NAME, "body").text for f in facts), 120, s)
    browser.save_screenshot(str(stack["tmp"] / "steward_screen.png"))
    time.sleep(10)  # see tests/test_airflow_standalone.py: a steward does not answer in the same second
    answer = {"chosen_options": keys, "params_input": {}}
    refused = eve.patch(f"{ti}/-1/hitlDetails", json=answer, timeout=10)
    assert refused.status_code == 403, refused.text  # signed in, an admin even, but not a steward
    r = dana.patch(f"{ti}/-1/hitlDetails", json=answer, timeout=10)
    assert r.ok, r.text

    def tis() -> list[dict]:
        return dana.get(f"{run}/taskInstances", timeout=10).json()["task_instances"]

    # a Stage I task running on the gpu worker: the worker and its task processes are killed
    running = wait("a Stage I task to run", lambda: [t for t in tis() if t["task_id"] == "stage1"
                                                     and t["state"] == "running" and t["hostname"] == "gpu"], 600, s,
                   every=0.5)
    s.kill("gpu")
    s.worker("gpu-2", "gpu")

    def done():
        state = dana.get(run, timeout=10).json()["state"]
        return state if state in ("success", "failed") else None

    assert wait("the run to finish", done, 1200, s) == "success", s.tail()
    by_task = {}
    for t in tis():
        by_task.setdefault(t["task_id"], []).append(t)
    stage1 = by_task["stage1"]
    assert len(stage1) == 2 and {t["state"] for t in stage1} == {"success"}
    assert {t["queue"] for t in stage1} == {"gpu"} and {t["hostname"] for t in stage1} <= {"gpu", "gpu-2"}
    killed = next(t for t in stage1 if t["map_index"] == running[0]["map_index"])
    assert killed["try_number"] >= 2 and killed["hostname"] == "gpu-2"  # retried on the new worker
    for task in ("plan", "stage2", "gate"):
        (t,) = by_task[task]
        assert (t["state"], t["queue"], t["hostname"]) == ("success", "default", "cpu"), t

    # the new champion and its facts, from the MLflow server's REST API; one version per batch
    mlflow = f"{servers.tracking_uri}/api/2.0"
    mv = requests.get(f"{mlflow}/mlflow/registered-models/alias", params={"name": NAME, "alias": "champion"},
                      timeout=30).json()["model_version"]
    assert mv["version"] == "2" and {"key": "freshen.gate", "value": "passed"} in mv["tags"]
    versions = requests.get(f"{mlflow}/mlflow/model-versions/search", params={"filter": f"name='{NAME}'"},
                            timeout=30).json()["model_versions"]
    assert sorted(int(v["version"]) for v in versions) == [1, 2]
    path = requests.get(f"{mlflow}/mlflow/runs/get", params={"run_id": mv["run_id"]},
                        timeout=30).json()["run"]["info"]["artifact_uri"].removeprefix("mlflow-artifacts:/")
    manifest = requests.get(f"{mlflow}/mlflow-artifacts/artifacts/{path}/manifest.json", timeout=30).json()
    assert sorted(f["key"] for f in manifest["facts"]) == keys
    assert {f["approved_by"] for f in manifest["facts"]} == {"dana"}
    # Postgres everywhere: no SQLite file in the shared home or in Airflow's home
    assert [p for root in (home, stack["airflow_home"]) for p in root.rglob("*")
            if p.suffix in (".db", ".sqlite", ".sqlite3")] == []
