"""What a ``freshen`` command prints: its own progress and results. freshen's loggers speak
at INFO on standard error; libraries (Airflow, MLflow, Great Expectations, transformers,
diffusers, SQLAlchemy, alembic) speak only at ERROR, and their Python warnings are not shown,
unless ``-v`` / ``--verbose`` asks for everything at INFO.

Warnings that pointed at something real are fixed where they arise, not hidden here: model
loading passes ``dtype`` and silences only the loaders' own progress bars
(``editing.model.quiet_loading``), the pyfunc flavour's ``predict`` carries a type hint
(``registry.pyfunc``; the one MLflow warning about a missing input example is filtered at
the ``log_model`` call, where ``registry.pyfunc.signature`` says why there is none), and
GX's metric progress bars are switched off in its context (``validation.gx.file_context``).
"""

from __future__ import annotations

import logging
import os
import warnings

OWN = ("freshen", "editing", "feeds", "registry", "validation", "toyworld", "dags")
LIBRARIES = ("airflow", "mlflow", "great_expectations", "alembic", "sqlalchemy", "transformers", "diffusers",
             "huggingface_hub", "httpx", "urllib3", "py.warnings")


def configure(verbose: bool = False) -> None:
    """Set up logging and warnings for a command line run (once, before any work)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for name in OWN:
        logging.getLogger(name).setLevel(logging.INFO)
    if verbose:
        return
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    # libraries that configure their own logging when imported read these first
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # Deprecation and future warnings raised inside libraries are for their maintainers;
    # freshen's own modules keep theirs (the filter is by the module that warns).
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in OWN:
        warnings.filterwarnings("default", module=rf"{name}(\.|$)")
