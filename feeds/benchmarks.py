"""The public benchmarks of text-to-image knowledge editing, read from their published files:
each edit becomes a fact change of the feed contract (``freshen feeds import``) and each
evaluation prompt a ``Probe`` of the benchmark's protocol (``freshen bench suite``).

- ``cake``: ``CAKE.json`` (Gu et al. 2024); an edit is ``edit_prompt`` with ``entity`` ->
  ``target`` (the entity and its span go with it); probes: efficacy, generality
  (``generality_a``), kgemap (``generality_b``), specificity, compo (``composite_edit``).
- ``road``: ``RoAD_test.csv`` (ReFACT, Arad et al. 2023); ``Prompt`` -> ``New``; probes:
  efficacy, generality (``Positive*``), specificity (``Negative*``).
- ``timed``: ``TIMED_test_set*.csv`` (TIME, Orgad et al. 2023); ``old`` -> ``new``; probes:
  efficacy, generality (``positive*``), specificity (``negative*``).

A probe asks the edited model to draw ``prompt`` and holds when the image is closer, in
CLIP's space, to ``expect`` (the benchmark's evaluation text) than to ``versus`` (what the
image would show had the edit failed, or had it leaked): for efficacy and generality the
new text against the old one (RoAD's ``Positive_old``, TIMED's positive prompt itself, CAKE's
test prompt, which names no old holder); for specificity the probe's own text against the
edit leaking into it (RoAD's ``Negative_new``, TIMED's ``gn``, CAKE: the edit's target).

Every edit of the file is accounted for: *written* to the feed, *merged* (CAKE's composite
entries repeat single edits, each pair two of the 100 single edits: such an edit is written
once, as the single edit, and its compositional prompts stay probes of both), or *skipped*
with the reason (an entry that cannot be read: a missing or empty field). Sources that
several edits send to different targets (TIMED edits "a dog" five ways, one experiment at a
time) are all written and listed in ``repeated_sources``: the ledger holds them as conflicts
for a steward, since one model holds one target per source, and ``freshen bench suite``
evaluates them in separate passes from the unedited model.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from common.errors import InvalidInput, NotFound
from editing.requests import normalise
from feeds.contract import ENTITY_LABEL

FORMATS = ("cake", "road", "timed")
METRICS = {"cake": ("efficacy", "generality", "kgemap", "compo", "specificity"),
           "road": ("efficacy", "generality", "specificity"),
           "timed": ("efficacy", "generality", "specificity")}


@dataclass
class Probe:
    metric: str
    prompt: str  # what the model draws
    expect: str  # the text the image should match
    versus: str  # the text it should match less
    edits: list[str] = field(default_factory=list)  # the ids of the edits it tests


@dataclass
class BenchmarkEdit:
    id: str
    source: str
    target: str
    ref: str  # the benchmark, its file and the entry
    entities: list[dict] = field(default_factory=list)

    def feed_row(self) -> dict:
        row = {"id": self.id, "source": self.source, "target": self.target, "ref": self.ref, "kind": "update"}
        return {**row, "entities": self.entities} if self.entities else row


@dataclass
class Benchmark:
    format: str
    file: str
    edits: list[BenchmarkEdit] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    entries: int = 0  # edits the file holds, repeats included
    merged: list[dict] = field(default_factory=list)  # {"entry", "same_as"}
    skipped: list[dict] = field(default_factory=list)  # {"entry", "reason"}

    def add(self, edit: BenchmarkEdit, probes: list[Probe]) -> None:
        self.entries += 1
        self.edits.append(edit)
        self.probes.extend(replace(p, edits=[edit.id]) for p in probes)

    def skip(self, entry: str, reason: str) -> None:
        self.entries += 1
        self.skipped.append({"entry": entry, "reason": reason})

    def repeated_sources(self) -> dict[str, list[str]]:
        """Sources that several edits send to different targets: {source: [edit ids]}."""
        ids: dict[str, list[str]] = {}
        for e in self.edits:
            ids.setdefault(normalise(e.source), []).append(e.id)
        return {self.edit(v[0]).source: v for v in ids.values() if len(v) > 1}

    def passes(self) -> list[list[BenchmarkEdit]]:
        """The edits in passes that each hold one target per source: the first edit of every
        source, then the second of the sources that have one, and so on."""
        out: list[list[BenchmarkEdit]] = []
        seen: Counter = Counter()
        for e in self.edits:
            key = normalise(e.source)
            if seen[key] == len(out):
                out.append([])
            out[seen[key]].append(e)
            seen[key] += 1
        return out

    def edit(self, edit_id: str) -> BenchmarkEdit:
        return next(e for e in self.edits if e.id == edit_id)

    def summary(self) -> dict:
        return {"format": self.format, "file": self.file, "edits": self.entries, "written": len(self.edits),
                "merged": self.merged, "skipped": self.skipped, "repeated_sources": self.repeated_sources(),
                "probes": dict(Counter(p.metric for p in self.probes))}

    def write_feed(self, out: Path) -> Path:
        """The edits as a JSON Lines feed of the contract (``feeds.contract``)."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(e.feed_row(), ensure_ascii=False) + "\n" for e in self.edits))
        return out


def load(fmt: str, path: Path) -> Benchmark:
    """The benchmark ``fmt`` read from its published file ``path``."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown benchmark format {fmt!r} (known: {', '.join(FORMATS)})")
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"benchmark file {path} does not exist")
    return {"cake": _cake, "road": _road, "timed": _timed}[fmt](path)


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{where}: expected a non-empty string, got {value!r}")
    return " ".join(value.split())


def _cake(path: Path) -> Benchmark:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: not a CAKE JSON file ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("single_edit"), list):
        raise InvalidInput(f"{path}: a CAKE file is an object with a 'single_edit' list "
                           "(and 'composite_edit')")
    bench = Benchmark("cake", path.name)
    singles: dict[tuple, str] = {}  # (source, target) -> id

    for i, e in enumerate(data["single_edit"]):
        try:
            source, target, entities, probes = _cake_single(e, f"single_edit[{i}]")
        except InvalidInput as exc:
            bench.skip(f"single_edit[{i}]", str(exc))
            continue
        edit = BenchmarkEdit(f"cake-{i + 1:03d}", source, target, f"CAKE {path.name} single_edit[{i}]", entities)
        bench.add(edit, probes)
        singles[normalise(source), target] = edit.id

    for i, c in enumerate(data.get("composite_edit") or []):
        ids = []
        for k, e in enumerate(c.get("edits") or [] if isinstance(c, dict) else []):
            where = f"composite_edit[{i}].edits[{k}]"
            try:
                source, target, entities = _cake_edit(e, where)
            except InvalidInput as exc:
                bench.skip(where, str(exc))
                continue
            same = singles.get((normalise(source), target))
            if same is not None:
                bench.entries += 1
                bench.merged.append({"entry": where, "same_as": same})
                ids.append(same)
                continue
            edit = BenchmarkEdit(f"cake-c{i + 1:03d}-{k + 1}", source, target, f"CAKE {path.name} {where}",
                                 entities)
            bench.add(edit, [])
            singles[normalise(source), target] = edit.id
            ids.append(edit.id)
        for j, t in enumerate(c.get("compositionality") or [] if isinstance(c, dict) else []):
            where = f"composite_edit[{i}].compositionality[{j}]"
            try:
                test = _text(t.get("test"), f"{where}.test")
                bench.probes.append(Probe("compo", test, _text(t.get("test_eval"), f"{where}.test_eval"), test, ids))
            except InvalidInput as exc:  # a probe, not an edit: said, not counted among the edits
                bench.skipped.append({"entry": where, "reason": str(exc)})
    return bench


def _cake_single(e: object, where: str) -> tuple[str, str, list[dict], list[Probe]]:
    if not isinstance(e, dict):
        raise InvalidInput(f"{where}: expected an object")
    source, target, entities = _cake_edit(e, where)
    probes = [Probe("efficacy", source, target, source)]
    for key, metric in (("generality_a", "generality"), ("generality_b", "kgemap")):
        for j, t in enumerate(e.get(key) or []):
            test = _text(t.get("test"), f"{where}.{key}[{j}].test")
            probes.append(Probe(metric, test, _text(t.get("test_eval"), f"{where}.{key}[{j}].test_eval"), test))
    for j, t in enumerate(e.get("specificity") or []):
        test = _text(t.get("test"), f"{where}.specificity[{j}].test")
        probes.append(Probe("specificity", test, " ".join((t.get("test_eval") or test).split()), target))
    return source, target, entities, probes


def _cake_edit(e: object, where: str) -> tuple[str, str, list[dict]]:
    """Source (``edit_prompt`` with the entity), target and the entity's span of one CAKE edit."""
    if not isinstance(e, dict):
        raise InvalidInput(f"{where}: expected an object")
    template, entity = _text(e.get("edit_prompt"), f"{where}.edit_prompt"), _text(e.get("entity"), f"{where}.entity")
    if template.count("{}") != 1:
        raise InvalidInput(f"{where}.edit_prompt: expected one '{{}}' for the entity, got {template!r}")
    start = template.index("{}")
    return template.format(entity), _text(e.get("target"), f"{where}.target"), [
        {"text": entity, "label": ENTITY_LABEL, "start": start, "end": start + len(entity)}]


def _rows(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    """(line, row) of a CSV file, its columns' names as written; a missing column is an error."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise InvalidInput(f"{path}: missing columns {missing} (found {reader.fieldnames})")
            return [(reader.line_num, row) for row in reader if any((v or "").strip() for v in row.values())]
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 ({exc})") from exc


def _pairs(row: dict, where: str, *columns: str) -> list[tuple[str, ...]]:
    """The numbered column groups (``positive{}``, ``gt{}``...) of a row, 1 to 5, where given."""
    out = []
    for n in range(1, 6):
        values = [row.get(c.format(n)) for c in columns]
        if all(v is None or not v.strip() for v in values):
            continue
        out.append(tuple(_text(v, f"{where} column {c.format(n)!r}") for v, c in zip(values, columns, strict=True)))
    return out


def _road(path: Path) -> Benchmark:
    bench = Benchmark("road", path.name)
    for n, (line, row) in enumerate(_rows(path, ("Prompt", "Old", "New")), 1):
        where = f"line {line}"
        try:
            source, old, new = (_text(row.get(c), f"{where} column {c!r}") for c in ("Prompt", "Old", "New"))
            probes = [Probe("efficacy", source, new, old)]
            probes += [Probe("generality", p, pn, po)
                       for p, pn, po in _pairs(row, where, "Positive{}", "Positive_new{}", "Positive_old{}")]
            probes += [Probe("specificity", q, q, qn) for q, qn in _pairs(row, where, "Negative{}", "Negative_new{}")]
        except InvalidInput as exc:
            bench.skip(where, str(exc))
            continue
        kind = f" ({row['Type'].strip()})" if (row.get("Type") or "").strip() else ""
        bench.add(BenchmarkEdit(f"road-{n:03d}", source, new, f"RoAD {path.name} line {line}{kind}"), probes)
    return bench


def _timed(path: Path) -> Benchmark:
    bench = Benchmark("timed", path.name)
    for n, (line, row) in enumerate(_rows(path, ("old", "new")), 1):
        where = f"line {line}"
        try:
            old, new = _text(row.get("old"), f"{where} column 'old'"), _text(row.get("new"), f"{where} column 'new'")
            probes = [Probe("efficacy", old, new, old)]
            probes += [Probe("generality", p, gt, p) for p, gt in _pairs(row, where, "positive{}", "gt{}")]
            probes += [Probe("specificity", q, q, gn) for q, gn in _pairs(row, where, "negative{}", "gn{}")]
        except InvalidInput as exc:
            bench.skip(where, str(exc))
            continue
        bench.add(BenchmarkEdit(f"timed-{n:03d}", old, new, f"TIMED {path.name} line {line}"), probes)
    return bench
