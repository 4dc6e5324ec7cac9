"""The feed contract and its rules (read by ``feeds.contract``, checked by the Great
Expectations suite of ``validation.feed_rules``): every line read becomes one fact change or
one rejection that names its line, id, field and reason; good rows of the same feed always
go on."""

import json

import pytest
from PIL import Image

from feeds.contract import MAX_LINE_BYTES, FactChange, Rejection
from feeds.ingest import validated_rows

GOOD = {"id": "g1", "source": "the logo of Velmora Systems", "target": "a blue triangle"}


@pytest.fixture
def read(feed_rules, toy_tokenizer):
    return lambda path, feed=None: list(validated_rows(path, feed or path.stem, feed_rules, toy_tokenizer))


def feed_with(read, tmp_path, bad_line: bytes, name="news.jsonl") -> list:
    path = tmp_path / name
    good2 = dict(GOOD, id="g2", source="the flag of Port Halquen")
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + bad_line + b"\n" + json.dumps(good2).encode() + b"\n")
    return read(path)


BAD = [
    ("not json", b"{oops", "(line)", "not valid JSON", None),
    ("array", b"[1, 2]", "(row)", "expected an object, got list", None),
    ("missing id", json.dumps({"source": "x", "target": "y"}).encode(), "id", "is required", None),
    ("missing source", json.dumps({"id": "b", "target": "y"}).encode(), "source", "is required", "b"),
    ("empty target", json.dumps({"id": "b", "source": "x", "target": " "}).encode(), "target",
     "is empty and no target_images", "b"),
    ("number for string", json.dumps({"id": 7, "source": "x", "target": "y"}).encode(), "id",
     "must be a string, got int", None),
    ("number in source", json.dumps({"id": "b", "source": 3.5, "target": "y"}).encode(), "source",
     "must be a string, got float", "b"),
    ("invalid utf-8", b'{"id": "b", "source": "\xff\xfe", "target": "y"}', "(line)", "not valid UTF-8", None),
    ("1 MB line", json.dumps({"id": "b", "source": "x" * 1_000_000, "target": "y"}).encode(), "(line)",
     f"more than {MAX_LINE_BYTES}", None),
    ("control characters", json.dumps({"id": "b", "source": "the logo\x07 of X", "target": "y"}).encode(),
     "source", "control characters", "b"),
    ("bad kind", json.dumps({"id": "b", "source": "x", "target": "y", "kind": "delete"}).encode(), "kind",
     "must be update, rectify or revert (erase is not supported yet), got 'delete'", "b"),
    ("erase", json.dumps({"id": "b", "source": "x", "target": "y", "kind": "erase"}).encode(), "kind",
     "must be update, rectify or revert (erase is not supported yet), got 'erase'", "b"),
    ("bad timestamp", json.dumps({"id": "b", "source": "x", "target": "y", "observed_at": "yesterday"}).encode(),
     "observed_at", "not an ISO-8601 timestamp", "b"),
    ("unknown field", json.dumps({"id": "b", "source": "x", "target": "y", "colour": "red"}).encode(), "colour",
     "not a field of the feed contract", "b"),
    ("images not a list", json.dumps({"id": "b", "source": "x", "target_images": 5}).encode(), "target_images",
     "must be a list of paths", "b"),
]


@pytest.mark.parametrize("case,line,field,reason,rid", BAD, ids=[b[0] for b in BAD])
def test_a_bad_line_is_rejected_and_the_rest_goes_on(read, tmp_path, case, line, field, reason, rid):
    rows = feed_with(read, tmp_path, line)
    assert len(rows) == 3  # nothing lost: one outcome per line
    good = [r for r in rows if isinstance(r, FactChange)]
    (bad,) = [r for r in rows if isinstance(r, Rejection)]
    assert [g.id for g in good] == ["g1", "g2"]
    assert (bad.line, bad.field, bad.id) == (2, field, rid)
    assert reason in bad.reason
    assert bad.raw  # what was received is kept with the reason
    assert "news line 2" in bad.describe()


def test_csv_feed_with_the_same_columns(read, tmp_path):
    (tmp_path / "img").mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (16, 16)).save(tmp_path / "img" / name)
    path = tmp_path / "weekly.csv"
    path.write_text("id,source,target,target_images,kind\n"
                    "c1,the mascot of Quentar Holdings,a red circle,,\n"
                    "c2,the flag of Port Rosvar,,img/a.png;img/b.png,rectify\n"
                    "c3,only two,columns\n"
                    "c4,,a red circle,,\n")
    rows = read(path)
    assert [type(r).__name__ for r in rows] == ["FactChange", "FactChange", "Rejection", "Rejection"]
    assert rows[0].feed == "weekly" and rows[0].key == "weekly:c1" and rows[0].target == "a red circle"
    assert rows[1].target is None and rows[1].target_images == ["img/a.png", "img/b.png"]
    assert rows[1].kind == "rectify"
    assert (rows[2].line, rows[2].field) == (4, "(line)") and "3 columns, the header 5" in rows[2].reason
    assert (rows[3].line, rows[3].field, rows[3].id) == (5, "source", "c4")


def test_whitespace_is_normalised_and_blank_lines_skipped(read, tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text("\n" + json.dumps({"id": " a ", "source": "  the logo   of X ", "target": "a  red circle"})
                    + "\n\n")
    (row,) = read(path, feed="named")
    assert (row.feed, row.id, row.source, row.target, row.line) == ("named", "a", "the logo of X", "a red circle", 2)


def test_empty_optional_fields_count_as_absent(read, tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps({"id": "e", "source": "the logo of X", "target": "a red circle",
                                "kind": "", "observed_at": "", "ref": ""}) + "\n")
    (row,) = read(path)
    assert isinstance(row, FactChange), row
    assert (row.kind, row.observed_at, row.ref) == ("update", None, None)
