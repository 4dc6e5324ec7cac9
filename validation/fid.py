"""FID in a judge's own feature space (torchmetrics' FrechetInceptionDistance with a custom
feature extractor): ToyWorld's classifier features, CLIP image embeddings for real models.
The one place FID is computed; each judge supplies ``features``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn


class Features(nn.Module):
    """A judge's image features as a torchmetrics FID feature extractor: uint8 NCHW in,
    (n, num_features) float64 out. ``embed`` takes the images as uint8 NHWC numpy."""

    def __init__(self, embed: Callable[[np.ndarray], torch.Tensor], num_features: int):
        super().__init__()
        self.embed = embed
        self.num_features = num_features

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x.permute(0, 2, 3, 1).cpu().numpy()).cpu().double()


def fid(features: Features, real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between two sets of uint8 NHWC images in ``features``' space."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=features, input_img_size=(3, *real.shape[1:3]))
    metric.update(torch.as_tensor(real).permute(0, 3, 1, 2), real=True)
    metric.update(torch.as_tensor(fake).permute(0, 3, 1, 2), real=False)
    return float(metric.compute())
