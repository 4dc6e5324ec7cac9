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
def toy_model():
    from editing.model import load_model
    from toyworld.paths import DIFFUSION_DIR

    return load_model(DIFFUSION_DIR)


@pytest.fixture(scope="session")
def judge():
    from toyworld.judge import ToyJudge
    from toyworld.paths import JUDGE_DIR

    return ToyJudge.from_pretrained(JUDGE_DIR).eval()
