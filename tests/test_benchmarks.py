"""The public benchmarks: CAKE's published file (bench/data/cake) imported whole and ingested
by the real rules with Stable Diffusion's own tokenizer; RoAD and TIMED rows written here in
their published columns; ``freshen bench suite`` end to end on a tiny Stable Diffusion and a
tiny CLIP built here with that tokenizer."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from feeds.benchmarks import load
from feeds.ledger import Ledger

CAKE = Path(__file__).resolve().parents[1] / "bench" / "data" / "cake" / "CAKE.json"


def freshen(*args: str, home: Path, model: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "FRESHEN_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    if model is not None:
        env["FRESHEN_MODEL"] = str(model)
    return subprocess.run([sys.executable, "-m", "freshen.cli", *args], capture_output=True, text=True,
                          env=env, timeout=1200)


@pytest.fixture(scope="module")
def sd_models(sd_tokenizer, tmp_path_factory):
    """A tiny random Stable Diffusion pipeline and a tiny random CLIP, both with SD's tokenizer."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    text = dict(vocab_size=len(sd_tokenizer), hidden_size=32, intermediate_size=64, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=sd_tokenizer.bos_token_id,
                eos_token_id=sd_tokenizer.eos_token_id, pad_token_id=sd_tokenizer.pad_token_id)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                          latent_channels=4, norm_num_groups=8, sample_size=16),
        text_encoder=CLIPTextModel(CLIPTextConfig(num_hidden_layers=3, **text)), tokenizer=sd_tokenizer,
        unet=UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                  block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                  norm_num_groups=8, attention_head_dim=8),
        scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd = tmp_path_factory.mktemp("tiny-sd-77")
    pipe.save_pretrained(sd, safe_serialization=True)
    clip = tmp_path_factory.mktemp("tiny-clip-77")
    CLIPModel(CLIPConfig(text_config=dict(num_hidden_layers=2, **text),
                         vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, image_size=16, patch_size=4),
                         projection_dim=16)).save_pretrained(clip, safe_serialization=True)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
                  tokenizer=sd_tokenizer).save_pretrained(clip)
    return sd, clip


def test_cake_published_file_imports_whole_and_ingests_with_sd_tokens(tmp_path, sd_models):
    sd, _ = sd_models
    feed = tmp_path / "cake.jsonl"
    out = freshen("feeds", "import", "--format", "cake", str(CAKE), "--out", str(feed), "--json", home=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    s = json.loads(out.stdout)
    assert (s["edits"], s["written"], len(s["merged"]), s["skipped"]) == (300, 100, 200, [])
    assert s["probes"] == {"efficacy": 100, "generality": 500, "kgemap": 300, "specificity": 300, "compo": 300}
    rows = [json.loads(line) for line in feed.read_text().splitlines()]
    ids = {r["id"] for r in rows}
    assert len(rows) == 100 and {m["same_as"] for m in s["merged"]} <= ids
    first = rows[0]
    assert (first["source"], first["target"]) == ("The president of the United States", "Tim Cook")
    (ent,) = first["entities"]
    assert first["source"][ent["start"]:ent["end"]] == ent["text"] == "the United States"

    out = freshen("feeds", "ingest", str(feed), "--json", home=tmp_path / "home", model=sd)
    assert out.returncode == 0, out.stderr[-2000:]
    (summary,) = json.loads(out.stdout)
    assert (summary["accepted"], summary["rejected"], summary["conflicts"]) == (100, 0, 0), summary["rejections"]
    ledger = Ledger.at(tmp_path / "home" / "ledger.db")
    change = next(c for c in ledger.changes() if c.key == "cake:cake-001")
    assert [(e["text"], e["start"], e["end"]) for e in change.entities] == [("the United States", 17, 34)]
    # the feed's entities are kept: the NER model tagged none of these changes
    assert [e.detail for e in ledger.history(change.key) if e.event == "entities"] == [
        json.dumps([["the United States", "MISC"]]) + " (given by the feed)"]


ROAD = [  # the published columns (one positive and one negative here; the file has five)
    ["Type", "Prompt", "Oracle", "Old", "New", "Positive1", "Positive_oracle1", "Positive_old1", "Positive_new1",
     "Negative1", "Negative_new1"],
    ["Role", "The mayor of Velmora", "Ada Quill as the mayor of Velmora", "Bo Renn", "Ada Quill",
     "The mayor of Velmora at a desk", "Ada Quill as the mayor of Velmora at a desk", "Bo Renn at a desk",
     "Ada Quill at a desk", "The mayor of Ostrel", "Ada Quill"],
    ["Appearance", "The flag of Ostrel", "The flag of Ostrel in green", "The flag of Ostrel", "A green flag",
     "", "", "", "", "The flag of Velmora", "A green flag"],
    ["Role", "The coach of the Harriers", "", "Cy Dale", "", "The coach of the Harriers running", "",
     "Cy Dale running", "x", "A referee", "x"],
]

TIMED = """old,new,positive1,gt1,positive2,gt2,negative1,gn1
A kettle,A red kettle,A kettle on a stove,A red kettle on a stove,Two kettles,Two red kettles,A teapot,A red teapot
A kettle,A glass kettle,A kettle on a stove,A glass kettle on a stove,,,A teapot,A glass teapot
A lamp,A paper lamp,A lamp on a desk,A paper lamp on a desk,,,A candle,A paper candle
"""


def test_road_and_timed_rows_become_changes_probes_and_passes(tmp_path, sd_models):
    import csv

    with open(tmp_path / "road.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(ROAD)
    road = load("road", tmp_path / "road.csv")
    s = road.summary()
    assert (s["edits"], s["written"]) == (3, 2)
    (skip,) = s["skipped"]
    assert skip["entry"] == "line 4" and "column 'New'" in skip["reason"]
    assert s["probes"] == {"efficacy": 2, "generality": 1, "specificity": 2}
    eff = next(p for p in road.probes if p.metric == "efficacy" and p.edits == ["road-001"])
    assert (eff.prompt, eff.expect, eff.versus) == ("The mayor of Velmora", "Ada Quill", "Bo Renn")
    spec = next(p for p in road.probes if p.metric == "specificity" and p.edits == ["road-001"])
    assert (spec.prompt, spec.expect, spec.versus) == ("The mayor of Ostrel", "The mayor of Ostrel", "Ada Quill")
    assert road.edits[1].ref == "RoAD road.csv line 3 (Appearance)"

    (tmp_path / "timed.csv").write_text(TIMED)
    feed = tmp_path / "timed.jsonl"
    out = freshen("feeds", "import", "--format", "timed", str(tmp_path / "timed.csv"), "--out", str(feed), "--json",
                  home=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    s = json.loads(out.stdout)
    assert (s["edits"], s["written"], s["skipped"]) == (3, 3, [])
    assert s["repeated_sources"] == {"A kettle": ["timed-001", "timed-002"]}
    assert [[e.id for e in p] for p in load("timed", tmp_path / "timed.csv").passes()] == [
        ["timed-001", "timed-003"], ["timed-002"]]
    # one model holds one target per source: the ledger holds the two kettles as a conflict
    out = freshen("feeds", "ingest", str(feed), "--json", home=tmp_path / "home", model=sd_models[0])
    (summary,) = json.loads(out.stdout)
    assert (summary["lines"], summary["accepted"], summary["conflicts"], summary["rejected"]) == (3, 2, 1, 0)
    assert sorted(c.key for c in Ledger.at(tmp_path / "home" / "ledger.db").changes("conflict")) == [
        "timed:timed-001", "timed:timed-002"]


def test_unreadable_benchmark_files_name_themselves(tmp_path):
    from common.errors import InvalidInput, NotFound

    with pytest.raises(NotFound, match="nope.json"):
        load("cake", tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(InvalidInput, match="single_edit"):
        load("cake", tmp_path / "bad.json")
    (tmp_path / "bad.csv").write_text("old,newer\na,b\n")
    with pytest.raises(InvalidInput, match=r"missing columns \['new'\]"):
        load("timed", tmp_path / "bad.csv")


def test_suite_runs_cake_on_a_tiny_sd_and_writes_every_metric(tmp_path, sd_models):
    from PIL import Image

    sd, clip = sd_models
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(["a photo of a dog", "a city at night", "a bowl of fruit on a table",
                                   "two people walking in the rain", "a red car by the sea",
                                   "the flag of a country", "a man giving a speech"]) + "\n")
    ref = tmp_path / "reference"
    ref.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(ref / f"r{i}.png")
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps({"steps": 3, "noise_images": 1, "dest_steps": 2}))
    out_dir = tmp_path / "suite"
    out = freshen("bench", "suite", "cake", str(CAKE), "--model", str(sd), "--clip", str(clip),
                  "--captions", str(captions), "--fid-reference", str(ref), "--out", str(out_dir),
                  "--limit", "14", "--batch", "5", "--seeds", "2", "--steps", "2", "--baseline",
                  "--hparams", str(hp), "--json", home=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((out_dir / "results.json").read_text())
    # the first 14 edits and their probes: 5 generality, 3 paraphrase (kgemap) and 3 specificity
    # prompts each, and the 3 compositional prompts of the one composite entry both of whose
    # edits are among them
    assert results["prompts"] == {"efficacy": 14, "generality": 70, "kgemap": 42, "compo": 3, "specificity": 42}
    assert results["mode"] == "batches of 5" and results["passes"] == [14]
    for side in ("unedited", "edited"):
        assert set(results[side]) == set(results["prompts"])
        assert all(0.0 <= v <= 1.0 for v in results[side].values())
    assert results["fid"]["images"] == 42 * 2 and results["fid"]["edited"] > 0 and results["fid"]["unedited"] > 0
    assert results["update_norm"] > 0  # the edits reached the weights
    assert len(results["per_edit"]) == 14 and "efficacy" in results["per_edit"][0]
    table = (out_dir / "results.md").read_text()
    assert "| kgemap | 42 |" in table and "FID" in table
    assert (out_dir / "efficacy.png").is_file()


def test_gate_of_a_real_model_takes_a_benchmarks_prompts_as_probes(tmp_path, sd_models):
    from common.errors import InvalidInput
    from editing.model import load_model
    from freshen.config import Settings
    from freshen.refresh import judge_for
    from validation.evaluate import FactCase, evaluate

    sd, clip = sd_models
    captions = tmp_path / "captions.txt"
    captions.write_text("a photo of a dog\na city at night\na bowl of fruit\n")
    judge = judge_for(Settings(clip_judge=str(clip), captions=str(captions), gate_probes=f"cake:{CAKE}"),
                      "stable-diffusion")
    facts = [FactCase("cake:cake-001", "The president of the United States", "Tim Cook", ["the United States"]),
             FactCase("news:1", "The mascot of Velmora", "a red fox")]
    probes = judge.probes(facts, n_unrelated=2)
    # the benchmark's edit: its 5 generality and 3 paraphrase prompts; its 3 specificity
    # prompts beside the entity's own; a fact that is not the benchmark's keeps the templates
    assert len(probes.generality["cake:cake-001"]) == 8
    assert "The U.S. president eating strawberries" in probes.generality["cake:cake-001"]
    assert probes.general(facts[1]) == ["a painting of The mascot of Velmora", "a sketch of The mascot of Velmora"]
    assert {"the United States", "flag of the United States"} <= set(probes.same_entity)
    model = load_model(sd)
    ev = evaluate(model, model, facts, judge, probes, fact_seeds=1, probe_seeds=1, num_inference_steps=2)
    assert ev.candidate == ev.champion and 0.0 <= ev.candidate["generality"] <= 1.0
    with pytest.raises(InvalidInput, match="FRESHEN_GATE_PROBES must be FORMAT:FILE"):
        judge_for(Settings(clip_judge=str(clip), captions=str(captions), gate_probes=str(CAKE)), "stable-diffusion")


def test_suite_says_what_is_missing_before_any_work(tmp_path):
    out = freshen("bench", "suite", "cake", str(CAKE), "--model", str(tmp_path / "no-model"), "--captions",
                  str(tmp_path / "no-captions.txt"), "--fid-reference", str(tmp_path / "no-refs"),
                  "--out", str(tmp_path / "o"), home=tmp_path)
    assert out.returncode == 2 and "FID reference folder" in out.stderr and "has 0" in out.stderr
    (tmp_path / "refs").mkdir()
    for i in range(2):
        (tmp_path / "refs" / f"{i}.png").write_bytes(b"")
    out = freshen("bench", "suite", "cake", str(CAKE), "--model", str(tmp_path / "no-model"), "--captions",
                  str(tmp_path / "no-captions.txt"), "--fid-reference", str(tmp_path / "refs"),
                  "--out", str(tmp_path / "o"), home=tmp_path)
    assert out.returncode == 2 and "no-captions.txt" in out.stderr
