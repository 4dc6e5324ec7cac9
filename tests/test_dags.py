"""The refresh DAG: it imports cleanly, and runs end to end with ``dag.test()`` (through
``freshen demo`` in a child process, so that its Airflow home is its own)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from editing.hparams import EditHParams

PROJECT = Path(__file__).resolve().parent.parent
FREQ = [sys.executable, "-m", "freshen.cli"]


def env_for(tmp_path: Path) -> dict:
    hp = tmp_path / "hp.json"
    EditHParams.preset("toyworld", steps=8, noise_images=1, dest_steps=6).save(hp)
    gate = tmp_path / "gate.json"
    gate.write_text(json.dumps({"efficacy_min": 0.0, "specificity_drop_max": 1.0, "fid_increase_max": 100.0,
                                "base_specificity_min": 0.0, "base_fid_increase_max": 100.0,
                                "fact_seeds": 1, "probe_seeds": 1, "unrelated_probes": 2, "fid_seeds": 0}))
    return os.environ | {"FRESHEN_HOME": str(tmp_path / "home"), "FRESHEN_HPARAMS": str(hp),
                         "FRESHEN_GATE": str(gate), "FRESHEN_NUM_INFERENCE_STEPS": "8",
                         "AIRFLOW_HOME": str(tmp_path / "home" / "airflow")}


def run(args: list[str], env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    p = subprocess.run(FREQ + args, env=env, cwd=PROJECT, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def test_dagbag_imports_in_a_clean_environment(tmp_path):
    code = ("from airflow.dag_processing.dagbag import DagBag; b = DagBag(dag_folder='dags'); "
            "d = b.dags['knowledge_refresh']; import json; print(json.dumps({'errors': list(b.import_errors), "
            "'tasks': sorted(t.task_id for t in d.tasks), 'max_active_runs': d.max_active_runs, "
            "'pool': d.get_task('stage1').pool, 'mapped': type(d.get_task('stage1')).__name__, "
            "'torch': __import__('sys').modules.get('torch') is not None}))")
    env = os.environ | {"AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=PROJECT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["errors"] == []
    assert r["tasks"] == ["audit", "fan_out", "gate", "ingest", "ner", "plan", "preview", "stage1", "stage2",
                          "steward_approval"]
    assert r["max_active_runs"] == 1 and r["pool"] == "gpu" and r["mapped"].endswith("MappedOperator")
    assert r["torch"] is False, "the DAG file must not import heavy libraries at top level"


def test_refresh_dag_end_to_end_lands_only_approved_facts(tmp_path, world):
    env = env_for(tmp_path)
    facts = [f for f in world.facts if f.relation == "logo"][10:13]
    feed = tmp_path / "desk.jsonl"
    targets = ["a red ring", "a blue cross", "a green circle"]
    feed.write_text("".join(json.dumps({"id": f"d{i}", "source": f.prompt, "target": t}) + "\n"
                            for i, (f, t) in enumerate(zip(facts, targets, strict=True))))
    run(["feeds", "ingest", str(feed)], env)
    run(["facts", "approve", "desk:d0", "desk:d1", "--by", "alice"], env)
    run(["facts", "reject", "desk:d2", "--by", "alice", "--comment", "source not confirmed"], env)
    no_policy = tmp_path / "policy.json"
    no_policy.write_text(json.dumps({"name": "none", "auto_approve": []}))
    p = run(["demo", "--feed", str(feed), "--policy", str(no_policy)], env)
    # a quiet console: no third-party warning or GX INFO line; a short account at the end
    noise = [line for line in p.stderr.splitlines() if "Warning" in line or "INFO great_expectations" in line]
    assert noise == [], noise[:5]
    account = p.stdout[p.stdout.index("freshen demo:"):].splitlines()
    assert len(account) <= 30 and "champion  v2 (lineage v1 -> v2)" in p.stdout, p.stdout[-3000:]
    assert "approved  2 changes, by alice" in p.stdout and "gate      PASSED against v1" in p.stdout
    summary = json.loads((tmp_path / "home" / "out" / "demo" / "summary.json").read_text())
    assert summary["state"] == "success"
    assert summary["tasks"]["stage1[0]"] == "success" and summary["tasks"]["stage1[1]"] == "success"
    audit = summary["audit"]
    assert audit["version"] == 2 and [f["key"] for f in audit["facts"]] == ["desk:d0", "desk:d1"]
    assert all(f["approved_by"] == "alice" for f in audit["facts"])
    assert audit["gate"]["status"] == "passed" and summary["champion"] == 2
    listing = json.loads(run(["facts", "list", "--json"], env).stdout)
    status = {r["key"]: (r["status"], r["decided_by"]) for r in listing}
    assert status["desk:d2"] == ("rejected", "alice")
    assert status["desk:d0"][0] == status["desk:d1"][0] == "applied"
    # a second run adds nothing
    again = json.loads(run(["registry", "list", "--json"], env).stdout)
    rerun = run(["demo", "--feed", str(feed), "--policy", str(no_policy)], env).stdout
    assert "version   none made" in rerun
    assert json.loads(run(["registry", "list", "--json"], env).stdout) == again


def test_failing_stage1_stops_the_run_before_registration(tmp_path, world):
    """A destination image that vanished after validation: Stage I fails, is retried, fails
    again; nothing is registered and the change stays approved for the next run."""
    from PIL import Image

    env = env_for(tmp_path)
    f = [f for f in world.facts if f.relation == "logo"][15]
    Image.new("RGB", (16, 16), (200, 20, 20)).save(tmp_path / "red.png")
    feed = tmp_path / "pics.jsonl"
    feed.write_text(json.dumps({"id": "p0", "source": f.prompt, "target_images": ["red.png"]}) + "\n")
    run(["feeds", "ingest", str(feed)], env)
    run(["facts", "approve", "pics:p0", "--by", "alice"], env)
    (tmp_path / "red.png").unlink()
    (tmp_path / "none.json").write_text(json.dumps({"name": "none", "auto_approve": []}))
    p = subprocess.run(FREQ + ["demo", "--feed", str(feed), "--policy", str(tmp_path / "none.json")],
                       env=env | {"FRESHEN_STAGE1_RETRY_DELAY_SECONDS": "1"}, cwd=PROJECT,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode != 0 and "stage1" in p.stderr and "failed" in p.stderr
    assert [v["version"] for v in json.loads(run(["registry", "list", "--json"], env).stdout)] == [1]
    listing = {r["key"]: r for r in json.loads(run(["facts", "list", "--json"], env).stdout)}
    assert listing["pics:p0"]["status"] == "approved"
