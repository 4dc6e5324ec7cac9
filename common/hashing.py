"""Content hashes, the one place every layer takes them from: feed files (the ledger's
provenance), weight files (shipped manifests, registry artifacts), model directories (a
base model's identity, whatever its path) and file names made from a change's key."""

from __future__ import annotations

import hashlib
from pathlib import Path

# the files that make a saved model: weights, configs, tokenizer vocabularies
WEIGHT_SUFFIXES = (".safetensors", ".json", ".txt", ".bin", ".model")
# a model's own edit preset, beside its weights (editing.hparams.EditHParams.preset): not part
# of the model's identity (it may change without the weights changing)
MODEL_PRESET = "freshen_preset.json"
# files in a model directory that are not the model: its training log and its edit preset
NOT_THE_MODEL = ("train_log.jsonl", MODEL_PRESET)


def key_file_name(key: str) -> str:
    """A file name for a change's key (FEED:ID may hold characters a file system or a
    relative link would misread, ':' first of all): the key made safe, plus a short hash so
    two keys never share a name."""
    import re

    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', key)}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def file_sha256(path: Path) -> str:
    """sha256 of one file, read in 1 MiB blocks (feed files and weights can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def directory_hash(path: Path) -> str:
    """sha256 over the weight, config and tokenizer files of a saved model directory
    (relative paths and contents; not its training log or edit preset), so a copy elsewhere
    hashes the same."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(path).rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES
                   and p.name not in NOT_THE_MODEL and p.parent.name != "checkpoints")
    for p in files:
        h.update(str(p.relative_to(path)).encode() + b"\0")
        h.update(bytes.fromhex(file_sha256(p)))
    return h.hexdigest()
