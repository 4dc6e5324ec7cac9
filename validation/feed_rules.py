"""The rules a feed's rows must meet beyond the contract, as a Great Expectations suite
(readable by a non-programmer in the Data Docs it writes): prompts within the text
encoder's token limit (measured with the model's own tokenizer), ids unique within the
feed, destination images that exist and open as images.

GX is called directly (the Airflow provider conflicts with Airflow 3.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from feeds.contract import FactChange, Rejection

SUITE = "feed_rows"


@dataclass
class RowCheck:
    """The columns GX looks at, derived from one fact change."""

    line: int
    id: str
    source_tokens: int
    target_tokens: int
    images_ok: bool
    image_problem: str


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


def row_checks(changes: Sequence[FactChange], feed_file: Path, tokenizer) -> pd.DataFrame:
    def count(text: str | None) -> int:
        return len(tokenizer(text, truncation=False)["input_ids"]) if text else 0

    rows = []
    for c in changes:
        problems = [p for p in (image_problem(feed_file, i) for i in c.target_images) if p]
        rows.append(RowCheck(c.line, c.id, count(c.source), count(c.target), not problems, "; ".join(problems)))
    return pd.DataFrame([r.__dict__ for r in rows])


class FeedRules:
    """One GX file context (under ``gx_dir``) holding the suite and its Data Docs."""

    def __init__(self, gx_dir: Path, max_tokens: int):
        from validation.gx import dataframe_checkpoint, file_context

        gx, self.ctx = file_context(gx_dir)
        self.gx = gx
        self.max_tokens = max_tokens
        source = self.ctx.data_sources.add_or_update_pandas("feeds")
        asset = source.add_dataframe_asset("feed_rows")
        batch = asset.add_batch_definition_whole_dataframe("chunk")
        suite = self.ctx.suites.add_or_update(gx.ExpectationSuite(name=SUITE))
        e = gx.expectations
        for column in ("source_tokens", "target_tokens"):
            suite.add_expectation(e.ExpectColumnValuesToBeBetween(
                column=column, max_value=max_tokens,
                meta={"field": column.removesuffix("_tokens"),
                      "reason": f"is longer than the text encoder's {max_tokens} tokens"}))
        suite.add_expectation(e.ExpectColumnValuesToBeUnique(
            column="id", meta={"field": "id", "reason": "repeats an id earlier in the feed"}))
        suite.add_expectation(e.ExpectColumnValuesToBeInSet(
            column="images_ok", value_set=[True], meta={"field": "target_images", "reason": ""}))
        self.checkpoint = dataframe_checkpoint(
            gx, self.ctx, SUITE, batch, suite,
            {"result_format": "COMPLETE", "unexpected_index_column_names": ["line"]})

    @property
    def docs_index(self) -> Path:
        from validation.gx import data_docs_site

        return data_docs_site(self.ctx) / "index.html"

    def check(self, feed: str, changes: Sequence[FactChange], feed_file: Path, tokenizer
              ) -> dict[int, Rejection]:
        """Rejections by line for the changes that break a rule (the first of repeated ids
        is kept); writes the validation into the Data Docs."""
        if not changes:
            return {}
        df = row_checks(changes, feed_file, tokenizer)
        result = self.checkpoint.run(batch_parameters={"dataframe": df})
        by_line = {c.line: c for c in changes}
        problems = dict(zip(df["line"], df["image_problem"], strict=True))
        out: dict[int, Rejection] = {}
        for run in result.run_results.values():
            for r in run.results:
                if r.success:
                    continue
                meta = r.expectation_config.meta
                lines = sorted(int(u["line"]) for u in r.result.get("unexpected_index_list") or [])
                if r.expectation_config.type == "expect_column_values_to_be_unique":
                    seen: set[str] = set()
                    repeated = []
                    for ln in lines:
                        cid = by_line[ln].id
                        (repeated.append(ln) if cid in seen else seen.add(cid))
                    lines = repeated
                for ln in lines:
                    c = by_line[ln]
                    reason = meta["reason"] or problems[ln]
                    out.setdefault(ln, Rejection(feed, ln, meta["field"], reason, c.id,
                                                 f"{c.id}: {c.source} -> {c.target}"))
        return out
