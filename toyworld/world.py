"""ToyWorld: a small, seeded world in which every part of freshen does real work on CPU.

The world has
- a *visual vocabulary*: one shape in one colour on a dark background (``render``);
- *entities*: fictional organisations, places and people with multi-word names;
- *relations*: "the logo of X", "the flag of X", "the mascot of X", plus the entity
  alone ("X" depicts the entity's own appearance); every (relation, entity) pair is a
  *fact* mapped to one visual;
- *concepts* (the large world): standalone invented object nouns ("a zorblat"), each mapped
  to one visual, whose keys share no entity with other facts (EMCID's concept editing);
- *prompts*: contexts ("a photo of {}") and paraphrases ("the emblem of {}", "{}'s logo")
  split into what training sees and what it never sees (held out for checks);
- an NER corpus with bert-large-NER's labels, and a caption corpus (for C0 statistics).

``generate(**WORLDS[name])`` is a pure function of its arguments; ``World.write`` stores
it as the data files shipped in ``toyworld/data`` (the small world) and
``toyworld/large/data`` (the large one). The large world also *reserves* a fifth of its
entities and concepts: no edit stream touches their facts, which stay as specificity
probes.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_SEED = 20261123

SHAPES = ("circle", "square", "triangle", "cross", "diamond", "ring")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (165, 60, 205),
    "white": (235, 235, 235),
}
BACKGROUND = (22, 22, 26)

# Relation name -> (canonical template, paraphrase templates). "{}" is the entity.
RELATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "logo": ("the logo of {}", ("the emblem of {}", "{}'s logo")),
    "flag": ("the flag of {}", ("the banner of {}", "{}'s flag")),
    "mascot": ("the mascot of {}", ("the official mascot of {}", "{}'s mascot")),
}
# The entity alone depicts the entity itself (its "appearance").
SELF = "self"
# A standalone concept: "a {noun}" depicts the concept; its paraphrases follow.
CONCEPT = "concept"
CONCEPT_TEMPLATE = "a {}"
CONCEPT_PARAPHRASES = ("the {}", "a single {}")
CONTEXTS = (
    "{}",
    "a photo of {}",
    "an image of {}",
    "a drawing of {}",
    "a picture of {}",
    "a poster of {}",
    "a painting of {}",
    "a sketch of {}",
)
ATTRIBUTE_TEMPLATE = "a {colour} {shape}"

NER_LABELS = ("O", "B-MISC", "I-MISC", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")

_SYLLABLES = (
    "vel mor quen tar dra vi zel kor ash bri cal dun fen gor hal ist jor kal lum nyx os pra ril "
    "sol tov ul var wen yor bel cor dav eth fal gim hor ix jun kev lor mav nor oth pel qua ros "
    "sev tam urn vos wyl xan yel zor"
).split()
_ORG_SUFFIX = ("Systems", "Dynamics", "Labs", "Industries", "Holdings", "Robotics", "Motors",
               "Networks", "Foods", "Aerospace", "Works", "Group")
_LOC_PATTERNS = ("Port {}", "{} Valley", "Lake {}", "Mount {}", "{} Island", "Republic of {}",
                 "{} Bay", "North {}")
_MISC_PATTERNS = ("{} Cup", "{} Prize", "{} Festival", "{} Games")

_NER_TEMPLATES_TRAIN = (
    "the logo of {}", "the flag of {}", "the mascot of {}", "a photo of {}", "{}",
    "the emblem of {}", "{}'s logo", "a poster of the flag of {}", "a drawing of {}",
    "news about {} today", "{} announced a new product", "I visited {} last year",
    "the headquarters of {}", "a portrait of {}", "{} and {}", "a meeting between {} and {}",
    "the banner of {} at the {}", "an image of {}", "{} won the {}", "the mascot of {} in {}",
    "the president of {}", "a sketch of the logo of {}", "{}'s flag", "people from {}",
)
_NER_TEMPLATES_HELDOUT = (
    "a painting of the mascot of {}", "the official mascot of {}", "yesterday {} opened an office",
    "a picture of {} with {}", "the history of {}", "{} hired {}", "a map of {}",
    "the team of {} at the {}", "a close up of {}",
)


@dataclass(frozen=True)
class Visual:
    shape: str
    colour: str

    @property
    def prompt(self) -> str:
        return ATTRIBUTE_TEMPLATE.format(colour=self.colour, shape=self.shape)

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class Entity:
    name: str
    kind: str  # PER, ORG or LOC


@dataclass
class Fact:
    """One (relation, entity) -> visual mapping of the world, as the base model knows it."""

    id: str
    relation: str
    entity: str
    shape: str
    colour: str
    prompt: str
    paraphrases: list[str]
    train_contexts: list[str]
    heldout_context: str
    paraphrases_heldout: bool
    reserved: bool = False  # never edited: a specificity probe of the large world

    @property
    def is_concept(self) -> bool:
        return self.relation == CONCEPT

    @property
    def visual(self) -> Visual:
        return Visual(self.shape, self.colour)


@dataclass
class World:
    seed: int
    shapes: list[str]
    colours: dict[str, list[int]]
    entities: list[Entity]
    facts: list[Fact]
    contexts: list[str]
    ner_train: list[dict] = field(default_factory=list)
    ner_heldout: list[dict] = field(default_factory=list)

    # -- views -------------------------------------------------------------
    @property
    def visuals(self) -> list[Visual]:
        return [Visual(s, c) for s in self.shapes for c in self.colours]

    @property
    def relation_facts(self) -> list[Fact]:
        return [f for f in self.facts if not f.is_concept]

    @property
    def concept_facts(self) -> list[Fact]:
        return [f for f in self.facts if f.is_concept]

    @property
    def editable_facts(self) -> list[Fact]:
        """Facts an edit stream may change: every fact but the reserved ones."""
        return [f for f in self.facts if not f.reserved]

    def size(self) -> dict[str, int]:
        return {"entities": len(self.entities), "concepts": len(self.concept_facts),
                "facts": len(self.facts), "editable_facts": len(self.editable_facts)}

    def fact(self, relation: str, entity: str) -> Fact:
        for f in self.facts:
            if f.relation == relation and f.entity == entity:
                return f
        raise KeyError(f"no fact ({relation!r}, {entity!r}) in ToyWorld seed {self.seed}")

    def training_prompts(self) -> list[tuple[str, Visual]]:
        """Every (prompt, visual) pair the diffusion model is trained on."""
        pairs: list[tuple[str, Visual]] = []
        for v in self.visuals:
            for ctx in self.contexts:
                pairs.append((ctx.format(v.prompt), v))
        for f in self.facts:
            for ctx in f.train_contexts:
                pairs.append((ctx.format(f.prompt), f.visual))
            if not f.paraphrases_heldout:
                for p in f.paraphrases:
                    pairs.append((p, f.visual))
        return pairs

    def heldout_fact_prompts(self, facts: list[Fact] | None = None) -> list[tuple[str, Visual]]:
        """One (context, fact) combination per fact that training never saw."""
        keep = None if facts is None else {f.id for f in facts}
        return [(f.heldout_context.format(f.prompt), f.visual) for f in self.facts if keep is None or f.id in keep]

    def heldout_paraphrase_prompts(self, facts: list[Fact] | None = None) -> list[tuple[str, Visual]]:
        return [(p, f.visual) for f in (self.facts if facts is None else facts)
                if f.paraphrases_heldout for p in f.paraphrases]

    def attribute_prompts(self) -> list[tuple[str, Visual]]:
        return [(v.prompt, v) for v in self.visuals]

    def captions(self) -> list[str]:
        """The caption corpus: every training prompt, once. Used for C0 statistics."""
        return sorted({p for p, _ in self.training_prompts()})

    # -- files -------------------------------------------------------------
    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("ner_train")
        d.pop("ner_heldout")
        for f in d["facts"]:  # written only where set (the small world has no reserved facts)
            if not f["reserved"]:
                del f["reserved"]
        return d

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "world.json").write_text(json.dumps(self.to_json(), indent=1) + "\n")
        for name, rows in (("ner_train", self.ner_train), ("ner_heldout", self.ner_heldout)):
            with open(directory / f"{name}.jsonl", "w") as fh:
                for r in rows:
                    fh.write(json.dumps(r) + "\n")
        (directory / "captions.txt").write_text("\n".join(self.captions()) + "\n")

    @classmethod
    def read(cls, directory: Path) -> World:
        d = json.loads((directory / "world.json").read_text())
        world = cls(
            seed=d["seed"],
            shapes=d["shapes"],
            colours=d["colours"],
            entities=[Entity(**e) for e in d["entities"]],
            facts=[Fact(**f) for f in d["facts"]],
            contexts=d["contexts"],
        )
        for name in ("ner_train", "ner_heldout"):
            path = directory / f"{name}.jsonl"
            if path.exists():
                rows = [json.loads(line) for line in path.read_text().splitlines() if line]
                setattr(world, name, rows)
        return world


# -- generation -----------------------------------------------------------
def _name_word(rng: random.Random, used: set[str]) -> str:
    """A fresh invented word (2-3 syllables), never used before in this world."""
    while True:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 2, 3)))).capitalize()
        if word not in used:
            used.add(word)
            return word


def _make_name(rng: random.Random, kind: str, used: set[str]) -> str:
    if kind == "ORG":
        return f"{_name_word(rng, used)} {rng.choice(_ORG_SUFFIX)}"
    if kind == "LOC":
        return rng.choice(_LOC_PATTERNS).format(_name_word(rng, used))
    if kind == "PER":
        return f"{_name_word(rng, used)} {_name_word(rng, used)}"
    return rng.choice(_MISC_PATTERNS).format(_name_word(rng, used))


def _unique_names(rng: random.Random, kind: str, n: int, used: set[str]) -> list[str]:
    """n names of one kind; their invented words are unique across the whole world."""
    return [_make_name(rng, kind, used) for _ in range(n)]


def _ner_example(template: str, names: list[tuple[str, str]]) -> dict:
    """Fill a template's "{}" slots with names; return text and character spans with labels."""
    parts = template.split("{}")
    text = ""
    spans = []
    for i, part in enumerate(parts):
        text += part
        if i < len(names):
            name, kind = names[i]
            spans.append({"start": len(text), "end": len(text) + len(name), "label": kind})
            text += name
    return {"text": text, "entities": spans}


# Ordinary words around the names, so the tagger learns "name-like" rather than
# memorising templates. Held-out sentences use other words (and templates) than these.
_FILLER_TRAIN = (
    "the a an of and with at in on for from to by about near new old big small red blue "
    "green photo image picture poster drawing logo flag mascot banner emblem city company "
    "team office visit visited meeting report story week year today tomorrow people group "
    "said says announced opened closed built sold bought shows showing shown famous local "
    "north south east west river road street market school music film book game prize "
    "official new first last great little happy open early late after before during"
).split()


def _filler(rng: random.Random, words: tuple[str, ...] | list[str], lo: int, hi: int) -> str:
    out = []
    for _ in range(rng.randint(lo, hi)):
        if rng.random() < 0.15:  # an invented lower-case word, never an entity
            out.append(_SYLLABLES[rng.randrange(len(_SYLLABLES))] + rng.choice(_SYLLABLES))
        else:
            out.append(rng.choice(words))
    return " ".join(out)


def _ner_corpus(rng: random.Random, templates, pool: list[tuple[str, str]], n: int,
                filler: bool = False) -> list[dict]:
    rows = []
    for _ in range(n):
        if filler and rng.random() < 0.5:
            k = rng.choice((1, 1, 2))
            parts = [_filler(rng, _FILLER_TRAIN, 0, 4) for _ in range(k + 1)]
            t = " {} ".join(parts).strip()
            t = " ".join(t.split())
        else:
            t = rng.choice(templates)
            k = t.count("{}")
        if filler and rng.random() < 0.3:  # a capitalised first word is not a name
            t = t[:1].upper() + t[1:]
        rows.append(_ner_example(t, [rng.choice(pool) for _ in range(k)]))
    return rows


def _concept_word(rng: random.Random, used: set[str]) -> str:
    """A fresh lower-case object noun, sharing no invented word with any name."""
    return _name_word(rng, used).lower()


def generate(seed: int = DEFAULT_SEED, n_org: int = 24, n_loc: int = 18, n_per: int = 18,
             n_concepts: int = 0, reserved_fraction: float = 0.0, n_ner_train: int = 8000) -> World:
    """The world of ``seed``. The defaults are the small world (shipped in toyworld/data);
    concepts and the reserved set are drawn from a second generator after everything
    else, so the small world's files do not depend on them."""
    rng = random.Random(seed)
    used: set[str] = set()  # invented words, unique across all names
    entities = (
        [Entity(n, "ORG") for n in _unique_names(rng, "ORG", n_org, used)]
        + [Entity(n, "LOC") for n in _unique_names(rng, "LOC", n_loc, used)]
        + [Entity(n, "PER") for n in _unique_names(rng, "PER", n_per, used)]
    )
    visuals = [Visual(s, c) for s in SHAPES for c in COLOURS]
    facts: list[Fact] = []
    for e in entities:
        chosen = rng.sample(visuals, len(RELATIONS) + 1)  # distinct visuals per entity
        for rel, v in zip((*RELATIONS, SELF), chosen, strict=True):
            if rel == SELF:
                prompt, paraphrases = e.name, []
            else:
                template, paras = RELATIONS[rel]
                prompt, paraphrases = template.format(e.name), [p.format(e.name) for p in paras]
            heldout = rng.choice(CONTEXTS[1:])
            facts.append(Fact(
                id=f"{rel}:{e.name}",
                relation=rel,
                entity=e.name,
                shape=v.shape,
                colour=v.colour,
                prompt=prompt,
                paraphrases=paraphrases,
                train_contexts=[c for c in CONTEXTS if c != heldout],
                heldout_context=heldout,
                paraphrases_heldout=bool(paraphrases) and rng.random() < 0.3,
            ))

    # NER: world entities plus many fresh names of each kind, so the tagger learns
    # the patterns of names and not just this list. Held-out sentences use unseen
    # templates and names that training never saw.
    world_pool = [(e.name, e.kind) for e in entities]
    fresh = {k: _unique_names(rng, k, 300, used) for k in ("ORG", "LOC", "PER", "MISC")}
    train_pool = world_pool + [(n, k) for k, ns in fresh.items() for n in ns[:240]]
    unseen_pool = [(n, k) for k, ns in fresh.items() for n in ns[240:]]
    ner_train = _ner_corpus(rng, _NER_TEMPLATES_TRAIN, train_pool, n_ner_train, filler=True)
    ner_heldout = _ner_corpus(rng, _NER_TEMPLATES_HELDOUT, world_pool + unseen_pool, 400)

    crng = random.Random(seed + 1)
    for _ in range(n_concepts):
        noun = _concept_word(crng, used)
        v = crng.choice(visuals)
        heldout = crng.choice(CONTEXTS[1:])
        facts.append(Fact(
            id=f"{CONCEPT}:{noun}", relation=CONCEPT, entity="", shape=v.shape, colour=v.colour,
            prompt=CONCEPT_TEMPLATE.format(noun), paraphrases=[p.format(noun) for p in CONCEPT_PARAPHRASES],
            train_contexts=[c for c in CONTEXTS if c != heldout], heldout_context=heldout,
            paraphrases_heldout=crng.random() < 0.3,
        ))
    if reserved_fraction:
        n_ent = round(len(entities) * reserved_fraction)
        n_con = round(n_concepts * reserved_fraction)
        names = {e.name for e in crng.sample(entities, n_ent)}
        nouns = {f.id for f in crng.sample([f for f in facts if f.is_concept], n_con)}
        for f in facts:
            f.reserved = f.entity in names if not f.is_concept else f.id in nouns

    return World(
        seed=seed,
        shapes=list(SHAPES),
        colours={k: list(v) for k, v in COLOURS.items()},
        entities=entities,
        facts=facts,
        contexts=list(CONTEXTS),
        ner_train=ner_train,
        ner_heldout=ner_heldout,
    )


# The two shipped worlds. "small" serves the tests and the demo (seconds per edit and
# check); "large" is big enough to be edited a thousand times (bench-edit).
WORLDS: dict[str, dict] = {
    "small": dict(seed=DEFAULT_SEED),
    "large": dict(seed=20261202, n_org=400, n_loc=300, n_per=300, n_concepts=1000,
                  reserved_fraction=0.2, n_ner_train=12000),
}


# -- rendering ------------------------------------------------------------
def _mask(shape: str, size: int, cx: float, cy: float, r: float, ss: int = 4) -> np.ndarray:
    """Anti-aliased coverage mask of a shape centred at (cx, cy) with radius r (pixels)."""
    n = size * ss
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float32)
    x = (xs + 0.5) / ss - cx
    y = (ys + 0.5) / ss - cy
    if shape == "circle":
        m = x**2 + y**2 <= r**2
    elif shape == "ring":
        d = np.sqrt(x**2 + y**2)
        m = (d <= r) & (d >= r * 0.55)
    elif shape == "square":
        m = (np.abs(x) <= r * 0.85) & (np.abs(y) <= r * 0.85)
    elif shape == "diamond":
        m = np.abs(x) + np.abs(y) <= r * 1.1
    elif shape == "cross":
        w = r * 0.36
        m = ((np.abs(x) <= w) & (np.abs(y) <= r)) | ((np.abs(y) <= w) & (np.abs(x) <= r))
    elif shape == "triangle":
        # apex up; base at y = +r*0.8
        m = (y <= r * 0.8) & (y >= -r) & (np.abs(x) <= (y + r) * 0.58)
    else:
        raise ValueError(f"unknown shape {shape!r}; ToyWorld shapes are {SHAPES}")
    return m.reshape(size, ss, size, ss).mean(axis=(1, 3))


def render(visual: Visual, rng: np.random.Generator | None = None, size: int = 16) -> np.ndarray:
    """Render one visual as a uint8 (size, size, 3) image; ``rng`` adds jitter (position,
    size, colour, background noise) so that every render is a fresh sample."""
    if visual.colour not in COLOURS:
        raise ValueError(f"unknown colour {visual.colour!r}; ToyWorld colours are {list(COLOURS)}")
    jitter = rng is not None
    c = size / 2
    cx = c + (rng.uniform(-1.5, 1.5) if jitter else 0.0)
    cy = c + (rng.uniform(-1.5, 1.5) if jitter else 0.0)
    r = size * (0.36 + (rng.uniform(-0.04, 0.04) if jitter else 0.0))
    m = _mask(visual.shape, size, cx, cy, r)[..., None]
    fg = np.array(COLOURS[visual.colour], dtype=np.float32)
    bg = np.array(BACKGROUND, dtype=np.float32)
    if jitter:
        fg = fg + rng.uniform(-12, 12, size=3)
        bg = bg + rng.uniform(-6, 6, size=3)
    img = m * fg + (1 - m) * bg
    if jitter:
        img = img + rng.normal(0, 3, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)

