"""The MLflow pyfunc flavour of a version: ``predict`` takes prompts, returns images.

    model = mlflow.pyfunc.load_model("models:/freshen@champion")
    images = model.predict(["the logo of Acme Corp"], params={"seed": 0})  # (n, h, w, 3) uint8

Loading materialises the base and the version's chain of edits (``registry.versions``),
checking the base's content hash; the downloaded edits are cached under
``$FRESHEN_HOME/cache`` (or the system temp directory).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import mlflow
import pandas as pd


def _prompts(model_input: pd.DataFrame) -> list[str]:
    column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
    return [str(p) for p in model_input[column]]


class FreshenModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from registry.versions import materialise

        self.manifest = json.loads(Path(context.artifacts["manifest"]).read_text())
        home = os.environ.get("FRESHEN_HOME")
        cache = Path(home) / "cache" if home else Path(tempfile.gettempdir()) / "freshen-cache"
        cache.mkdir(parents=True, exist_ok=True)
        self.model = materialise(self.manifest, cache)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        # the version is logged with a signature (``signature()``), so MLflow hands predict a
        # DataFrame of one column whatever the caller passed: a string, a list or a DataFrame
        params = params or {}
        return self.model.generate_many(
            _prompts(model_input), seed=int(params.get("seed", 0)),
            num_inference_steps=params.get("num_inference_steps") or None,  # 0: the pipeline's default
            guidance_scale=params.get("guidance_scale") or None)


def signature():
    """Prompts in; ``seed``, ``num_inference_steps``, ``guidance_scale`` as params (0 = default).

    Versions are logged with this signature and without an input example: MLflow validates an
    input example by loading the logged model and predicting, which for a version means
    materialising the base and its chain and drawing an image at every registration; the gate
    loads and judges the version right after, and ``tests/test_registry.py`` loads a version
    through ``mlflow.pyfunc.load_model``."""
    from mlflow.models import infer_signature

    return infer_signature(["a prompt"], None, params={"seed": 0, "num_inference_steps": 0, "guidance_scale": 0.0})
