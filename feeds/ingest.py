"""Ingestion: feed files (or a drop directory) -> records -> GX rules -> ledger -> NER.

Streaming: rows are read and validated in chunks, so a feed of any size needs memory
for one chunk only. Idempotent: a file already ingested adds nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common.errors import InvalidInput, NotFound, read_user_json
from feeds.contract import FactChange, Record, Rejection, read_records, to_change
from feeds.ledger import IngestSummary, Ledger
from validation.feed_rules import FeedRules

FEED_SUFFIXES = (".jsonl", ".json", ".csv")


@dataclass
class Policy:
    """Feeds whose changes are approved without a steward; recorded as ``policy:<name>``."""

    name: str = "default"
    auto_approve: tuple[str, ...] = ()

    @classmethod
    def load(cls, path: Path | None) -> Policy:
        if path is None:
            return cls()
        d = read_user_json(path, "policy")
        unknown = set(d) - {"name", "auto_approve"}
        if unknown:
            raise InvalidInput(f"policy {path}: unknown keys {sorted(unknown)} (known: name, auto_approve)")
        if not isinstance(d.get("auto_approve", []), list):
            raise InvalidInput(f"policy {path}: 'auto_approve' must be a list of feed names")
        return cls(d.get("name", Path(path).stem), tuple(d.get("auto_approve", [])))


def validated_rows(path: Path, feed: str, rules: FeedRules, tokenizer, chunk: int = 5000
                   ) -> Iterator[FactChange | Rejection]:
    """Every line of a feed file, in order, as a FactChange (it met every rule) or a
    Rejection; validated ``chunk`` records at a time, so memory stays flat."""
    buffer: list[Record | Rejection] = []

    def flush():
        bad = rules.check([r for r in buffer if isinstance(r, Record)], path, tokenizer)
        for r in buffer:
            yield r if isinstance(r, Rejection) else bad.get(r.line) or to_change(r)
        buffer.clear()

    for row in read_records(path, feed):
        buffer.append(row)
        if len(buffer) >= chunk:
            yield from flush()
    yield from flush()


def ingest_file(ledger: Ledger, path: Path, rules: FeedRules, tokenizer, feed: str | None = None,
                ner=None, policy: Policy | None = None, chunk: int = 5000) -> IngestSummary:
    path = Path(path).resolve()
    if not path.is_file():
        raise NotFound(f"feed file {path} does not exist")
    feed = feed or path.stem
    summary = ledger.ingest(validated_rows(path, feed, rules, tokenizer, chunk), path, feed)
    if not summary.already_ingested:
        if ner is not None:
            tag_entities(ledger, ner)
        if policy is not None and feed in policy.auto_approve:
            keys = [r.key for r in ledger.changes("pending") if r.feed == feed]
            if keys:
                ledger.decide(keys, "approved", by=f"policy:{policy.name}",
                              comment=f"feed {feed!r} is trusted by policy {policy.name!r}")
    return summary


def ingest_path(ledger: Ledger, path: Path, rules: FeedRules, tokenizer, feed: str | None = None,
                ner=None, policy: Policy | None = None) -> list[IngestSummary]:
    """A feed file, or every feed file in a drop directory (in name order)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FEED_SUFFIXES)
        return [ingest_file(ledger, f, rules, tokenizer, None, ner, policy) for f in files]
    return [ingest_file(ledger, path, rules, tokenizer, feed, ner, policy)]


def tag_entities(ledger: Ledger, ner, batch: int = 256) -> int:
    """Run NER over live changes that have no entities yet; store text, label, span, score."""
    rows = [r for status in ("pending", "conflict", "approved") for r in ledger.changes(status) if not r.entities]
    for i in range(0, len(rows), batch):
        part = rows[i:i + batch]
        found = ner([r.source for r in part])
        ledger.set_entities({r.pk: [e.__dict__ for e in ents] for r, ents in zip(part, found, strict=True)})
    return len(rows)
