"""Where ToyWorld's shipped files live (absolute paths inside the installed source tree)."""

from pathlib import Path

TOYWORLD_DIR = Path(__file__).resolve().parent
DATA_DIR = TOYWORLD_DIR / "data"
MODELS_DIR = TOYWORLD_DIR / "models"
DIFFUSION_DIR = MODELS_DIR / "diffusion"
NER_DIR = MODELS_DIR / "ner"
JUDGE_DIR = MODELS_DIR / "judge"
MANIFEST = MODELS_DIR / "MANIFEST.json"
