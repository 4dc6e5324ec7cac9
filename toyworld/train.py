"""Training of ToyWorld's three shipped models. Run by hand, never by CI or the tests.

    freshen dev toyworld train judge      # ~1 min
    freshen dev toyworld train ner        # ~3 min
    freshen dev toyworld train diffusion  # ~45 min on 2 CPU cores

Each trainer is seeded, logs its curve to ``train_log.jsonl`` beside the weights and
saves with ``save_pretrained`` (safetensors).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from editing.model import DiffusionModel, load_model
from toyworld.judge import ToyJudge
from toyworld.pipeline import (
    ToyDiffusionPipeline,
    build_scheduler,
    build_text_encoder,
    build_unet,
    content_mask,
    first_eos,
    from_uint8,
    widen_mlps,
)
from toyworld.tokenizers import train_bert_tokenizer, train_clip_tokenizer
from toyworld.world import NER_LABELS, World, render

log = logging.getLogger(__name__)


class _Log:
    """Appends one JSON object per line to ``path`` and mirrors it to the logger."""

    def __init__(self, path: Path, append: bool = False):
        path.parent.mkdir(parents=True, exist_ok=True)
        earlier = [json.loads(x) for x in path.read_text().splitlines() if x] if append and path.exists() else []
        self.fh = open(path, "a" if append else "w")
        # a continued run counts on from where the earlier one stopped
        self.t_offset = max((r.get("seconds", 0) for r in earlier), default=0)
        self.step_offset = max((r.get("step", 0) for r in earlier), default=0)
        self.t0 = time.time()

    def __call__(self, **row) -> None:
        row = {"seconds": round(self.t_offset + time.time() - self.t0, 1), **row}
        if "step" in row:
            row["step"] += self.step_offset
        self.fh.write(json.dumps(row) + "\n")
        self.fh.flush()
        log.info(json.dumps(row))


def render_bank(world: World, per_visual: int, seed: int) -> torch.Tensor:
    """(n_visuals, per_visual, 3, 16, 16) fresh jittered renders in [-1, 1]."""
    rng = np.random.default_rng(seed)
    bank = [np.stack([render(v, rng) for _ in range(per_visual)]) for v in world.visuals]
    return torch.stack([from_uint8(b) for b in bank])


# -- judge -----------------------------------------------------------------
def train_judge(world: World, out: Path, steps: int = 2500, batch_size: int = 128,
                seed: int = 1, lr: float = 2e-3) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    shapes, colours = world.shapes, list(world.colours)
    judge = ToyJudge(shapes=tuple(shapes), colours=tuple(colours))
    bank = render_bank(world, 300, seed)
    n_vis, per = bank.shape[:2]
    opt = torch.optim.AdamW(judge.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    logger = _Log(out / "train_log.jsonl")
    for step in range(1, steps + 1):
        v = torch.as_tensor(rng.integers(n_vis, size=batch_size))
        x = bank[v, torch.as_tensor(rng.integers(per, size=batch_size))]
        # Robust to what a diffusion model draws: noise of random strength, mild blur.
        x = x + torch.randn_like(x) * torch.rand(batch_size, 1, 1, 1) * 0.25
        if step % 2:
            x = nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False) * 0.5 + x * 0.5
        s_logit, c_logit = judge(x)
        loss = (nn.functional.cross_entropy(s_logit, v // len(colours))
                + nn.functional.cross_entropy(c_logit, v % len(colours)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0:
            logger(step=step, loss=round(loss.item(), 4))
    judge.eval()
    acc = judge_accuracy(judge, world, n_per_visual=50, seed=seed + 1000)
    logger(step=steps, fresh_render_accuracy=acc)
    judge.save_pretrained(out)
    return {"steps": steps, "seed": seed, "classifier_accuracy": acc}


def judge_accuracy(judge: ToyJudge, world: World, n_per_visual: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    images, truth = [], []
    for v in world.visuals:
        images += [render(v, rng) for _ in range(n_per_visual)]
        truth += [v] * n_per_visual
    seen = judge.classify(np.stack(images))
    return sum(a == b for a, b in zip(seen, truth, strict=True)) / len(truth)


# -- NER -------------------------------------------------------------------
def bio_labels(offsets: list[tuple[int, int]], spans: list[dict]) -> list[int]:
    """Token labels (ids into NER_LABELS) from character spans; -100 for special tokens."""
    out = []
    for start, end in offsets:
        if start == end:
            out.append(-100)
            continue
        label = "O"
        for s in spans:
            if s["start"] <= start and end <= s["end"]:
                label = ("B-" if start == s["start"] else "I-") + s["label"]
                break
        out.append(NER_LABELS.index(label))
    return out


def _pad(row: list[int], value: int, width: int) -> list[int]:
    return row + [value] * (width - len(row))


def train_ner(world: World, out: Path, epochs: int = 6, batch_size: int = 32, seed: int = 2,
              lr: float = 1e-3) -> dict:
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    texts = [r["text"] for r in world.ner_train]
    tok = train_bert_tokenizer(texts)
    config = BertConfig(
        vocab_size=len(tok), hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=256, max_position_embeddings=64,
        id2label=dict(enumerate(NER_LABELS)), label2id={k: i for i, k in enumerate(NER_LABELS)},
    )
    model = BertForTokenClassification(config)
    enc = tok(texts, return_offsets_mapping=True)
    labels = [bio_labels(o, r["entities"]) for o, r in zip(enc["offset_mapping"], world.ner_train,
                                                          strict=True)]
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    total = epochs * (len(texts) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.05)
    logger = _Log(out / "train_log.jsonl")
    step = 0
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(len(texts))
        for i in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            width = max(len(enc["input_ids"][j]) for j in idx)
            ids = torch.tensor([_pad(enc["input_ids"][j], tok.pad_token_id, width) for j in idx])
            lab = torch.tensor([_pad(labels[j], -100, width) for j in idx])
            loss = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), labels=lab).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 100 == 0:
                logger(epoch=epoch, step=step, loss=round(loss.item(), 4))
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    from toyworld.check import ner_f1

    f1 = ner_f1(out, world.ner_heldout)
    logger(step=step, heldout_ner_f1=f1)
    return {"epochs": epochs, "steps": step, "seed": seed, "ner_f1": f1}


# -- diffusion -------------------------------------------------------------
def pair_weights(world: World, pairs: list, attribute_weight: float, paraphrase_weight: float) -> np.ndarray:
    """How often each training pair is drawn (normalised): attribute prompts (in any context)
    ``attribute_weight`` times, training paraphrases ``paraphrase_weight`` times, the rest once."""
    attribute_prompts = {p for p, _ in world.attribute_prompts()}
    paraphrases = {p for f in world.facts for p in f.paraphrases}
    weights = np.array([attribute_weight if any(p.endswith(a) for a in attribute_prompts)
                        else paraphrase_weight if p in paraphrases else 1.0 for p, _ in pairs])
    return weights / weights.sum()


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1 - decay)


def train_diffusion(world: World, out: Path, steps: int = 8000, batch_size: int = 64,
                    seed: int = 3, lr: float = 2e-3, ema_decay: float = 0.995,
                    caption_dropout: float = 0.1, eval_every: int = 1000,
                    judge_dir: Path | None = None, init_from: Path | None = None,
                    attribute_weight: float = 1.0, paraphrase_weight: float = 1.0,
                    content_tokens_only: bool | None = None) -> dict:
    """Joint training from scratch of text encoder and U-Net on the world's prompts, or a
    continued run from the pipeline saved in ``init_from`` (a new one-cycle schedule).

    Recipe (DESIGN.md): one-cycle LR (5% warm-up), EMA of the weights (sampled from),
    caption dropout for classifier-free guidance, squaredcos betas. ``attribute_weight``
    draws attribute prompts ("a red circle") that many times more often than facts;
    ``paraphrase_weight`` the training paraphrases ("the emblem of X", "X's logo"), so that the
    relation synonyms are learnt as such and carry over to the held-out facts' paraphrases.
    ``content_tokens_only``: the U-Net cross-attends to the prompt's words only, never to
    [EOS] and the padding, in training and in the saved pipeline (its config). The last word
    of every context template is the subject's last token, so that token must carry what the
    image needs, as in Stable Diffusion's CLIP. Without it a small encoder looks each fact up
    in [EOS] straight from the word embeddings, where an edit at the subject token (EMCID's
    key) cannot reach it. None: as the pipeline in ``init_from`` (False from scratch).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if init_from is not None:
        start = ToyDiffusionPipeline.from_pretrained(init_from)
        tokenizer, text_encoder, unet = start.tokenizer, start.text_encoder, start.unet
        text_encoder.train().requires_grad_(True)
        unet.train().requires_grad_(True)
    else:
        tokenizer = train_clip_tokenizer(world.captions(), vocab_size=1000, model_max_length=32)
        text_encoder, unet = build_text_encoder(tokenizer), build_unet()
    if content_tokens_only is None:
        content_tokens_only = bool(init_from is not None and start.config.content_tokens_only)
    scheduler = build_scheduler()
    ema_te, ema_unet = copy.deepcopy(text_encoder).eval(), copy.deepcopy(unet).eval()
    pairs = world.training_prompts()
    weights = pair_weights(world, pairs, attribute_weight, paraphrase_weight)
    visual_index = {v: i for i, v in enumerate(world.visuals)}
    pair_visual = torch.tensor([visual_index[v] for _, v in pairs])
    tok = lambda ps: tokenizer(ps, padding="max_length", truncation=True,  # noqa: E731
                               max_length=tokenizer.model_max_length, return_tensors="pt")["input_ids"]
    pair_ids, empty_ids = tok([p for p, _ in pairs]), tok([""])[0]
    bank = render_bank(world, 200, seed)
    params = list(text_encoder.parameters()) + list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    judge = ToyJudge.from_pretrained(judge_dir).eval() if judge_dir else None
    logger = _Log(out / "train_log.jsonl", append=init_from is not None)
    result: dict = {}
    for step in range(1, steps + 1):
        idx = torch.as_tensor(rng.choice(len(pairs), size=batch_size, p=weights))
        ids = pair_ids[idx].clone()
        ids[torch.as_tensor(rng.random(batch_size) < caption_dropout)] = empty_ids
        x0 = bank[pair_visual[idx], torch.as_tensor(rng.integers(bank.shape[1], size=batch_size))]
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,))
        noise = torch.randn_like(x0)
        mask = content_mask(ids, tokenizer.eos_token_id) if content_tokens_only else None
        pred = unet(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=text_encoder(ids)[0],
                    encoder_attention_mask=mask).sample
        loss = nn.functional.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        _ema_update(ema_te, text_encoder, ema_decay)
        _ema_update(ema_unet, unet, ema_decay)
        if step % 100 == 0:
            logger(step=step, loss=round(loss.item(), 4), lr=round(sched.get_last_lr()[0], 6))
        if step % eval_every == 0 or step == steps:
            pipe = ToyDiffusionPipeline(ema_te, tokenizer, ema_unet, scheduler, content_tokens_only)
            pipe.save_pretrained(out, safe_serialization=True)
            if judge is not None:
                from toyworld.check import quick_accuracy

                result = quick_accuracy(pipe, judge, world, seed=seed)
                logger(step=step, **result)
    return {"steps": steps, "batch_size": batch_size, "seed": seed, "lr": lr, "ema_decay": ema_decay,
            "caption_dropout": caption_dropout, "attribute_weight": attribute_weight,
            "paraphrase_weight": paraphrase_weight, "content_tokens_only": content_tokens_only,
            "init_from": str(init_from) if init_from else None, **result}


# -- the large world: a text encoder distilled through the small world's frozen U-Net --
@torch.no_grad()
def best_teacher_prompts(teacher: ToyDiffusionPipeline, judge: ToyJudge, world: World,
                         seeds: int = 4, seed: int = 0) -> dict:
    """Per visual, the context of its attribute prompt ("a photo of a red circle", ...) that
    the teacher draws right most often: the conditioning the student learns to produce."""
    from toyworld.check import hits

    model = DiffusionModel(teacher, "teacher", "toyworld")
    pairs = [(ctx.format(v.prompt), v) for v in world.visuals for ctx in world.contexts]
    h = hits(model, judge, pairs, seeds, seed)
    best: dict = {}
    for (prompt, v), score in zip(pairs, h, strict=True):
        if v not in best or score > best[v][1]:
            best[v] = (prompt, score)
    return best


class CrossAttentionBank:
    """What the frozen U-Net's cross-attention layers see and say while it denoises renders
    of each visual under the teacher's conditioning: per sample, every ``attn2`` layer's
    input (the image queries) and output. A student encoder whose conditioning gives the same
    outputs for the same queries at every layer makes the U-Net predict what the teacher's
    does; matching them needs no U-Net convolution, forward or backward."""

    def __init__(self, unet: nn.Module, cond: torch.Tensor, mask: torch.Tensor, bank: torch.Tensor,
                 per_row: int, seed: int, batch_size: int = 128):
        self.layers = [m for n, m in unet.named_modules() if n.endswith("attn2")]
        scheduler = build_scheduler()
        gen = torch.Generator().manual_seed(seed)
        queries: list[list[torch.Tensor]] = [[] for _ in self.layers]
        outputs: list[list[torch.Tensor]] = [[] for _ in self.layers]
        hooks = [m.register_forward_hook(self._recorder(queries[i], outputs[i]), with_kwargs=True)
                 for i, m in enumerate(self.layers)]
        rows = torch.arange(cond.shape[0]).repeat_interleave(per_row)  # conditioning row per sample
        n_vis, n_img = bank.shape[:2]
        try:
            with torch.no_grad():
                for i in range(0, len(rows), batch_size):
                    r = rows[i:i + batch_size]
                    x0 = bank[r % n_vis, torch.randint(n_img, (len(r),), generator=gen)]
                    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(r),), generator=gen)
                    x_t = scheduler.add_noise(x0, torch.randn(x0.shape, generator=gen), t)
                    unet(x_t, t, encoder_hidden_states=cond[r], encoder_attention_mask=mask[r])
        finally:
            for h in hooks:
                h.remove()
        self.rows = rows
        self.queries = [torch.cat(q) for q in queries]
        self.outputs = [torch.cat(o) for o in outputs]

    @staticmethod
    def _recorder(queries: list, outputs: list):
        def hook(module, args, kwargs, output):
            queries.append((args[0] if args else kwargs["hidden_states"]).detach())
            outputs.append(output.detach())
        return hook

    def samples_of(self, row: int) -> torch.Tensor:
        return (self.rows == row).nonzero().squeeze(1)

    def loss(self, sample_idx: torch.Tensor, student_cond: torch.Tensor, student_mask: torch.Tensor) -> torch.Tensor:
        """Mean squared difference of every cross-attention layer's output, teacher vs
        student, for the recorded queries of ``sample_idx``."""
        bias = ((1 - student_mask.to(student_cond.dtype)) * -10000.0).unsqueeze(1)  # as the U-Net does
        total = student_cond.new_zeros(())
        for layer, q, o in zip(self.layers, self.queries, self.outputs, strict=True):
            out = layer(q[sample_idx], encoder_hidden_states=student_cond, attention_mask=bias)
            total = total + nn.functional.mse_loss(out, o[sample_idx])
        return total / len(self.layers)


def train_distilled(world: World, out: Path, teacher_dir: Path, judge_dir: Path,
                    steps: int = 30000, batch_size: int = 256, seed: int = 21, lr: float = 1e-3,
                    ema_decay: float = 0.998, caption_dropout: float = 0.05, per_row: int = 300,
                    eval_every: int = 2000, init_from: Path | None = None, vocab_size: int = 2000,
                    layers: int = 6, intermediate_size: int = 768, attribute_weight: float = 2.0,
                    paraphrase_weight: float = 4.0, stop_after: int | None = None) -> dict:
    """Teach a fresh text encoder (and tokenizer) a large world through a frozen U-Net.

    The U-Net of the small world's model (``teacher_dir``) already draws every visual of the
    shared vocabulary from its own encoder's attribute prompts. The student encoder learns,
    for every training prompt of the large world (fact, paraphrase, concept, attribute; each
    in its contexts), to give the frozen U-Net's cross-attention layers the outputs that the
    teacher's conditioning of the prompt's visual gives them (its best-drawn attribute prompt,
    ``best_teacher_prompts``; ``CrossAttentionBank``). Only the encoder learns, and a step
    costs no U-Net convolution. The pipeline keeps Stable Diffusion's component classes; its
    U-Net is the teacher's, byte for byte. ``stop_after``: end (saved and evaluated) after
    that many steps of the ``steps``-long one-cycle schedule. ``intermediate_size``: the MLP
    width of a fresh encoder; with ``init_from``, a wider one grows the loaded encoder to it
    (``widen_mlps``: the same outputs at step 0, the new units trained from there).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    last = min(steps, stop_after or steps)
    teacher = ToyDiffusionPipeline.from_pretrained(teacher_dir)
    unet = teacher.unet.eval().requires_grad_(False)
    judge = ToyJudge.from_pretrained(judge_dir).eval()
    logger = _Log(out / "train_log.jsonl", append=init_from is not None)
    if init_from is not None:
        start = ToyDiffusionPipeline.from_pretrained(init_from)
        tokenizer, student = start.tokenizer, start.text_encoder
        if intermediate_size > student.config.intermediate_size:  # grown: new units start silent
            widen_mlps(student, intermediate_size, seed)
        student.train().requires_grad_(True)
    else:
        tokenizer = train_clip_tokenizer(world.captions(), vocab_size=vocab_size, model_max_length=32)
        student = build_text_encoder(tokenizer, num_hidden_layers=layers, intermediate_size=intermediate_size)
    best = best_teacher_prompts(teacher, judge, world, seed=seed)
    teacher.text_encoder.eval()
    visual_index = {v: i for i, v in enumerate(world.visuals)}
    t_cond, t_mask = teacher.encode_prompt([best[v][0] for v in world.visuals] + [""])
    t_mask = t_mask if t_mask is not None else torch.ones(t_cond.shape[:2], dtype=torch.long)
    empty = len(world.visuals)  # row of the empty prompt in t_cond
    bank = CrossAttentionBank(unet, t_cond, t_mask, render_bank(world, 200, seed), per_row, seed)
    samples = [bank.samples_of(r) for r in range(empty + 1)]
    logger(step=0, teacher_prompts={v.label: p for v, (p, _) in best.items()},
           teacher_accuracy=round(float(np.mean([s for _, s in best.values()])), 4),
           bank_samples=len(bank.rows))

    pairs = world.training_prompts()
    weights = pair_weights(world, pairs, attribute_weight, paraphrase_weight)
    pair_visual = torch.tensor([visual_index[v] for _, v in pairs])
    tok = lambda ps: tokenizer(ps, padding="max_length", truncation=True,  # noqa: E731
                               max_length=tokenizer.model_max_length, return_tensors="pt")["input_ids"]
    pair_ids, empty_ids = tok([p for p, _ in pairs]), tok([""])[0]
    ema = copy.deepcopy(student).eval()
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    sample = _eval_sample(world, rng)
    result: dict = {}
    for step in range(1, last + 1):
        idx = torch.as_tensor(rng.choice(len(pairs), size=batch_size, p=weights))
        ids, vis = pair_ids[idx].clone(), pair_visual[idx].clone()
        drop = torch.as_tensor(rng.random(batch_size) < caption_dropout)
        ids[drop], vis[drop] = empty_ids, empty
        picks = torch.stack([samples[v][rng.integers(len(samples[v]))] for v in vis.tolist()])
        ids = ids[:, :int(first_eos(ids, tokenizer.eos_token_id).max()) + 1]  # causal: padding changes nothing
        loss = bank.loss(picks, student(ids)[0], content_mask(ids, tokenizer.eos_token_id))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        _ema_update(ema, student, ema_decay)
        if step % 100 == 0:
            logger(step=step, loss=round(loss.item(), 6), lr=round(sched.get_last_lr()[0], 6))
        if step % eval_every == 0 or step == last:
            pipe = ToyDiffusionPipeline(ema, tokenizer, unet, build_scheduler(), content_tokens_only=True)
            pipe.save_pretrained(out, safe_serialization=True)
            result = _sample_accuracy(pipe, judge, sample, seed)
            logger(step=step, **result)
    return {"steps": steps, "stopped_after": last, "batch_size": batch_size, "seed": seed, "lr": lr,
            "ema_decay": ema_decay, "per_row": per_row, "attribute_weight": attribute_weight,
            "paraphrase_weight": paraphrase_weight, "init_from": str(init_from) if init_from else None,
            "mlp_width": student.config.intermediate_size, "teacher": str(teacher_dir), **result}


@torch.no_grad()
def largest_difference(a: DiffusionModel, b: DiffusionModel, prompts: list[str]) -> float:
    """The largest absolute difference of the two encoders' final hidden states on ``prompts``."""
    worst = 0.0
    for i in range(0, len(prompts), 512):
        chunk = prompts[i:i + 512]
        worst = max(worst, float((a.encode(chunk).hidden - b.encode(chunk).hidden).abs().max()))
    return worst


GROWN_TOLERANCE = 1e-5  # the largest output difference a grown encoder may show (float rounding)


def grow_encoder(world: World, model_dir: Path, width: int, seed: int = 0) -> dict:
    """Grow the text encoder saved in ``model_dir`` to ``width`` MLP units per layer by silent
    units (``widen_mlps``, ``seed``), in place: the same function (checked on every tenth
    caption of ``world``; an error if any output moves by more than ``GROWN_TOLERANCE``), a
    key space ``width`` wide for the edits to write through. Only the encoder's files are
    rewritten; a line goes to ``train_log.jsonl``."""
    logger = _Log(model_dir / "train_log.jsonl", append=True)  # its seconds count from here
    before, grown = load_model(model_dir, device="cpu"), load_model(model_dir, device="cpu")
    widen_mlps(grown.text_encoder, width, seed)
    moved = largest_difference(before, grown, world.captions()[::10])
    if moved > GROWN_TOLERANCE:
        raise RuntimeError(f"the encoder grown to {width} units changes its outputs by {moved:.3g} "
                           f"(more than {GROWN_TOLERANCE}): not written to {model_dir}")
    grown.text_encoder.save_pretrained(model_dir / "text_encoder", safe_serialization=True)
    result = {"grown_to": width, "grow_seed": seed, "largest_output_difference": moved}
    logger(**result)
    return result


def _eval_sample(world: World, rng: np.random.Generator, n: int = 96) -> dict:
    """Fixed subsets of the held-out prompts for the training curve (one seed each)."""
    def pick(pairs):
        return [pairs[i] for i in sorted(rng.choice(len(pairs), size=min(n, len(pairs)), replace=False))]
    return {
        "attribute_accuracy": world.attribute_prompts(),
        "fact_accuracy": pick(world.heldout_fact_prompts(world.relation_facts)),
        "concept_accuracy": pick(world.heldout_fact_prompts(world.concept_facts)),
        "paraphrase_accuracy": pick(world.heldout_paraphrase_prompts()),
    }


def _sample_accuracy(pipe: ToyDiffusionPipeline, judge: ToyJudge, sample: dict, seed: int) -> dict:
    from toyworld.check import accuracy

    model = DiffusionModel(pipe, "training", "toyworld")
    return {k: round(accuracy(model, judge, pairs, 1, seed), 4) for k, pairs in sample.items() if pairs}
