"""What the editing engine takes: one fact change as an edit request."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from common.errors import InvalidInput


def normalise(text: str) -> str:
    """Case and spacing ignored: how sources are compared (ledger conflicts, corpus filters)."""
    return " ".join(text.lower().split())


def without_sources(captions: Sequence[str], sources: Sequence[str]) -> list[str]:
    """The captions that contain none of ``sources`` (case and spacing ignored)."""
    srcs = [normalise(s) for s in sources]
    return [c for c in captions if not any(s in normalise(c) for s in srcs)]


def templated(source: str, templates: list[str]) -> list[str]:
    """The source in each context template."""
    return [t.format(source) for t in templates]


def subject_spans(source: str, templates: list[str]) -> list[tuple[int, int]]:
    """Character span of the subject (the whole source) in each templated prompt."""
    return [(t.index("{}"), t.index("{}") + len(source)) for t in templates]


@dataclass(frozen=True)
class Entity:
    """A named entity that NER found in a source prompt (character span into it)."""

    text: str
    label: str
    start: int
    end: int
    score: float = 1.0


@dataclass
class EditRequest:
    """Change what ``source`` depicts into ``target`` (a prompt), or into ``target_images``
    (uint8 (n, h, w, 3) arrays). The subject is the whole source phrase. ``related``: other
    prompts of the same fact (paraphrases such as "the emblem of X"), left out of C0 with
    the source so that the preserved set does not hold the fact at its old value."""

    id: str
    source: str
    target: str | None = None
    target_images: list | None = None
    entities: list[Entity] = field(default_factory=list)
    related: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.source or not self.source.strip():
            raise InvalidInput(f"edit request {self.id!r}: field 'source' is empty")
        if not self.target and self.target_images is None:
            raise InvalidInput(f"edit request {self.id!r}: needs 'target' or 'target_images'")
        for e in self.entities:
            if self.source[e.start:e.end] != e.text:
                raise InvalidInput(f"edit request {self.id!r}: entity {e.text!r} is not at "
                                 f"{e.start}:{e.end} of its source {self.source!r}")

    def prompts(self, templates: list[str]) -> list[str]:
        return templated(self.source, templates)

    def subject_spans(self, templates: list[str]) -> list[tuple[int, int]]:
        return subject_spans(self.source, templates)

    def target_prompts(self, templates: list[str]) -> list[str]:
        return [t.format(self.target) for t in templates] if self.target else []
