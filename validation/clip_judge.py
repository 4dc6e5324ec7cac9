"""The judge for real models: CLIP zero-shot (transformers) over the evaluation's own
prompts, and FID in CLIP's image-feature space through torchmetrics.

An image's label is the prompt, among every prompt of the evaluation (edited sources,
targets, probes), whose CLIP text embedding it matches best; efficacy then asks whether
the candidate's image of a source is labelled like the champion's images of the target,
exactly as with ToyWorld's classifier. FID uses CLIP's pooled image features as the
torchmetrics feature extractor (FD in CLIP space: no Inception weights to download) against
reference images from a directory (``FRESHEN_FID_REFERENCE``); without one, no FID. Given
a public benchmark (``FRESHEN_GATE_PROBES``, ``feeds.benchmarks``), the facts that are its
edits are probed with its generality and specificity prompts too.
The CLIP model is a local path or a hub id in the local cache (configurable, default
``openai/clip-vit-large-patch14``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.errors import InvalidInput
from editing.model import ModelLoadError, resolve_device, resolve_local
from editing.requests import normalise
from validation.evaluate import FactCase, ProbeSet


class ClipJudge:
    """CLIP zero-shot over the evaluation's prompts; probes from a caption corpus; FID
    against the images of ``reference_dir`` (none: no FID), ``fid_prompts`` prompts drawn."""

    def __init__(self, model: str, captions: Sequence[str] = (), reference_dir: str | Path | None = None,
                 fid_prompts: int = 32, suite=None, device: str | None = None):
        self.captions, self.reference_dir, self.fid_prompts = list(captions), reference_dir, fid_prompts
        self.suite = suite  # a feeds.benchmarks.Benchmark whose prompts join the probes, or None
        from transformers import CLIPModel, CLIPProcessor

        path = resolve_local(model)
        self.device = resolve_device(device)
        try:
            self.model = CLIPModel.from_pretrained(path).eval().to(self.device)
            self.processor = CLIPProcessor.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"CLIP judge {model!r} ({path}) could not be loaded as a CLIPModel with "
                                 f"its processor: {exc}") from exc
        self.labels: list[str] = []
        self._text: torch.Tensor | None = None

    def prepare(self, prompts: Sequence[str]) -> None:
        """The labels to choose among: the evaluation's prompts."""
        self.set_labels(prompts)

    def set_labels(self, texts: Sequence[str]) -> None:
        self.labels = list(dict.fromkeys(texts))
        self._text = self.text_embeds(self.labels)

    @torch.no_grad()
    def text_embeds(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """CLIP's normalised text embeddings of ``texts``, one row each."""
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.processor(text=list(texts[i:i + batch_size]), return_tensors="pt", padding=True,
                                 truncation=True)
            t = self.model.get_text_features(input_ids=enc["input_ids"].to(self.device),
                                             attention_mask=enc["attention_mask"].to(self.device))
            out.append((t.pooler_output if hasattr(t, "pooler_output") else t).cpu())
        return nn.functional.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def image_embeds(self, images: np.ndarray, batch_size: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch_size):
            pix = self.processor(images=list(images[i:i + batch_size]), return_tensors="pt")["pixel_values"]
            e = self.model.get_image_features(pixel_values=pix.to(self.device))
            out.append((e.pooler_output if hasattr(e, "pooler_output") else e).cpu())
        return nn.functional.normalize(torch.cat(out), dim=-1)

    def classify(self, images: np.ndarray) -> list[str]:
        if self._text is None:
            raise ValueError("ClipJudge.classify: set_labels first (the prompts to choose among)")
        best = (self.image_embeds(images) @ self._text.T).argmax(dim=1)
        return [self.labels[int(i)] for i in best]

    def truth(self, prompt: str) -> None:
        """A real model's destinations have no ground truth here: the champion's rendering."""
        return None

    def fid(self, real: np.ndarray, fake: np.ndarray) -> float:
        from validation.fid import Features, fid

        return fid(Features(self.image_embeds, self.model.config.projection_dim), real, fake)

    def probes(self, facts: Sequence[FactCase], n_unrelated: int = 24, fid_seeds: int = 4,
               seed: int = 0) -> ProbeSet:
        """The facts' entities alone and in a photo; unrelated captions of the corpus; FID
        prompts and the reference images (every image file of the reference directory),
        when there is one and ``fid_seeds`` > 0."""
        from PIL import Image

        captions, reference_dir, fid_prompts = self.captions, self.reference_dir, self.fid_prompts

        entities = list(dict.fromkeys(e for f in facts for e in f.entities))
        same = [t.format(e) for e in entities for t in ("{}", "a photo of {}")]
        sources = {normalise(f.source) for f in facts}
        generality, kept = self.suite_prompts(facts)
        same = list(dict.fromkeys(same + [p for p in kept if normalise(p) not in sources]))
        pool = [c for c in captions if not any(s in normalise(c) for s in sources)]
        rng = random.Random(seed)
        unrelated = rng.sample(pool, min(n_unrelated, len(pool)))
        if not reference_dir or not fid_seeds:
            return ProbeSet(same, unrelated, [], None, generality)
        files = sorted(p for p in Path(reference_dir).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not files:
            raise InvalidInput(f"FID reference directory {reference_dir} holds no .png/.jpg images")
        ref = [np.asarray(Image.open(p).convert("RGB")) for p in files]
        return ProbeSet(same, unrelated, rng.sample(pool, min(fid_prompts, len(pool))), np.stack(ref), generality)

    def suite_prompts(self, facts: Sequence[FactCase]) -> tuple[dict[str, list[str]], list[str]]:
        """From the benchmark the gate was given (``FRESHEN_GATE_PROBES``), for each fact whose
        source is one of its edits': the edit's generality (and CAKE's paraphrase) prompts by
        fact key, and its specificity prompts, which join the entity probes."""
        if self.suite is None:
            return {}, []
        by_source: dict[str, str] = {}
        for e in self.suite.edits:
            by_source.setdefault(normalise(e.source), e.id)
        generality, kept = {}, []
        for f in facts:
            edit = by_source.get(normalise(f.source))
            mine = [p for p in self.suite.probes if edit is not None and edit in p.edits and len(p.edits) == 1]
            if mine:
                generality[f.key] = [p.prompt for p in mine if p.metric in ("generality", "kgemap")]
                kept += [p.prompt for p in mine if p.metric == "specificity"]
        return generality, kept
