"""Model versions on the MLflow registry: the base as version 1, each edit batch as a new
version on top of its parent, aliases ``champion`` (promoted) and ``candidate`` (waiting).

A version is *referenced*, never copied: its run holds the batch's low-rank factors
(``edit/``, which also carry the keys the next sequential batch needs) and a manifest
naming the base (path or hub id + content hash) and the chain of edits from the base up to
this version, by absolute artifact URI and sha256. Materialising a version = load the
base, check its hash, apply the chain (``Edit.apply``); no tracking server is needed to
follow the chain, so ``mlflow.pyfunc.load_model("models:/NAME@champion")`` works anywhere
the artifacts can be read.

Registration is the last step of ``register_batch``: the run's artifacts are uploaded and
the run is marked complete first, then the version is created with all its tags at once.
A crash in between leaves a finished run and no version; a rerun of the same batch (same
parent, facts, hyperparameters: the ``batch_key``) registers that run instead of editing
again, and an already registered batch is returned as is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from common.errors import UserError
from common.hashing import directory_hash, file_sha256
from editing.model import DiffusionModel, load_model, resolve_local
from editing.state import EDIT_FILE, Edit, EditState
from feeds.contract import Fact
from registry.pyfunc import signature as pyfunc_signature

log = logging.getLogger(__name__)

DEFAULT_NAME = "freshen"
EXPERIMENT = "freshen-refresh"
MANIFEST = "manifest.json"
CHAMPION, CANDIDATE = "champion", "candidate"
T = "freshen."  # prefix of every tag this module writes


class RegistryError(UserError, RuntimeError):
    """The registry's state forbids the operation (no such version, no champion, a base already there)."""


class BaseMismatch(RegistryError):
    """The base weights on disk are not the ones the version was made from."""


def code_version() -> str:
    try:
        from importlib.metadata import version

        pkg = version("freshen")
    except Exception:  # noqa: BLE001 - running from a source tree without metadata
        pkg = "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{pkg}+{sha}" if sha else pkg


def batch_key(parent: int, base_hash: str, facts: list[Fact], hparams: dict) -> str:
    """What makes two batches the same: parent, base, facts (key + content), hyperparameters."""
    body = json.dumps({"parent": parent, "base": base_hash,
                       "facts": sorted((f.key, f.content_hash, f.source, f.target or "") for f in facts),
                       "hparams": hparams}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def materialise(manifest: dict, cache_dir: Path, verify_base: bool = True, device: str | None = None
                ) -> DiffusionModel:
    """Base + chain of edits of a manifest, as a ``DiffusionModel`` (edited in memory) on
    ``device`` (``editing.model.resolve_device``: by default ``FRESHEN_DEVICE``, else CUDA when present)."""
    model = load_base(manifest, verify_base, device)
    for edit in chain_edits(manifest, cache_dir):
        edit.apply(model)
    return model


def load_base(manifest: dict, verify: bool = True, device: str | None = None) -> DiffusionModel:
    """The unedited base model of a manifest, checked against its recorded content hash."""
    base = manifest["base"]
    model = load_model(base["ref"], device=device)
    if verify and model.base_hash != base["hash"]:
        raise BaseMismatch(
            f"base model {base['ref']!r} has content hash {model.base_hash[:16]}..., but this version "
            f"was made from {base['hash'][:16]}...: the base weights changed since (tampered or "
            "replaced). Restore the original base or register a new base with `freshen registry init`.")
    return model


def chain_edits(manifest: dict, cache_dir: Path) -> list[Edit]:
    """The edits of a manifest's chain, downloaded once into ``cache_dir`` and checked."""
    import mlflow

    out = []
    for link in manifest["chain"]:
        local = cache_dir / "edits" / link["sha256"]
        if not (local / EDIT_FILE).is_file():
            tmp = Path(tempfile.mkdtemp(dir=cache_dir))
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=link["edit_uri"], dst_path=str(tmp)))
            local.parent.mkdir(parents=True, exist_ok=True)
            if not local.exists():
                got.rename(local)
            shutil.rmtree(tmp, ignore_errors=True)
        if file_sha256(local / EDIT_FILE) != link["sha256"]:
            raise RegistryError(f"edit of run {link['run_id']} at {link['edit_uri']} does not match "
                                f"its recorded sha256 {link['sha256'][:16]}...")
        out.append(Edit.load(local))
    return out


@dataclass
class Version:
    number: int
    run_id: str
    tags: dict
    aliases: list[str]
    manifest: dict

    @property
    def parent(self) -> int | None:
        return self.manifest.get("parent")

    @property
    def gate(self) -> str:
        return self.tags.get(T + "gate", "")

    @property
    def facts(self) -> list[Fact]:
        """The fact changes this version's own batch wrote (none for the base)."""
        return [Fact.from_json(f) for f in self.manifest.get("facts", [])]

    def summary(self) -> dict:
        return {"version": self.number, "parent": self.parent, "aliases": self.aliases,
                "facts": len(self.manifest.get("facts", [])), "gate": self.gate, "run_id": self.run_id}


class Registry:
    """One registered model (``name``) in an MLflow tracking store."""

    def __init__(self, tracking_uri: str, artifact_root: Path | str | None = None, name: str = DEFAULT_NAME,
                 cache_dir: Path | None = None, device: str | None = None):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # no run links on stdout
        import mlflow
        from mlflow import MlflowClient

        self.mlflow = mlflow
        self.tracking_uri = tracking_uri
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.name = name
        self.device = device  # where versions are materialised (None: FRESHEN_DEVICE, else CUDA when present)
        self.cache_dir = Path(cache_dir or Path(tempfile.gettempdir()) / "freshen-cache")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        exp = self.client.get_experiment_by_name(EXPERIMENT)
        if exp is None:
            location = Path(artifact_root).resolve().as_uri() if artifact_root else None
            self.experiment_id = self.client.create_experiment(EXPERIMENT, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id
        self._models: dict[int, DiffusionModel] = {}
        self._manifests: dict[str, dict] = {}

    @classmethod
    def from_settings(cls, settings) -> Registry:
        settings.home.mkdir(parents=True, exist_ok=True)
        tracking = settings.tracking
        # a tracking server keeps the artifacts behind itself (mlflow-artifacts:, served by it);
        # a local store keeps them in the home
        local = None if tracking.startswith(("http://", "https://")) else settings.home / "mlartifacts"
        return cls(tracking, local, settings.registry_name, settings.home / "cache", settings.device)

    # -- reading -----------------------------------------------------------------
    def exists(self) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            return False
        return bool(self.client.search_model_versions(f"name='{self.name}'", max_results=1))

    def version(self, number: int | str) -> Version:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version(self.name, str(number))
        except MlflowException as exc:
            raise RegistryError(f"model {self.name!r} has no version {number}") from exc
        manifest = self._manifest(mv.run_id)
        return Version(int(mv.version), mv.run_id, dict(mv.tags), list(mv.aliases), manifest)

    def _manifest(self, run_id: str) -> dict:
        """A run's manifest (written once, never changed: read once per Registry)."""
        if run_id not in self._manifests:
            with tempfile.TemporaryDirectory() as tmp:
                m = json.loads(Path(self.mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=MANIFEST, dst_path=tmp)).read_text())
            # manifests written before 2026-12-02 call the base's family "kind"
            if "base" in m and "family" not in m["base"]:
                m["base"]["family"] = m["base"].get("kind")
            self._manifests[run_id] = m
        return self._manifests[run_id]

    def versions(self) -> list[int]:
        return sorted(int(mv.version) for mv in self.client.search_model_versions(f"name='{self.name}'"))

    def alias(self, alias: str) -> int | None:
        from mlflow.exceptions import MlflowException

        try:
            return int(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException:
            return None

    def champion(self) -> int:
        v = self.alias(CHAMPION)
        if v is None:
            raise RegistryError(f"model {self.name!r} has no champion: run `freshen registry init` first")
        return v

    def load(self, number: int, verify_base: bool = True) -> DiffusionModel:
        """A fresh materialised copy of a version (the copy is the caller's to edit)."""
        import copy

        if number not in self._models:
            self._models[number] = materialise(self.version(number).manifest, self.cache_dir, verify_base,
                                               self.device)
        return copy.deepcopy(self._models[number])

    def base_model(self, number: int) -> DiffusionModel:
        """The unedited base model of a version, checked against its recorded hash."""
        return load_base(self.version(number).manifest, device=self.device)

    def lineage(self, number: int) -> list[int]:
        """Versions from the base up to ``number``, following parents."""
        out = [number]
        while (parent := self.version(out[-1]).parent) is not None:
            out.append(parent)
        return out[::-1]

    def live_facts(self, number: int) -> list[tuple[int, Fact]]:
        """The live fact set of version ``number``: along its lineage, the latest fact of
        each source (case and spacing ignored) with the version that brought it, in the order
        they became live; a revert takes its source out."""
        from editing.requests import normalise

        live: dict[str, tuple[int, Fact]] = {}
        for n in self.lineage(number):
            for f in self.version(n).facts:
                live.pop(normalise(f.source), None)
                if f.kind != "revert":
                    live[normalise(f.source)] = (n, f)
        return list(live.values())

    def chain(self, number: int) -> list[Edit]:
        """The edits that make version ``number`` from its base, in order."""
        return chain_edits(self.version(number).manifest, self.cache_dir)

    def edit_state(self, number: int, base: DiffusionModel | None = None) -> EditState:
        """The sequential state a batch on top of ``number`` starts from (Kp Kp^T per layer).
        Versions store no keys (``upload_batch``): the chain is replayed on the base model and
        each batch's keys recomputed right after it, one forward pass per batch. Given
        ``base`` (from ``base_model``), the chain is replayed on it, which then *is* the
        version's model: one load serves C0, the state and the edit."""
        manifest = self.version(number).manifest
        edits = chain_edits(manifest, self.cache_dir)
        if base is None and not all(e.has_keys for e in edits):
            base = load_base(manifest, device=self.device)
        return EditState.from_chain(edits, base)

    # -- writing -----------------------------------------------------------------
    def init(self, base: str, by: str = "freshen") -> Version:
        """Register ``base`` as version 1 (and champion). Idempotent for the same base (checked by
        content hash, without loading the model)."""
        if self.exists():
            v1 = self.version(1)
            if v1.manifest["base"]["hash"] != directory_hash(resolve_local(base)):
                raise RegistryError(f"model {self.name!r} already has a base ({v1.manifest['base']['ref']}) "
                                    "with other weights; register another base under another name "
                                    "(FRESHEN_REGISTRY_NAME) or in another home (--home / FRESHEN_HOME)")
            return v1
        model = load_model(base)
        manifest = {"name": self.name, "parent": None, "base": self._base_entry(base, model), "chain": [],
                    "facts": [], "hparams": None, "code_version": code_version(), "created_by": by,
                    "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
        run_id = self._upload(manifest, None, {T + "role": "base", T + "batch_key": "base"})
        mv = self._create_version(run_id, {T + "parent": "", T + "facts": "0", T + "gate": "base"})
        self.client.set_registered_model_alias(self.name, CHAMPION, mv)
        return self.version(mv)

    @staticmethod
    def _base_entry(ref: str, model: DiffusionModel) -> dict:
        path = Path(ref)
        ref = str(path.resolve()) if path.exists() else ref
        return {"ref": ref, "hash": model.base_hash, "family": model.family}

    def find_batch(self, key: str) -> int | None:
        found = self.client.search_model_versions(f"name='{self.name}' and tag.`{T}batch_key`='{key}'")
        return min(int(mv.version) for mv in found) if found else None

    def pending(self) -> list[int]:
        """Versions registered and never gated (tag ``gate`` still ``pending``), oldest first."""
        found = self.client.search_model_versions(f"name='{self.name}' and tag.`{T}gate`='pending'")
        return sorted(int(mv.version) for mv in found)

    def orphan_run(self, key: str) -> str | None:
        """A run of this batch whose artifacts are complete but which never became a version."""
        runs = self.client.search_runs([self.experiment_id],
                                       f"tags.`{T}batch_key` = '{key}' and tags.`{T}complete` = 'true'",
                                       max_results=1)
        return runs[0].info.run_id if runs else None

    def upload_batch(self, parent: int, edit: Edit, facts: list[Fact], hparams: dict, key: str,
                     by: str = "freshen", extra: dict | None = None) -> str:
        """Step 1 of a registration: a finished run holding the batch's artifacts."""
        p = self.version(parent)
        # a consolidated edit is the base plus itself: its chain starts afresh (the parent
        # stays the lineage); a sequential one goes on top of the parent's chain
        manifest = {"name": self.name, "parent": parent, "base": p.manifest["base"],
                    "chain": [] if edit.from_base else list(p.manifest["chain"]),
                    "facts": [f.to_json() for f in facts], "hparams": hparams,
                    "code_version": code_version(), "created_by": by, "batch_key": key,
                    "created_at": datetime.now(UTC).isoformat(timespec="seconds"), **(extra or {})}
        return self._upload(manifest, edit, {T + "role": "batch", T + "batch_key": key,
                                             T + "parent": str(parent)})

    def register_run(self, run_id: str) -> int:
        """Step 2: the version, created from a complete run with all its tags at once."""
        run = self.client.get_run(run_id)
        if run.data.tags.get(T + "complete") != "true":
            raise RegistryError(f"run {run_id} is not complete; it cannot become a version")
        key = run.data.tags[T + "batch_key"]
        existing = self.find_batch(key)
        if existing is not None:
            return existing
        manifest = self._manifest(run_id)
        version = self._create_version(run_id, {
            T + "parent": str(manifest["parent"]), T + "facts": str(len(manifest["facts"])),
            T + "batch_key": key, T + "gate": "pending"})
        self.client.set_registered_model_alias(self.name, CANDIDATE, str(version))
        return version

    def register_batch(self, parent: int, edit: Edit, facts: list[Fact], hparams: dict, key: str,
                       by: str = "freshen", extra: dict | None = None) -> int:
        existing = self.find_batch(key)
        if existing is not None:
            return existing
        run_id = self.orphan_run(key) or self.upload_batch(parent, edit, facts, hparams, key, by, extra)
        return self.register_run(run_id)

    def _upload(self, manifest: dict, edit: Edit | None, tags: dict) -> str:
        with tempfile.TemporaryDirectory() as tmp, self.mlflow.start_run(
                experiment_id=self.experiment_id, tags=tags) as run:
            tmp = Path(tmp)
            if edit is not None:
                edit.save(tmp / "edit", keys=False)  # recomputed on replay (edit_state)
                self.mlflow.log_artifacts(str(tmp / "edit"), "edit")
                manifest["chain"].append({"run_id": run.info.run_id,
                                          "edit_uri": f"{run.info.artifact_uri}/edit",
                                          "sha256": file_sha256(tmp / "edit" / EDIT_FILE)})
            manifest["run_id"] = run.info.run_id
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
            self.mlflow.log_artifact(str(tmp / MANIFEST))
            with warnings.catch_warnings():  # no input example, on purpose: registry.pyfunc.signature
                warnings.filterwarnings("ignore", message=".*input example was not provided")
                info = self.mlflow.pyfunc.log_model(
                    name="model", python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
                    artifacts={"manifest": str(tmp / MANIFEST)}, signature=pyfunc_signature(),
                    pip_requirements=["freshen"])
            self.mlflow.log_params({"parent": manifest["parent"], "facts": len(manifest["facts"]),
                                    "base_hash": manifest["base"]["hash"][:16]})
            if edit is not None and "update_norm" in edit.meta:  # ||W_l - W0_l|| / ||W0_l|| per layer
                self.mlflow.log_metrics({f"update_norm_layer{l}": v for l, v in edit.meta["update_norm"].items()})
            self.mlflow.set_tag(T + "model_uri", info.model_uri)
            self.mlflow.set_tag(T + "model_id", info.model_id)
            self.mlflow.set_tag(T + "complete", "true")
        return run.info.run_id

    def _create_version(self, run_id: str, tags: dict) -> int:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            self.client.create_registered_model(self.name, description="freshen: base + sequential edits")
        run_tags = self.client.get_run(run_id).data.tags
        # the LoggedModel (MLflow 3); a tracking server wants its id beside its models:/ URI
        mv = self.client.create_model_version(self.name, source=run_tags[T + "model_uri"], run_id=run_id, tags=tags,
                                              model_id=run_tags.get(T + "model_id"))
        return int(mv.version)

    def tag(self, number: int, **tags: str) -> None:
        for k, v in tags.items():
            self.client.set_model_version_tag(self.name, str(number), T + k, str(v))

    def set_alias(self, alias: str, number: int) -> None:
        self.client.set_registered_model_alias(self.name, alias, str(number))

    def drop_alias(self, alias: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_registered_model_alias(self.name, alias)
        except MlflowException:
            pass

    def log_artifacts(self, number: int, local: Path, artifact_path: str) -> str:
        """Files added to a version's run after registration (gate report, grid)."""
        run_id = self.version(number).run_id
        if local.is_dir():
            self.client.log_artifacts(run_id, str(local), artifact_path)
        else:
            self.client.log_artifact(run_id, str(local), artifact_path)
        return f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"
