"""The ``freshen`` command line. Each subcommand is a thin wrapper over a library function;
handlers are named ``<group>_<verb>``, the shared options (``--home``, ``--json``, ``--by``)
are declared once (``freshen.cli.common``)."""

from __future__ import annotations

import argparse
import logging
import sys

from freshen.cli import dev, feeds, run, service


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="freshen", description="Continual knowledge updates for text-to-image "
                                "diffusion models: feeds of fact changes, approvals, closed-form edits, "
                                "versions, a promotion gate, audit.")
    sub = p.add_subparsers(dest="command", required=True)
    feeds.add_parsers(sub)  # feeds ingest, facts list / approve / reject
    service.add_parsers(sub)  # registry init / list / promote, refresh, audit version / fact / export
    run.add_parsers(sub)  # edit, demo
    dev.add_parsers(sub)  # dev toyworld generate / train / check / release
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from editing.model import ModelLoadError
    from freshen.errors import FreshenError
    from registry.versions import RegistryError

    try:
        return args.func(args)
    except (ValueError, KeyError, ModelLoadError, FileNotFoundError, RegistryError, FreshenError) as exc:
        print(f"freshen: error: {exc}", file=sys.stderr)
        return 2
