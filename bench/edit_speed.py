"""``make bench-speed``: how fast the editing engine is on this machine's CPU.

1. Stage II for 300 facts on a randomly initialised CLIPTextModel with Stable Diffusion
   1.4's text-encoder config (12 layers, width 768, MLP 3072; 11 edit layers), with h at
   the last edit layer tracked as the preset says and exactly (``hp.h_tracking``), the
   seconds of it spent in the solves, and one forward of the same prompts through the whole encoder,
   timed the same way; then Stage II for live sets of 100, 300 and 1000 facts solved from
   the base (a consolidated version's Stage II: the cost curve as the live set grows).
2. Stage II for a 10-fact batch after 1000 earlier edits, divided by the same at 0 edits.
3. Batched Stage I throughput on ToyWorld divided by a per-fact loop, at equal quality;
   and the U-Net's work per image at the loop's batch and the batched run's, whose ratio
   bounds what batching can gain where the U-Net is most of Stage I.
4. Bytes stored per version for 100 edits divided by the text encoder's bytes.

    python -m bench.edit_speed [--facts 300] [--live-sets 100,300,1000]

Writes bench/results/edit_speed.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from editing.hparams import EditHParams
from editing.keys import compute_hs, layer_stats, protected_basis
from editing.model import DiffusionModel, load_model
from editing.preservation import Preservation
from editing.requests import EditRequest, templated
from editing.stage1 import compute_zs
from editing.stage2 import execute_stage2
from editing.state import EditState
from toyworld.paths import DATA_DIR, DIFFUSION_DIR
from toyworld.world import SELF, World

RESULTS = Path(__file__).resolve().parent / "results"


class _TextOnly:
    """A pipeline with only what Stage II touches (tokenizer and text encoder)."""

    def __init__(self, text_encoder, tokenizer, unet):
        self.text_encoder, self.tokenizer, self.unet = text_encoder, tokenizer, unet
        self.scheduler = None

    def set_progress_bar_config(self, **_):
        pass


def sd14_text_model() -> DiffusionModel:
    from transformers import CLIPTextConfig, CLIPTextModel

    from toyworld.tokenizers import train_clip_tokenizer

    world = World.read(DATA_DIR)
    tok = train_clip_tokenizer(world.captions(), vocab_size=1000, model_max_length=77)
    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    te = CLIPTextModel(cfg).eval()
    return DiffusionModel(_TextOnly(te, tok, torch.nn.Identity()), "random-sd14-text", "stable-diffusion")


def requests(world: World, n: int, offset: int = 0) -> list[EditRequest]:
    facts = [f for f in world.facts if f.relation != SELF]
    out = []
    for i in range(n):
        f = facts[(i + offset) % len(facts)]
        ctx = world.contexts[((i + offset) // len(facts)) % len(world.contexts)]
        out.append(EditRequest(f"r{i + offset}", ctx.format(f.prompt), "a red circle"))
    return out


def stage2_seconds(model: DiffusionModel, reqs, hp, layers, state, pres) -> tuple[float, float]:
    """Stage II's seconds for ``reqs`` (targets: h plus noise), and those of them in the solves.
    The model is edited in place (later calls build on it, as sequential batches do)."""
    torch.manual_seed(1)
    h = compute_hs(model, reqs, layers[-1], hp.context_templates)
    zs = h + 0.5 * torch.randn_like(h)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    execute_stage2(model, reqs, zs, hp, layers, state, pres, timings=timings)
    return time.perf_counter() - t0, timings["solve_seconds"]


def unet_ms_per_image(model: DiffusionModel, n: int, repeats: int = 5) -> float:
    """Milliseconds per image of Stage I's U-Net work at batch ``n``: the noise prediction
    conditioned on embeddings that need a gradient, its backward to them, and the
    no-gradient prediction for the destination prompt (one of each per image and step)."""
    gen = torch.Generator().manual_seed(0)
    size = model.unet.config.sample_size
    x = torch.randn(n, model.unet.config.in_channels, size, size, generator=gen)
    t = torch.randint(0, model.num_train_timesteps, (n,), generator=gen)
    cond = model.encode(["a photo of the logo"] * n).hidden

    def step():
        src = cond.clone().requires_grad_(True)
        model.predict_noise(x, t, src).square().mean().backward()
        with torch.no_grad():
            model.predict_noise(x, t, cond)

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - t0) / repeats / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--facts", type=int, default=300)
    ap.add_argument("--stage1-facts", type=int, default=16)
    ap.add_argument("--live-sets", default="100,300,1000", help="live-set sizes of the cost curve")
    ap.add_argument("--out", type=Path, default=RESULTS / "edit_speed.json")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    world = World.read(DATA_DIR)
    out: dict = {"threads": torch.get_num_threads()}

    # 1 + 2: Stage II on SD 1.4's text-encoder shape
    sd = sd14_text_model()
    hp = EditHParams.preset("stable-diffusion")
    layers = sd.default_edit_layers
    c0 = layer_stats(sd, layers, world.captions()[:400], progress=False)
    pres = Preservation(c0, {l: protected_basis(c0[l], hp.nullspace_mode, hp.nullspace_threshold)
                             for l in layers})
    out["stage2_sd14_facts"] = args.facts
    batch = requests(world, args.facts)
    seconds, solves = stage2_seconds(sd, batch, hp, layers, EditState(), pres)
    out["stage2_sd14_seconds"], out["stage2_sd14_solve_seconds"] = round(seconds, 2), round(solves, 2)
    out["stage2_sd14_h_tracking"] = f"{hp.h_tracking} (exact at the first and the top {hp.exact_top(sd.n_layers)})"
    exact = EditHParams.from_json(hp.to_json() | {"h_tracking": "exact"})  # MEMIT's read, for comparison
    seconds, solves = stage2_seconds(sd, batch, exact, layers, EditState(), pres)
    out["stage2_sd14_seconds_exact"], out["stage2_sd14_solve_seconds_exact"] = round(seconds, 2), round(solves, 2)
    # one forward of the same prompts (every source in every context template) through the
    # whole encoder, padded as Stage II's stream is (to the longest prompt)
    prompts = [p for r in batch for p in templated(r.source, hp.context_templates)]
    with torch.no_grad():
        t0 = time.perf_counter()
        sd.encode(prompts, pad_to_max=False)
        one = time.perf_counter() - t0
    out["one_forward_seconds"] = round(one, 2)
    out["stage2_over_one_forward"] = round(out["stage2_sd14_seconds"] / one, 2)
    out["stage2_exact_over_one_forward"] = round(out["stage2_sd14_seconds_exact"] / one, 2)
    print(json.dumps(out), flush=True)
    small = requests(world, 10, offset=500)
    at0 = stage2_seconds(sd, small, hp, layers, EditState(), pres)[0]
    earlier = EditState({l: (k := torch.randn(3072, 1000, dtype=torch.float64) * 0.1) @ k.T for l in layers}, 1000)
    at1000 = stage2_seconds(sd, small, hp, layers, earlier, pres)[0]
    out["stage2_10_after_1000_over_after_0"] = round(at1000 / at0, 3)
    print(json.dumps(out), flush=True)
    # the cost curve: a consolidated version solves its whole live set from the base, so its
    # Stage II grows with the live set (each size on a fresh copy of the base encoder)
    out["stage2_live_set_seconds"], out["stage2_live_set_solve_seconds"] = {}, {}
    for n in (int(x) for x in args.live_sets.split(",") if x):
        seconds, solves = stage2_seconds(sd14_text_model(), requests(world, n), hp, layers, EditState(), pres)
        out["stage2_live_set_seconds"][str(n)] = round(seconds, 2)
        out["stage2_live_set_solve_seconds"][str(n)] = round(solves, 2)
        print(json.dumps({"live_set": n, "seconds": round(seconds, 2), "solve_seconds": round(solves, 2)}), flush=True)

    # 4: bytes per version for 100 edits (float16 factors, as the registry stores them:
    # no keys, recomputed on replay) vs. the text encoder; and with the keys stored
    from editing.state import Edit, LayerEdit

    e = 100
    fake = Edit({l: LayerEdit(torch.randn(768, e), torch.randn(e, 3072), torch.randn(3072, e)) for l in layers},
                [f"f{i}" for i in range(e)], sources=[f"the logo of Company {i}" for i in range(e)],
                templates=hp.context_templates)
    encoder_bytes = sum(p.numel() * p.element_size() for p in sd.text_encoder.parameters())
    with tempfile.TemporaryDirectory() as d:
        version_bytes = sum(p.stat().st_size for p in fake.save(Path(d) / "v", dtype=torch.float16, keys=False))
        with_keys = sum(p.stat().st_size for p in fake.save(Path(d) / "k", dtype=torch.float16))
    out["bytes_per_version_100_edits"] = version_bytes
    out["text_encoder_bytes_fp32"] = encoder_bytes
    out["version_over_encoder"] = round(version_bytes / encoder_bytes, 4)
    out["version_with_keys_over_encoder"] = round(with_keys / encoder_bytes, 4)
    print(json.dumps(out), flush=True)

    # 3: batched Stage I vs a per-fact loop on ToyWorld, same steps and seeds
    toy = load_model(DIFFUSION_DIR)
    hp1 = EditHParams.preset("toyworld")
    reqs = requests(world, args.stage1_facts)
    last = toy.default_edit_layers[-1]
    t0 = time.perf_counter()
    batched = compute_zs(toy, reqs, hp1, last)
    t_batch = time.perf_counter() - t0
    t0 = time.perf_counter()
    looped = [compute_zs(toy, [r], hp1, last) for r in reqs]
    t_loop = time.perf_counter() - t0
    loss_b = sum(batched.losses["total"]) / len(reqs)
    loss_l = sum(r.losses["total"][0] for r in looped) / len(reqs)
    out["stage1_facts"] = len(reqs)
    out["stage1_batched_seconds"] = round(t_batch, 2)
    out["stage1_loop_seconds"] = round(t_loop, 2)
    out["stage1_batched_over_loop_throughput"] = round(t_loop / t_batch, 2)
    out["stage1_final_loss_batched"] = round(loss_b, 6)
    out["stage1_final_loss_loop"] = round(loss_l, 6)
    # what limits the batch's gain: the U-Net's forward and backward, per image, at the
    # loop's batch (one fact's destination images) and at the batched run's (all of them)
    per_image = {n: unet_ms_per_image(toy, n) for n in (hp1.noise_images, hp1.noise_images * len(reqs))}
    out["stage1_unet_ms_per_image"] = {str(n): round(ms, 2) for n, ms in per_image.items()}
    out["stage1_unet_batch_gain"] = round(per_image[hp1.noise_images] / per_image[hp1.noise_images * len(reqs)], 2)
    out["command"] = (f"python -m bench.edit_speed --facts {args.facts} --stage1-facts {args.stage1_facts} "
                      f"--live-sets {args.live_sets}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
