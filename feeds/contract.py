"""The feed contract: what one row of a feed may hold, and how a row becomes a fact change.

A feed is a JSON Lines file (one object per line) or a CSV file with the same columns:

| column | type | required | meaning |
| --- | --- | --- | --- |
| id | string | yes | the change's id, unique within its feed |
| source | string | yes | the prompt whose meaning changes |
| target | string | unless target_images | the destination prompt |
| target_images | list of paths (CSV: separated by ``;``) | no | destination images, relative to the feed file |
| observed_at | ISO-8601 timestamp | no | when the change was observed |
| ref | string | no | where the change comes from |
| kind | ``update`` (default), ``erase``, ``rectify`` | no | |

Rows are read one at a time (``read_rows``), so a feed of any size streams. A row that
breaks the contract becomes a ``Rejection`` naming its line, id (when it has one), field
and reason; the other rows go on. Nothing is dropped: every line read yields exactly one
``FactChange`` or one ``Rejection``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

KINDS = ("update", "erase", "rectify")
STRING_FIELDS = ("id", "source", "target", "ref", "kind", "observed_at")
KNOWN_FIELDS = (*STRING_FIELDS, "target_images")
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

    @property
    def key(self) -> str:
        """(feed, id) identifies a change for ever."""
        return f"{self.feed}:{self.id}"

    def content(self) -> dict:
        """What the change says (not where it sits): a re-send is compared on this."""
        return {"source": self.source, "target": self.target, "target_images": self.target_images,
                "observed_at": self.observed_at, "ref": self.ref, "kind": self.kind}


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


def _has_control_chars(s: str) -> bool:
    return any(ord(c) < 32 and c not in "\t" or ord(c) == 127 for c in s)


def parse_row(feed: str, line: int, row: object, raw: str = "") -> FactChange | Rejection:
    """Check one decoded row against the contract (types, required fields, values).
    Checks that need more than the row (token limits, duplicates, images on disk) are made
    by ``feeds.validate``."""
    raw = raw[:2000]
    if not isinstance(row, dict):
        return Rejection(feed, line, "(row)", f"expected an object, got {type(row).__name__}", raw=raw)
    rid = row.get("id")
    rid_str = rid if isinstance(rid, str) and rid.strip() else None

    def reject(fld: str, reason: str) -> Rejection:
        return Rejection(feed, line, fld, reason, rid_str, raw)

    for name in STRING_FIELDS:
        value = row.get(name)
        if value is not None and not isinstance(value, str):
            return reject(name, f"must be a string, got {type(value).__name__} {json.dumps(value)[:40]}")
        if isinstance(value, str) and _has_control_chars(value):
            return reject(name, "contains control characters")
    for name in ("id", "source"):
        if row.get(name) is None:
            return reject(name, "is required")
        if not row[name].strip():
            return reject(name, "is empty")
    images = row.get("target_images") or []
    if isinstance(images, str):
        images = [p for p in images.split(";") if p.strip()]
    if not isinstance(images, list) or not all(isinstance(p, str) and p.strip() for p in images):
        return reject("target_images", "must be a list of paths")
    target = row.get("target")
    if (target is None or not target.strip()) and not images:
        return reject("target", "is empty and no target_images are given")
    kind = row.get("kind") or "update"
    if kind not in KINDS:
        return reject("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    observed = row.get("observed_at")
    if observed:
        try:
            datetime.fromisoformat(observed.replace("Z", "+00:00"))
        except ValueError:
            return reject("observed_at", f"is not an ISO-8601 timestamp: {observed!r}")
    unknown = sorted(set(row) - set(KNOWN_FIELDS))
    if unknown:
        return reject(unknown[0], f"is not a field of the feed contract (known: {', '.join(KNOWN_FIELDS)})")
    return FactChange(feed=feed, id=row["id"].strip(), source=" ".join(row["source"].split()),
                      target=" ".join(target.split()) if target and target.strip() else None,
                      line=line, target_images=[p.strip() for p in images],
                      observed_at=observed or None, ref=row.get("ref"), kind=kind)


def read_rows(path: Path, feed: str | None = None) -> Iterator[FactChange | Rejection]:
    """Every line of a feed file, in order, as a FactChange or a Rejection (streaming)."""
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


def _read_jsonl(path: Path, feed: str) -> Iterator[FactChange | Rejection]:
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
            yield parse_row(feed, n, row, text)


def _read_csv(path: Path, feed: str) -> Iterator[FactChange | Rejection]:
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
            yield parse_row(feed, n, row, text)
