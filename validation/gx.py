"""The Great Expectations plumbing both suites share: a file context under freshen's home,
and a checkpoint that validates a pandas DataFrame and updates the Data Docs."""

from __future__ import annotations

import os
from pathlib import Path


def file_context(gx_dir: Path):
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="file", project_root_dir=str(gx_dir))
    # GX's "Calculating Metrics" bars (a fraction of a second per suite) under freshen's own output
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return gx, ctx


def data_docs_site(ctx) -> Path:
    """Where a file context's local Data Docs site is written."""
    return Path(ctx.root_directory) / "uncommitted" / "data_docs" / "local_site"


def dataframe_checkpoint(gx, ctx, name: str, batch, suite, result_format: dict):
    """Save ``suite`` and a checkpoint ``name`` that runs it on ``batch`` and writes Data Docs."""
    suite.save()
    vd = ctx.validation_definitions.add_or_update(gx.ValidationDefinition(data=batch, suite=suite, name=name))
    return ctx.checkpoints.add_or_update(gx.Checkpoint(
        name=name, validation_definitions=[vd], actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
        result_format=result_format))
