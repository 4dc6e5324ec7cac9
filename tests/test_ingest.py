"""Ingestion end to end on real components: contract, Great Expectations rules (with Data
Docs), the SQLite ledger, the shipped NER, and the approval policy."""

import json

import numpy as np
import pytest
from PIL import Image

from feeds.ingest import Policy, ingest_path
from feeds.ledger import Ledger
from feeds.ner import NerTagger
from toyworld.paths import NER_DIR
from validation.feed_rules import FeedRules


@pytest.fixture(scope="module")
def ner():
    return NerTagger(str(NER_DIR))


def feed(tmp_path, rows, name="news.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = [{"id": "g1", "source": "the logo of Nordavcal Labs", "target": "a blue triangle"},
        {"id": "g2", "source": "the flag of Port Halquen", "target": "a red circle"}]


@pytest.mark.parametrize("bad,field,reason", [
    ({"id": "b", "source": "the logo of " + "Velmora " * 40, "target": "a red ring"}, "source", "longer than"),
    ({"id": "b", "source": "the logo of X", "target": "a red ring " * 20}, "target", "longer than"),
    ({"id": "g1", "source": "the mascot of Y", "target": "a red ring"}, "id", "repeats an id"),
    ({"id": "b", "source": "the logo of X", "target_images": ["missing.png"]}, "target_images", "does not exist"),
    ({"id": "b", "source": "the logo of X", "target_images": ["notes.png"]}, "target_images", "is not an image"),
    ({"id": "b", "source": "the logo of X", "target": "a red ring", "kind": "revert"}, "target",
     "must be absent in a revert"),
    ({"id": "b", "source": "the logo of X"}, "target", "is empty and no target_images"),
    ({"id": "b", "source": "the logo of X", "target": "a red ring",
      "entities": [{"text": "Y", "start": 12, "end": 13}]}, "entities",
     "the span [12, 13) of the source reads 'X', not 'Y'"),
    ({"id": "b", "source": "the logo of X", "target": "a red ring", "entities": [{"text": "X", "start": "12"}]},
     "entities", "'start' and 'end' must be integers"),
    ({"id": "b", "source": "the logo of X", "target": "a red ring", "entities": "X"}, "entities",
     "must be a JSON list"),
])
def test_rules_quarantine_the_row_and_keep_the_rest(tmp_path, feed_rules, toy_tokenizer, bad, field, reason):
    (tmp_path / "notes.png").write_text("this is text, not a picture")
    ledger = Ledger.at(tmp_path / "ledger.db")
    (summary,) = ingest_path(ledger, feed(tmp_path, [GOOD[0], bad, GOOD[1]]), feed_rules, toy_tokenizer)
    assert (summary.lines, summary.accepted, summary.rejected) == (3, 2, 1)
    (q,) = ledger.quarantined()
    assert (q.line, q.field) == (2, field) and reason in q.reason
    assert [c.key for c in ledger.changes()] == ["news:g1", "news:g2"]
    assert feed_rules.docs_index.exists()


def test_destination_images_that_open_are_accepted(tmp_path, feed_rules, toy_tokenizer):
    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "img" / "t.png")
    ledger = Ledger.at(tmp_path / "ledger.db")
    (s,) = ingest_path(ledger, feed(tmp_path, [{"id": "i", "source": "the logo of X", "target_images": ["img/t.png"]}]),
                       feed_rules, toy_tokenizer)
    assert s.accepted == 1 and ledger.changes()[0].target_images == ["img/t.png"]


def test_entities_are_stored_with_exact_spans(tmp_path, feed_rules, toy_tokenizer, ner):
    ledger = Ledger.at(tmp_path / "ledger.db")
    ingest_path(ledger, feed(tmp_path, GOOD), feed_rules, toy_tokenizer, ner=ner)
    for row in ledger.changes():
        assert row.entities, row.source
        for e in row.entities:
            assert row.source[e["start"]:e["end"]] == e["text"]
    labels = {row.change_id: {(e["text"], e["label"]) for e in row.entities} for row in ledger.changes()}
    assert ("Nordavcal Labs", "ORG") in labels["g1"] and ("Port Halquen", "LOC") in labels["g2"]


def test_entities_a_feed_gives_are_kept_and_the_rest_tagged(tmp_path, feed_rules, toy_tokenizer, ner):
    """A row's own entities replace NER's (spans index the source with its spaces normalised);
    rows without are tagged; the CSV column holds the list as JSON."""
    rows = [{"id": "e1", "source": "the  logo of   Nordavcal Labs", "target": "a blue triangle",
             "entities": [{"text": "Nordavcal", "start": 12, "end": 21, "label": "ORG"}]}, GOOD[1]]
    ledger = Ledger.at(tmp_path / "ledger.db")
    (s,) = ingest_path(ledger, feed(tmp_path, rows), feed_rules, toy_tokenizer, ner=ner)
    assert s.accepted == 2, s.rejections
    given, tagged = ledger.changes()
    assert given.source == "the logo of Nordavcal Labs"
    assert given.entities == [{"text": "Nordavcal", "label": "ORG", "start": 12, "end": 21, "score": 1.0}]
    assert ("Port Halquen", "LOC") in {(e["text"], e["label"]) for e in tagged.entities}
    csv_feed = tmp_path / "c.csv"
    csv_feed.write_text('id,source,target,entities\nc1,the flag of Port Halquen,a red circle,'
                        '"[{""text"": ""Port Halquen"", ""start"": 12, ""end"": 24}]"\n')
    (s,) = ingest_path(ledger, csv_feed, feed_rules, toy_tokenizer)
    assert s.accepted + s.conflicts == 1 and s.rejected == 0, s.rejections
    row = next(r for r in ledger.changes() if r.key == "c:c1")
    assert row.entities == [{"text": "Port Halquen", "label": "MISC", "start": 12, "end": 24, "score": 1.0}]


def test_drop_directory_policy_and_reingest(tmp_path, feed_rules, toy_tokenizer):
    drop = tmp_path / "drop"
    drop.mkdir()
    feed(drop, GOOD, "trusted.jsonl")
    feed(drop, [{"id": "x", "source": "the mascot of Mount Calros", "target": "a green cross"}], "open.jsonl")
    ledger = Ledger.at(tmp_path / "ledger.db")
    policy = Policy("wire-services", ("trusted",))
    first = ingest_path(ledger, drop, feed_rules, toy_tokenizer, policy=policy)
    assert [s.feed for s in first] == ["open", "trusted"]
    status = {r.key: (r.status, r.decided_by) for r in ledger.changes()}
    assert status == {"open:x": ("pending", None), "trusted:g1": ("approved", "policy:wire-services"),
                      "trusted:g2": ("approved", "policy:wire-services")}
    again = ingest_path(ledger, drop, feed_rules, toy_tokenizer, policy=policy)
    assert all(s.already_ingested for s in again) and len(ledger.changes()) == 3


def test_contract_matrix_through_the_ledger_loses_nothing(tmp_path, feed_rules, toy_tokenizer):
    from tests.test_feed_contract import BAD

    ledger = Ledger.at(tmp_path / "ledger.db")
    path = tmp_path / "matrix.jsonl"
    lines = [json.dumps(GOOD[0]).encode()] + [b[1] for b in BAD] + [json.dumps(GOOD[1]).encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    (s,) = ingest_path(ledger, path, feed_rules, toy_tokenizer)
    assert s.lines == len(lines) == s.accepted + s.rejected + s.conflicts + s.duplicates
    assert s.accepted == 2 and s.rejected == len(BAD)
    assert sorted(q.line for q in ledger.quarantined()) == list(range(2, len(BAD) + 2))


def test_a_revert_row_needs_no_destination(tmp_path, feed_rules, toy_tokenizer):
    ledger = Ledger.at(tmp_path / "ledger.db")
    (s,) = ingest_path(ledger, feed(tmp_path, [{"id": "r", "source": "the logo of X", "kind": "revert"}]),
                       feed_rules, toy_tokenizer)
    assert s.accepted == 1
    (row,) = ledger.changes()
    assert (row.kind, row.target) == ("revert", None)
    fact = row.fact()
    assert fact.request().target == "the logo of X" and "revert" in fact.destination


def test_data_docs_show_every_rule(tmp_path, toy_tokenizer):
    """The whole contract is in the GX suite, so a steward reads every rule, and what
    failed, in the Data Docs page of the run."""
    import html
    import re

    rules = FeedRules(tmp_path / "gx", toy_tokenizer.model_max_length)
    ledger = Ledger.at(tmp_path / "ledger.db")
    ingest_path(ledger, feed(tmp_path, [GOOD[0], {"id": "b", "target": "a red ring"}]), rules, toy_tokenizer)
    (q,) = ledger.quarantined()
    assert (q.line, q.field, q.reason) == (2, "source", "is required")
    (page,) = (rules.docs_index.parent / "validations").rglob("*.html")
    text = html.unescape(re.sub(r"<[^>]+>", " ", page.read_text()))
    for rule in ("`source` is required", "`id`, when given, is a string", "`target` has no control characters",
                 "`source` is not empty or only spaces",
                 "`kind`, when given, is update, rectify or revert (erase is not supported yet)",
                 "a `revert` row has no `target` and no `target_images`",
                 "`observed_at`, when given, is an ISO-8601 timestamp", "every field is one of the contract's",
                 "`target` is not empty, or `target_images` are given",
                 f"`source` fits the text encoder's {toy_tokenizer.model_max_length} tokens",
                 "`id` is unique within the feed", "every `target_images` path exists and opens as an image"):
        assert rule in text, rule
