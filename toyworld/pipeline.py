"""The ToyWorld text-to-image model: Stable Diffusion's component classes, in pixel space.

Components are the ones Stable Diffusion 1.x uses (``CLIPTextModel``, a fast
``CLIPTokenizer``, ``UNet2DConditionModel``, a diffusers scheduler); only the VAE is
missing, because the U-Net works on 16x16 RGB pixels directly (latents == pixels in
[-1, 1]). The pipeline reads top to bottom like diffusers' own: encode prompt, prepare
noise, denoise with classifier-free guidance, return images.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

# Defaults of the shipped model; the training script records the ones it used.
TEXT_CONFIG = dict(hidden_size=96, intermediate_size=384, num_hidden_layers=4,
                   num_attention_heads=4, max_position_embeddings=32, projection_dim=96)
UNET_CONFIG = dict(
    sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
    block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=96,
    attention_head_dim=8, norm_num_groups=8,
)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                        prediction_type="epsilon", clip_sample=True)


def build_text_encoder(tokenizer: CLIPTokenizer, **overrides) -> CLIPTextModel:
    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**TEXT_CONFIG, **overrides},
    )
    return CLIPTextModel(cfg)


def build_unet(**overrides) -> UNet2DConditionModel:
    return UNet2DConditionModel(**{**UNET_CONFIG, **overrides})


def build_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULER_CONFIG)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(n, 3, h, w) in [-1, 1] -> (n, h, w, 3) uint8."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(images: np.ndarray) -> torch.Tensor:
    """(n, h, w, 3) uint8 -> (n, 3, h, w) float in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    return x.permute(0, 3, 1, 2) / 127.5 - 1


class ToyDiffusionPipeline(DiffusionPipeline):
    """Pixel-space text-to-image pipeline with Stable Diffusion's component classes."""

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 unet: UNet2DConditionModel, scheduler: DDPMScheduler):
        super().__init__()
        self.register_modules(text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler)

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(prompts, padding="max_length", truncation=True,
                              max_length=self.tokenizer.model_max_length, return_tensors="pt")

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenize(prompts)["input_ids"].to(self.text_encoder.device)
        return self.text_encoder(ids)[0]

    @torch.no_grad()
    def __call__(self, prompts: list[str], generator: torch.Generator | None = None,
                 num_inference_steps: int = 30, guidance_scale: float = 3.0,
                 prompt_embeds: torch.Tensor | None = None) -> np.ndarray:
        """Generate one image per prompt; returns (n, h, w, 3) uint8."""
        # 1. encode prompt (and the empty prompt for classifier-free guidance)
        cond = self.encode_prompt(prompts) if prompt_embeds is None else prompt_embeds
        n = cond.shape[0]
        uncond = self.encode_prompt([""]).expand(n, -1, -1)
        # 2. prepare noise
        size = self.unet.config.sample_size
        x = torch.randn((n, self.unet.config.in_channels, size, size), generator=generator,
                        dtype=cond.dtype).to(cond.device)
        # 3. denoise
        self.scheduler.set_timesteps(num_inference_steps)
        embeds = torch.cat([uncond, cond])
        for t in self.scheduler.timesteps:
            eps_u, eps_c = self.unet(torch.cat([x, x]), t, encoder_hidden_states=embeds).sample.chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
            x = self.scheduler.step(eps, t, x, generator=generator).prev_sample
        # 4. to images
        return to_uint8(x)
