"""Hyperparameters of an edit, in one typed dataclass (MEMIT's style), saved as JSON with
every version so that an edit can be reproduced. Defaults: docs/method.md."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from common.errors import InvalidInput, read_user_json
from common.hashing import MODEL_PRESET

PRESETS = Path(__file__).resolve().parent / "presets"
METHODS = ("nullspace", "emcid")
NULLSPACE_MODES = ("relative", "energy", "absolute", "none")
KEY_COLUMNS = ("mean", "per_template")
MODES = ("sequential", "consolidate")
H_TRACKING = ("exact", "direct", "stream")
C0_SCALES = ("fixed", "per_key")


@dataclass
class EditHParams:
    # -- where: edit layers (None: every layer but the last) and key templates
    layers: list[int] | None = None
    context_templates: list[str] = field(
        default_factory=lambda: ["{}", "a photo of {}", "an image of {}"])

    # -- Stage I (docs/method.md "Stage I"): one target value per fact
    steps: int = 200
    lr: float = 0.2
    lambda_txt: float = 0.01  # weight of text alignment (EOS + entities)
    alpha_e: float = 0.11  # entity alignment inside the text term (Eq. 4 of 004_...)
    weight_decay: float = 5e-4  # on |delta|^2 / |h|^2
    clamp_norm_factor: float = 1.5  # |delta| <= factor * |h| after every step
    noise_images: int = 2  # destination images per fact for the noise loss
    dest_steps: int = 50  # sampling steps to draw destination images
    guidance_scale: float = 3.0

    # -- Stage II (docs/method.md "Stage II")
    # "sequential": Eq. 7 on top of the parent version, Kp Kp^T holding earlier batches;
    # "consolidate": a version is the base plus one closed form over every live fact (the
    # latest target of each source), solved from the base with the stored targets, no Kp
    # (docs/method.md "The live fact set")
    mode: str = "sequential"
    # sequential only: Kp Kp^T from the live facts' keys recomputed on the model being edited
    # (each layer, as the batch moves up), not the keys frozen when each batch landed, which
    # the later batches' edits of lower layers have moved away from
    refresh_kp: bool = False
    method: str = "nullspace"  # "nullspace" (004_...) or "emcid" (EMCID's closed form)
    residual: str = "memit"  # R spread over the layers left (MEMIT convention)
    # how Stage II knows h at the last edit layer as the layers below it are edited: "exact"
    # runs the batch from each edit layer up to the last one again (MEMIT; about m(m+1)/2
    # layer forwards for m edit layers); "direct" runs it once, then adds each edited layer's
    # own change at the subject (Delta_l K1_l, carried up the residual stream), leaving out
    # what the layers in between make of it, and reads h exactly again before the last edit
    # layer, which then writes all that is left (about 2m layer forwards; docs/editing.md);
    # "stream" runs it once too, and takes h as it was before the batch plus the change the
    # stream shows leaving the layer just run (what the layers edited so far make of the
    # batch up to there), reading h exactly at the first edit layer and the top
    # ``h_exact_top`` ones (the cheap reads: the top k cost k(k+1)/2 layer forwards; 0 =
    # as many as one forward of the encoder pays for, ``exact_top``)
    h_tracking: str = "exact"
    h_exact_top: int = 0
    # K1's columns: "mean" = one key per fact averaged over the context templates (MEMIT,
    # EMCID); "per_template" = one key per (fact, template), each with the fact's Stage I
    # delta as its target (beyond the papers; see docs/editing.md)
    key_columns: str = "mean"
    beta: float = 1.0  # ridge term beta I of Eq. 7
    nullspace_mode: str = "relative"  # how P is cut from C0's spectrum
    nullspace_threshold: float = 1e-2
    exclude_sources_from_c0: bool = True  # C0 without the captions that contain a batch source
    # (or one of its related prompts: paraphrases the request names)
    # C0 over every token but [BOS]: in a causal encoder its key is the same in every caption
    # and can hold most of C0's energy, so a cut relative to the top eigenvalue protects
    # almost nothing else (docs/method.md "Real directions protected"); no edit key is a [BOS]
    c0_skip_bos: bool = False
    # bound on ||W_l - W0_l||_F / ||W0_l||_F at every edit layer (0 = none): where a layer's
    # update would pass it, the ridge of the solve is raised (bisection) until it holds
    max_update_norm: float = 0.0
    protect_entities: bool = False  # add entity keys to the preserved set (beyond the papers)
    entity_templates: list[str] = field(default_factory=lambda: ["{}", "a photo of {}"])
    # with protect_entities: the share of the entity keys' energy inside P whose directions
    # leave P's range (1.0 = every direction they span). A consolidated solve protects the
    # entities of the whole live set, whose keys span all of d_k from a few hundred
    # entities on (research/results/entity_rank.json); a cut keeps P from closing
    entity_energy: float = 1.0
    # soft entity preservation (beyond the papers): the entity keys join Kp Kp^T with this
    # weight, held in proportion to their energy instead of taken out of P. 0 = off
    entity_weight: float = 0.0
    # soft preservation (beyond the papers): for one batch, the keys at the mentions of its
    # NER entities in corpus captions that contain no batch source ("the flag of X" while
    # "the logo of X" changes) join Kp Kp^T with this weight; at most mention_max captions
    # per entity. 0 = off
    mention_weight: float = 0.0
    mention_max: int = 64
    # hard preservation of the same mentions (beyond the papers): the directions that hold
    # 99% of their keys' energy inside P are removed from P's range for that batch, so the
    # batch's entities keep what the rest of the corpus says of them exactly (as C0's span)
    protect_mentions: bool = False
    # C0 held in the solve (MEMIT's and EMCID's preservation term; beyond Eq. 7): c0_weight * C0
    # joins Kp Kp^T, so every corpus direction resists the update in proportion to its
    # energy; with nullspace_mode "none" and beta 0 it replaces the projection (the ToyWorld
    # preset), beside a null space it holds what the cut leaves in P's range. 0 = Eq. 7 as published
    c0_weight: float = 0.0
    # "fixed": C0 weighs c0_weight in every solve; "per_key": c0_weight times the key columns
    # the solve writes (with mode "consolidate", the whole live set's), so that C0 holds the
    # same balance against the written keys at 1,000 live facts as at 100 (beyond the papers:
    # a fixed weight that keeps both at 100 edits gives way at 1,000, and one heavy enough for
    # 1,000 holds the first 100 back)
    c0_scale: str = "fixed"
    # C0 at each edit layer read on the model as edited so far (the layers below already
    # written), over the same corpus, instead of on the base: at scale the lower layers'
    # updates move every caption's keys above them, and a C0 of the base's keys then holds
    # directions the corpus no longer uses (beyond the papers; as ``refresh_kp`` for Kp)
    c0_refresh: bool = False
    emcid_lambda: float = 4000.0
    emcid_alpha: float = 0.5

    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise InvalidInput(f"hparams.method: {self.method!r} is not one of {METHODS}")
        if self.nullspace_mode not in NULLSPACE_MODES:
            raise InvalidInput(f"hparams.nullspace_mode: {self.nullspace_mode!r} is not one of {NULLSPACE_MODES}")
        if self.key_columns not in KEY_COLUMNS:
            raise InvalidInput(f"hparams.key_columns: {self.key_columns!r} is not one of {KEY_COLUMNS}")
        if self.mode not in MODES:
            raise InvalidInput(f"hparams.mode: {self.mode!r} is not one of {MODES}")
        if self.max_update_norm < 0:
            raise InvalidInput("hparams.max_update_norm must be >= 0 (0 = no bound)")
        if self.h_tracking not in H_TRACKING:
            raise InvalidInput(f"hparams.h_tracking: {self.h_tracking!r} is not one of {H_TRACKING}")
        if self.h_exact_top < 0:
            raise InvalidInput("hparams.h_exact_top must be >= 0 (0: as many as one forward pays for)")
        if self.residual != "memit":
            raise InvalidInput(f"hparams.residual: only 'memit' is implemented, got {self.residual!r}")
        if self.mention_weight < 0 or self.mention_max < 0:
            raise InvalidInput("hparams.mention_weight and hparams.mention_max must be >= 0")
        if not 0.0 < self.entity_energy <= 1.0:
            raise InvalidInput(f"hparams.entity_energy: {self.entity_energy} must be in (0, 1]")
        if self.entity_weight < 0:
            raise InvalidInput("hparams.entity_weight must be >= 0")
        if self.c0_weight < 0:
            raise InvalidInput("hparams.c0_weight must be >= 0")
        if self.c0_scale not in C0_SCALES:
            raise InvalidInput(f"hparams.c0_scale: {self.c0_scale!r} is not one of {C0_SCALES}")
        if "{}" not in self.context_templates[0]:
            raise InvalidInput("hparams.context_templates: every template needs a '{}' slot")

    def c0_weight_for(self, columns: int) -> float:
        """C0's weight in a solve that writes ``columns`` key columns (``c0_scale``)."""
        return self.c0_weight * columns if self.c0_scale == "per_key" else self.c0_weight

    def stage1_settings(self) -> dict:
        """The hyperparameters Stage I's targets depend on (the same settings, base and fact
        give the same target: caches key on them)."""
        keys = ("layers", "context_templates", "steps", "lr", "lambda_txt", "alpha_e", "weight_decay",
                "clamp_norm_factor", "noise_images", "dest_steps", "guidance_scale", "seed")
        return {k: getattr(self, k) for k in keys}

    def edit_layers(self, n_layers: int) -> list[int]:
        """The edit layers, ascending (docs/method.md Stage II: the last is where Stage I's
        targets live); every layer but the last when ``layers`` is None."""
        layers = sorted(self.layers) if self.layers is not None else list(range(n_layers - 1))
        if not layers or layers[0] < 0 or layers[-1] >= n_layers:
            raise InvalidInput(f"hparams.layers: {self.layers} must be within 0..{n_layers - 1}")
        return layers

    def exact_top(self, n_layers: int) -> int:
        """How many of the top edit layers read h exactly with ``h_tracking="stream"``:
        ``h_exact_top``, or with 0 the most whose reads cost at most one forward of the
        encoder's ``n_layers`` layers (the top k cost 1 + 2 + ... + k = k(k+1)/2 layer
        forwards: 3 of ToyWorld's 6 layers, 4 of SD 1.4's 12)."""
        if self.h_exact_top:
            return self.h_exact_top
        k = 1
        while (k + 1) * (k + 2) // 2 <= n_layers:
            k += 1
        return k

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> EditHParams:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InvalidInput(f"unknown edit hyperparameters: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def preset(cls, family: str, model_dir: Path | None = None, **overrides) -> EditHParams:
        """The tuned defaults for a family of model ("toyworld", "stable-diffusion"):
        ``editing/presets/<family>.json``; over it the model's own preset when its pipeline
        directory ``model_dir`` ships one (``freshen_preset.json``: a preset's fields, any
        subset, for a model whose measurements call for other settings than its family's);
        ``overrides`` on top."""
        path = PRESETS / f"{family}.json"
        if not path.exists():
            raise InvalidInput(f"no edit preset for model family {family!r} (looked for {path})")
        fields_ = json.loads(path.read_text())
        own = Path(model_dir) / MODEL_PRESET if model_dir is not None else None
        if own is not None and own.is_file():
            mine = read_user_json(own, "model preset")
            try:
                cls.from_json(fields_ | mine)
            except InvalidInput as exc:
                raise InvalidInput(f"model preset {own}: {exc}") from exc
            fields_ |= mine
        return cls.from_json(fields_ | overrides)

    @classmethod
    def for_model(cls, model, **overrides) -> EditHParams:
        """The preset of a model (``editing.model.DiffusionModel``): its family's, with its own
        over it when it was loaded from a directory that ships one (``preset``)."""
        from editing.model import ModelLoadError

        try:
            model_dir = model.local_dir
        except ModelLoadError:  # built in memory (training, tests): no directory, no preset of its own
            model_dir = None
        return cls.preset(model.family, model_dir, **overrides)

    @classmethod
    def load(cls, path: Path) -> EditHParams:
        """Hyperparameters from a JSON file a user wrote (a preset's fields, any subset)."""
        return cls.from_json(read_user_json(path, "hparams file"))

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")
