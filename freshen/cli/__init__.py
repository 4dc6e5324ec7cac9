"""The ``freshen`` command line. Each subcommand is a thin wrapper over a library function;
handlers are named ``<group>_<verb>``, the shared options (``--home``, ``--json``, ``--by``)
are declared once (``freshen.cli.common``)."""

from __future__ import annotations

import argparse
import sys

from freshen import console
from freshen.cli import dev, feeds, run, service


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="freshen", description="Continual knowledge updates for text-to-image "
                                "diffusion models: feeds of fact changes, approvals, closed-form edits, "
                                "versions, a promotion gate, audit.")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also show the libraries' logs and warnings (Airflow, MLflow, GX, transformers)")
    sub = p.add_subparsers(dest="command", required=True)
    feeds.add_parsers(sub)  # feeds ingest, facts list / approve / reject
    service.add_parsers(sub)  # registry init / list / promote, refresh, audit version / fact / export
    run.add_parsers(sub)  # edit, demo
    dev.add_parsers(sub)  # dev toyworld generate / train / check / release
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console.configure(verbose=args.verbose)
    from common.errors import UserError

    try:
        return args.func(args)
    except UserError as exc:  # anything else is a bug and keeps its traceback
        print(f"freshen: error: {exc}", file=sys.stderr)
        return 2
