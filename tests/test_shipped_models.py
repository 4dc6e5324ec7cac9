"""The three shipped ToyWorld models: intact, loadable through the production code paths,
and doing their jobs on held-out inputs."""

import json

import numpy as np
import pytest

from common.hashing import MODEL_PRESET, file_sha256
from feeds.ner import NerTagger
from toyworld import paths
from toyworld.release import EDIT_PRESET_NOTE, shipped_files
from toyworld.world import render


def test_weights_match_the_manifest():
    manifest = json.loads(paths.MANIFEST.read_text())
    assert set(manifest) == {"diffusion", "ner", "judge"}
    for name, files in manifest.items():
        listed = set(files)
        on_disk = {str(p.relative_to(paths.MODELS_DIR)) for p in shipped_files(paths.MODELS_DIR / name)}
        assert listed == on_disk, name
        for rel, digest in files.items():
            assert file_sha256(paths.MODELS_DIR / rel) == digest, rel
        assert any(rel.endswith(".safetensors") for rel in files), name


def test_weights_are_small_and_safetensors_only():
    total = sum(p.stat().st_size for p in paths.MODELS_DIR.rglob("*") if p.is_file())
    assert total < 30e6
    assert not [p for p in paths.MODELS_DIR.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]


def test_every_model_has_a_card_with_its_command_and_figures():
    check = json.loads((paths.MODELS_DIR / "check.json").read_text())
    for name, figure in (("diffusion", "fact_accuracy"), ("ner", "ner_f1"), ("judge", "classifier_accuracy")):
        card = (paths.MODELS_DIR / name / "README.md").read_text()
        assert f"freshen dev toyworld train {name}" in card and "--seed" in card
        assert f"`{figure}`: {check[figure]}" in card


@pytest.fixture(scope="module")
def tagger():
    return NerTagger(str(paths.NER_DIR))


def test_ner_tags_heldout_sentences(world, tagger):
    rows = world.ner_heldout[:80]
    found = tagger([r["text"] for r in rows])
    gold = sum(len(r["entities"]) for r in rows)
    hits = sum(len({(e.start, e.end, e.label) for e in f}
                   & {(g["start"], g["end"], g["label"]) for g in r["entities"]})
               for f, r in zip(found, rows, strict=True))
    assert hits / gold >= 0.9


def test_ner_spans_index_the_source_exactly(world, tagger):
    prompts = [f"a painting of {f.prompt}" for f in world.facts[::9]]
    for prompt, ents, f in zip(prompts, tagger(prompts), world.facts[::9], strict=True):
        assert all(prompt[e.start:e.end] == e.text for e in ents)
        kind = next(e.kind for e in world.entities if e.name == f.entity)
        assert (f.entity, kind) in {(e.text, e.label) for e in ents}, prompt


def test_ner_load_error_names_the_model():
    from editing.model import ModelLoadError

    with pytest.raises(ModelLoadError, match="no-such/ner-model"):
        NerTagger("no-such/ner-model")


def test_judge_names_fresh_renders(world, judge):
    rng = np.random.default_rng(99)
    truth = [v for v in world.visuals for _ in range(5)]
    seen = judge.classify(np.stack([render(v, rng) for v in truth]))
    assert sum(a == b for a, b in zip(seen, truth, strict=True)) / len(truth) >= 0.99


def test_diffusion_model_draws_attribute_prompts(world, toy_model, judge):
    pairs = world.attribute_prompts()[::3]
    images = toy_model.generate([p for p, _ in pairs], seed=0)
    seen = judge.classify(images)
    assert sum(a == v for a, (_, v) in zip(seen, pairs, strict=True)) / len(pairs) >= 0.75


def test_the_large_world_models_match_their_manifest_and_share_the_small_unet():
    """The large world ships its own NER and diffusion model (tokenizer and encoder of its
    own, the small model's U-Net unchanged), with cards, check and manifest."""
    large = paths.world_paths("large").models_dir
    manifest = json.loads((large / "MANIFEST.json").read_text())
    assert set(manifest) == {"diffusion", "ner"}
    for name, files in manifest.items():
        on_disk = {str(p.relative_to(large)) for p in shipped_files(large / name)}
        assert set(files) == on_disk, name
        for rel, digest in files.items():
            assert file_sha256(large / rel) == digest, rel
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert file_sha256(large / "diffusion" / unet) == file_sha256(paths.DIFFUSION_DIR / unet)
    total = sum(p.stat().st_size for p in large.rglob("*") if p.is_file())
    assert total < 30e6 and not [p for p in large.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    check = json.loads((large / "check.json").read_text())
    assert check["entities"] >= 1000 and check["concepts"] >= 1000
    card = (large / "diffusion" / "README.md").read_text()
    assert "--world large" in card and f"`concept_accuracy`: {check['concept_accuracy']}" in card
    # its edit preset, outside the manifest, is the one its card names
    preset = json.loads((large / "diffusion" / MODEL_PRESET).read_text())
    assert EDIT_PRESET_NOTE.format(name=MODEL_PRESET, fields=json.dumps(preset)) in card
