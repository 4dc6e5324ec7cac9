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


@pytest.fixture(scope="session")
def sd_tokenizer(tmp_path_factory):
    """Stable Diffusion 1.x's own tokenizer, rebuilt from open_clip's BPE merges."""
    from toyworld.tokenizers import sd_clip_tokenizer

    return sd_clip_tokenizer(tmp_path_factory.mktemp("sd-tokenizer"))


@pytest.fixture(scope="session")
def servers():
    """PostgreSQL, Redis and an MLflow tracking server on this machine (tests/servers.py)."""
    import shutil
    import tempfile
    from pathlib import Path

    from tests.servers import Servers

    root = Path(tempfile.mkdtemp(prefix="freshen-servers-"))
    root.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
    s = Servers(root)
    try:
        yield s.start()
    finally:
        s.stop()
        shutil.rmtree(root, ignore_errors=True)


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's; `make test` installs them


@pytest.fixture(scope="session")
def browser():
    """A real headless Chromium driven through selenium, with the driver on disk (nothing is
    downloaded at run time)."""
    from pathlib import Path

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    assert not missing, f"{', '.join(missing)} missing: `make test` installs Debian's chromium and chromium-driver"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def crawl(driver, start, inside):
    """Every page reachable from ``start`` (a file) through links to HTML files under ``inside``,
    opened in ``driver``; returns {page: (broken links, broken images)} and fails on nothing
    itself. A link is broken when its file does not exist, an image when the browser could not
    decode it."""
    from pathlib import Path
    from urllib.parse import unquote, urlparse

    from selenium.webdriver.common.by import By

    inside = Path(inside).resolve()
    todo, seen, found = [Path(start).resolve()], set(), {}
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        driver.get(page.as_uri())
        bad_links, bad_images = [], []
        for a in driver.find_elements(By.TAG_NAME, "a"):
            url = urlparse(a.get_attribute("href") or "")
            if url.scheme != "file":
                continue
            target = Path(unquote(url.path))
            if not target.is_file():
                bad_links.append(str(target))
            elif target.suffix == ".html" and target.is_relative_to(inside) and "datadocs" not in target.parts:
                todo.append(target)
        for img in driver.find_elements(By.TAG_NAME, "img"):
            if not driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img):
                bad_images.append(img.get_attribute("src"))
        found[page] = (bad_links, bad_images)
    return found
