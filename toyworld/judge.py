"""ToyWorld's judge: a small CNN that names the shape and colour of an image.

It plays the part that the CLIP judge plays for real models (``validation.clip_judge``):
its labels decide efficacy and specificity, its pooled features feed FID.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from toyworld.world import Visual


class ToyJudge(ModelMixin, ConfigMixin):
    """Two heads (shape, colour) over a shared conv trunk; ``features`` for FID."""

    @register_to_config
    def __init__(self, shapes: tuple[str, ...] = (), colours: tuple[str, ...] = (),
                 width: int = 32, feature_dim: int = 64):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(width * 2, width * 2, 3, padding=1), nn.GELU(),
            nn.Conv2d(width * 2, feature_dim, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.shape_head = nn.Linear(feature_dim, len(shapes))
        self.colour_head = nn.Linear(feature_dim, len(colours))

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> ToyJudge:
        """As diffusers' ``ModelMixin.from_pretrained``, without its low-memory path (it needs
        ``accelerate`` and warns without it; the judge is under 0.4 MB)."""
        kwargs.setdefault("low_cpu_mem_usage", False)
        return super().from_pretrained(path, **kwargs)

    @staticmethod
    def prepare(images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (n, h, w, 3) -> float (n, 3, h, w) in [-1, 1]; float tensors pass through."""
        if isinstance(images, np.ndarray):
            images = torch.as_tensor(images)
        if images.dtype == torch.uint8:
            images = images.permute(0, 3, 1, 2).float() / 127.5 - 1
        return images

    def features(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.trunk(self.prepare(images).to(self.device))

    def forward(self, images: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(images)
        return self.shape_head(f), self.colour_head(f)

    @torch.no_grad()
    def classify(self, images: np.ndarray | torch.Tensor, batch_size: int = 512) -> list[Visual]:
        """The visual each image shows, as the judge sees it."""
        out: list[Visual] = []
        for i in range(0, len(images), batch_size):
            s, c = self(images[i:i + batch_size])
            out += [Visual(self.config.shapes[a], self.config.colours[b])
                    for a, b in zip(s.argmax(1).tolist(), c.argmax(1).tolist(), strict=True)]
        return out
