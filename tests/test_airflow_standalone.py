"""A real Airflow: ``airflow standalone`` on loopback with its own AIRFLOW_HOME and SQLite.

Airflow's simple auth manager with one steward, dana, and her password. Trigger the refresh
DAG through the REST API v2, wait for the steward task; in a real headless Chromium logged in
as dana, the approval form shows the changes and their previews' images (served by freshen's
Airflow plugin); she clears 'Reject all', picks two changes and responds; then a new
champion holds exactly the two approved facts, and the third is rejected in the ledger under
her name. Through the HITL REST endpoint: an answer mixing 'Reject all' and a change is
refused; no answer before the timeout rejects everything.
"""

import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from editing.hparams import EditHParams
from tests.servers import free_port, wait_for

PROJECT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("airflow")
    port = free_port()
    hp, gate = tmp / "hp.json", tmp / "gate.json"
    EditHParams.preset("toyworld", steps=8, noise_images=1, dest_steps=6).save(hp)
    gate.write_text(json.dumps({"efficacy_min": 0.0, "specificity_drop_max": 1.0, "fid_increase_max": 100.0,
                                "base_specificity_min": 0.0, "base_fid_increase_max": 100.0,
                                "fact_seeds": 1, "probe_seeds": 1, "unrelated_probes": 2, "fid_seeds": 0}))
    env = os.environ | {
        "AIRFLOW_HOME": str(tmp / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        # one steward with a password: Airflow's login stands in front of the API and the UI
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "dana:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp / "passwords.json"),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "FRESHEN_REFRESH_CRON": "none",  # only the runs the tests trigger
        "FRESHEN_APPROVAL_TIMEOUT_MINUTES": "0.75",
        "FRESHEN_HOME": str(tmp / "home"),
        "FRESHEN_HPARAMS": str(hp),
        "FRESHEN_GATE": str(gate),
        "FRESHEN_NUM_INFERENCE_STEPS": "8",
        "FRESHEN_FEED_ASSET": (tmp / "home" / "drop").as_uri(),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    password = secrets.token_urlsafe(12)
    (tmp / "passwords.json").write_text(json.dumps({"dana": password}))
    subprocess.run([BIN / "airflow", "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    subprocess.run([BIN / "airflow", "pools", "set", "gpu", "2", "Stage I"], env=env, check=True,
                   capture_output=True, timeout=120)
    log = open(tmp / "standalone.log", "w")
    proc = subprocess.Popen([BIN / "airflow", "standalone"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=tmp, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            try:
                if requests.get(f"{base}/api/v2/monitor/health", timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, (tmp / "standalone.log").read_text()[-3000:]
            assert time.time() < deadline, "airflow standalone did not come up in 4 minutes"
            time.sleep(3)
        got = requests.post(f"{base}/auth/token", json={"username": "dana", "password": password}, timeout=10)
        assert got.ok, got.text
        token = got.json()["access_token"]
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        yield {"base": base, "session": session, "env": env, "tmp": tmp, "log": tmp / "standalone.log",
               "token": token}
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()


def wait(what, check, timeout: float, log: Path):
    return wait_for(check, what, timeout, log=log, every=3)


def freshen(env, *args) -> str:
    p = subprocess.run([sys.executable, "-m", "freshen.cli", *args], env=env, cwd=PROJECT, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def drop_one(env, feed: str, change_id: str, source: str, target: str) -> None:
    """A feed file of one change in the drop directory the DAG ingests."""
    drop = Path(env["FRESHEN_HOME"]) / "drop"
    drop.mkdir(parents=True, exist_ok=True)
    (drop / f"{feed}.jsonl").write_text(json.dumps({"id": change_id, "source": source, "target": target}) + "\n")


def ledger_row(env, key: str) -> dict:
    return {r["key"]: r for r in json.loads(freshen(env, "facts", "list", "--json"))}[key]


def trigger(s, api: str) -> str:
    r = s.post(f"{api}/dags/knowledge_refresh/dagRuns", json={"logical_date": None}, timeout=10)
    assert r.ok, r.text
    return f"{api}/dags/knowledge_refresh/dagRuns/{r.json()['dag_run_id']}"


def finished(s, runs: str):
    state = s.get(runs, timeout=10).json()["state"]
    return state if state in ("success", "failed") else None


def test_steward_approves_two_of_three_on_the_form(airflow, world, browser):
    from freshen.approval import REJECT_ALL

    api, s, env, log = airflow["base"] + "/api/v2", airflow["session"], airflow["env"], airflow["log"]
    facts = [f for f in world.facts if f.relation == "flag"][20:23]
    drop = Path(env["FRESHEN_HOME"]) / "drop"
    drop.mkdir(parents=True, exist_ok=True)
    (drop / "desk.jsonl").write_text("".join(
        json.dumps({"id": f"s{i}", "source": f.prompt, "target": t, "ref": "https://desk.example/1"}) + "\n"
        for i, (f, t) in enumerate(zip(facts, ["a red ring", "a blue cross", "a green circle"], strict=True))))

    wait("the DAG to be parsed", lambda: s.get(f"{api}/dags/knowledge_refresh", timeout=10).ok, 240, log)
    s.patch(f"{api}/dags/knowledge_refresh", json={"is_paused": False}, timeout=10).raise_for_status()
    runs = trigger(s, api)

    def hitl_waiting():
        items = s.get(f"{runs}/hitlDetails", timeout=10).json().get("hitl_details", [])
        return items[0] if items else None

    detail = wait("the steward approval task", hitl_waiting, 480, log)
    # A steward answers in minutes, not in the second after the task paused: answering that
    # fast races Airflow's scheduler, which may then handle the executor's "workload finished"
    # event of the paused task after re-queuing it, and fail it (seen on a loaded machine).
    ti = f"{runs}/taskInstances/steward_approval"
    wait("the task to await input", lambda: s.get(ti, timeout=10).json().get("state") == "awaiting_input", 120, log)
    time.sleep(10)
    keys = [f"desk:s{i}" for i in range(3)]
    assert set(keys) <= set(detail["options"]) and "desk.example" in detail["body"]
    # each change's preview is in the form, its images served by the Airflow API server to
    # its logged-in users only
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", detail["body"])
    assert len(images) == 3 and all(u.startswith(f"{airflow['base']}/freshen/previews/") for u in images)
    assert s.get(images[0], timeout=10).headers["content-type"] == "image/png"
    assert requests.get(images[0], timeout=10).status_code in (401, 403)
    # the form itself, in a real browser logged in as dana (the session cookie Airflow's login
    # sets): the changes' table and their preview images load
    run_id = runs.rsplit("/", 1)[1]
    browser.get(f"{airflow['base']}/api/v2/monitor/health")
    browser.add_cookie({"name": "_token", "value": airflow["token"], "path": "/"})
    browser.get(f"{airflow['base']}/dags/knowledge_refresh/runs/{run_id}/tasks/steward_approval/required_actions")
    wait("the approval form in the browser", lambda: "desk:s2" in browser.find_element(By.TAG_NAME, "body").text,
         60, log)
    shown = wait("the preview images in the form", lambda: [
        i for i in browser.find_elements(By.TAG_NAME, "img") if "/freshen/previews/" in (i.get_attribute("src") or "")
        and browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)], 60, log)
    assert len(shown) == 3
    # the steward answers on the form: it opens with 'Reject all' (the timeout's default)
    # selected; she clears it, picks two changes and responds
    chosen = browser.find_element(By.CSS_SELECTOR, "input[name=element_chosen_options]")
    assert chosen.get_attribute("value") == REJECT_ALL
    # the Options field: the nearest element holding the hidden value, its text box and its clear button
    field = chosen.find_element(By.XPATH, "./ancestor::*[.//input[@type='text'] and "
                                          ".//*[@aria-label='Clear selected options']][1]")
    field.find_element(By.CSS_SELECTOR, "[aria-label='Clear selected options']").click()
    for key in keys[:2]:
        field.find_element(By.CSS_SELECTOR, "input[type=text]").send_keys(key, Keys.ENTER)
    picked = [i.get_attribute("value") for i in browser.find_elements(By.NAME, "element_chosen_options")]
    assert picked in (keys[:2], [",".join(keys[:2])]), picked
    browser.save_screenshot(str(airflow["tmp"] / "approval_form.png"))
    next(b for b in browser.find_elements(By.TAG_NAME, "button") if b.text == "Respond").click()

    assert wait("the run to finish", lambda: finished(s, runs), 900, log) == "success"
    answered = s.get(f"{runs}/taskInstances/steward_approval/-1/hitlDetails", timeout=10).json()
    responder = answered["responded_by_user"]["name"]
    assert answered["chosen_options"] == keys[:2] and responder
    versions = json.loads(freshen(env, "registry", "list", "--json"))
    champion = next(v for v in versions if "champion" in v["aliases"])
    audit = json.loads(freshen(env, "audit", "version", str(champion["version"]), "--json"))
    assert champion["version"] == 2 and [f["key"] for f in audit["facts"]] == keys[:2]
    listing = {r["key"]: r for r in json.loads(freshen(env, "facts", "list", "--json"))}
    assert listing[keys[2]]["status"] == "rejected"
    assert listing[keys[2]]["decided_by"] == responder
    assert listing[keys[0]]["decided_by"] == listing[keys[2]]["decided_by"]
    assert {listing[k]["status"] for k in keys[:2]} == {"applied"}


def test_an_answer_keeping_reject_all_beside_a_change_is_refused(airflow, world):
    """The form opens with "Reject all" selected (the timeout's default); a steward who adds a
    change and leaves it there has said both: the answer is refused, nothing is decided."""
    from freshen.approval import REJECT_ALL

    api, s, env, log = airflow["base"] + "/api/v2", airflow["session"], airflow["env"], airflow["log"]
    drop_one(env, "mixed", "m0", [f for f in world.facts if f.relation == "mascot"][31].prompt, "a red cross")
    before = json.loads(freshen(env, "registry", "list", "--json"))
    runs = trigger(s, api)
    ti = f"{runs}/taskInstances/steward_approval"
    wait("the task to await input", lambda: s.get(ti, timeout=10).json().get("state") == "awaiting_input", 240, log)
    time.sleep(10)  # see test_steward_approves_two_of_three_on_the_form
    r = s.patch(f"{ti}/-1/hitlDetails", json={"chosen_options": ["mixed:m0", REJECT_ALL], "params_input": {}},
                timeout=10)
    assert r.ok, r.text
    assert wait("the run to finish", lambda: finished(s, runs), 600, log) == "failed"
    assert s.get(ti, timeout=10).json()["state"] == "failed"
    row = ledger_row(env, "mixed:m0")
    assert row["status"] == "pending" and row["decided_by"] is None
    assert json.loads(freshen(env, "registry", "list", "--json")) == before


def test_no_answer_before_the_timeout_rejects(airflow, world):
    api, s, env, log = airflow["base"] + "/api/v2", airflow["session"], airflow["env"], airflow["log"]
    drop_one(env, "late", "t0", [f for f in world.facts if f.relation == "mascot"][30].prompt, "a red cross")
    before = json.loads(freshen(env, "registry", "list", "--json"))
    runs = trigger(s, api)
    assert wait("the run to finish", lambda: finished(s, runs), 600, log) == "success"
    row = ledger_row(env, "late:t0")
    assert row["status"] == "rejected" and row["decided_by"] == "timeout"
    assert "timeout" in row["comment"]
    assert json.loads(freshen(env, "registry", "list", "--json")) == before  # nothing landed
