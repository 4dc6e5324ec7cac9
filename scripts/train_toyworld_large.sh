#!/usr/bin/env bash
# Trains the large ToyWorld's two models of its own (the judge is the small world's), with
# the seeds and steps that made the shipped weights. By hand only; CI and the tests never
# train. The diffusion model's text encoder is distilled through the small model's frozen
# U-Net (toyworld/models/diffusion must be there), one thread so that other work can share
# the machine:
#   nohup bash scripts/train_toyworld_large.sh > var/train_large.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
freshen dev toyworld generate --world large
# cycle 1 (2026-12-02): a fresh tokenizer and encoder, batches of 256 prompts; the 8000-step
# one-cycle schedule was stopped after 4000 steps, when every check target was met (72 min
# of stepping beside other work, after 10 min recording the teacher's cross-attention bank)
OMP_NUM_THREADS=1 freshen dev toyworld train diffusion --world large --seed 21 --steps 8000 --stop-after 4000 \
    --threads 1 --attribute-weight 2 --paraphrase-weight 4
# (2026-12-07) every MLP of the encoder grown from 768 to 3,072 units by silent units: the
# same outputs, the key space an edit writes through four times wider (docs/editing.md,
# "A wider key space"); seconds
freshen dev toyworld grow --world large --width 3072 --seed 0
freshen dev toyworld train ner --world large --seed 22 --steps 6
freshen dev toyworld release --world large
