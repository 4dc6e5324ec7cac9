"""Stage I: one target value per fact (docs/method.md "Stage I"; EMCID's ``compute_z``).

For every fact a vector delta_i is added to the residual stream leaving the last edit
layer, at the subject's last token of every template prompt, and optimised against

    L_i = L_noise + lambda_txt * (L_txt + alpha_e * L_entity) + wd * |delta_i|^2 / |h_i|^2

- L_txt: pooled [EOS] embedding of the source with delta vs. of the destination prompt
  (Eq. 4 of 004_..., first term);
- L_entity: final hidden states at the tokens of each NER entity of the source, with
  delta vs. without (Eq. 4, second term: entities keep meaning themselves);
- L_noise: the frozen U-Net's noise prediction conditioned on the edited source vs. on
  the destination prompt, on noised destination images (Eq. 5, dual self-distillation);
  with user-supplied destination images, vs. the true noise.
All distances are mean squared errors. Facts are independent: a batch is optimised in
one forward/backward with one delta per fact, and the losses are summed so that each
delta sees only its own gradient. Target residual z_i = h_i + delta_i.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from editing.hparams import EditHParams
from editing.keys import compute_hs, subject_batch
from editing.model import DiffusionModel
from editing.requests import EditRequest

log = logging.getLogger(__name__)


@dataclass
class StageIResult:
    z: torch.Tensor  # (e, d) target residuals at the last edit layer
    h: torch.Tensor  # (e, d) residuals before the edit
    delta: torch.Tensor  # (e, d)
    losses: dict[str, list[float]]  # per fact, final value of each loss term


def _mse_per_row(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).flatten(1).mean(1)


def _per_fact(values: torch.Tensor, owner: torch.Tensor, e: int) -> torch.Tensor:
    """Mean of ``values`` per owning fact (facts with no value get 0)."""
    total = torch.zeros(e, dtype=values.dtype, device=values.device).index_add(0, owner, values)
    count = torch.zeros(e, dtype=values.dtype, device=values.device).index_add(0, owner, torch.ones_like(values))
    return total / count.clamp_min(1)


def destination_latents(model: DiffusionModel, requests: Sequence[EditRequest],
                        hp: EditHParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents of destination images (n_images per fact) and whether each came from the
    user (True) or was drawn by the unedited model from the destination prompt."""
    latents, user = [], []
    to_draw = [r for r in requests if r.target_images is None]
    drawn = iter(())
    if to_draw:
        prompts = [r.target for r in to_draw for _ in range(hp.noise_images)]
        imgs = model.generate_many(prompts, seed=hp.seed, num_inference_steps=hp.dest_steps,
                                   guidance_scale=hp.guidance_scale)
        drawn = iter(np.split(imgs, len(to_draw)))
    for r in requests:
        if r.target_images is None:
            imgs, from_user = next(drawn), False
        else:
            imgs, from_user = np.stack(r.target_images)[: hp.noise_images], True
            if len(imgs) < hp.noise_images:  # repeat to a fixed count per fact
                imgs = np.concatenate([imgs] * hp.noise_images)[: hp.noise_images]
        latents.append(model.images_to_latents(imgs))
        user += [from_user] * hp.noise_images
    return torch.cat(latents), torch.tensor(user, device=model.device)


def compute_zs(model: DiffusionModel, requests: Sequence[EditRequest], hp: EditHParams,
               layer: int, progress: bool = False) -> StageIResult:
    """Optimise one delta per request at the output of ``layer`` (the last edit layer), on
    the model's device; the results are on the CPU."""
    e, templates, dev = len(requests), hp.context_templates, model.device
    n_t = len(templates)
    gen = torch.Generator().manual_seed(hp.seed)  # on the CPU: the same draws on every device
    torch.manual_seed(hp.seed)

    # -- prompts, token positions, frozen references
    prompts, pos = subject_batch(model, [r.source for r in requests], templates)
    pos = torch.as_tensor(pos, device=dev)
    owner = torch.arange(e, device=dev).repeat_interleave(n_t)
    ids = model.tokenize(prompts)["input_ids"].to(dev)
    h = compute_hs(model, requests, layer, templates).to(dev)
    with torch.no_grad():
        base = model.encode(input_ids=ids)
        text_rows = [row for row in range(len(prompts)) if requests[row // n_t].target]
        tgt_prompts = [p for r in requests for p in r.target_prompts(templates)]
        c_tgt = model.encode(tgt_prompts).pooled if tgt_prompts else None
        tgt_enc = model.encode([r.target or "" for r in requests])
        tgt_cond = tgt_enc.hidden.repeat_interleave(hp.noise_images, 0)
        tgt_mask = model.conditioning_mask(tgt_enc.input_ids.repeat_interleave(hp.noise_images, 0))

    # entity tokens: (prompt row, token) pairs and the fact that owns them
    ent_rows, ent_toks, ent_owner = [], [], []
    for i, r in enumerate(requests):
        for t_i, t in enumerate(templates):
            off = t.index("{}")
            row = i * n_t + t_i
            if not r.entities:
                continue
            toks = model.span_tokens([prompts[row]] * len(r.entities),
                                     [(off + en.start, off + en.end) for en in r.entities])
            for tk in toks:
                ent_rows += [row] * len(tk)
                ent_toks += tk
                ent_owner += [i] * len(tk)
    ent_rows_t, ent_toks_t, ent_owner_t = (torch.as_tensor(x, dtype=torch.long, device=dev)
                                           for x in (ent_rows, ent_toks, ent_owner))

    x0, from_user = destination_latents(model, requests, hp)
    img_owner = torch.arange(e, device=dev).repeat_interleave(hp.noise_images)
    src_rows = img_owner * n_t  # template 0 of each fact
    src_mask = model.conditioning_mask(ids[src_rows])

    # -- optimisation
    delta = torch.zeros_like(h, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.lr)
    max_norm = hp.clamp_norm_factor * h.norm(dim=1)
    rows = torch.arange(len(prompts), device=dev)

    def add_delta(_m, _inp, out):
        hidden = out[0] if isinstance(out, tuple) else out
        hidden = hidden.clone()
        hidden[rows, pos] = hidden[rows, pos] + delta[owner]
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    terms: dict[str, torch.Tensor] = {}
    handle = model.layers[layer].register_forward_hook(add_delta)
    try:
        for _ in tqdm(range(hp.steps), desc=f"Stage I ({e} facts)", disable=not progress):
            enc = model.encode(input_ids=ids)
            zero = torch.zeros(e, device=dev)
            l_txt = (_per_fact(_mse_per_row(enc.pooled[text_rows], c_tgt), owner[text_rows], e)
                     if c_tgt is not None else zero)
            l_ent = (_per_fact(_mse_per_row(enc.hidden[ent_rows_t, ent_toks_t],
                                            base.hidden[ent_rows_t, ent_toks_t]), ent_owner_t, e)
                     if ent_rows else zero)
            t = torch.randint(0, model.num_train_timesteps, (len(x0),), generator=gen).to(dev)
            noise = torch.randn(x0.shape, generator=gen).to(dev)
            x_t = model.add_noise(x0, noise, t)
            eps_src = model.predict_noise(x_t, t, enc.hidden[src_rows], src_mask)
            with torch.no_grad():
                eps_tgt = model.predict_noise(x_t, t, tgt_cond, tgt_mask)
            eps_tgt = torch.where(from_user[:, None, None, None], noise, eps_tgt)
            l_noise = _per_fact(_mse_per_row(eps_src, eps_tgt), img_owner, e)
            l_wd = hp.weight_decay * delta.norm(dim=1) ** 2 / h.norm(dim=1) ** 2
            per_fact = l_noise + hp.lambda_txt * (l_txt + hp.alpha_e * l_ent) + l_wd
            opt.zero_grad()
            per_fact.sum().backward()
            opt.step()
            with torch.no_grad():  # project into the ball |delta_i| <= factor |h_i|
                scale = (max_norm / delta.norm(dim=1).clamp_min(1e-12)).clamp(max=1)
                delta.mul_(scale[:, None])
            terms = {"noise": l_noise, "text": l_txt, "entity": l_ent, "total": per_fact}
    finally:
        handle.remove()
    delta, h = delta.detach().cpu(), h.cpu()
    losses = {k: [round(float(x), 6) for x in v.detach()] for k, v in terms.items()}
    return StageIResult(z=h + delta, h=h, delta=delta, losses=losses)
