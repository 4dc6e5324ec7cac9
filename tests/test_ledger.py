"""The fact ledger on a real SQLite database: idempotent ingestion, conflicts, decisions,
and the single door to editing."""

import json

import pytest

from common.errors import InvalidInput, NotFound
from feeds.ingest import validated_rows
from feeds.ledger import Ledger


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def ledger(tmp_path):
    return Ledger.at(tmp_path / "ledger.db")


@pytest.fixture
def ingest(feed_rules, toy_tokenizer):
    def run(ledger, path, feed=None):
        feed = feed or path.stem
        return ledger.ingest(validated_rows(path, feed, feed_rules, toy_tokenizer), path, feed)
    return run


def test_counts_add_up_and_reingest_is_a_no_op(ledger, tmp_path, ingest):
    f = write(tmp_path / "news.jsonl", [
        {"id": "a", "source": "the logo of Velmora Systems", "target": "a blue triangle"},
        "not json",
        {"id": "b", "source": "the flag of Port Halquen", "target": "a red circle"},
        {"id": "a", "source": "the mascot of Port Halquen", "target": "a red circle"},
    ])
    s = ingest(ledger, f)
    assert (s.lines, s.accepted, s.rejected, s.conflicts, s.duplicates) == (4, 2, 2, 0, 0)
    assert [(r["line"], r["field"]) for r in s.rejections] == [(2, "(line)"), (4, "id")]
    assert len(ledger.changes()) == 2 and len(ledger.quarantined()) == 2
    again = ingest(ledger, f)
    assert again.already_ingested and len(ledger.changes()) == 2 and len(ledger.quarantined()) == 2


def test_resent_id_with_other_content_is_a_conflict(ledger, tmp_path, ingest):
    first = {"id": "a", "source": "the logo of X Labs", "target": "a red ring"}
    ingest(ledger, write(tmp_path / "news.jsonl", [first]))
    s = ingest(ledger, write(tmp_path / "news2.jsonl", [{"id": "a", "source": "the logo of X Labs",
                                                          "target": "a blue ring"}]), feed="news")
    assert s.conflicts == 1
    rows = ledger.changes()
    assert [(r.key, r.status) for r in rows] == [("news:a", "conflict"), ("news:a@2", "conflict")]
    assert rows[0].target == "a red ring"  # not overwritten
    # the same content re-sent in another file (other bytes) is a duplicate, not a third revision
    s = ingest(ledger, write(tmp_path / "news3.jsonl", [{"target": "a blue ring", "id": "a",
                                                          "source": "the logo of X Labs"}]), feed="news")
    assert s.duplicates == 1 and len(ledger.changes()) == 2


def test_two_changes_of_one_source_conflict_until_a_steward_picks(ledger, tmp_path, ingest):
    ingest(ledger, write(tmp_path / "a.jsonl", [{"id": "1", "source": "The logo of  X Labs", "target": "a red ring"}]))
    ingest(ledger, write(tmp_path / "b.jsonl", [{"id": "9", "source": "the logo of x labs", "target": "a blue ring"}]))
    assert {r.status for r in ledger.changes()} == {"conflict"}
    assert ledger.approved_for_editing() == []
    ledger.decide(["b:9"], "approved", by="dana")
    status = {r.key: (r.status, r.decided_by) for r in ledger.changes()}
    assert status == {"a:1": ("rejected", "dana"), "b:9": ("approved", "dana")}
    assert [r.key for r in ledger.approved_for_editing()] == ["b:9"]
    assert [e.event for e in ledger.history("a:1")] == ["received", "conflict", "rejected"]


def test_decisions_need_a_name_and_rejections_a_reason(ledger, tmp_path, ingest):
    ingest(ledger, write(tmp_path / "f.jsonl", [{"id": "1", "source": "the flag of Y", "target": "a red ring"},
                                                {"id": "2", "source": "the flag of Z", "target": "a red ring"}]))
    # user errors (the CLI prints them and exits 2), of the built-in kinds a caller expects
    with pytest.raises(InvalidInput, match="--by"):
        ledger.decide(["f:1"], "approved", by=" ")
    with pytest.raises(ValueError, match="comment"):
        ledger.decide(["f:1"], "rejected", by="dana")
    with pytest.raises(NotFound, match="f:7") as missing:
        ledger.decide(["f:7"], "approved", by="dana")
    assert isinstance(missing.value, LookupError) and str(missing.value).startswith("no change 'f:7'")
    ledger.decide(["f:2"], "rejected", by="dana", comment="unsourced")
    assert ledger.approved_for_editing() == []  # pending and rejected changes never reach editing
    ledger.decide(["f:1"], "approved", by="dana", comment="checked")
    (row,) = ledger.approved_for_editing()
    assert (row.key, row.decided_by, row.comment) == ("f:1", "dana", "checked") and row.decided_at
    with pytest.raises(ValueError, match="rejected"):
        ledger.decide(["f:2"], "approved", by="dana")


def test_a_steward_answer_approves_the_chosen_and_rejects_the_rest(ledger, tmp_path, ingest):
    from freshen.approval import REJECT_ALL, record_answer
    from freshen.errors import FreshenError

    f = write(tmp_path / "desk.jsonl", [
        {"id": "a", "source": "the logo of Velmora Systems", "target": "a blue triangle"},
        {"id": "b", "source": "the flag of Port Halquen", "target": "a red circle"},
        {"id": "c", "source": "the mascot of Port Halquen", "target": "a red circle"},
    ])
    ingest(ledger, f)
    r = record_answer(ledger, ["desk:a", "desk:b"], {"desk:b"}, "dana", False, "run-1")
    assert (r["approved"], r["rejected"], r["by"]) == (["desk:b"], ["desk:a"], "dana")
    assert [ledger.change(k).status for k in ("desk:a", "desk:b", "desk:c")] == ["rejected", "approved", "pending"]
    assert ledger.change("desk:a").decided_by == "dana"
    assert "not approved by dana in Airflow run run-1" in ledger.history("desk:a")[-1].detail
    # "Reject all" left selected beside a change: refused, nothing decided
    with pytest.raises(FreshenError, match="can mean either"):
        record_answer(ledger, ["desk:c"], {REJECT_ALL, "desk:c"}, "erin", False, "run-2")
    assert ledger.change("desk:c").status == "pending"
    # silence: the default option rejects everything asked, in the timeout's name
    r = record_answer(ledger, ["desk:c"], {REJECT_ALL}, "steward", True, "run-2")
    assert r["approved"] == [] and ledger.change("desk:c").decided_by == "timeout"
    assert "no answer before the approval timeout" in ledger.history("desk:c")[-1].detail
