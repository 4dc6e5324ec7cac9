"""The feed contract: what one row of a feed may hold, and how a row becomes a fact change.

A feed is a JSON Lines file (one object per line) or a CSV file with the same columns:

| column | type | required | meaning |
| --- | --- | --- | --- |
| id | string | yes | the change's id, unique within its feed |
| source | string | yes | the prompt whose meaning changes |
| target | string | unless target_images, or kind revert | the destination prompt |
| target_images | list of paths (CSV: separated by ``;``) | no | destination images, relative to the feed file |
| observed_at | ISO-8601 timestamp | no | when the change was observed |
| ref | string | no | where the change comes from |
| kind | ``update`` (default), ``rectify`` (a wrong depiction corrected: the same edit) or ``revert`` | no | |
| entities | list of ``{"text", "start", "end"[, "label"]}`` (CSV: as JSON) | no | the source's entities |

``entities`` name what the edit must protect (the entity alone keeps its picture, Eq. 4 of
004_...) when the feed knows them, as a benchmark does (``freshen feeds import``): each span
must read its ``text`` in the source exactly (the source with runs of white space as one
space, as the change carries it); ``label`` defaults to ``MISC``. A change
with entities keeps them; the NER model tags only the changes that come without.

A ``revert`` row takes the edit of its source back out of the model: the source returns to what
the unedited base model draws for it (no ``target``, no ``target_images``). It is a change like
any other: approved, applied by the next refresh, gated, audited; ``freshen facts revert
FEED:ID`` writes one for a change live in the champion.

``erase`` (EMCID's erasure: the source should stop depicting its concept) is not supported
yet: a row with it is rejected with that reason, so nothing is edited it did not ask for.

Reading (``read_records``) streams a file a line at a time and only decides what must be
decided before a row has fields at all: a line that is not UTF-8, longer than
``MAX_LINE_BYTES``, not JSON, not an object, or a CSV line with the wrong number of columns
becomes a ``Rejection`` here. Every rule about the fields themselves (required fields,
types, non-empty strings, control characters, ``kind``, timestamps, unknown fields, token
limits, unique ids, images) is an expectation of the Great Expectations suite in
``validation.feed_rules``, so the Data Docs show all of them. A record that meets them
becomes a ``FactChange`` (``to_change``). Nothing is dropped: every line read yields
exactly one ``FactChange`` or one ``Rejection`` naming its line, id (when it has one),
field and reason.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

KINDS = ("update", "rectify", "revert")
KINDS_TEXT = "update, rectify or revert (erase is not supported yet)"  # what a rejection of `kind` says
STRING_FIELDS = ("id", "source", "target", "ref", "kind", "observed_at")
KNOWN_FIELDS = (*STRING_FIELDS, "target_images", "entities")
ENTITY_LABEL = "MISC"  # an entity a feed gives without a label
MAX_LINE_BYTES = 64 * 1024  # a longer line is rejected without being parsed


@dataclass
class FactChange:
    feed: str
    id: str
    source: str
    target: str | None
    line: int
    target_images: list[str] = field(default_factory=list)
    observed_at: str | None = None
    ref: str | None = None
    kind: str = "update"
    entities: list[dict] = field(default_factory=list)  # given by the feed: text, label, start, end

    @property
    def key(self) -> str:
        """(feed, id) identifies a change for ever."""
        return f"{self.feed}:{self.id}"

    def content(self) -> dict:
        """What the change says (not where it sits): a re-send is compared on this."""
        said = {"source": self.source, "target": self.target, "target_images": self.target_images,
                "observed_at": self.observed_at, "ref": self.ref, "kind": self.kind}
        return {**said, "entities": self.entities} if self.entities else said


@dataclass
class Fact:
    """A fact change as the service carries it once approved: out of the ledger
    (``ChangeRow.fact()``), into a batch (``plan.json``), the engine (``request()``), a
    version's manifest and the audit. Stored as JSON with these field names (``to_json`` /
    ``from_json``); the ledger row and the engine's ``EditRequest`` stay their own classes, with
    this one conversion each."""

    key: str  # FEED:ID, with @REVISION after a re-send that changed it
    feed: str
    id: str
    source: str
    target: str | None
    target_images: list[str] = field(default_factory=list)  # absolute paths
    kind: str = "update"
    ref: str | None = None
    observed_at: str | None = None
    content_hash: str = ""
    entities: list[dict] = field(default_factory=list)  # text, label, start, end (and score)
    approved_by: str | None = None
    approved_at: str | None = None  # ISO-8601

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Fact:
        """From a stored fact (a plan, a manifest); keys this class does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def destination(self) -> str:
        """What the change aims at, in words (tables, grids, approval forms)."""
        if self.kind == "revert":
            return "(revert: what the unedited base draws)"
        return self.target or "; ".join(Path(p).name for p in self.target_images)

    @property
    def entity_texts(self) -> list[str]:
        return [e["text"] for e in self.entities]

    def request(self):
        """The engine's view: an ``EditRequest`` (destination images read from their files)."""
        import numpy as np
        from PIL import Image

        from editing.requests import EditRequest, Entity

        images = [np.asarray(Image.open(p).convert("RGB")) for p in self.target_images] or None
        # a revert aims at what the base draws for the source itself (Stage I takes the base's
        # own state there: refresh.stage1)
        target = self.source if self.kind == "revert" else self.target
        return EditRequest(self.key, self.source, target, target_images=images,
                           entities=[Entity(e["text"], e["label"], e["start"], e["end"], e.get("score", 1.0))
                                     for e in self.entities])


@dataclass
class Rejection:
    feed: str
    line: int
    field: str
    reason: str
    id: str | None = None
    raw: str = ""  # the line as received (cut to 2,000 characters), so nothing is lost

    def describe(self) -> str:
        who = f" (id {self.id!r})" if self.id else ""
        return f"{self.feed} line {self.line}{who}: field {self.field!r}: {self.reason}"


@dataclass
class Record:
    """One decoded row of a feed, not yet checked against the field rules."""

    feed: str
    line: int
    row: dict
    raw: str = ""  # the line as received (cut to 2,000 characters)

    @property
    def id(self) -> str | None:
        rid = self.row.get("id")
        return rid.strip() if isinstance(rid, str) and rid.strip() else None

    def reject(self, field: str, reason: str) -> Rejection:
        return Rejection(self.feed, self.line, field, reason, self.id, self.raw)


def target_images(value: object) -> list[str] | None:
    """The row's destination images as a list of paths (CSV: ``;``-separated), or None when
    the value is not a list of non-empty strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [p.strip() for p in value.split(";") if p.strip()]
    if isinstance(value, list) and all(isinstance(p, str) and p.strip() for p in value):
        return [p.strip() for p in value]
    return None


def normalised_source(source: str) -> str:
    """The source as a change carries it: runs of white space as one space, none at the ends."""
    return " ".join(source.split())


def entities(value: object, source: object) -> tuple[list[dict], str]:
    """The row's given entities (text, label, start, end, score 1.0) and '' when they are
    well formed and every span reads its text in ``source`` (normalised: ``normalised_source``);
    else what is wrong."""
    if value is None:
        return [], ""
    if isinstance(value, str):  # a CSV cell holds the list as JSON
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return [], "must be a JSON list of objects with text, start and end"
    if not isinstance(value, list):
        return [], f"must be a list of objects with text, start and end, got {type(value).__name__}"
    out = []
    for i, e in enumerate(value):
        if not isinstance(e, dict) or not isinstance(e.get("text"), str) or not e["text"].strip():
            return [], f"entity {i}: needs a non-empty string 'text'"
        start, end, label = e.get("start"), e.get("end"), e.get("label", ENTITY_LABEL)
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (start, end)):
            return [], f"entity {i} ({e['text']!r}): 'start' and 'end' must be integers"
        if not isinstance(label, str) or not label.strip():
            return [], f"entity {i} ({e['text']!r}): 'label' must be a non-empty string"
        unknown = sorted(set(e) - {"text", "start", "end", "label", "score"})
        if unknown:
            return [], f"entity {i} ({e['text']!r}): unknown keys {unknown} (known: text, start, end, label)"
        if not isinstance(source, str) or source[start:end] != e["text"] or not 0 <= start < end:
            seen = source[start:end] if isinstance(source, str) and 0 <= start < end else ""
            return [], f"entity {i}: the span [{start}, {end}) of the source reads {seen!r}, not {e['text']!r}"
        out.append({"text": e["text"], "label": label, "start": start, "end": end, "score": 1.0})
    return out, ""


def to_change(record: Record) -> FactChange:
    """The fact change a record that meets the rules of ``validation.feed_rules`` makes
    (whitespace normalised)."""
    row = record.row
    target = row.get("target")
    source = normalised_source(row["source"])
    return FactChange(feed=record.feed, id=row["id"].strip(), source=source,
                      target=" ".join(target.split()) if target and target.strip() else None,
                      line=record.line, target_images=target_images(row.get("target_images")) or [],
                      observed_at=row.get("observed_at") or None, ref=row.get("ref") or None,
                      kind=row.get("kind") or "update", entities=entities(row.get("entities"), source)[0])


def _record(feed: str, line: int, row: object, raw: str) -> Record | Rejection:
    raw = raw[:2000]
    if not isinstance(row, dict):
        return Rejection(feed, line, "(row)", f"expected an object, got {type(row).__name__}", raw=raw)
    return Record(feed, line, row, raw)


def read_records(path: Path, feed: str | None = None) -> Iterator[Record | Rejection]:
    """Every non-blank line of a feed file, in order, as a Record or a Rejection (streaming)."""
    path = Path(path)
    feed = feed or path.stem
    if path.suffix.lower() == ".csv":
        yield from _read_csv(path, feed)
    else:
        yield from _read_jsonl(path, feed)


def _decode(feed: str, n: int, data: bytes) -> str | Rejection:
    if len(data) > MAX_LINE_BYTES:
        return Rejection(feed, n, "(line)", f"is {len(data)} bytes, more than {MAX_LINE_BYTES}",
                         raw=data[:2000].decode("utf-8", "replace"))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(feed, n, "(line)", f"is not valid UTF-8 (byte {exc.start})",
                         raw=data[:2000].decode("utf-8", "replace"))


def _lines(fh, feed: str, first: int) -> Iterator[tuple[int, str | Rejection]]:
    """(line number, decoded text or the Rejection of an undecodable line); blank lines
    carry nothing and are skipped."""
    for n, data in enumerate(fh, first):
        text = _decode(feed, n, data.rstrip(b"\r\n"))
        if isinstance(text, Rejection) or text.strip():
            yield n, text


def _read_jsonl(path: Path, feed: str) -> Iterator[Record | Rejection]:
    with open(path, "rb") as fh:
        for n, text in _lines(fh, feed, 1):
            if isinstance(text, Rejection):
                yield text
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                yield Rejection(feed, n, "(line)", f"is not valid JSON ({exc.msg} at column {exc.colno})",
                                raw=text[:2000])
                continue
            yield _record(feed, n, row, text)


def _read_csv(path: Path, feed: str) -> Iterator[Record | Rejection]:
    """CSV rows one line each (a quoted field spanning lines is not supported)."""
    with open(path, "rb") as fh:
        header = _decode(feed, 1, fh.readline().rstrip(b"\r\n"))
        if isinstance(header, Rejection):
            yield header
            return
        columns = next(csv.reader([header]))
        for n, text in _lines(fh, feed, 2):
            if isinstance(text, Rejection):
                yield text
                continue
            values = next(csv.reader(io.StringIO(text)))
            if len(values) != len(columns):
                yield Rejection(feed, n, "(line)", f"has {len(values)} columns, the header {len(columns)}",
                                raw=text[:2000])
                continue
            row = {k: v for k, v in zip(columns, values, strict=True) if v != ""}
            yield _record(feed, n, row, text)
