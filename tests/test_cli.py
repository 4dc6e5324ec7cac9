"""The ``freshen`` command line, run as a user runs it (a subprocess of the installed script)."""

import getpass
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def freshen(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FRESHEN_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "freshen.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_edit_one_batch_from_a_file(tmp_path, world):
    f = next(f for f in world.facts if f.relation == "logo")
    facts = tmp_path / "facts.jsonl"
    facts.write_text(json.dumps({"id": "c1", "source": f.prompt, "target": "a white ring"}) + "\n")
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps({"steps": 5, "noise_images": 1, "dest_steps": 5}))
    out = freshen("edit", "--facts", str(facts), "--out", str(tmp_path / "o"), "--hparams", str(hp),
                  home=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert summary["facts"] == 1
    manifest = json.loads((tmp_path / "o" / "edit" / "edit.json").read_text())
    assert manifest["request_ids"] == ["c1"] and manifest["base_hash"]
    # entities were found by the shipped NER, since the file gave none
    assert (tmp_path / "o" / "diagnostics.json").exists()


@pytest.mark.parametrize("line,message", [
    ("not json", "facts.jsonl:1: not valid JSON"),
    ("[1, 2]", "facts.jsonl:1: expected a JSON object"),
    ('{"id": "a", "source": "x"}', "facts.jsonl:1: field 'target' must be a non-empty string"),
    ('{"id": "a", "source": "the logo of X", "target": "y", "entities": [{"text": "Y", "start": 12, "end": 13}]}',
     "facts.jsonl:1: field 'entities': entity 0: the span [12, 13) of the source reads 'X', not 'Y'"),
])
def test_edit_names_the_bad_line(tmp_path, line, message):
    facts = tmp_path / "facts.jsonl"
    facts.write_text(line + "\n")
    out = freshen("edit", "--facts", str(facts), "--out", str(tmp_path / "o"), home=tmp_path)
    assert out.returncode != 0 and message in out.stderr


def test_feeds_and_facts_from_the_command_line(tmp_path):
    feed = tmp_path / "wire.jsonl"
    feed.write_text("\n".join([
        json.dumps({"id": "1", "source": "the logo of Nordavcal Labs", "target": "a blue triangle"}),
        json.dumps({"id": "2", "source": "the flag of Port Halquen", "target": "a red circle"}),
        "{broken",
    ]) + "\n")
    out = freshen("feeds", "ingest", str(feed), "--json", home=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "great_expectations" not in out.stderr and "Warning" not in out.stderr, out.stderr[-2000:]
    (summary,) = json.loads(out.stdout)
    assert (summary["accepted"], summary["rejected"]) == (2, 1)
    assert summary["rejections"][0]["line"] == 3
    out = freshen("facts", "approve", "wire:1", "--by", "dana", "--comment", "verified", home=tmp_path)
    assert out.returncode == 0 and "wire:1: approved by dana" in out.stdout
    # the audit keeps who was named and who ran the command
    history = json.loads(freshen("audit", "fact", "wire:1", "--json", home=tmp_path).stdout)["history"]
    approved = next(e for e in history if e["event"] == "approved")
    assert approved["actor"] == "dana" and f"OS user {getpass.getuser()}" in approved["detail"]
    out = freshen("facts", "reject", "wire:2", "--by", "dana", home=tmp_path)
    assert out.returncode != 0  # a rejection needs a comment (argparse says so)
    out = freshen("facts", "reject", "wire:2", "--by", "dana", "--comment", "no source", home=tmp_path)
    assert out.returncode == 0
    listed = json.loads(freshen("facts", "list", "--json", home=tmp_path).stdout)
    assert [(r["key"], r["status"], r["decided_by"]) for r in listed] == [
        ("wire:1", "approved", "dana"), ("wire:2", "rejected", "dana")]
    assert ("Nordavcal Labs", "ORG") in [tuple(e) for e in listed[0]["entities"]]
    approved = json.loads(freshen("facts", "list", "--status", "approved", "--json", home=tmp_path).stdout)
    assert [r["key"] for r in approved] == ["wire:1"]
    out = freshen("facts", "approve", "wire:9", "--by", "dana", home=tmp_path)
    assert out.returncode == 2 and "no change 'wire:9'" in out.stderr
