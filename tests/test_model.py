"""The model adapter, on the shipped ToyWorld model and on a tiny Stable Diffusion pipeline."""

import numpy as np
import pytest
import torch

from common.hashing import directory_hash
from editing.model import DiffusionModel, ModelLoadError, load_model, resolve_device
from toyworld.paths import DIFFUSION_DIR


def manual_fc2_keys(model: DiffusionModel, prompts, layer: int) -> torch.Tensor:
    """fc2 inputs of ``layer`` computed by hand from the layer's input: pre-LN causal
    self-attention with the layer's own projections, then layer_norm2, fc1 and the
    activation."""
    te = model.text_encoder
    ids = model.tokenize(prompts, pad_to_max=False)["input_ids"]
    with torch.no_grad():
        h = te(ids, output_hidden_states=True).hidden_states[layer]
        blk = model.layers[layer]
        att = blk.self_attn
        x = blk.layer_norm1(h)
        n, length, d = x.shape
        heads = att.num_heads
        split = lambda t: t.view(n, length, heads, d // heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(att.q_proj(x)), split(att.k_proj(x)), split(att.v_proj(x))
        scores = q @ k.transpose(-1, -2) / (d // heads) ** 0.5
        scores = scores.masked_fill(torch.ones(length, length).triu(1).bool(), float("-inf"))
        a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, length, d)
        h = h + att.out_proj(a)
        return blk.mlp.activation_fn(blk.mlp.fc1(blk.layer_norm2(h)))


@pytest.mark.parametrize("layer", [0, 2])
def test_key_capture_equals_manual_forward(toy_model, layer):
    prompts = ["the logo of Nordavcal Labs", "a photo of a blue triangle"]
    keys, values = toy_model.capture_fc2(prompts, layer)
    expected = manual_fc2_keys(toy_model, prompts, layer)
    torch.testing.assert_close(keys, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(values, toy_model.fc2(layer)(keys), rtol=1e-4, atol=1e-5)


def test_key_capture_at_positions(toy_model):
    prompts = ["the logo of Nordavcal Labs", "the flag of Port Halquen"]
    pos = toy_model.subject_last_token(prompts, [(0, len(p)) for p in prompts])
    k_all, _ = toy_model.capture_fc2(prompts, 1)
    k_at, v_at = toy_model.capture_fc2(prompts, 1, positions=pos)
    assert k_at.shape == (2, toy_model.fc2(1).in_features) and v_at.shape == (2, toy_model.fc2(1).out_features)
    torch.testing.assert_close(k_at[1], k_all[1, pos[1]])


def test_subject_last_token_uses_offsets(toy_model):
    prompt = "a poster of the logo of Nordavcal Labs"
    start = prompt.index("the logo")
    (pos,) = toy_model.subject_last_token([prompt], [(start, len(prompt))])
    ids = toy_model.tokenize([prompt])["input_ids"][0]
    assert toy_model.tokenizer.convert_ids_to_tokens(int(ids[pos])) == "labs</w>"
    entity = prompt.index("Nordavcal")
    (tokens,) = toy_model.span_tokens([prompt], [(entity, len(prompt))])
    assert [toy_model.tokenizer.convert_ids_to_tokens(int(ids[i])) for i in tokens] == ["nordavcal</w>", "labs</w>"]
    with pytest.raises(ValueError, match="covers no token"):
        toy_model.span_tokens([prompt], [(len(prompt), len(prompt) + 3)])


def test_default_edit_layers_leave_out_the_last(toy_model):
    assert toy_model.default_edit_layers == list(range(toy_model.n_layers - 1))


def test_generation_is_seeded(toy_model):
    a = toy_model.generate(["a red circle", "the flag of Port Halquen"], seed=3, num_inference_steps=10)
    b = toy_model.generate(["a red circle", "the flag of Port Halquen"], seed=3, num_inference_steps=10)
    c = toy_model.generate(["a red circle", "the flag of Port Halquen"], seed=4, num_inference_steps=10)
    assert a.shape == (2, 16, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_generation_from_embeddings_equals_from_prompts(toy_model):
    prompts = ["a green square"]
    enc = toy_model.encode(prompts)
    a = toy_model.generate(prompts, seed=1, num_inference_steps=8)
    b = toy_model.generate(prompt_embeds=enc.hidden, prompt_mask=toy_model.conditioning_mask(enc.input_ids),
                           seed=1, num_inference_steps=8)
    assert np.array_equal(a, b)


def toy_with(content_only: bool) -> DiffusionModel:
    """The shipped ToyWorld pipeline, its U-Net reading content tokens only or every token."""
    from toyworld.paths import DIFFUSION_DIR
    from toyworld.pipeline import ToyDiffusionPipeline

    pipe = ToyDiffusionPipeline.from_pretrained(DIFFUSION_DIR)
    pipe.register_to_config(content_tokens_only=content_only)
    return DiffusionModel(pipe, str(DIFFUSION_DIR), "toyworld")


def test_shipped_toyworld_reads_content_tokens_only(toy_model):
    assert toy_model.pipe.config.content_tokens_only is True


@pytest.mark.parametrize("content_only", [False, True])
def test_conditioning_mask_decides_what_the_unet_reads(content_only):
    """With content tokens only, nothing at [EOS] or after it reaches the U-Net (images and
    noise predictions are unchanged when those states change); otherwise it does."""
    model = toy_with(content_only)
    enc = model.encode(["the flag of Port Halquen", "a red circle"])
    mask = model.conditioning_mask(enc.input_ids)
    if content_only:
        assert mask.tolist() == [[int(j < i) for j in range(enc.input_ids.shape[1])] for i in enc.eos_index.tolist()]
    else:
        assert mask is None
    after = torch.arange(enc.hidden.shape[1])[None, :, None] >= enc.eos_index[:, None, None]
    changed = torch.where(after, torch.randn_like(enc.hidden) * 3, enc.hidden)
    lat = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 700])
    same = torch.allclose(model.predict_noise(lat, t, enc.hidden, mask), model.predict_noise(lat, t, changed, mask),
                          atol=1e-5)
    a = model.generate(prompt_embeds=enc.hidden, prompt_mask=mask, seed=2, num_inference_steps=4)
    b = model.generate(prompt_embeds=changed, prompt_mask=mask, seed=2, num_inference_steps=4)
    assert same == content_only and np.array_equal(a, b) == content_only


def test_content_only_pipeline_needs_a_mask_with_embeddings(toy_model):
    enc = toy_model.encode(["a red circle"])
    with pytest.raises(ValueError, match="prompt_mask"):
        toy_model.generate(prompt_embeds=enc.hidden, seed=0, num_inference_steps=2)


def test_noise_prediction_and_latents_in_pixel_space(toy_model):
    img = np.zeros((2, 16, 16, 3), np.uint8)
    lat = toy_model.images_to_latents(img)
    assert lat.shape == (2, 3, 16, 16) and torch.all(lat == -1)
    eps = toy_model.predict_noise(lat, torch.tensor([10, 500]), toy_model.encode(["a", "b"]).hidden)
    assert eps.shape == lat.shape and torch.isfinite(eps).all()


def test_missing_model_names_itself(tmp_path):
    with pytest.raises(ModelLoadError, match="no-such/model"):
        load_model("no-such/model")
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_model(tmp_path)


def test_the_device_setting(monkeypatch):
    """auto is CUDA when torch sees it, else the CPU; a CUDA device that is not there is an
    error naming the setting, never a silent CPU; FRESHEN_DEVICE is the default."""
    monkeypatch.delenv("FRESHEN_DEVICE", raising=False)
    assert resolve_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda") == torch.device("cuda")
    else:
        with pytest.raises(ModelLoadError, match="FRESHEN_DEVICE='cuda:1', but torch sees no CUDA"):
            resolve_device("cuda:1")
    with pytest.raises(ModelLoadError, match="'tpu' is not a device"):
        resolve_device("tpu")
    monkeypatch.setenv("FRESHEN_DEVICE", "cpu")
    model = load_model(DIFFUSION_DIR)
    assert model.device == torch.device("cpu") and model.sample_dtype is None  # float32 sampling on the CPU
    monkeypatch.setenv("FRESHEN_DEVICE", "no-such-device")
    with pytest.raises(ModelLoadError, match="no-such-device"):
        load_model(DIFFUSION_DIR)


def test_sampling_in_half_precision_draws_the_same_visuals(toy_model):
    """Images drawn under autocast (bfloat16 on this CPU: the path float16 takes on CUDA)
    differ from float32's in some pixels, and the judge sees the same visual in them."""
    from toyworld.judge import ToyJudge
    from toyworld.paths import DATA_DIR, JUDGE_DIR
    from toyworld.world import World

    prompts = [p for p, _ in World.read(DATA_DIR).attribute_prompts()][:16]
    half = load_model(DIFFUSION_DIR, sample_dtype=torch.bfloat16)
    a, b = toy_model.generate(prompts, seed=4), half.generate(prompts, seed=4)
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    assert (a != b).any(), "autocast changed nothing: the half-precision path did not run"
    judge = ToyJudge.from_pretrained(JUDGE_DIR).eval()
    same = np.mean([x == y for x, y in zip(judge.classify(a), judge.classify(b), strict=True)])
    assert same >= 0.9, f"only {same:.0%} of the prompts drawn in bfloat16 show the visual float32 draws"


# -- a tiny Stable Diffusion pipeline, built from configs (no download) ------------------
def test_tiny_sd_round_trip(tiny_sd):
    original, path = tiny_sd
    loaded = load_model(path)
    assert loaded.family == "stable-diffusion" and loaded.n_layers == 3
    prompts = ["the president of the united states", "a photo of a cat"]
    a = original.generate(prompts, seed=0, num_inference_steps=3)
    b = loaded.generate(prompts, seed=0, num_inference_steps=3)
    # the same images up to the uint8 rounding of float noise: with two threads this CPU
    # puts one channel of one pixel one step apart (the keys below are compared in float)
    assert a.shape == (2, 16, 16, 3) and np.abs(a.astype(int) - b.astype(int)).max() <= 1
    ka, _ = original.capture_fc2(prompts, 1)
    kb, _ = loaded.capture_fc2(prompts, 1)
    torch.testing.assert_close(ka, kb)
    torch.testing.assert_close(kb, manual_fc2_keys(loaded, prompts, 1), rtol=1e-4, atol=1e-5)


def test_tiny_sd_samples_under_autocast(tiny_sd):
    _, path = tiny_sd
    prompts = ["the president of the united states", "a photo of a cat"]
    full = load_model(path).generate(prompts, seed=0, num_inference_steps=3)
    half = load_model(path, sample_dtype=torch.bfloat16).generate(prompts, seed=0, num_inference_steps=3)
    assert half.shape == full.shape and half.dtype == np.uint8 and (half != full).any()


def test_tiny_sd_latents_and_noise(tiny_sd):
    model, path = tiny_sd
    lat = model.images_to_latents(np.full((2, 16, 16, 3), 128, np.uint8))
    assert lat.shape == (2, 4, 8, 8)
    eps = model.predict_noise(lat, torch.tensor([1, 999]), model.encode(["a cat", "a dog"]).hidden)
    assert eps.shape == lat.shape
    prompt = "the president of the united states"
    (pos,) = model.subject_last_token([prompt], [(0, len(prompt))])
    ids = model.tokenize([prompt])["input_ids"][0]
    assert model.tokenizer.convert_ids_to_tokens(int(ids[pos])) == "states</w>"
    assert directory_hash(path) == directory_hash(path)


def test_widened_mlps_keep_the_outputs_and_widen_the_keys(tmp_path):
    from toyworld.pipeline import widen_mlps

    model, wide = load_model(DIFFUSION_DIR), load_model(DIFFUSION_DIR)
    n = model.fc2(0).in_features
    widen_mlps(wide.text_encoder, 2 * n)
    prompts = ["the logo of Nordavcal Labs", "a photo of a blue triangle", "the flag of Port Halquen"]
    torch.testing.assert_close(wide.encode(prompts).hidden, model.encode(prompts).hidden)
    keys, old = wide.capture_fc2(prompts, 1)[0], model.capture_fc2(prompts, 1)[0]
    assert keys.shape[-1] == 2 * n
    torch.testing.assert_close(keys[..., :n], old)  # the trained units as they were
    assert keys[..., n:].std() > 0.1 * old.std()  # the new ones answer to the input
    wide.pipe.save_pretrained(tmp_path, safe_serialization=True)
    reloaded = load_model(tmp_path)
    assert reloaded.fc2(0).in_features == 2 * n
    torch.testing.assert_close(reloaded.encode(prompts).hidden, model.encode(prompts).hidden)
    with pytest.raises(ValueError, match="narrower"):
        widen_mlps(model.text_encoder, n - 1)


def test_grow_encoder_rewrites_the_encoder_only_keeping_its_outputs(tmp_path):
    """``freshen dev toyworld grow``: the saved encoder grown in place, the rest untouched."""
    import json
    import shutil

    from common.hashing import file_sha256
    from toyworld.paths import DATA_DIR
    from toyworld.train import grow_encoder
    from toyworld.world import World

    shutil.copytree(DIFFUSION_DIR, tmp_path / "m")
    model_dir, world = tmp_path / "m", World.read(DATA_DIR)
    n = load_model(model_dir).fc2(0).in_features
    unet = file_sha256(model_dir / "unet" / "diffusion_pytorch_model.safetensors")
    result = grow_encoder(world, model_dir, 3 * n)
    assert (result["grown_to"], result["grow_seed"]) == (3 * n, 0) and result["largest_output_difference"] <= 1e-5
    grown, shipped = load_model(model_dir), load_model(DIFFUSION_DIR)
    assert grown.fc2(0).in_features == 3 * n and grown.text_encoder.config.intermediate_size == 3 * n
    prompts = [p for p, _ in world.attribute_prompts()][:8] + world.captions()[:8]
    torch.testing.assert_close(grown.encode(prompts).hidden, shipped.encode(prompts).hidden)
    assert file_sha256(model_dir / "unet" / "diffusion_pytorch_model.safetensors") == unet
    assert json.loads((model_dir / "train_log.jsonl").read_text().splitlines()[-1])["grown_to"] == 3 * n
    with pytest.raises(ValueError, match="narrower"):
        grow_encoder(world, model_dir, n)


def test_a_loaded_model_keeps_its_weights_when_its_file_is_rewritten_in_place(tmp_path):
    """Weights load memory-mapped; load_model copies them out, so a weights file overwritten in
    place (as ``cp`` does) leaves a model already loaded from it as it was."""
    import json
    import shutil

    shutil.copytree(DIFFUSION_DIR, tmp_path / "model")
    model = load_model(tmp_path / "model")
    before = {k: v.clone() for k, v in model.text_encoder.state_dict().items()}
    weights = tmp_path / "model" / "text_encoder" / "model.safetensors"
    with open(weights, "r+b") as fh:  # every float32 tensor doubled in the same file (inode)
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
        for name, entry in header.items():
            if name != "__metadata__" and entry["dtype"] == "F32":
                start, end = entry["data_offsets"]
                fh.seek(8 + n + start)
                values = np.frombuffer(fh.read(end - start), dtype="<f4") * 2
                fh.seek(8 + n + start)
                fh.write(values.astype("<f4").tobytes())
    assert not torch.equal(load_model(tmp_path / "model").text_encoder.state_dict()[next(iter(before))],
                           before[next(iter(before))])
    assert all(torch.equal(v, before[k]) for k, v in model.text_encoder.state_dict().items())
