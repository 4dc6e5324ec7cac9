"""Shared fixtures. Everything runs offline on CPU against the shipped ToyWorld models."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_flush_denormal(True)


@pytest.fixture(scope="session")
def world():
    from toyworld.paths import DATA_DIR
    from toyworld.world import World

    return World.read(DATA_DIR)


@pytest.fixture(scope="session")
def toy_tokenizer():
    from transformers import CLIPTokenizer

    from toyworld.paths import DIFFUSION_DIR

    return CLIPTokenizer.from_pretrained(DIFFUSION_DIR / "tokenizer")


@pytest.fixture(scope="session")
def feed_rules(tmp_path_factory, toy_tokenizer):
    """The feed suite (Great Expectations) in a session-wide file context."""
    from validation.feed_rules import FeedRules

    return FeedRules(tmp_path_factory.mktemp("gx"), toy_tokenizer.model_max_length)


@pytest.fixture(scope="session")
def toy_model():
    from editing.model import load_model
    from toyworld.paths import DIFFUSION_DIR

    return load_model(DIFFUSION_DIR)


@pytest.fixture(scope="session")
def judge():
    from toyworld.judge import ToyJudge
    from toyworld.paths import JUDGE_DIR

    return ToyJudge.from_pretrained(JUDGE_DIR).eval()


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from toyworld.tokenizers import train_clip_tokenizer

    torch.manual_seed(0)
    tok = train_clip_tokenizer(["a photo of a cat", "the president of the united states",
                                "a red apple on a table"], vocab_size=300, model_max_length=16)
    te = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=16, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        norm_num_groups=8, attention_head_dim=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
        latent_channels=4, norm_num_groups=8, sample_size=16)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                   scheduler=DDIMScheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    path = tmp_path_factory.mktemp("tiny-sd")
    pipe.save_pretrained(path, safe_serialization=True)
    from editing.model import DiffusionModel

    return DiffusionModel(pipe, "in-memory", "stable-diffusion"), path
