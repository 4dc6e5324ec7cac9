"""Where ToyWorld's shipped files live (absolute paths inside the installed source tree).

Two worlds ship: the small one (``toyworld/data``, ``toyworld/models``: the tests and the
demo) and the large one (``toyworld/large/``: massive editing, ``make bench-edit``). The
large world's diffusion model reuses the small one's U-Net (frozen) and the judge is
shared: both worlds draw the same visual vocabulary.
"""

from dataclasses import dataclass
from pathlib import Path

from common.errors import InvalidInput

TOYWORLD_DIR = Path(__file__).resolve().parent
DATA_DIR = TOYWORLD_DIR / "data"
MODELS_DIR = TOYWORLD_DIR / "models"
DIFFUSION_DIR = MODELS_DIR / "diffusion"
NER_DIR = MODELS_DIR / "ner"
JUDGE_DIR = MODELS_DIR / "judge"
MANIFEST = MODELS_DIR / "MANIFEST.json"
LARGE_DIR = TOYWORLD_DIR / "large"


@dataclass(frozen=True)
class WorldPaths:
    """The files of one shipped world."""

    name: str
    data_dir: Path
    models_dir: Path
    judge_dir: Path = JUDGE_DIR

    @property
    def diffusion_dir(self) -> Path:
        return self.models_dir / "diffusion"

    @property
    def ner_dir(self) -> Path:
        return self.models_dir / "ner"


WORLD_PATHS = {
    "small": WorldPaths("small", DATA_DIR, MODELS_DIR),
    "large": WorldPaths("large", LARGE_DIR / "data", LARGE_DIR / "models"),
}


def world_paths(name: str) -> WorldPaths:
    if name not in WORLD_PATHS:
        raise InvalidInput(f"unknown ToyWorld {name!r}; the shipped worlds are {sorted(WORLD_PATHS)}")
    return WORLD_PATHS[name]
