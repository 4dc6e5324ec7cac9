"""Configuration in one typed place. Defaults run the embedded ToyWorld; every path is
absolute once resolved. Environment variables ``FRESHEN_<FIELD>`` override a default."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from common.errors import InvalidInput
from toyworld import paths as toy

PROJECT_DIR = Path(__file__).resolve().parent.parent


def _default_home() -> Path:
    return Path(os.environ.get("FRESHEN_HOME", PROJECT_DIR / "var")).expanduser().resolve()


@dataclass
class Settings:
    home: Path = field(default_factory=_default_home)  # all state of a local installation
    model: str = str(toy.DIFFUSION_DIR)  # base text-to-image model: local path or hub id
    ner_model: str = str(toy.NER_DIR)  # production: dslim/bert-large-NER
    judge: str = str(toy.JUDGE_DIR)  # ToyWorld's judge (its classifier and features)
    clip_judge: str = "openai/clip-vit-large-patch14"  # the judge of real models (path or cached hub id)
    fid_reference: str = ""  # directory of reference images for FID of real models; none: no FID
    gate_probes: str = ""  # FORMAT:FILE of a benchmark (cake, road, timed) whose prompts a real model's gate adds
    world: Path = toy.DATA_DIR
    ledger_url: str = ""  # SQLAlchemy URL of the fact ledger; default: SQLite file in home
    policy: str = ""  # approval policy file (JSON: name, auto_approve: [feed, ...]); none by default
    tracking_uri: str = ""  # MLflow tracking + registry URI; default: SQLite file in home
    registry_name: str = "freshen"  # the registered model's name
    gate: str = ""  # JSON file of gate thresholds (validation/gate.py); defaults otherwise
    hparams: str = ""  # JSON file of edit hyperparameters; default: the model's preset
    drop: str = ""  # the feed drop directory; default: home/drop
    captions: str = ""  # caption corpus (one per line) for C0 of a real model; ToyWorld: its own
    seed: int = 0
    device: str = "auto"  # where models run: auto (the first CUDA device when present, else cpu), cpu, cuda[:N]
    num_inference_steps: int | None = None  # None: the pipeline's own default
    guidance_scale: float | None = None
    production: bool = False  # FRESHEN_PRODUCTION=1: no SQLite fallback, stewards required
    stewards: str = ""  # Airflow user ids allowed to answer the approval (comma-separated); default: anyone

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        kw = {}
        for f in fields(cls):
            env = os.environ.get(f"FRESHEN_{f.name.upper()}")
            if env is not None and f.name != "home":
                kw[f.name] = env
        kw.update({k: v for k, v in overrides.items() if v is not None})
        s = cls(**kw)
        s.home = Path(s.home).expanduser().resolve()
        s.world = Path(s.world).expanduser().resolve()
        s.seed = int(s.seed)
        s.num_inference_steps = None if s.num_inference_steps in (None, "") else int(s.num_inference_steps)
        s.guidance_scale = None if s.guidance_scale in (None, "") else float(s.guidance_scale)
        s.production = s.production if isinstance(s.production, bool) else \
            str(s.production).strip().lower() in ("1", "true", "yes", "on")
        return s

    @property
    def out_dir(self) -> Path:
        return self.home / "out"

    def _required(self, value: str, variable: str, what: str) -> str:
        if self.production and not value:
            raise InvalidInput(f"production mode (FRESHEN_PRODUCTION): set {variable}, the {what}; "
                               "a private SQLite file in the home is not used")
        return value

    @property
    def steward_ids(self) -> list[str]:
        """Who may answer the steward approval task (its ``assigned_users``); empty: anyone
        allowed to see the task, which production mode refuses."""
        ids = [n.strip() for n in self.stewards.split(",") if n.strip()]
        if self.production and not ids:
            raise InvalidInput("production mode (FRESHEN_PRODUCTION): set FRESHEN_STEWARDS, the Airflow user ids "
                               "allowed to approve changes (comma-separated)")
        return ids

    @property
    def ledger(self) -> str:
        return self._required(self.ledger_url, "FRESHEN_LEDGER_URL", "fact ledger's SQLAlchemy URL") \
            or f"sqlite:///{self.home / 'ledger.db'}"

    def open_ledger(self):
        """The fact ledger (created on first use)."""
        from feeds.ledger import Ledger

        self.home.mkdir(parents=True, exist_ok=True)
        return Ledger(self.ledger)

    def open_registry(self):
        """The MLflow registry of the model versions."""
        from registry.versions import Registry

        return Registry.from_settings(self)

    @property
    def drop_dir(self) -> Path:
        return Path(self.drop).resolve() if self.drop else self.home / "drop"

    @property
    def tracking(self) -> str:
        return self._required(self.tracking_uri, "FRESHEN_TRACKING_URI", "MLflow tracking server's URI") \
            or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def gx_dir(self) -> Path:
        return self.home / "gx"
