"""MLflow "models from code" entry point of a freshen version (see registry/pyfunc.py)."""

from mlflow.models import set_model

from registry.pyfunc import FreshenModel

set_model(FreshenModel())
