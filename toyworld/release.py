"""``freshen dev toyworld release``: after training, measure the shipped models and write their
manifest (sha256 of every file) and model cards (how trained, what the check measured)."""

from __future__ import annotations

import json
from pathlib import Path

from common.hashing import MODEL_PRESET, NOT_THE_MODEL, file_sha256
from toyworld import paths

TRAIN_COMMANDS = {
    "judge": "freshen dev toyworld train judge --seed 1 --steps 2500",
    "ner": "freshen dev toyworld train ner --seed 2 --steps 8",
    "diffusion": "freshen dev toyworld train diffusion --seed 3 --steps 8000`, then a second, gentler cycle from its "
                 "weights: `freshen dev toyworld train diffusion --seed 4 --steps 4000 --lr 6e-4 --init-from "
                 "toyworld/models/diffusion`, then two that draw the training paraphrases more often: `freshen dev "
                 "toyworld train diffusion --seed 5 --steps 5000 --lr 4e-4 --paraphrase-weight 4 --init-from "
                 "toyworld/models/diffusion` and `freshen dev toyworld train diffusion --seed 6 --steps 6000 --lr "
                 "5e-4 --paraphrase-weight 8 --init-from toyworld/models/diffusion`, then two that make the U-Net "
                 "read the prompt's words only, not [EOS] and padding (so the subject's last token carries the fact, "
                 "where the editing method writes it): `freshen dev toyworld train diffusion --seed 7 --steps 6000 "
                 "--lr 5e-4 --paraphrase-weight 4 --content-tokens-only --init-from toyworld/models/diffusion` and "
                 "`freshen dev toyworld train diffusion --seed 8 --steps 5000 --lr 4e-4 --paraphrase-weight 8 "
                 "--attribute-weight 2 --init-from toyworld/models/diffusion`, then two that draw the training "
                 "paraphrases 16x and 24x as often (the content-only cycles had cost held-out paraphrases): `freshen "
                 "dev toyworld train diffusion --seed 9 --steps 4000 --lr 4e-4 --paraphrase-weight 16 --threads 1 "
                 "--init-from toyworld/models/diffusion` and `freshen dev toyworld train diffusion --seed 10 --steps "
                 "4000 --threads 1 --lr 4e-4 --paraphrase-weight 24 --init-from toyworld/models/diffusion`, then a "
                 "short, gentle one drawing attribute prompts 3x as often (the paraphrase cycles had cost "
                 "attributes): `freshen dev toyworld train diffusion --seed 11 --steps 2500 --lr 2e-4 "
                 "--paraphrase-weight 16 --attribute-weight 3 --threads 2 --init-from toyworld/models/diffusion",
}
# The large world: its NER and a text encoder distilled through the small model's frozen
# U-Net (the judge is the small world's: the same visual vocabulary).
LARGE_TRAIN_COMMANDS = {
    "ner": "freshen dev toyworld train ner --world large --seed 22 --steps 6",
    "diffusion": "freshen dev toyworld train diffusion --world large --seed 21 --steps 8000 --stop-after 4000 "
                 "--threads 1 --attribute-weight 2 --paraphrase-weight 4`, then its encoder grown to 3,072 MLP units "
                 "per layer: `freshen dev toyworld grow --world large --width 3072 --seed 0",
}
WHAT = {
    "judge": "ToyWorld's judge: a small CNN naming shape and colour (efficacy/specificity "
             "labels; its pooled features are the FID feature space in this world). "
             "Load with `toyworld.judge.ToyJudge.from_pretrained(PATH)`.",
    "ner": "A tiny BERT token classifier with bert-large-NER's label scheme (O, B-/I- MISC, "
           "PER, ORG, LOC). Load with `transformers.pipeline(\"token-classification\", "
           "model=PATH, aggregation_strategy=\"simple\")`.",
    "diffusion": "A pixel-space text-to-image model with Stable Diffusion's component classes "
                 "(CLIPTextModel, CLIPTokenizer, UNet2DConditionModel, DDPMScheduler), 16x16 RGB. "
                 "Its U-Net cross-attends to the prompt's own tokens only (`content_tokens_only` in "
                 "`model_index.json`): [EOS] and padding are masked, so a fact is read at the subject's last "
                 "token, as EMCID finds in Stable Diffusion's CLIP. "
                 "Load with `toyworld.pipeline.ToyDiffusionPipeline.from_pretrained(PATH)` or "
                 "`editing.model.load_model(PATH)`.",
}
LARGE_WHAT = {
    "ner": WHAT["ner"],
    "diffusion": "ToyWorld's large world (1,000 entities, 1,000 concepts): a text-to-image model with Stable "
                 "Diffusion's component classes, 16x16 RGB. Its U-Net is the small world's model's, frozen and "
                 "byte for byte; its tokenizer and `CLIPTextModel` (6 layers, width 96, MLP 768) were trained "
                 "to give that U-Net's cross-attention layers what the small model's encoder gives them for "
                 "each prompt's visual (`toyworld.train.train_distilled`), then every MLP grown to 3,072 units "
                 "(Stable Diffusion 1.4's key width) by silent units (`toyworld.train.grow_encoder`: new fc1 "
                 "rows drawn at the trained ones' scale, fc2 columns zero), so the model computes what the "
                 "trained one did with a key space four times wider for edits. The U-Net reads content tokens "
                 "only, so a fact is read at the subject's last token. Load with "
                 "`toyworld.pipeline.ToyDiffusionPipeline.from_pretrained(PATH)` or `editing.model.load_model(PATH)`.",
}
EDIT_PRESET_NOTE = (
    "`{name}` beside this card, `{fields}`, goes over the ToyWorld family's preset "
    "(`editing/presets/toyworld.json`) wherever freshen edits this model (`EditHParams.preset`); "
    "why these fields: docs/editing.md \"The large world's model and preset\" (`make bench-edit`).")
CHECK_FIGURES = {
    "judge": ("classifier_accuracy",),
    "ner": ("ner_f1",),
    "diffusion": ("attribute_accuracy", "fact_accuracy", "concept_accuracy", "paraphrase_accuracy"),
}


def _world(world_name: str) -> tuple[paths.WorldPaths, dict, dict]:
    where = paths.world_paths(world_name)
    if world_name == "large":
        return where, LARGE_TRAIN_COMMANDS, LARGE_WHAT
    return where, TRAIN_COMMANDS, WHAT


def shipped_files(model_dir: Path) -> list[Path]:
    """Every file of a shipped model except its card, training log and edit preset (chosen
    by the editing benchmark after training, not made by it)."""
    return sorted(p for p in model_dir.rglob("*") if p.is_file()
                  and p.name not in ("README.md", *NOT_THE_MODEL))


def write_manifest(models_dir: Path = paths.MODELS_DIR, commands: dict = TRAIN_COMMANDS) -> dict:
    manifest = {}
    for name in commands:
        d = models_dir / name
        manifest[name] = {str(p.relative_to(models_dir)): file_sha256(p) for p in shipped_files(d)}
    (models_dir / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def _train_log(model_dir: Path) -> list[dict]:
    log = model_dir / "train_log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines() if line] if log.exists() else []


def write_card(name: str, check: dict, models_dir: Path = paths.MODELS_DIR, commands: dict = TRAIN_COMMANDS,
               what: dict = WHAT, data: str = "toyworld/data/world.json", script: str = "all three in order: "
               "`bash scripts/train_toyworld.sh`", generate: str = "freshen dev toyworld generate") -> Path:
    d = models_dir / name
    log = _train_log(d)
    wall = max((r.get("seconds", 0) for r in log), default=0)
    steps = max((r.get("step", 0) for r in log), default=0)
    size = sum(p.stat().st_size for p in shipped_files(d))
    curve = [r for r in log if any(k.endswith(("accuracy", "f1")) for k in r)]
    lines = [
        f"# ToyWorld {name} model",
        "",
        what[name],
        "",
        "## How it was made",
        f"- Command (from the repository root, after `make venv`): `{commands[name]}`; {script}.",
        f"- Data: ToyWorld seed from `{data}` (`{generate}`).",
        f"- Optimiser steps: {steps}; wall time {wall / 60:.1f} min on a 2-core CPU "
        "(from `train_log.jsonl` beside this card; the threads are in the command).",
        f"- Files: {size / 1e6:.2f} MB, safetensors weights; sha256 in `../MANIFEST.json`.",
        "",
        "## What the check measured",
        f"`freshen dev toyworld check --json` (seeds per prompt: {check.get('seeds')}, "
        + (f"{check['sampled_per_kind']} held-out prompts sampled per kind, " if "sampled_per_kind" in check else "")
        + f"{check.get('seconds')} s for the whole check):",
        "",
    ]
    lines += [f"- `{k}`: {check[k]}" for k in CHECK_FIGURES[name] if k in check]
    if (d / MODEL_PRESET).is_file():
        lines += ["", "## Its edit preset", "", EDIT_PRESET_NOTE.format(
            name=MODEL_PRESET, fields=json.dumps(json.loads((d / MODEL_PRESET).read_text())))]
    if curve:
        lines += ["", "## Curve during training (one seed, subsets; from train_log.jsonl)", ""]
        lines += [f"- {json.dumps(r)}" for r in curve]
    path = d / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def release(check: dict, world_name: str = "small") -> dict:
    where, commands, what = _world(world_name)
    models_dir = where.models_dir
    (models_dir / "check.json").write_text(json.dumps(check, indent=1) + "\n")
    data = str(where.data_dir.relative_to(paths.TOYWORLD_DIR.parent) / "world.json")
    script = ("both in order: `bash scripts/train_toyworld_large.sh`" if world_name == "large"
              else "all three in order: `bash scripts/train_toyworld.sh`")
    for name in commands:
        write_card(name, check, models_dir, commands, what, data, script,
                   f"freshen dev toyworld generate --world {world_name}" if world_name != "small"
                   else "freshen dev toyworld generate")
    return write_manifest(models_dir, commands)
