"""The editing engine's mathematics, on the shipped ToyWorld model."""

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file

from bench.edit_quality import METHODS, NULLSPACE, SEQUENTIAL
from editing.api import edit, preservation
from editing.hparams import EditHParams
from editing.keys import (
    CorpusStream,
    SubjectStream,
    compute_hs,
    compute_ks,
    counted_chunks,
    entity_mentions,
    key_moments,
    layer_stats,
    null_space_projection,
)
from editing.model import DiffusionModel, load_model
from editing.requests import EditRequest, Entity, normalise
from editing.stage1 import compute_zs
from editing.stage2 import execute_stage2, protect_entity_keys, right_factor
from editing.state import Edit, EditState
from toyworld.paths import DIFFUSION_DIR

FAST = dict(steps=40, noise_images=1, dest_steps=20)


def fresh():
    return load_model(DIFFUSION_DIR)


def request(world, i: int, target: str, with_entity: bool = True) -> EditRequest:
    f = [f for f in world.facts if f.relation != "self"][i]
    ents = [Entity(f.entity, "ORG", f.prompt.index(f.entity), len(f.prompt))] if with_entity else []
    return EditRequest(f"fact-{i}", f.prompt, target, entities=ents)


def assert_inside_null_space(deltas: dict, projections: dict) -> None:
    """The update acts only inside the null space: Delta (I - P) = 0 at every layer."""
    for layer, d in deltas.items():
        p = projections[layer]
        assert (d @ (torch.eye(p.shape[0], dtype=torch.float64) - p)).norm() < 1e-6 * d.norm(), layer


@pytest.fixture(scope="module")
def preserved(world, toy_model):
    """The null-space forms' preservation (P from C0's energy cut), which most tests here
    pin: Eq. 7's mechanics."""
    hp = EditHParams.preset("toyworld", **FAST, **NULLSPACE)
    return preservation(toy_model, toy_model.default_edit_layers, world.captions(), hp)


@pytest.fixture(scope="module")
def preset_preserved(world, toy_model):
    """The ToyWorld preset's preservation (C0 held in the solve, no null space)."""
    hp = EditHParams.preset("toyworld", **FAST)
    return preservation(toy_model, toy_model.default_edit_layers, world.captions(), hp)


@pytest.fixture(scope="module")
def corpus_keys(world, toy_model):
    """fc2 keys of every non-padding token of 300 captions, per edit layer (n x d_k)."""
    caps = world.captions()[::7][:300]
    out = {}
    for layer in toy_model.default_edit_layers:
        keys, _ = toy_model.capture_fc2(caps, layer)
        enc = toy_model.encode(caps, pad_to_max=False)
        mask = torch.arange(keys.shape[1])[None] <= enc.eos_index[:, None]
        out[layer] = keys[mask].double()
    return out


def test_c0_is_the_second_moment_of_corpus_keys(world, toy_model, tmp_path):
    caps = world.captions()[:50]
    c0 = layer_stats(toy_model, [1], caps, cache_dir=tmp_path, model_hash="h", progress=False)[1]
    keys, _ = toy_model.capture_fc2(caps, 1)
    enc = toy_model.encode(caps, pad_to_max=False)
    mask = torch.arange(keys.shape[1])[None] <= enc.eos_index[:, None]
    k = keys[mask].double()
    torch.testing.assert_close(c0, k.T @ k / len(k))
    # captions that begin alike share their prefix's keys: C0 reads each distinct prefix once
    kept = sum(int((c.weights > 0).sum()) for c in counted_chunks(toy_model, caps))
    assert kept < len(k) * 0.9
    assert list(tmp_path.glob("c0_*layer1.safetensors"))  # cached
    again = layer_stats(toy_model, [1], caps, cache_dir=tmp_path, model_hash="h", progress=False)[1]
    torch.testing.assert_close(again, c0)


@pytest.mark.parametrize("mode,threshold", [("relative", 1e-2), ("energy", 1e-3), ("absolute", 1e-3)])
def test_projection_is_an_orthogonal_projector(preserved, mode, threshold):
    p = null_space_projection(preserved.c0[0], mode, threshold)
    torch.testing.assert_close(p @ p, p, atol=1e-9, rtol=0)
    torch.testing.assert_close(p, p.T)
    assert 0 < torch.trace(p) < p.shape[0]


def test_nullspace_edit_leaves_preserved_keys_alone(world, preserved, corpus_keys):
    reqs = [request(world, 0, "a blue triangle"), request(world, 7, "a red ring")]

    def run(hp: EditHParams, pres):
        model = fresh()
        before = {l: model.fc2(l).weight.detach().double().clone() for l in model.default_edit_layers}
        res = edit(model, reqs, hp=hp, preserved=pres)
        deltas = {l: model.fc2(l).weight.double() - before[l] for l in before}
        change = {l: float((corpus_keys[l] @ d.T).norm() / (corpus_keys[l] @ before[l].T).norm())
                  for l, d in deltas.items()}
        return deltas, change, res.diagnostics

    deltas, projected, diagnostics = run(EditHParams.preset("toyworld", **FAST, **SEQUENTIAL), preserved)
    assert_inside_null_space(deltas, preserved.projections)
    hp_plain = EditHParams.preset("toyworld", **FAST, **SEQUENTIAL | dict(nullspace_mode="none"))
    _, plain, _ = run(hp_plain, preservation(fresh(), fresh().default_edit_layers, world.captions(), hp_plain))
    # the same edit without the projection (P = I) moves preserved outputs far more
    assert sum(projected.values()) < 0.5 * sum(plain.values()), (projected, plain)
    assert all(d["reached"] > 0.5 for d in diagnostics)


def test_closed_form_reaches_what_it_predicts(world, preserved):
    """Edit one layer (the last edit layer): the averaged residual there moves by
    Delta K1 = R M with M = B K1, so what is left of R = z - h must be exactly R (I - M),
    measured on the edited model."""
    model = fresh()
    layer = model.default_edit_layers[-1]
    hp = EditHParams.preset("toyworld", **FAST, **NULLSPACE, layers=[layer])
    reqs = [request(world, 3, "a green cross"), request(world, 11, "a white diamond")]
    s1 = compute_zs(model, reqs, hp, layer)
    h_before = compute_hs(model, reqs, layer, hp.context_templates).double()
    batch = execute_stage2(model, reqs, s1.z, hp, [layer], EditState(), preserved)
    h_after = compute_hs(model, reqs, layer, hp.context_templates).double()
    le = batch.layers[layer]
    r = s1.z.double().T - h_before.T  # (d x e), measured independently of Stage II
    torch.testing.assert_close(le.r.double(), r, rtol=1e-4, atol=1e-5)
    m = le.b.double() @ le.keys.double()
    left = s1.z.double().T - h_after.T
    torch.testing.assert_close(left, r @ (torch.eye(len(reqs), dtype=torch.float64) - m),
                               rtol=1e-3, atol=1e-4)
    assert left.norm() < r.norm()  # the residual shrinks


def test_direct_and_stream_h_tracking_end_where_exact_tracking_does(world, preserved):
    """``h_tracking="direct"`` reads h at the last edit layer once, then adds each edited
    layer's own Delta K1 instead of running the batch up again; "stream" takes h before the
    batch plus the change the residual stream shows leaving the layer it reads keys at (what
    the layers in between make of the edits too). Both read h exactly before the last edit
    layer, which writes what is left: the batch ends as close to its targets as with MEMIT's
    exact tracking, from the same first layer's update; "stream" tracks h at the second layer
    nearer the exact read than "direct" does, and with every layer read exactly it is
    "exact"."""
    targets = ("a green cross", "a white diamond", "a red ring", "a blue square", "a green cross", "a red ring")
    reqs = [request(world, i, t) for i, t in zip((2, 9, 16, 23, 30, 37), targets, strict=True)]
    first = fresh()
    hp = EditHParams.preset("toyworld", **FAST, **METHODS["consolidate-soft-entities"])
    layers = hp.edit_layers(first.n_layers)
    assert len(layers) >= 3  # a layer between the first and the last, where the modes differ
    zs = compute_zs(first, reqs, hp, layers[-1]).z.double()
    h0 = compute_hs(first, reqs, layers[-1], hp.context_templates).double()
    left, edits = {}, {}
    modes = {"exact": {}, "direct": {}, "stream": {"h_exact_top": 1}, "stream-all": {"h_exact_top": len(layers)}}
    for name, extra in modes.items():
        model = fresh()
        mode = EditHParams.from_json(hp.to_json() | dict(h_tracking=name.split("-")[0], **extra))
        edits[name] = execute_stage2(model, reqs, zs.float(), mode, layers, EditState(), preserved)
        left[name] = float((zs - compute_hs(model, reqs, layers[-1], hp.context_templates).double()).norm())
    for name in modes:
        torch.testing.assert_close(edits[name].layers[layers[0]].r, edits["exact"].layers[layers[0]].r)
    for layer in layers:
        torch.testing.assert_close(edits["stream-all"].layers[layer].r, edits["exact"].layers[layer].r)
    # at the second layer, h as tracked (through R = (z - h) / (m - 1)) is nearer the h read
    # on the model than the h before the first layer's edit is (on this model the direct term
    # is about 40% of the change: the layers in between make the rest of it), and the
    # stream's estimate nearer still
    exact, direct, stream = (edits[name].layers[layers[1]].r.double() for name in ("exact", "direct", "stream"))
    stale = ((zs - h0) / (len(layers) - 1)).T
    assert (stream - exact).norm() < (direct - exact).norm() < (stale - exact).norm()
    assert left["exact"] < 0.3 * float((zs - h0).norm())
    assert left["direct"] <= 1.1 * left["exact"], left
    assert left["stream"] <= 1.1 * left["exact"], left


def test_per_template_key_columns(world, preserved, tmp_path):
    """With a key column per (fact, template), every templated prompt gets its own target,
    its pre-edit state plus the fact's one Stage I delta, and the single-layer closed form
    leaves exactly R (I - B K1) of it, column by column; the chain replays without keys."""
    templates = ["{}", "a photo of {}", "an image of {}"]
    model = fresh()
    layer = model.default_edit_layers[-1]
    hp = EditHParams.preset("toyworld", **FAST, **NULLSPACE | dict(layers=[layer], context_templates=templates,
                                                                  key_columns="per_template"))
    reqs = [request(world, 3, "a green cross"), request(world, 11, "a white diamond")]
    sources = [r.source for r in reqs]

    def per_template_h():
        return SubjectStream(model, sources, templates, "per_template").states(out_layer=layer)[1].double()

    s1 = compute_zs(model, reqs, hp, layer)
    h_before = per_template_h()
    torch.testing.assert_close(h_before.view(2, 3, -1).mean(1), s1.h.double(), rtol=1e-5, atol=1e-5)
    batch = execute_stage2(model, reqs, s1.z, hp, [layer], EditState(), preserved)
    le = batch.layers[layer]
    assert le.keys.shape[1] == le.r.shape[1] == le.b.shape[0] == 6
    targets = h_before + s1.delta.double().repeat_interleave(3, 0)
    r = (targets - h_before).T
    torch.testing.assert_close(le.r.double(), r, rtol=1e-4, atol=1e-5)
    left = targets.T - per_template_h().T
    torch.testing.assert_close(left, r @ (torch.eye(6, dtype=torch.float64) - le.b.double() @ le.keys.double()),
                               rtol=1e-3, atol=1e-4)
    assert left.norm() < 0.5 * r.norm()
    # saved without keys, the state is rebuilt with the same columns
    batch.save(tmp_path / "v2", keys=False)
    loaded = Edit.load(tmp_path / "v2")
    assert loaded.key_columns == "per_template"
    replayed = EditState.from_chain([loaded], fresh())
    torch.testing.assert_close(replayed.cov[layer], EditState().after(batch).cov[layer], rtol=1e-5, atol=1e-6)


def test_factors_equal_the_dense_update(world, preserved):
    model = fresh()
    hp = EditHParams.preset("toyworld", **FAST, **SEQUENTIAL | dict(protect_entities=False))  # Eq. 7 exactly
    reqs = [request(world, 5, "a purple square")]
    state = EditState()
    res = edit(model, reqs, state, hp=hp, preserved=preserved)
    for layer, le in res.edit.layers.items():
        k1, p = le.keys.double(), preserved.projections[layer]
        a = (state.kp(layer, k1.shape[0]) + k1 @ k1.T) @ p + hp.beta * torch.eye(k1.shape[0], dtype=torch.float64)
        dense = le.r.double() @ k1.T @ p @ torch.linalg.inv(a)
        torch.testing.assert_close(le.dense(), dense, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method,beta,protected", [("nullspace", 1.0, 9), ("nullspace", 1e-3, 9),
                                                    ("nullspace", 1.0, 40), ("emcid", 0.0, 9)])
def test_the_symmetric_solve_is_the_papers_closed_form(method, beta, protected):
    """Stage II's Cholesky solve of (P M P + beta I) B^T = P K1, with P = I - Q Q^T, and the
    entity keys taken out of P through Q, give the B of AlphaEdit's solve as written:
    A^T B^T = P K1 with A = M P + beta I (EMCID's: its own symmetric system); so does the
    written form it falls back to when Q is more than a quarter of d_k (40 + 5 of 96)."""
    gen = torch.Generator().manual_seed(3)
    d, e = 96, 12
    k1, kp_keys, ent = (torch.randn(d, n, generator=gen, dtype=torch.float64) for n in (e, 150, 5))
    kp = kp_keys @ kp_keys.T
    q, _ = torch.linalg.qr(torch.randn(d, protected, generator=gen, dtype=torch.float64))
    eye = torch.eye(d, dtype=torch.float64)
    p = eye - q @ q.T
    u, s_, _ = torch.linalg.svd(p @ ent, full_matrices=False)
    p = p - u[:, s_ > 1e-6 * s_.max()] @ u[:, s_ > 1e-6 * s_.max()].T  # the entity keys out of P's range
    q = protect_entity_keys(q, ent)
    torch.testing.assert_close(eye - q @ q.T, p, rtol=0, atol=1e-12)
    hp = EditHParams.preset("toyworld", method=method, beta=beta)
    c0 = kp / 150 + 1e-2 * eye
    if method == "nullspace":
        written = torch.linalg.solve(((kp + k1 @ k1.T) @ p + beta * eye).T, p @ k1).T
    else:
        written = torch.linalg.solve(hp.emcid_lambda * (1 - hp.emcid_alpha) / hp.emcid_alpha * c0 + k1 @ k1.T, k1).T
    torch.testing.assert_close(right_factor(hp, k1, kp, q, c0), written, rtol=1e-8, atol=1e-10)


def test_saved_factors_reproduce_the_edited_weights(world, preserved, tmp_path):
    model = fresh()
    hp = EditHParams.preset("toyworld", **FAST, **SEQUENTIAL)
    res = edit(model, [request(world, 2, "a yellow ring")], hp=hp, preserved=preserved)
    res.edit.save(tmp_path)
    other = fresh()
    loaded = Edit.load(tmp_path)
    loaded.apply(other)
    # the state rebuilt from the saved chain is the state the edit returned
    rebuilt = EditState.from_chain([loaded])
    assert rebuilt.n_edits == res.state.n_edits == 1
    for layer, cov in res.state.cov.items():
        torch.testing.assert_close(rebuilt.cov[layer], cov)
    for layer in model.default_edit_layers:
        torch.testing.assert_close(other.fc2(layer).weight, model.fc2(layer).weight, rtol=0, atol=1e-6)


def test_state_replayed_without_stored_keys(world, preserved, tmp_path):
    """A chain saved without keys (as the registry stores versions) gives, replayed on the
    base, the same weights and the same sequential state as the run that made it; without
    a base to replay on, the state cannot be had."""
    model = fresh()
    hp = EditHParams.preset("toyworld", **FAST, **SEQUENTIAL)
    r1 = edit(model, [request(world, 2, "a yellow ring"), request(world, 5, "a red cross")], hp=hp,
              preserved=preserved)
    r2 = edit(model, [request(world, 8, "a blue square")], r1.state, hp=hp, preserved=preserved)
    paths = [tmp_path / "v2", tmp_path / "v3"]
    for res, path in zip((r1, r2), paths, strict=True):
        files = res.edit.save(path, keys=False)
        assert len(files) == 2 and not any(k.startswith("keys.") for k in load_file(files[0]))
    chain = [Edit.load(p) for p in paths]
    assert not any(e.has_keys for e in chain)
    with pytest.raises(ValueError, match="without its keys"):
        EditState.from_chain(chain)
    base = fresh()
    replayed = EditState.from_chain(chain, base)
    assert replayed.n_edits == r2.state.n_edits == 3
    for layer, cov in r2.state.cov.items():
        # equal to float32 rounding at the moments' scale: the run read its keys off the stream
        # stepped past each edited layer (output + keys @ Delta^T), the replay by fresh forwards
        torch.testing.assert_close(replayed.cov[layer], cov, rtol=0, atol=4e-6 * float(cov.abs().max()))
        torch.testing.assert_close(base.fc2(layer).weight, model.fc2(layer).weight, rtol=0, atol=1e-6)


def test_second_batch_keeps_the_first(world, preserved):
    # Kp of the keys frozen as they landed
    hp = EditHParams.preset("toyworld", **FAST, **SEQUENTIAL | dict(refresh_kp=False))
    first = [request(world, 1, "a blue cross"), request(world, 9, "a green ring")]
    second = [request(world, 20, "a red diamond"), request(world, 30, "a white square")]
    layers = fresh().default_edit_layers

    def run(keep_earlier: bool):
        model = fresh()
        h0 = compute_hs(model, first, layers[-1], hp.context_templates)
        r1 = edit(model, first, hp=hp, preserved=preserved)
        h1 = compute_hs(model, first, layers[-1], hp.context_templates)
        edit(model, second, r1.state if keep_earlier else EditState(), hp=hp, preserved=preserved)
        h2 = compute_hs(model, first, layers[-1], hp.context_templates)
        # how far batch 2 moved batch 1's edited states, relative to how far batch 1 moved them
        return ((h2 - h1).norm(dim=1) / (h1 - h0).norm(dim=1)).max()

    with_state, without_state = run(True), run(False)
    # measured on the shipped model: 0.23 with the state; the state must at least halve the drift
    assert with_state < 0.3, float(with_state)
    assert with_state < 0.5 * without_state, (float(with_state), float(without_state))


def test_a_fact_changed_again_replaces_its_earlier_keys(world, preserved):
    """A second change of the same source is solved and lands without the first change's
    keys in Kp Kp^T: the state then holds each source's latest keys only, and the closed
    form reaches the new target as far as a first change does (with the old keys kept in
    Kp, Eq. 7 would hold the fact at its earlier target)."""
    # Kp of the keys frozen as they landed
    hp = EditHParams.preset("toyworld", **FAST, **SEQUENTIAL | dict(refresh_kp=False))
    model = fresh()
    layers = model.default_edit_layers
    first = [request(world, 2, "a yellow ring"), request(world, 5, "a red cross")]
    r1 = edit(model, first, hp=hp, preserved=preserved)
    again = [EditRequest("fact-2-again", first[0].source.upper(), "a blue square")]  # same source, other case
    r2 = edit(model, again, r1.state, hp=hp, preserved=preserved)
    k5 = {l: r1.edit.layers[l].keys[:, 1:2].double() for l in layers}
    for layer in layers:
        k_new = r2.edit.layers[layer].keys.double()
        torch.testing.assert_close(r2.state.cov[layer], k5[layer] @ k5[layer].T + k_new @ k_new.T)
    assert r2.state.n_edits == 3 and set(r2.state.by_source) == {normalise(r.source) for r in first}
    # the same second change on a state that keeps the first change's keys
    kept = EditState({l: r1.state.kp(l, 0) for l in layers}, r1.state.n_edits)  # no by_source: nothing replaced
    model_kept = fresh()
    edit(model_kept, first, hp=hp, preserved=preserved)
    r2_kept = edit(model_kept, again, kept, hp=hp, preserved=preserved)
    reached, reached_kept = r2.diagnostics[0]["reached"], r2_kept.diagnostics[0]["reached"]
    first_reached = r1.diagnostics[0]["reached"]
    # measured on the shipped model: 0.98 replacing, 0.70 keeping the earlier keys; with the energy
    # cut (nullspace_mode "energy", 1%): 0.78 replacing, 0.58 keeping, 0.74 for the first change
    assert reached > first_reached - 0.05 and reached > reached_kept + 0.1, (reached, reached_kept, first_reached)


def test_same_seed_same_edit(world, preset_preserved):
    hp = EditHParams.preset("toyworld", **FAST)
    reqs = [request(world, 4, "a purple triangle")]
    a = edit(fresh(), reqs, hp=hp, preserved=preset_preserved).edit
    b = edit(fresh(), reqs, hp=hp, preserved=preset_preserved).edit
    for layer in a.layers:
        assert torch.equal(a.layers[layer].r, b.layers[layer].r)
        assert torch.equal(a.layers[layer].b, b.layers[layer].b)


def test_entity_protection_keeps_the_entity_closer(world, preserved):
    """An edit of "the logo of X" moves the embedding of "X" alone less with the entity keys
    preserved than without: out of P's range (every direction they span, or with
    ``entity_energy`` those holding 90% of their energy) or held in Kp Kp^T
    (``entity_weight``)."""
    reqs = [request(world, i, "a white cross") for i in (0, 3, 6)]
    entity_prompts = [r.entities[0].text for r in reqs]
    ref = fresh().encode(entity_prompts).hidden

    def moved(**hp_) -> float:
        model = fresh()
        edit(model, reqs, hp=EditHParams.preset("toyworld", **FAST, **SEQUENTIAL | hp_), preserved=preserved)
        return float((model.encode(entity_prompts).hidden - ref).norm())

    plain = moved(protect_entities=False)
    hard, cut = moved(protect_entities=True), moved(protect_entities=True, entity_energy=0.9)
    soft = moved(protect_entities=False, entity_weight=1.0)
    assert max(hard, cut, soft) < plain, (plain, hard, cut, soft)


def test_entity_energy_keeps_the_leading_directions():
    """``protect_entity_keys`` with ``energy``: the directions it adds to Q are the fewest
    leading ones of P K that hold that share of its energy, orthonormal to Q."""
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(32, 4, generator=g, dtype=torch.float64))[0]
    k = torch.randn(32, 12, generator=g, dtype=torch.float64) * torch.logspace(0, -2, 12, dtype=torch.float64)
    full, cut = protect_entity_keys(q, k), protect_entity_keys(q, k, energy=0.9)
    assert full.shape[1] == 4 + 12 and 4 < cut.shape[1] < full.shape[1]
    torch.testing.assert_close(cut.T @ cut, torch.eye(cut.shape[1], dtype=torch.float64))
    pk = k - q @ (q.T @ k)
    share = lambda u: float((u.T @ pk).norm() ** 2 / pk.norm() ** 2)  # noqa: E731
    assert share(cut[:, 4:]) >= 0.9 > share(cut[:, 4:-1])


def test_soft_and_hard_preservation_hold_the_entity_mentions(world, preserved):
    """With ``mention_weight`` (in Kp) or ``protect_mentions`` (out of P's range), the corpus
    captions that mention a batch entity (and contain no batch source) keep their states at
    the mention better than without."""
    reqs = [request(world, i, "a white cross") for i in (0, 3, 6)]
    entities = [r.entities[0].text for r in reqs]
    prompts, spans = entity_mentions(world.captions(), entities, [r.source for r in reqs], 64)
    assert prompts and not any(r.source in p for r in reqs for p in prompts)
    assert all(p[a:b] in entities for p, (a, b) in zip(prompts, spans, strict=True))
    base = fresh()
    toks = base.span_tokens(prompts, spans)
    ref = base.encode(prompts).hidden

    def moved(**hp_) -> float:
        model = fresh()
        edit(model, reqs, hp=EditHParams.preset("toyworld", **FAST, **SEQUENTIAL | hp_), preserved=preserved)
        h = model.encode(prompts).hidden
        return float(sum((h[i, t] - ref[i, t]).norm() for i, t in enumerate(toks)))

    plain, soft, hard = moved(), moved(mention_weight=1.0), moved(protect_mentions=True)
    assert soft < 0.8 * plain and hard < 0.8 * plain, (plain, soft, hard)


def test_c0_weight_holds_the_corpus_inside_the_null_space(world, preserved, corpus_keys):
    """With ``c0_weight``, C0 joins Kp Kp^T in Eq. 7: the update still lives in P's range
    (Delta (I - P) = 0) and moves the corpus keys' fc2 outputs less than without it."""
    reqs = [request(world, i, "a white cross") for i in (0, 3, 6)]

    def run(weight: float):
        model = fresh()
        before = {l: model.fc2(l).weight.detach().double().clone() for l in model.default_edit_layers}
        hp = EditHParams.preset("toyworld", **FAST, **SEQUENTIAL | dict(c0_weight=weight))
        edit(model, reqs, hp=hp, preserved=preserved)
        deltas = {l: model.fc2(l).weight.double() - before[l] for l in before}
        return deltas, sum(float((corpus_keys[l] @ d.T).norm() / (corpus_keys[l] @ before[l].T).norm())
                           for l, d in deltas.items())

    deltas, held = run(400.0)
    assert_inside_null_space(deltas, preserved.projections)
    _, plain = run(0.0)
    assert held < 0.8 * plain, (held, plain)
    with pytest.raises(ValueError, match="c0_weight"):
        EditHParams(c0_weight=-1.0)


def test_keys_are_template_averages(world, toy_model):
    hp = EditHParams()
    r = request(world, 0, "a red circle")
    k = compute_ks(toy_model, [r], 1, hp.context_templates)
    prompts = r.prompts(hp.context_templates)
    pos = toy_model.subject_last_token(prompts, r.subject_spans(hp.context_templates))
    each, _ = toy_model.capture_fc2(prompts, 1, positions=pos)
    torch.testing.assert_close(k[:, 0], each.mean(0))


def test_bad_batches_are_refused(world, toy_model, preserved):
    with pytest.raises(ValueError, match="no requests"):
        edit(toy_model, [], preserved=preserved)
    r = request(world, 0, "a red circle")
    with pytest.raises(ValueError, match="repeat"):
        edit(toy_model, [r, r], preserved=preserved)
    with pytest.raises(ValueError, match="field 'source' is empty"):
        EditRequest("x", "  ", "a red circle")
    with pytest.raises(ValueError, match="is not at"):
        EditRequest("x", "the logo of A B", "a red circle", entities=[Entity("A B", "ORG", 0, 3)])


def test_hparams_presets_and_json(tmp_path):
    hp = EditHParams.preset("toyworld", steps=7)
    assert hp.steps == 7 and hp.method == "nullspace"
    hp.save(tmp_path / "hp.json")
    assert EditHParams.load(tmp_path / "hp.json") == hp
    sd = EditHParams.preset("stable-diffusion")
    assert (sd.lr, sd.lambda_txt, sd.alpha_e, sd.beta) == (0.2, 0.01, 0.11, 1.0)  # the papers' defaults
    with pytest.raises(ValueError, match="no edit preset"):
        EditHParams.preset("sdxl")
    with pytest.raises(ValueError, match="unknown edit hyperparameters"):
        EditHParams.from_json({"stepz": 3})
    with pytest.raises(ValueError, match="nullspace_mode"):
        EditHParams(nullspace_mode="magic")
    with pytest.raises(ValueError, match="key_columns"):
        EditHParams(key_columns="median")
    with pytest.raises(ValueError, match="h_exact_top"):
        EditHParams(h_tracking="stream", h_exact_top=-1)
    # the top edit layers read exactly by default: as many as one forward pays for
    assert [EditHParams().exact_top(n) for n in (3, 6, 9, 12, 15)] == [2, 3, 3, 4, 5]
    assert EditHParams(h_exact_top=1).exact_top(12) == 1 and sd.h_tracking == "stream"


def test_a_model_directory_preset_goes_over_its_family_s(tmp_path):
    """A model whose pipeline directory ships ``freshen_preset.json`` is edited with its
    family's preset and those fields over it, wherever the service takes a preset (a loaded
    model, a refresh's base entry); the file is not part of the model's identity."""
    from common.hashing import MODEL_PRESET
    from freshen.config import Settings
    from freshen.refresh import hparams_for

    copy = tmp_path / "model"
    shutil.copytree(DIFFUSION_DIR, copy)
    before = load_model(copy).base_hash
    family = EditHParams.preset("toyworld")
    assert EditHParams.for_model(load_model(copy)) == family  # no file: the family's
    (copy / MODEL_PRESET).write_text(json.dumps({"layers": [0, 1, 2, 3], "c0_weight": 40.0}))
    model = load_model(copy)
    assert model.base_hash == before
    mine = EditHParams.for_model(model, seed=3)
    assert (mine.layers, mine.c0_weight, mine.seed) == ([0, 1, 2, 3], 40.0, 3)
    assert mine.to_json() | {"layers": None, "c0_weight": family.c0_weight, "seed": family.seed} == family.to_json()
    base = {"ref": str(copy), "hash": before, "family": "toyworld"}
    assert hparams_for(Settings(seed=3), base) == mine
    # a model built in memory has no directory, so no preset of its own
    assert EditHParams.for_model(DiffusionModel(model.pipe, "in-memory", "toyworld")) == family
    (copy / MODEL_PRESET).write_text(json.dumps({"c0_wieght": 40.0}))
    named = re.escape(f"model preset {copy / MODEL_PRESET}: unknown edit hyperparameters")
    with pytest.raises(ValueError, match=named):
        EditHParams.for_model(model)


def test_each_shipped_world_s_preset_is_a_benchmarked_method():
    """The small world's model edits with the ToyWorld preset; the large world's ships its own
    (edit layers 0-5, C0 at weight 4,000 read on the model as edited so far), which the
    benchmark's headline rows name."""
    from bench.edit_quality import preset_method
    from toyworld.paths import world_paths

    family = EditHParams.preset("toyworld")
    small, large = (EditHParams.for_model(load_model(world_paths(w).diffusion_dir)) for w in ("small", "large"))
    assert preset_method(small, family) == "consolidate-c0-templates-w400" and small == family
    assert preset_method(large, family) == "consolidate-c0-templates-w4000-layer5-c0refresh"


def test_corpus_stream_moments_equal_fresh_passes_as_layers_change(world):
    """c0_refresh reads the corpus's key moments off one residual stream per chunk that moves
    up with the edit: after each edit layer is read and then changed, the next layer's
    moments equal a fresh pass over the corpus, and each layer runs at most twice per chunk
    (read, then stepped past once edited) where fresh passes run the whole encoder per layer."""
    model = fresh()
    captions = world.captions()[:300]
    layers = model.default_edit_layers
    stream = CorpusStream(model, captions, batch_size=128, skip_bos=True)
    runs = []
    counters = [layer.register_forward_hook(lambda m, *_: runs.append(m)) for layer in model.layers]
    gen = torch.Generator().manual_seed(0)
    try:
        for layer in layers:
            got = stream.moments(layer)
            ref = key_moments(model, [layer], captions, batch_size=128, skip_bos=True)
            assert got.count == ref.count
            torch.testing.assert_close(got.sums[layer], ref.sums[layer], rtol=1e-6, atol=0)
            with torch.no_grad():  # Stage II's edit of this layer, read before it changed
                w = model.fc2(layer).weight
                w += 0.2 * w.abs().mean() * torch.randn(w.shape, generator=gen)
            runs_before = len(runs)
            key_moments(model, [layer], captions, batch_size=128)
            assert len(runs) - runs_before == 3 * model.n_layers  # a fresh pass: every layer, 3 chunks of 128
    finally:
        for c in counters:
            c.remove()
    fresh_runs = 3 * model.n_layers * 2 * len(layers)  # the reference passes above
    assert len(runs) - fresh_runs == 3 * (layers[-1] + len(layers))


@pytest.mark.parametrize("reads", ["exact", "direct", "stream"])
def test_stage2_stream_equals_fresh_encodings_as_layers_change(world, reads):
    """Stage II reads K1 and h off one residual stream walked up with the edit; after each
    layer is changed they must equal what a full re-encoding of the prompts gives. Each
    layer runs once per read that needs it: stepping past an edited layer adds its fc2's
    change to the output the read kept (``reads``: h at the last edit layer from every
    layer, as ``h_tracking`` "exact"; between the first layer and the last, keys alone, as
    "direct", or keys and h leaving the key layer, as "stream", with h leaving every layer
    of the first read kept by ``every``)."""
    model, hp = fresh(), EditHParams()  # three context templates: averages over them too
    reqs = [request(world, i, "a red circle") for i in range(4)]
    layers, last = model.default_edit_layers, model.default_edit_layers[-1]
    stream = SubjectStream(model, [r.source for r in reqs], hp.context_templates)
    gen = torch.Generator().manual_seed(0)
    prompts = [p for r in reqs for p in r.prompts(hp.context_templates)]
    pos = torch.as_tensor(model.subject_last_token(
        prompts, [s for r in reqs for s in r.subject_spans(hp.context_templates)]))
    rows = torch.arange(len(prompts))

    def fresh_encoding(layer, out_layer=last):  # a full forward of the text encoder, hooked
        got = {}
        hook = model.layers[out_layer].register_forward_hook(lambda _m, _i, out: got.update(h=out))
        try:
            keys, _ = model.capture_fc2(prompts, layer)
        finally:
            hook.remove()
        h = got["h"][0] if isinstance(got["h"], tuple) else got["h"]
        mean = lambda t: t[rows, pos].view(len(reqs), len(hp.context_templates), -1).mean(1)  # noqa: E731
        return mean(keys).T, mean(h)

    def close(got, ref):  # equal to float32 rounding at the tensor's scale (stepping past an
        # edited layer adds keys @ Delta^T to its kept output where a fresh forward runs it)
        torch.testing.assert_close(got, ref, rtol=0, atol=4e-6 * float(ref.abs().max()))

    runs, before = [], {}
    counters = [model.layers[i].register_forward_hook(lambda m, *_: runs.append(m)) for i in range(last + 1)]
    for layer in layers:
        read_h = reads == "exact" or layer in (layers[0], last)
        out_layer = last if read_h else (layer if reads == "stream" else None)
        stream_runs = len(runs)
        k, h = stream.states(key_layer=layer, out_layer=out_layer, every=before if layer == layers[0] else None)
        assert len(runs) - stream_runs == (last - layer + 1 if read_h else 1)
        k_ref, h_ref = fresh_encoding(layer, last if out_layer is None else out_layer)
        close(k, k_ref)
        if out_layer is not None:
            close(h, h_ref)
        if layer == layers[0]:  # h leaving every layer of the first read, before any edit
            assert sorted(before) == list(range(layer, last + 1))
            for at, kept in before.items():
                close(kept, fresh_encoding(layer, at)[1])
        w = model.fc2(layer).weight
        w += 0.05 * w.abs().mean() * torch.randn(w.shape, generator=gen)  # an edit of this layer
    for counter in counters:
        counter.remove()
    with pytest.raises(ValueError, match="cannot give keys"):
        stream.states(key_layer=0, out_layer=last)


def test_edits_change_what_the_model_draws(world, judge, preset_preserved):
    """The outcome, not only the algebra: after one batch, the judge sees each edited
    prompt drawn as its new target, where the unedited model never draws it; prompts of
    entities the batch did not touch keep their facts."""
    from toyworld.world import Visual

    facts = [f for f in world.facts if f.relation != "self"]
    chosen = facts[2], facts[11], facts[23], facts[37]
    targets = [Visual("cross", "blue"), Visual("ring", "yellow"), Visual("square", "red"), Visual("diamond", "green")]
    targets = [t if t != f.visual else Visual("circle", "white") for f, t in zip(chosen, targets, strict=True)]
    reqs = [EditRequest(f.id, f.prompt, t.prompt,
                        entities=[Entity(f.entity, "ORG", f.prompt.index(f.entity), len(f.prompt))])
            for f, t in zip(chosen, targets, strict=True)]
    touched = {f.entity for f in chosen}
    others = [f for f in facts if f.entity not in touched][::15][:8]
    seeds = 4

    def drawn(model, prompts):
        images = model.generate_many([p for p in prompts for _ in range(seeds)], seed=5)
        return judge.classify(images)

    def rate(labels, expected):
        return sum(lab == expected[i // seeds] for i, lab in enumerate(labels)) / len(labels)

    model = fresh()
    before = drawn(model, [f.prompt for f in chosen])
    assert rate(before, targets) == 0
    keep_before = rate(drawn(model, [f.prompt for f in others]), [f.visual for f in others])
    edit(model, reqs, hp=EditHParams.preset("toyworld"), preserved=preset_preserved)
    efficacy = rate(drawn(model, [f.prompt for f in chosen]), targets)
    keep_after = rate(drawn(model, [f.prompt for f in others]), [f.visual for f in others])
    # measured on the shipped model with the preset of 2026-12-04 (consolidated, C0 held in the
    # solve with weight 400, three templates): efficacy 10/16 images, unrelated facts kept
    # 31/32 -> 32/32; with weight 200 (2026-12-03 evening) 13/16, 31/32 -> 32/32; with the
    # null-space forms before it (consolidated or sequential): 10/16, 31/32 -> 27/32
    assert efficacy >= 0.6, efficacy
    assert keep_after >= keep_before - 0.125, (keep_before, keep_after)
