"""The fact ledger: every change ever received, with its status and history, in a real
database through SQLAlchemy (a SQLite file by default; any SQLAlchemy URL in production).

Statuses: pending -> approved | rejected; conflict (two live changes of one source, or one
(feed, id) re-sent with other content) until a steward picks; quarantined (broke the
contract; kept with its reason); applied (landed in a model version); superseded (a
later change of the same source landed).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from common.errors import InvalidInput, NotFound
from common.hashing import file_sha256
from editing.requests import normalise
from feeds.contract import Fact, FactChange, Rejection

STATUSES = ("pending", "approved", "rejected", "quarantined", "conflict", "applied", "superseded", "reverted")
LIVE = ("pending", "approved", "conflict")


def now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class ChangeRow(Base):
    """One received change. A (feed, id) re-sent with other content is a new revision."""

    __tablename__ = "changes"
    __table_args__ = (UniqueConstraint("feed", "change_id", "revision"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    feed: Mapped[str] = mapped_column(String(200), index=True)
    change_id: Mapped[str] = mapped_column(String(200))
    revision: Mapped[int] = mapped_column(Integer, default=1)
    source: Mapped[str] = mapped_column(Text)
    source_norm: Mapped[str] = mapped_column(Text, index=True)
    target: Mapped[str | None] = mapped_column(Text, nullable=True)
    target_images: Mapped[list] = mapped_column(JSON, default=list)
    observed_at: Mapped[str | None] = mapped_column(String(40), nullable=True)
    ref: Mapped[str | None] = mapped_column(Text, nullable=True)
    kind: Mapped[str] = mapped_column(String(20), default="update")
    content_hash: Mapped[str] = mapped_column(String(64))
    entities: Mapped[list] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(20), index=True)
    file: Mapped[str] = mapped_column(Text)
    line: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    decided_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    version: Mapped[str | None] = mapped_column(String(40), nullable=True)

    @property
    def key(self) -> str:
        return f"{self.feed}:{self.change_id}" + (f"@{self.revision}" if self.revision > 1 else "")

    def fact(self) -> Fact:
        """The change as the service carries it on (``feeds.contract.Fact``); destination images
        resolved against the feed file's folder."""
        return Fact(self.key, self.feed, self.change_id, self.source, self.target,
                    [str(Path(self.file).parent / p) for p in self.target_images], self.kind, self.ref,
                    self.observed_at, self.content_hash, list(self.entities or []), self.decided_by,
                    self.decided_at.isoformat() if self.decided_at else None)


class QuarantineRow(Base):
    """A line that broke the contract, kept with its reason and what was received."""

    __tablename__ = "quarantine"
    __table_args__ = (UniqueConstraint("file_sha256", "line"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    feed: Mapped[str] = mapped_column(String(200), index=True)
    file: Mapped[str] = mapped_column(Text)
    file_sha256: Mapped[str] = mapped_column(String(64))
    line: Mapped[int] = mapped_column(Integer)
    change_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    field: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text)
    raw: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EventRow(Base):
    """The history of a change: received, conflict, approved, rejected, applied, ..."""

    __tablename__ = "events"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    change_pk: Mapped[int] = mapped_column(ForeignKey("changes.pk"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    event: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str | None] = mapped_column(String(200), nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class VersionEventRow(Base):
    """What happened to a model version: registered, gate verdict, promoted, rolled back."""

    __tablename__ = "version_events"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer, index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    event: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str | None] = mapped_column(String(200), nullable=True)
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


class FileRow(Base):
    """A feed file already ingested (by content hash): ingesting it again adds nothing."""

    __tablename__ = "files"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    feed: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(Text)
    ingested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    summary: Mapped[dict] = mapped_column(JSON)


@dataclass
class IngestSummary:
    feed: str
    file: str
    lines: int = 0
    accepted: int = 0
    rejected: int = 0
    conflicts: int = 0
    duplicates: int = 0
    already_ingested: bool = False
    rejections: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return self.__dict__.copy()


def content_hash(change: FactChange) -> str:
    return hashlib.sha256(json.dumps(change.content(), sort_keys=True).encode()).hexdigest()


class Ledger:
    def __init__(self, url: str):
        self.url = url
        self.engine = create_engine(url)
        Base.metadata.create_all(self.engine)
        self.session = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def at(cls, path: Path) -> Ledger:
        """A SQLite ledger file (created on first use)."""
        path = Path(path).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{path}")

    # -- ingestion -------------------------------------------------------------
    def ingest(self, rows: Iterable[FactChange | Rejection], path: Path, feed: str) -> IngestSummary:
        """Record every row of one feed file. A file already ingested (same content) adds
        nothing. Within the file: an id seen twice is a rejection of the second line."""
        digest = file_sha256(path)
        summary = IngestSummary(feed=feed, file=str(Path(path).resolve()))
        with self.session.begin() as s:
            done = s.get(FileRow, digest)
            if done is not None:
                return IngestSummary(**{**done.summary, "already_ingested": True})
            seen_ids: set[str] = set()
            for row in rows:
                summary.lines += 1
                if isinstance(row, FactChange) and row.id in seen_ids:
                    row = Rejection(feed, row.line, "id", f"duplicate id {row.id!r} within the feed file",
                                    row.id, json.dumps({"id": row.id, "source": row.source}))
                if isinstance(row, Rejection):
                    self._quarantine(s, row, path, digest, summary)
                    continue
                seen_ids.add(row.id)
                self._record(s, row, path, summary)
            s.add(FileRow(sha256=digest, feed=feed, path=summary.file, ingested_at=now(),
                          summary=summary.to_json()))
        return summary

    def _quarantine(self, s: Session, r: Rejection, path: Path, digest: str, summary: IngestSummary) -> None:
        s.add(QuarantineRow(feed=r.feed, file=str(path), file_sha256=digest, line=r.line,
                            change_id=r.id, field=r.field, reason=r.reason, raw=r.raw,
                            received_at=now()))
        summary.rejected += 1
        summary.rejections.append({"line": r.line, "id": r.id, "field": r.field, "reason": r.reason})

    def _record(self, s: Session, c: FactChange, path: Path, summary: IngestSummary) -> None:
        h = content_hash(c)
        earlier = s.scalars(select(ChangeRow).where(ChangeRow.feed == c.feed, ChangeRow.change_id == c.id)
                            .order_by(ChangeRow.revision)).all()
        if any(e.content_hash == h for e in earlier):
            summary.duplicates += 1
            return
        row = ChangeRow(feed=c.feed, change_id=c.id, revision=len(earlier) + 1, source=c.source,
                        source_norm=normalise(c.source), target=c.target,
                        target_images=c.target_images, observed_at=c.observed_at, ref=c.ref, kind=c.kind,
                        content_hash=h, entities=list(c.entities), status="pending", file=str(path), line=c.line,
                        received_at=now())
        s.add(row)
        s.flush()
        self._event(s, row, "received", None, f"{path}:{c.line}")
        if c.entities:
            self._event(s, row, "entities", None, json.dumps([(e["text"], e["label"]) for e in c.entities])
                        + " (given by the feed)")
        rivals = [e for e in earlier if e.status in LIVE]
        if earlier:
            reason = f"{c.feed}:{c.id} re-sent with other content"
        else:
            rivals = s.scalars(select(ChangeRow).where(ChangeRow.source_norm == row.source_norm,
                                                       ChangeRow.status.in_(LIVE), ChangeRow.pk != row.pk)).all()
            reason = f"another live change of the source {c.source!r}"
        if earlier or rivals:
            for r in [row, *rivals]:
                if r.status != "conflict":
                    r.status = "conflict"
                    self._event(s, r, "conflict", None, reason)
            summary.conflicts += 1
        else:
            summary.accepted += 1

    @staticmethod
    def _event(s: Session, row: ChangeRow, event: str, actor: str | None, detail: str | None) -> None:
        s.add(EventRow(change_pk=row.pk, at=now(), event=event, actor=actor, detail=detail))

    # -- decisions -------------------------------------------------------------
    def find(self, s: Session, key: str) -> ChangeRow:
        """A change by ``feed:id`` (its latest revision) or ``feed:id@revision``."""
        feed, _, rest = key.partition(":")
        cid, _, rev = rest.partition("@")
        q = select(ChangeRow).where(ChangeRow.feed == feed, ChangeRow.change_id == cid)
        if rev:
            q = q.where(ChangeRow.revision == int(rev))
        row = s.scalars(q.order_by(ChangeRow.revision.desc())).first()
        if row is None:
            raise NotFound(f"no change {key!r} in the ledger (ids are FEED:ID)")
        return row

    def decide(self, keys: Iterable[str], decision: str, by: str, comment: str | None = None,
               via: str | None = None) -> list[str]:
        """Approve or reject changes. Approving one of a conflict rejects its rivals. ``via``:
        how the decision came (the CLI and the operating-system user running it, an Airflow
        run), kept in the decision's event beside the comment."""
        if decision not in ("approved", "rejected"):
            raise InvalidInput(f"decision must be 'approved' or 'rejected', got {decision!r}")
        if not by or not by.strip():
            raise InvalidInput("a decision needs the name of who made it (--by)")
        if decision == "rejected" and not (comment and comment.strip()):
            raise InvalidInput("a rejection needs a comment saying why")
        done = []
        with self.session.begin() as s:
            for key in keys:
                row = self.find(s, key)
                if row.status not in LIVE:
                    raise InvalidInput(f"{row.key} is {row.status}; only pending, approved or conflict "
                                     "changes can be decided")
                row.status, row.decided_by, row.decided_at, row.comment = decision, by, now(), comment
                self._event(s, row, decision, by, " ".join(filter(None, (comment, via and f"[via {via}]"))) or None)
                if decision == "approved":
                    rivals = s.scalars(select(ChangeRow).where(
                        ChangeRow.source_norm == row.source_norm, ChangeRow.status == "conflict",
                        ChangeRow.pk != row.pk)).all()
                    for r in rivals:
                        r.status, r.decided_by, r.decided_at = "rejected", by, now()
                        r.comment = f"conflict resolved in favour of {row.key}"
                        self._event(s, r, "rejected", by, r.comment)
                done.append(row.key)
        return done

    def set_entities(self, entities: dict[int, list[dict]]) -> None:
        """Store NER entities (text, label, start, end, score) by change pk."""
        with self.session.begin() as s:
            for pk, ents in entities.items():
                row = s.get(ChangeRow, pk)
                row.entities = ents
                self._event(s, row, "entities", None, json.dumps([(e["text"], e["label"]) for e in ents]))

    # -- the model side ----------------------------------------------------------
    def mark_applied(self, keys: Iterable[str], model: str, version: int, run_id: str) -> None:
        """The batch's approved changes were edited into ``version`` (not yet promoted)."""
        with self.session.begin() as s:
            for key in keys:
                row = self.find(s, key)
                if row.status != "approved":
                    raise InvalidInput(f"{row.key} is {row.status}; only approved changes can be applied")
                row.status, row.version = "applied", str(version)
                self._event(s, row, "applied", None, f"edited into {model} v{version} (run {run_id})")

    def sync_champion(self, model: str, chain: list[tuple[int, list[str]]], dropped: list[tuple[int, list[str]]],
                      actor: str, why: str) -> None:
        """Make statuses follow the champion: ``chain`` is (version, change keys) from the base
        up to the champion. In it, the last change of each source is ``applied``, earlier ones
        ``superseded`` (``reverted`` when what came after them is a revert). Changes of
        ``dropped`` versions (gate-rejected, or rolled back) go back to ``pending``: a steward
        looks at them again before any new attempt."""
        with self.session.begin() as s:
            latest: dict[str, tuple[int, ChangeRow]] = {}
            for version, keys in chain:
                for key in keys:
                    row = self.find(s, key)
                    prev = latest.get(row.source_norm)
                    gone = "reverted" if row.kind == "revert" else "superseded"
                    if prev is not None and prev[1].status != gone:
                        prev[1].status = gone
                        self._event(s, prev[1], gone, actor, f"by {row.key} in {model} v{version}")
                    latest[row.source_norm] = (version, row)
            for version, row in latest.values():
                if row.status != "applied" or row.version != str(version):
                    row.status, row.version = "applied", str(version)
                    self._event(s, row, "applied", actor, f"live in {model} champion (v{version})")
            if chain:
                top, keys = chain[-1]
                for key in keys:
                    self._event(s, self.find(s, key), "promoted", actor, f"{why}: {model} v{top} is champion")
            for version, keys in dropped:
                for key in keys:
                    row = self.find(s, key)
                    if row.status in ("applied", "superseded", "reverted"):
                        row.status, row.version = "pending", None
                        self._event(s, row, "returned", actor, f"{model} v{version}: {why}")

    def note(self, key: str, event: str, by: str, detail: str | None = None) -> None:
        """An event in a change's history that does not move its status (a revert's request)."""
        with self.session.begin() as s:
            self._event(s, self.find(s, key), event, by, detail)

    def version_event(self, model: str, version: int, event: str, actor: str | None, detail: dict) -> None:
        with self.session.begin() as s:
            s.add(VersionEventRow(model=model, version=version, at=now(), event=event, actor=actor,
                                  detail=detail))

    def version_events(self, model: str, version: int | None = None) -> list[VersionEventRow]:
        with self.session() as s:
            q = select(VersionEventRow).where(VersionEventRow.model == model)
            if version is not None:
                q = q.where(VersionEventRow.version == version)
            return list(s.scalars(q.order_by(VersionEventRow.pk)))

    def change(self, key: str) -> ChangeRow:
        with self.session() as s:
            return self.find(s, key)

    # -- views -------------------------------------------------------------------
    def changes(self, status: str | None = None) -> list[ChangeRow]:
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"unknown status {status!r}; statuses are {', '.join(STATUSES)}")
        with self.session() as s:
            q = select(ChangeRow).order_by(ChangeRow.pk)
            if status:
                q = q.where(ChangeRow.status == status)
            return list(s.scalars(q))

    def approved_for_editing(self) -> list[ChangeRow]:
        """The only door to editing: approved changes, at most one per source."""
        return self.changes("approved")

    def ingested_file(self, path: Path) -> FileRow | None:
        """The record of a feed file's ingestion (by its content), or None if it never was."""
        with self.session() as s:
            return s.get(FileRow, file_sha256(path))

    def quarantined(self) -> list[QuarantineRow]:
        with self.session() as s:
            return list(s.scalars(select(QuarantineRow).order_by(QuarantineRow.pk)))

    def history(self, key: str) -> list[EventRow]:
        with self.session() as s:
            row = self.find(s, key)
            return list(s.scalars(select(EventRow).where(EventRow.change_pk == row.pk).order_by(EventRow.pk)))
