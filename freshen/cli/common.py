"""What every ``freshen`` command shares: the state directory, JSON output, who acts; each
declared once, as an argparse parent parser."""

from __future__ import annotations

import argparse
from pathlib import Path


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


HOME = _parent()
HOME.add_argument("--home", type=Path, default=None, help="state directory (default ./var, or FRESHEN_HOME)")

JSON = _parent()
JSON.add_argument("--json", action="store_true", help="print JSON instead of text")

BY = _parent()  # who acts, where someone must be named (decisions, promotions)
BY.add_argument("--by", required=True, help="who decides (recorded)")

BY_DEFAULT = _parent()  # who runs it, where the service may act in its own name
BY_DEFAULT.add_argument("--by", default="freshen", help="who runs it (recorded; default freshen)")


def settings(args: argparse.Namespace, **overrides):
    """The service settings of the home ``args`` names (``FRESHEN_*`` overrides apply)."""
    from freshen.config import Settings

    return Settings.from_env(home=getattr(args, "home", None), **overrides)
