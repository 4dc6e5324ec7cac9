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

from editing.model import first_eos

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


@torch.no_grad()
def widen_mlps(text_encoder: CLIPTextModel, width: int, seed: int = 0) -> CLIPTextModel:
    """``text_encoder`` with every layer's MLP ``width`` units wide, computing what it did:
    the trained units first, then silent ones (fc1 rows and biases drawn with the trained
    ones' spread, fc2 columns zero). Growing a trained encoder (Net2Net's function-preserving
    widening, with new units that start silent instead of copied): more key directions for
    an edit, the same outputs until training or an edit writes into them."""
    gen = torch.Generator().manual_seed(seed)
    for layer in getattr(text_encoder, "text_model", text_encoder).encoder.layers:
        fc1, fc2 = layer.mlp.fc1, layer.mlp.fc2
        n, extra = fc1.out_features, width - fc1.out_features
        if extra < 0:
            raise ValueError(f"MLP width {width} is narrower than the encoder's ({n})")
        wide1 = torch.nn.Linear(fc1.in_features, width).to(fc1.weight)
        wide2 = torch.nn.Linear(width, fc2.out_features).to(fc2.weight)
        wide1.weight[:n], wide1.bias[:n] = fc1.weight, fc1.bias
        wide1.weight[n:] = torch.randn(extra, fc1.in_features, generator=gen).to(fc1.weight) * fc1.weight.std()
        wide1.bias[n:] = fc1.bias.mean() + torch.randn(extra, generator=gen).to(fc1.bias) * fc1.bias.std()
        wide2.weight.zero_()
        wide2.weight[:, :n], wide2.bias[:] = fc2.weight, fc2.bias
        layer.mlp.fc1, layer.mlp.fc2 = wide1, wide2
    text_encoder.config.intermediate_size = width
    return text_encoder


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


def content_mask(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """(n, L) long mask: 1 for the tokens before each row's first [EOS] ([BOS] and words)."""
    eos_at = first_eos(input_ids, eos_token_id)
    return (torch.arange(input_ids.shape[1], device=input_ids.device)[None] < eos_at[:, None]).long()


class ToyDiffusionPipeline(DiffusionPipeline):
    """Pixel-space text-to-image pipeline with Stable Diffusion's component classes."""

    model_cpu_offload_seq = "text_encoder->unet"
    model_family = "toyworld"  # what editing.model.load_model calls a model of this pipeline

    def __init__(self, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 unet: UNet2DConditionModel, scheduler: DDPMScheduler,
                 content_tokens_only: bool = False):
        super().__init__()
        self.register_modules(text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler)
        # The U-Net cross-attends to the prompt's own tokens only ([BOS] and the words), not
        # to [EOS] and the padding after it. A small encoder otherwise looks every fact up in
        # [EOS] straight from the word embeddings; CLIP in Stable Diffusion recalls it at the
        # subject's last token, where the editing method reads and writes (docs/method.md).
        self.register_to_config(content_tokens_only=content_tokens_only)

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(prompts, padding="max_length", truncation=True,
                              max_length=self.tokenizer.model_max_length, return_tensors="pt")

    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states of the prompts and the U-Net's attention mask over them (None when
        the U-Net sees every token)."""
        ids = self.tokenize(prompts)["input_ids"].to(self.text_encoder.device)
        return self.text_encoder(ids)[0], self.conditioning_mask(ids)

    def conditioning_mask(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """(n, L) mask of the tokens the U-Net attends to: up to the first [EOS] when the
        pipeline conditions on content tokens only, else None (all tokens)."""
        return content_mask(input_ids, self.tokenizer.eos_token_id) if self.config.content_tokens_only else None

    @torch.no_grad()
    def __call__(self, prompts: list[str] | None, generator: torch.Generator | None = None,
                 num_inference_steps: int = 30, guidance_scale: float = 3.0,
                 prompt_embeds: torch.Tensor | None = None,
                 prompt_mask: torch.Tensor | None = None) -> np.ndarray:
        """Generate one image per prompt (or per row of ``prompt_embeds``, with its
        ``prompt_mask`` when the pipeline conditions on content tokens only); returns
        (n, h, w, 3) uint8."""
        # 1. encode prompt (and the empty prompt for classifier-free guidance)
        if prompt_embeds is None:
            cond, cond_mask = self.encode_prompt(prompts)
        elif self.config.content_tokens_only and prompt_mask is None:
            raise ValueError("this pipeline conditions on content tokens only: pass prompt_mask "
                             "(conditioning_mask of the prompts' ids) with prompt_embeds")
        else:
            cond, cond_mask = prompt_embeds, prompt_mask
        n = cond.shape[0]
        uncond, uncond_mask = self.encode_prompt([""])
        uncond = uncond.expand(n, -1, -1)
        mask = None if cond_mask is None else torch.cat([uncond_mask.expand(n, -1), cond_mask.to(cond.device)])
        # 2. prepare noise
        size = self.unet.config.sample_size
        x = torch.randn((n, self.unet.config.in_channels, size, size), generator=generator,
                        dtype=cond.dtype).to(cond.device)
        # 3. denoise
        self.scheduler.set_timesteps(num_inference_steps)
        embeds = torch.cat([uncond, cond])
        for t in self.scheduler.timesteps:
            eps_u, eps_c = self.unet(torch.cat([x, x]), t, encoder_hidden_states=embeds,
                                     encoder_attention_mask=mask).sample.chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
            x = self.scheduler.step(eps, t, x, generator=generator).prev_sample
        # 4. to images
        return to_uint8(x)
