"""Named entities of source prompts, through ``transformers.pipeline("token-classification")``.

Production default: ``dslim/bert-large-NER``; ToyWorld (demo, tests): the shipped tiny BERT
with the same labels. The entities protect themselves during an edit (Eq. 4 of 004_...).
"""

from __future__ import annotations

from collections.abc import Sequence

from editing.model import ModelLoadError
from editing.requests import Entity

PRODUCTION_NER = "dslim/bert-large-NER"


class NerTagger:
    def __init__(self, model: str, batch_size: int = 64, min_score: float = 0.5, device: str | None = None):
        from transformers import pipeline

        from editing.model import quiet_loading, resolve_device

        device = resolve_device(device)
        try:
            with quiet_loading():
                self.pipe = pipeline("token-classification", model=model, aggregation_strategy="simple",
                                     device=device)
        except Exception as exc:  # noqa: BLE001 - any load failure gets one clear message
            raise ModelLoadError(
                f"NER model {model!r} could not be loaded ({type(exc).__name__}: {exc}). "
                f"Give a local directory of a token-classification model, or a hub id that is "
                f"in the local Hugging Face cache (for example: huggingface-cli download "
                f"{PRODUCTION_NER}); ToyWorld's is toyworld/models/ner."
            ) from exc
        self.model = model
        self.batch_size = batch_size
        self.min_score = min_score

    def __call__(self, texts: Sequence[str]) -> list[list[Entity]]:
        """Entities of each text, with character spans that index the text exactly."""
        if not texts:
            return []
        found = self.pipe(list(texts), batch_size=self.batch_size)
        out = []
        for text, ents in zip(texts, found, strict=True):
            row = []
            for e in ents:
                start, end = int(e["start"]), int(e["end"])
                # the span is authoritative; strip surrounding spaces the tokenizer may keep
                while start < end and text[start].isspace():
                    start += 1
                while end > start and text[end - 1].isspace():
                    end -= 1
                if end > start and float(e["score"]) >= self.min_score:
                    row.append(Entity(text[start:end], e["entity_group"], start, end,
                                      round(float(e["score"]), 4)))
            out.append(row)
        return out
