"""The real-model judge (CLIP zero-shot + FID in CLIP feature space) on tiny random models
built here: a random CLIPModel with a CLIPProcessor, and the tiny Stable Diffusion pipeline."""

import numpy as np
import pytest

from editing.model import ModelLoadError
from validation.clip_judge import ClipJudge
from validation.evaluate import FactCase, evaluate


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from toyworld.tokenizers import train_clip_tokenizer

    torch.manual_seed(0)
    tok = train_clip_tokenizer(["a photo of a cat", "the president of the united states", "a red apple",
                                "tim cook", "a dog on a table"], vocab_size=300, model_max_length=16)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=16, patch_size=4),
        projection_dim=16)
    path = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(cfg).save_pretrained(path, safe_serialization=True)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
                  tokenizer=tok).save_pretrained(path)
    return path


def test_zero_shot_labels_come_from_the_evaluation_prompts(tiny_clip):
    judge = ClipJudge(str(tiny_clip))
    judge.set_labels(["a photo of a cat", "tim cook", "a red apple"])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    labels = judge.classify(images)
    assert len(labels) == 5 and set(labels) <= {"a photo of a cat", "tim cook", "a red apple"}
    assert judge.classify(images) == labels  # deterministic
    assert judge.fid(images, images) == pytest.approx(0.0, abs=1e-4)
    assert judge.fid(images, 255 - images) > 0


def test_missing_clip_names_itself(tmp_path):
    with pytest.raises(ModelLoadError, match="not-a-clip"):
        ClipJudge(str(tmp_path / "not-a-clip"))


def test_evaluation_of_a_real_model_kind(tiny_clip, tiny_sd, tmp_path):
    """Candidate = champion: every specificity probe agrees with itself; FID against the
    reference directory is the same for both."""
    from PIL import Image

    model, _ = tiny_sd
    for i in range(4):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(tmp_path / f"r{i}.png")
    judge = ClipJudge(str(tiny_clip), ["a photo of a cat", "a red apple", "a dog on a table",
                                       "the president of the united states in a photo"], tmp_path, fid_prompts=2)
    facts = [FactCase("f:1", "the president of the united states", "tim cook", ["the united states"])]
    probes = judge.probes(facts, n_unrelated=2)
    assert probes.same_entity == ["the united states", "a photo of the united states"]
    assert "the president of the united states in a photo" not in probes.unrelated  # holds a source
    ev = evaluate(model, model, facts, judge, probes, fact_seeds=2, probe_seeds=1, num_inference_steps=2)
    assert ev.candidate == ev.champion
    assert ev.candidate["specificity"] == 1.0 and "fid" in ev.candidate
