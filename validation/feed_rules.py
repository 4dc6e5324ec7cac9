"""Every rule a feed's rows must meet, as one Great Expectations suite (so the Data Docs it
writes show a non-programmer all of them): field types, control characters, required and
non-empty fields, a destination, ``kind``, timestamps, no unknown fields, prompts within
the text encoder's token limit (measured with the model's own tokenizer), ids unique within
the feed, destination images that exist and open as images, given entities whose spans
read their text in the source.

GX looks at a table with a row per record (``row_frame``): the string fields as given
(``None`` when absent or not a string), each field's type, and the values a rule needs that
pandas cannot compute by itself (token counts, whether images open). A record failing
several rules is rejected for the first in the suite's order. The contract's reading side
(what cannot even become a record) is in ``feeds.contract``.

GX is called directly (the Airflow provider conflicts with Airflow 3.3).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from feeds.contract import (
    KINDS,
    KINDS_TEXT,
    KNOWN_FIELDS,
    STRING_FIELDS,
    Record,
    Rejection,
    entities,
    normalised_source,
    target_images,
)

SUITE = "feed_rows"
REQUIRED = ("id", "source")
OPTIONAL_AS_ABSENT = ("kind", "observed_at", "ref")
# C0 control characters except tab, and DEL
CONTROL = r"[\x00-\x08\x0a-\x1f\x7f]"


def image_problem(feed_file: Path, rel: str) -> str:
    """'' when the image exists and opens as an image, else what is wrong."""
    from PIL import Image, UnidentifiedImageError

    path = (Path(feed_file).parent / rel).resolve()
    if not path.is_file():
        return f"image {rel!r} does not exist (looked at {path})"
    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError) as exc:
        return f"image {rel!r} is not an image ({type(exc).__name__})"
    return ""


def _is_iso(value: str | None) -> bool:
    if value is None:
        return True
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def row_frame(records: Sequence[Record], feed_file: Path, tokenizer) -> pd.DataFrame:
    """The table the suite validates: one row per record."""
    def count(text: str | None) -> int:
        return len(tokenizer(text, truncation=False)["input_ids"]) if text else 0

    rows = []
    for r in records:
        row = {"line": r.line}
        for f in STRING_FIELDS:
            value = r.row.get(f)
            if value == "" and f in OPTIONAL_AS_ABSENT:
                value = None  # "kind": "" or "observed_at": "" say nothing, as in CSV
            row[f] = value if isinstance(value, str) else None
            row[f"{f}_type"] = "absent" if value is None else type(value).__name__
        images = target_images(r.row.get("target_images"))
        problems = [p for p in (image_problem(feed_file, i) for i in images or []) if p]
        unknown = sorted(set(r.row) - set(KNOWN_FIELDS))
        source = row["source"]
        _, entity_problem = entities(r.row.get("entities"), normalised_source(source) if source else source)
        row.update(
            target_images_is_list=images is not None,
            has_destination=(bool(row["target"] and row["target"].strip()) or bool(images)
                             or row["kind"] == "revert"),
            revert_has_no_destination=row["kind"] != "revert" or not (row["target"] or images),
            observed_at_is_iso=_is_iso(row["observed_at"]),
            unknown_field=unknown[0] if unknown else "",
            source_tokens=count(row["source"]),
            target_tokens=count(row["target"]),
            images_open=not problems,
            image_problem="; ".join(problems),
            entity_problem=entity_problem,
        )
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass
class Rule:
    """An expectation and what a rejection by it says; ``field`` and ``reason`` are
    templates filled from the failing row (``{kind!r}``, ``{unknown_field}``...)."""

    expectation: object
    field: str
    reason: str


def rules(e, max_tokens: int) -> Iterator[Rule]:
    """The suite, in the order a record's first failure is reported."""
    for f in STRING_FIELDS:
        yield Rule(e.ExpectColumnValuesToBeInSet(
            column=f"{f}_type", value_set=["str", "absent"], description=f"`{f}`, when given, is a string"),
            f, f"must be a string, got {{{f}_type}}")
    for f in STRING_FIELDS:
        yield Rule(e.ExpectColumnValuesToNotMatchRegex(
            column=f, regex=CONTROL, description=f"`{f}` has no control characters (tab allowed)"),
            f, "contains control characters")
    for f in REQUIRED:
        yield Rule(e.ExpectColumnValuesToNotBeNull(column=f, description=f"`{f}` is required"), f, "is required")
    for f in REQUIRED:
        yield Rule(e.ExpectColumnValuesToMatchRegex(
            column=f, regex=r"\S", description=f"`{f}` is not empty or only spaces"), f, "is empty")
    yield Rule(e.ExpectColumnValuesToBeInSet(
        column="target_images_is_list", value_set=[True],
        description="`target_images` is a list of paths (CSV: separated by `;`)"),
        "target_images", "must be a list of paths")
    yield Rule(e.ExpectColumnValuesToBeInSet(
        column="has_destination", value_set=[True], description="`target` is not empty, or `target_images` are given"),
        "target", "is empty and no target_images are given")
    yield Rule(e.ExpectColumnValuesToBeInSet(
        column="revert_has_no_destination", value_set=[True],
        description="a `revert` row has no `target` and no `target_images` (it returns the source to the base)"),
        "target", "must be absent in a revert: a revert returns the source to what the base model draws")
    yield Rule(e.ExpectColumnValuesToBeInSet(
        column="kind", value_set=list(KINDS), description=f"`kind`, when given, is {KINDS_TEXT}"),
        "kind", f"must be {KINDS_TEXT}, got {{kind!r}}")
    yield Rule(e.ExpectColumnValuesToBeInSet(
        column="observed_at_is_iso", value_set=[True],
        description="`observed_at`, when given, is an ISO-8601 timestamp"),
        "observed_at", "is not an ISO-8601 timestamp: {observed_at!r}")
    yield Rule(e.ExpectColumnValuesToBeInSet(
        column="unknown_field", value_set=[""],
        description=f"every field is one of the contract's: {', '.join(KNOWN_FIELDS)}"),
        "{unknown_field}", f"is not a field of the feed contract (known: {', '.join(KNOWN_FIELDS)})")
    for f in ("source", "target"):
        yield Rule(e.ExpectColumnValuesToBeBetween(
            column=f"{f}_tokens", max_value=max_tokens,
            description=f"`{f}` fits the text encoder's {max_tokens} tokens (the model's tokenizer counts)"),
            f, f"is longer than the text encoder's {max_tokens} tokens ({{{f}_tokens}})")
    yield Rule(e.ExpectColumnValuesToBeUnique(column="id", description="`id` is unique within the feed"),
               "id", "repeats an id earlier in the feed")
    yield Rule(e.ExpectColumnValuesToBeInSet(
        column="images_open", value_set=[True], description="every `target_images` path exists and opens as an image"),
        "target_images", "{image_problem}")
    yield Rule(e.ExpectColumnValuesToBeInSet(
        column="entity_problem", value_set=[""],
        description="`entities`, when given, are objects with text, start and end whose span reads the text "
                    "in the source"),
        "entities", "{entity_problem}")


class FeedRules:
    """One GX file context (under ``gx_dir``) holding the suite and its Data Docs."""

    def __init__(self, gx_dir: Path, max_tokens: int):
        from validation.gx import dataframe_checkpoint, file_context

        gx, self.ctx = file_context(gx_dir)
        self.max_tokens = max_tokens
        source = self.ctx.data_sources.add_or_update_pandas("feeds")
        asset = source.add_dataframe_asset("feed_rows")
        batch = asset.add_batch_definition_whole_dataframe("chunk")
        suite = self.ctx.suites.add_or_update(gx.ExpectationSuite(name=SUITE))
        for rank, rule in enumerate(rules(gx.expectations, max_tokens)):
            rule.expectation.meta = {"rank": rank, "field": rule.field, "reason": rule.reason}
            suite.add_expectation(rule.expectation)
        self.checkpoint = dataframe_checkpoint(
            gx, self.ctx, SUITE, batch, suite,
            {"result_format": "COMPLETE", "unexpected_index_column_names": ["line"]})

    @property
    def docs_index(self) -> Path:
        from validation.gx import data_docs_site

        return data_docs_site(self.ctx) / "index.html"

    def check(self, records: Sequence[Record], feed_file: Path, tokenizer) -> dict[int, Rejection]:
        """Rejections by line for the records that break a rule (of repeated ids the first
        record not rejected otherwise is kept); writes the validation into the Data Docs."""
        if not records:
            return {}
        df = row_frame(records, feed_file, tokenizer)
        result = self.checkpoint.run(batch_parameters={"dataframe": df})
        failed: list[tuple[int, str, list[int]]] = []  # (rank, expectation type, lines)
        metas = {}
        for run in result.run_results.values():
            for r in run.results:
                if not r.success:
                    meta = r.expectation_config.meta
                    metas[meta["rank"]] = meta
                    lines = sorted(int(u["line"]) for u in r.result.get("unexpected_index_list") or [])
                    failed.append((meta["rank"], r.expectation_config.type, lines))
        by_line = {r.line: r for r in records}
        values = df.set_index("line", drop=False).to_dict("index")
        out: dict[int, Rejection] = {}
        for rank, kind, lines in sorted(failed):
            if kind == "expect_column_values_to_be_unique":
                seen: set[str | None] = set()
                repeated = []
                for ln in lines:
                    if ln in out:
                        continue
                    rid = by_line[ln].id
                    (repeated.append(ln) if rid in seen else seen.add(rid))
                lines = repeated
            meta = metas[rank]
            for ln in lines:
                if ln not in out:
                    row = values[ln]
                    out[ln] = by_line[ln].reject(meta["field"].format(**row), meta["reason"].format(**row))
        return out

