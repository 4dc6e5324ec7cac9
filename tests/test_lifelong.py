"""What keeps many edits sound (docs/method.md "Many edits: what freshen adds"): targets
anchored to the base, C0 without the constant [BOS] key, bounded updates, and the live
fact set of consolidated versions (revisions replace, reverts are exact)."""

import os

import pytest
import torch

from bench.edit_quality import NULLSPACE, SEQUENTIAL
from common.errors import InvalidInput
from editing.api import apply_targets, edit, preservation, revert
from editing.hparams import EditHParams
from editing.keys import compute_hs, key_moments, layer_stats, null_space_projection, protected_share
from editing.model import load_model
from editing.requests import EditRequest, Entity
from editing.state import Edit, EditState, LiveFact
from toyworld.paths import DIFFUSION_DIR

FAST = dict(steps=40, noise_images=1, dest_steps=20)


def fresh():
    return load_model(DIFFUSION_DIR)


def request(world, i: int, target: str, rid: str | None = None) -> EditRequest:
    f = [f for f in world.facts if f.relation != "self"][i]
    start = f.prompt.index(f.entity)
    return EditRequest(rid or f"fact-{i}", f.prompt, target,
                       entities=[Entity(f.entity, "ORG", start, start + len(f.entity))])


@pytest.fixture(scope="module")
def preserved(world, toy_model):
    """The ToyWorld preset's preservation (C0 held in the solve, no null space)."""
    return preservation(toy_model, toy_model.default_edit_layers, world.captions(),
                        EditHParams.preset("toyworld", **FAST))


@pytest.fixture(scope="module")
def nullspace_preserved(world, toy_model):
    """The null-space forms' (P from C0's energy cut)."""
    return preservation(toy_model, toy_model.default_edit_layers, world.captions(),
                        EditHParams.preset("toyworld", **FAST, **NULLSPACE))


def weights(model):
    return {l: model.fc2(l).weight.detach().clone() for l in model.default_edit_layers}


def test_c0_without_bos_leaves_out_the_constant_key(world, toy_model):
    """In a causal encoder the [BOS] key is the same in every caption; C0 without it is the
    second moment of every other token's key."""
    caps = world.captions()[:80]
    layer = 1
    c0 = layer_stats(toy_model, [layer], caps, progress=False)[layer]
    c0_nobos = layer_stats(toy_model, [layer], caps, progress=False, skip_bos=True)[layer]
    keys, _ = toy_model.capture_fc2(caps, layer)
    enc = toy_model.encode(caps, pad_to_max=False)
    bos = keys[:, 0].double()
    assert (bos - bos[0]).norm() < 1e-4 * bos[0].norm()  # one key for every caption
    mask = torch.arange(keys.shape[1])[None] <= enc.eos_index[:, None]
    mask[:, 0] = False
    k = keys[mask].double()
    torch.testing.assert_close(c0_nobos, k.T @ k / len(k))
    u = bos[0] / bos[0].norm()
    assert u @ c0_nobos @ u < 0.8 * (u @ c0 @ u)  # C0's energy along [BOS] was largely [BOS]'s own


def test_c0_of_a_corpus_less_some_captions_by_subtraction(world, toy_model):
    """C0 of the corpus less the captions of the batch's facts, from the whole corpus's
    moments minus theirs, equals C0 taken over what is left; the moments may cover more
    layers than the solve edits (a benchmark's methods with other edit layers share them)."""
    caps = world.captions()[:120]
    layers = toy_model.default_edit_layers
    hp = EditHParams.preset("toyworld", **FAST)
    reqs = [EditRequest("x", caps[5], "a red circle", related=[caps[40]])]
    moments = key_moments(toy_model, [*layers, toy_model.n_layers - 1], caps, skip_bos=hp.c0_skip_bos)
    fast = preservation(toy_model, layers, caps, hp, requests=reqs, moments=moments)
    slow = preservation(toy_model, layers, caps, hp, requests=reqs)
    assert len(slow.captions) < len(caps) - 1 and caps[40] not in slow.captions
    assert sorted(fast.c0) == sorted(slow.c0) == sorted(layers)
    for l in layers:
        # equal up to float32 forward noise (the captions are batched differently)
        torch.testing.assert_close(fast.c0[l], slow.c0[l], rtol=1e-5, atol=1e-7)


def test_energy_cut_protects_the_energy_it_says(preserved):
    layer = 1
    c0 = preserved.c0[layer]
    for threshold in (1e-3, 1e-2, 1e-1):
        share = protected_share(c0, null_space_projection(c0, "energy", threshold))
        assert share["protected_energy"] >= 1 - threshold - 1e-9
        assert 0 < share["protected_rank"] < c0.shape[0]


def test_update_bound_holds_at_every_layer(world, preserved):
    """With hparams.max_update_norm, ||W_l - W0_l|| / ||W0_l|| stays within it at every
    edit layer, where the same batch without a bound goes past it."""
    reqs = [request(world, i, t) for i, t in ((1, "a blue cross"), (9, "a green ring"), (20, "a red diamond"))]
    hp = EditHParams.preset("toyworld", **FAST)
    free = edit(fresh(), reqs, hp=hp, preserved=preserved)
    norms = {int(l): v for l, v in free.edit.meta["update_norm"].items()}
    bound = 0.5 * max(norms.values())
    bounded = edit(fresh(), reqs, hp=EditHParams.preset("toyworld", **FAST, max_update_norm=bound),
                   preserved=preserved)
    got = {int(l): v for l, v in bounded.edit.meta["update_norm"].items()}
    assert all(v <= bound * (1 + 1e-4) for v in got.values()), (got, bound)
    assert any(v > bound for v in norms.values())
    assert bounded.edit.meta["extra_ridge"]  # the layers that needed it say so
    assert set(got) == set(bounded.model.default_edit_layers)


def test_stage1_is_anchored_to_the_base(world, preserved):
    """A batch on top of an edited model takes its targets from the base: Stage I's h is the
    base's state, and z = h_base + delta, whatever the chain did to the same prompt."""
    hp = EditHParams.preset("toyworld", **FAST)
    model, base = fresh(), fresh()
    first = [request(world, 2, "a yellow ring")]
    r1 = edit(model, first, hp=hp, preserved=preserved, base=base)
    again = [request(world, 2, "a blue square", rid="again")]
    layer = hp.edit_layers(model.n_layers)[-1]
    h_base = compute_hs(base, again, layer, hp.context_templates)
    h_model = compute_hs(model, again, layer, hp.context_templates)
    assert (h_base - h_model).norm() > 0.1 * h_base.norm()  # the chain moved this prompt
    r2 = edit(model, again, r1.state, hp=hp, preserved=preserved, base=base)
    assert r2.diagnostics[0]["h_norm"] == pytest.approx(float(h_base.norm()), rel=1e-4)
    assert r2.edit.targets.shape == (1, h_base.shape[1])


def moved_copy(where):
    """A copy of the shipped small model at ``where`` with one fc2 weight scaled by 1.01:
    other weights, so another ``base_hash``."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(DIFFUSION_DIR, where)
    weights_file = where / "text_encoder" / "model.safetensors"
    tensors = load_file(weights_file)
    name = next(k for k in tensors if k.endswith("fc2.weight"))
    tensors[name] = tensors[name] * 1.01
    save_file(tensors, weights_file)
    return where


def test_the_benchmarks_stage1_cache_is_kept_per_base_model(world, tmp_path):
    """bench.edit_quality keeps Stage I's targets under the base model's weights hash: the
    same weights in another directory find them, other weights compute their own."""
    import shutil

    from bench.edit_quality import stage1_targets

    hp = EditHParams.preset("toyworld", **FAST)
    reqs, cache = [request(world, 3, "a white cross")], tmp_path / "cache"
    copy, other = tmp_path / "copy", moved_copy(tmp_path / "other")
    shutil.copytree(DIFFUSION_DIR, copy)
    base, same, moved = load_model(DIFFUSION_DIR), load_model(copy), load_model(other)
    layer = hp.edit_layers(base.n_layers)[-1]
    z = stage1_targets(base, reqs, hp, layer, "one batch", cache)
    assert [p.parent.name for p in cache.rglob("z_*.safetensors")] == [base.base_hash[:16]]
    assert same.base_hash == base.base_hash and moved.base_hash != base.base_hash
    assert torch.equal(stage1_targets(same, reqs, hp, layer, "one batch", cache), z)
    z_moved = stage1_targets(moved, reqs, hp, layer, "one batch", cache)
    assert sorted(p.parent.name for p in cache.rglob("z_*.safetensors")) == sorted(
        [base.base_hash[:16], moved.base_hash[:16]])
    assert not torch.equal(z_moved, z)


def test_the_benchmark_measures_a_candidate_model_given_by_its_directory(tmp_path):
    """``bench.edit_quality --model DIR`` edits and judges the model in DIR, not the shipped
    one: the results name its weights, and its Stage I targets are kept under its hash."""
    import json
    import subprocess
    import sys

    candidate = moved_copy(tmp_path / "candidate")
    out, cache = tmp_path / "quality.json", tmp_path / "cache"
    done = subprocess.run([sys.executable, "-m", "bench.edit_quality", "--world", "small", "--sizes", "2",
                           "--batch", "2", "--steps", "2", "--seeds", "1", "--probe-facts", "4", "--methods",
                           "preset", "--model", str(candidate), "--stage1-cache", str(cache), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    mine, shipped = load_model(candidate).base_hash, fresh().base_hash
    assert mine != shipped
    assert results["model"]["base_hash"] == mine and f"--model {candidate}" in results["command"]
    assert [p.parent.name for p in cache.rglob("z_*.safetensors")] == [mine[:16]]
    row = next(iter(results["methods"].values()))["2"]
    assert row["facts_live"] == 2 and row["update_norm"] > 0


def test_a_per_key_c0_weight_scales_with_the_columns_written(world, preserved):
    """c0_scale "per_key": C0 weighs c0_weight times the key columns the solve writes, so a
    consolidated version of two facts (three templates each: six columns) written with
    weight w / 6 per key is the one written with the fixed weight w, and not the one written
    with the fixed weight w / 6."""
    fixed = EditHParams.preset("toyworld", **FAST, mode="consolidate")
    assert fixed.c0_weight > 0 and fixed.key_columns == "per_template"
    reqs = [request(world, 4, "a red ring"), request(world, 7, "a blue circle")]
    columns = len(reqs) * len(fixed.context_templates)
    per_key = EditHParams.preset("toyworld", **FAST, mode="consolidate", c0_scale="per_key",
                                 c0_weight=fixed.c0_weight / columns)
    light = EditHParams.preset("toyworld", **FAST, mode="consolidate", c0_weight=fixed.c0_weight / columns)
    assert per_key.c0_weight_for(columns) == pytest.approx(fixed.c0_weight)
    model = fresh()
    zs = edit(model, reqs, hp=fixed, preserved=preserved, base=fresh()).edit.targets
    written = {}
    for name, hp in (("per_key", per_key), ("light", light)):
        other = fresh()
        apply_targets(other, reqs, zs, hp, EditState(), preserved)
        written[name] = weights(other)
    base, ours = weights(fresh()), weights(model)
    for l in model.default_edit_layers:
        assert not torch.allclose(ours[l], base[l], atol=1e-5)
        assert torch.allclose(written["per_key"][l], ours[l], atol=1e-6)
        assert not torch.allclose(written["light"][l], ours[l], atol=1e-5)
    with pytest.raises(InvalidInput, match="c0_scale"):
        EditHParams.preset("toyworld", c0_scale="per_fact")


def test_a_refreshed_c0_holds_the_corpus_keys_as_the_lower_layers_left_them(world, preserved):
    """c0_refresh: above the first edit layer C0 is read on the model as edited so far. Two
    edit layers: the first layer's update is the same either way, and the second layer's is
    the optimum of its objective over the corpus's keys as the first update left them,
    ||Delta K1 - R||^2 + w tr(Delta C0_now Delta^T): below what the update solved against the
    base's C0 costs there, with the same K1 and R."""
    layers = [0, 1]
    kw = dict(**FAST, mode="consolidate", layers=layers, entity_weight=0.0)
    refreshed = EditHParams.preset("toyworld", **kw, c0_refresh=True)
    plain = EditHParams.preset("toyworld", **kw)
    reqs = [request(world, 4, "a red ring"), request(world, 7, "a blue circle")]
    edits = {"refreshed": edit(fresh(), reqs, hp=refreshed, preserved=preserved, base=fresh()).edit}
    edits["plain"] = apply_targets(fresh(), reqs, edits["refreshed"].targets, plain, EditState(), preserved)
    top = {k: e.layers[1] for k, e in edits.items()}
    assert torch.allclose(*(e.layers[0].dense() for e in edits.values()), atol=1e-6)
    assert torch.allclose(top["refreshed"].keys, top["plain"].keys, atol=1e-5)
    assert torch.allclose(top["refreshed"].r, top["plain"].r, atol=1e-5)
    below = fresh()  # the base with the first layer's update only: where the corpus's keys now are
    with torch.no_grad():
        below.fc2(0).weight += edits["plain"].layers[0].dense().float()
    c0_now = key_moments(below, [1], preserved.captions, skip_bos=plain.c0_skip_bos).c0()[1]
    assert not torch.allclose(c0_now, preserved.c0[1], rtol=1e-3)
    w = plain.c0_weight_for(top["plain"].keys.shape[1])

    def cost(le) -> float:
        delta, k1, r = le.dense(), le.keys.double(), le.r.double()
        return float(((delta @ k1 - r) ** 2).sum() + w * torch.trace(delta @ c0_now @ delta.T))

    assert cost(top["refreshed"]) < cost(top["plain"])


def consolidated(world, preserved, batches):
    """A consolidated chain of batches (lists of (fact index, target)), with Stage I once per
    (fact, target): returns the model, the state and each batch's Edit."""
    hp = EditHParams.preset("toyworld", **FAST, mode="consolidate")
    model, base = fresh(), fresh()
    state, edits = EditState(), []
    for batch in batches:
        res = edit(model, [request(world, i, t) for i, t in batch], state, hp=hp, preserved=preserved, base=base)
        state, edits = res.state, [*edits, res.edit]
    return model, state, edits, hp


def test_consolidated_revisions_replace_their_predecessors(world, preserved):
    """A fact revised three times ends at its last target, and the version equals a
    consolidated version that had the last target from the start (same stored targets);
    the other facts' outputs stay where the first version put them."""
    others = [(9, "a green ring"), (20, "a red diamond")]
    model, state, edits, hp = consolidated(
        world, preserved, [[(1, "a blue cross"), *others], [(1, "a white square")], [(1, "a purple circle")],
                           [(1, "a yellow triangle")]])
    layer = hp.edit_layers(model.n_layers)[-1]
    assert [f.id for f in state.live_facts()] == ["fact-9", "fact-20", "fact-1"]
    assert all(e.from_base for e in edits) and edits[-1].size == 3  # each version: base + the live set
    z_last = edits[-1].targets[-1]
    reached = compute_hs(model, [request(world, 1, "-")], layer, hp.context_templates)[0]
    h0 = compute_hs(fresh(), [request(world, 1, "-")], layer, hp.context_templates)[0]
    assert (reached - z_last).norm() < 0.35 * (z_last - h0).norm()  # the last target, not an earlier one
    # the same live set solved at once from the base: the same weights
    direct = fresh()
    apply_targets(direct, [*state.live_facts()], torch.stack([f.z for f in state.live_facts()]), hp,
                  EditState(), preserved)
    for l, w in weights(direct).items():
        torch.testing.assert_close(model.fc2(l).weight, w, rtol=0, atol=1e-6)
    # the earlier versions landed in the live set without being solved (as the quality
    # benchmark does between checkpoints), then the last batch: the same weights again
    skipped = EditState()
    for e in edits[:-1]:
        skipped = skipped.with_facts([LiveFact(i, s, z, tuple(Entity(**d) for d in ents)) for i, s, z, ents
                                      in zip(e.request_ids, e.sources, e.targets, e.entities, strict=True)])
    once = fresh()
    apply_targets(once, [request(world, 1, "a yellow triangle")], edits[-1].targets[-1:], hp, skipped, preserved)
    for l, w in weights(once).items():
        torch.testing.assert_close(model.fc2(l).weight, w, rtol=0, atol=1e-6)
    # the other facts: where the first version put them, up to the coupling of one solve
    first = fresh()
    edits[0].apply(first)
    reqs = [request(world, i, t) for i, t in others]
    before, after = (compute_hs(m, reqs, layer, hp.context_templates) for m in (first, model))
    moved = (compute_hs(fresh(), reqs, layer, hp.context_templates) - before).norm(dim=1)
    assert ((after - before).norm(dim=1) < 0.2 * moved).all(), ((after - before).norm(dim=1), moved)


def test_a_reverted_fact_leaves_no_trace(world, preserved, tmp_path):
    """Reverting a fact of a consolidated version gives the weights of a version that never
    had it (the other facts with the same stored targets, solved from the base), and the
    saved revert replays as the base plus itself."""
    model, state, _, hp = consolidated(world, preserved, [[(1, "a blue cross"), (9, "a green ring")],
                                                          [(20, "a red diamond")]])
    assert any((model.fc2(l).weight - w).abs().max() > 1e-3 for l, w in weights(fresh()).items())
    reverted = revert(model, [request(world, 9, "-").source], hp, state, preserved)
    assert reverted.request_ids == ["fact-1", "fact-20"] and reverted.from_base
    kept = [f for f in state.live_facts() if f.id != "fact-9"]
    never = fresh()
    apply_targets(never, kept, torch.stack([f.z for f in kept]), hp, EditState(), preserved)
    for l, w in weights(never).items():
        torch.testing.assert_close(model.fc2(l).weight, w, rtol=0, atol=1e-6)
    reverted.save(tmp_path, keys=False)
    again = fresh()
    loaded = Edit.load(tmp_path)
    assert loaded.from_base and loaded.targets is not None
    EditState.from_chain([loaded], again)
    for l, w in weights(never).items():
        torch.testing.assert_close(again.fc2(l).weight, w, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="not live"):
        revert(model, ["the logo of nobody"], hp, state, preserved)


def test_refreshed_kp_holds_earlier_batches(world, nullspace_preserved):
    """Sequential Eq. 7 with Kp read from the live facts on the model being edited: a second
    batch moves the first batch's edited states as little as with the frozen keys, and far
    less than with no memory at all."""
    first = [request(world, 1, "a blue cross"), request(world, 9, "a green ring")]
    second = [request(world, 20, "a red diamond"), request(world, 30, "a white square")]

    def drift(**hp_kw):
        hp = EditHParams.preset("toyworld", **FAST, **SEQUENTIAL | hp_kw)
        model, base = fresh(), fresh()
        layer = hp.edit_layers(model.n_layers)[-1]
        h0 = compute_hs(model, first, layer, hp.context_templates)
        r1 = edit(model, first, hp=hp, preserved=nullspace_preserved, base=base)
        h1 = compute_hs(model, first, layer, hp.context_templates)
        state = r1.state if hp_kw.get("refresh_kp") is not None else EditState()
        edit(model, second, state, hp=hp, preserved=nullspace_preserved, base=base)
        h2 = compute_hs(model, first, layer, hp.context_templates)
        return float(((h2 - h1).norm(dim=1) / (h1 - h0).norm(dim=1)).max())

    refreshed, frozen, none = drift(refresh_kp=True), drift(refresh_kp=False), drift()
    assert refreshed < 0.3 and refreshed < 0.5 * none, (refreshed, frozen, none)
    assert refreshed <= frozen * 1.2, (refreshed, frozen)
