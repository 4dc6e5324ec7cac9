"""The promotion gate: candidate vs champion metrics as a table, thresholds as a Great
Expectations suite, a verdict with the failed expectations and a Data Docs page.

Table rows: metric, candidate, champion, delta (candidate - champion), relative
(delta / champion), base (the unedited model's value, where measured) and vs_base
((candidate - base) / base). Expectations (defaults, all configurable with a JSON file):
- efficacy on the batch's facts >= 0.8 (candidate column of the ``efficacy`` row);
- specificity drop <= 0.02 (delta of the ``specificity`` row >= -0.02);
- FID increase <= 5 % relative (relative of the ``fid`` row <= 0.05), when FID was measured;
- cumulative, against the base: specificity >= 0.95 of the base's (vs_base of the
  ``specificity_base`` row >= -0.05) and FID <= +10 % of the base's (vs_base of the ``fid``
  row <= 0.10), so that versions each within the per-version allowance cannot add up to
  more drift than the base budget.
GX is called directly (the Airflow provider conflicts with Airflow 3.3).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pandas as pd

from common.errors import InvalidInput, read_user_json

SUITE = "promotion_gate"


@dataclass
class GateConfig:
    """GateConfig of the suite, and how much the evaluation draws (images per prompt)."""

    efficacy_min: float = 0.8
    specificity_drop_max: float = 0.02
    fid_increase_max: float = 0.05  # relative to the champion's FID
    base_specificity_min: float = 0.95  # share of the base's specificity a version keeps
    base_fid_increase_max: float = 0.10  # relative to the base's FID
    fact_seeds: int = 6  # images per edited source and per target
    probe_seeds: int = 3  # images per generality / specificity probe
    unrelated_probes: int = 24  # unrelated fact prompts (ToyWorld) next to the attribute prompts
    fid_seeds: int = 4  # images per FID prompt (0: no FID)

    @classmethod
    def load(cls, path: str | Path | None) -> GateConfig:
        if not path:
            return cls()
        raw = read_user_json(path, "gate config")
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise InvalidInput(f"gate config {path}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
        for k, v in raw.items():
            if not isinstance(v, int | float) or isinstance(v, bool):
                raise InvalidInput(f"gate config {path}: field {k!r} must be a number, got {v!r}")
        return cls(**raw)


def metrics_table(candidate: dict[str, float], champion: dict[str, float],
                  base: dict[str, float] | None = None) -> pd.DataFrame:
    rows = []
    nan = float("nan")
    for metric in candidate:
        c, p = float(candidate[metric]), float(champion.get(metric, nan))
        b = float((base or {}).get(metric, nan))
        rows.append({"metric": metric, "candidate": c, "champion": p, "delta": c - p,
                     "relative": (c - p) / p if p else nan, "base": b, "vs_base": (c - b) / b if b else nan})
    return pd.DataFrame(rows)


def _records(table: pd.DataFrame) -> list[dict]:
    """The table's rows as JSON values: an undefined ``relative`` (a champion at 0) is None, not
    NaN, which JSON (an Airflow XCom, the ledger) cannot carry."""
    return table.astype(object).where(table.notna(), None).to_dict("records")


@dataclass
class Verdict:
    passed: bool
    failed: list[dict]  # expectation, metric, column, observed, threshold, reason
    table: list[dict]
    thresholds: dict
    docs_page: str | None

    @property
    def status(self) -> str:
        return "passed" if self.passed else "rejected"

    def reasons(self) -> str:
        return "; ".join(f["reason"] for f in self.failed)

    def to_json(self) -> dict:
        return asdict(self) | {"status": self.status}


class Gate:
    """A GX file context under ``gx_dir`` holding the gate suite and its Data Docs."""

    def __init__(self, gx_dir: Path, config: GateConfig | None = None):
        from validation.gx import dataframe_checkpoint, file_context

        self.t = config or GateConfig()
        gx, self.ctx = file_context(gx_dir)
        batch = (self.ctx.data_sources.add_or_update_pandas("gate")
                 .add_dataframe_asset("metrics").add_batch_definition_whole_dataframe("table"))
        suite = self.ctx.suites.add_or_update(gx.ExpectationSuite(name=SUITE))
        e = gx.expectations

        def on(metric: str, column: str, reason: str, threshold: float, **bounds):
            suite.add_expectation(e.ExpectColumnValuesToBeBetween(
                column=column, row_condition=f'metric=="{metric}"', condition_parser="pandas",
                meta={"metric": metric, "column": column, "threshold": threshold, "reason": reason}, **bounds))

        on("efficacy", "candidate", f"efficacy on the batch's facts below {self.t.efficacy_min}",
           self.t.efficacy_min, min_value=self.t.efficacy_min)
        on("specificity", "delta", f"specificity dropped by more than {self.t.specificity_drop_max}",
           -self.t.specificity_drop_max, min_value=-self.t.specificity_drop_max)
        on("fid", "relative", f"FID rose by more than {self.t.fid_increase_max:.0%} of the champion's",
           self.t.fid_increase_max, max_value=self.t.fid_increase_max)
        keep = 1 - self.t.base_specificity_min
        on("specificity_base", "vs_base", f"specificity fell below {self.t.base_specificity_min:.0%} of the "
           "unedited base's", -keep, min_value=-keep)
        on("fid", "vs_base", f"FID rose by more than {self.t.base_fid_increase_max:.0%} of the unedited base's",
           self.t.base_fid_increase_max, max_value=self.t.base_fid_increase_max)
        self.checkpoint = dataframe_checkpoint(gx, self.ctx, SUITE, batch, suite, {"result_format": "COMPLETE"})

    @property
    def site(self) -> Path:
        from validation.gx import data_docs_site

        return data_docs_site(self.ctx)

    def judge(self, table: pd.DataFrame, run_name: str) -> Verdict:
        """The verdict on a metrics table. A metric missing from the table (FID where no
        reference images exist) has no row, so its expectation has nothing to fail on."""
        missing = {"efficacy", "specificity"} - set(table["metric"])
        if missing:
            raise ValueError(f"gate: the metrics table lacks {sorted(missing)}")
        result = self.checkpoint.run(batch_parameters={"dataframe": table}, run_id=_run_id(run_name))
        failed, page = [], None
        for ident, run in result.run_results.items():
            page = self.site.joinpath("validations", *ident.to_tuple()).with_suffix(".html")
            for r in run.results:
                if not r.success:
                    meta = r.expectation_config.meta
                    observed = r.result.get("unexpected_list") or [None]
                    failed.append({"expectation": r.expectation_config.type, "metric": meta["metric"],
                                   "column": meta["column"], "observed": observed[0],
                                   "threshold": meta["threshold"], "reason": meta["reason"]})
        thresholds = {k: v for k, v in asdict(self.t).items() if k.endswith(("_min", "_max"))}
        return Verdict(not failed, failed, _records(table), thresholds,
                       str(page) if page and page.is_file() else None)


def _run_id(name: str):
    from great_expectations.core.run_identifier import RunIdentifier

    return RunIdentifier(run_name=name)
