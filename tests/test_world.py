"""ToyWorld's data: generated from a seed, shipped as files, split into train and held out."""

import numpy as np

from toyworld.world import CONTEXTS, DEFAULT_SEED, RELATIONS, Visual, World, generate, render


def test_generation_is_deterministic_for_a_seed():
    a, b = generate(123), generate(123)
    assert a.to_json() == b.to_json()
    assert a.ner_train == b.ner_train and a.ner_heldout == b.ner_heldout


def test_different_seeds_give_different_worlds():
    assert generate(1).to_json()["entities"] != generate(2).to_json()["entities"]


def test_shipped_files_are_the_default_seed(world, tmp_path):
    generate(DEFAULT_SEED).write(tmp_path)
    again = World.read(tmp_path)
    assert again.to_json() == world.to_json()
    assert again.ner_train == world.ner_train and again.ner_heldout == world.ner_heldout


def test_world_has_the_size_the_issue_asks_for(world):
    assert len(world.entities) >= 60
    assert {e.kind for e in world.entities} == {"ORG", "LOC", "PER"}
    assert all(len(e.name.split()) >= 2 for e in world.entities)
    per_entity = {}
    for f in world.facts:
        per_entity.setdefault(f.entity, set()).add(f.relation)
    assert all(len(rels & set(RELATIONS)) >= 3 for rels in per_entity.values())
    assert len({e.name for e in world.entities}) == len(world.entities)


def test_heldout_prompts_are_never_trained(world):
    trained = {p for p, _ in world.training_prompts()}
    heldout = world.heldout_fact_prompts() + world.heldout_paraphrase_prompts()
    assert heldout and not any(p in trained for p, _ in heldout)
    # and every held-out fact prompt's context and fact are each trained elsewhere
    for f in world.facts:
        assert f.prompt in trained
        assert f.heldout_context in CONTEXTS and f.heldout_context not in f.train_contexts


def test_ner_heldout_texts_are_not_in_training(world):
    train = {r["text"] for r in world.ner_train}
    assert not any(r["text"] in train for r in world.ner_heldout)
    for r in world.ner_heldout:
        for e in r["entities"]:
            assert r["text"][e["start"]:e["end"]].strip() == r["text"][e["start"]:e["end"]]


def test_render_without_jitter_is_deterministic_and_with_a_seed_reproducible():
    v = Visual("triangle", "blue")
    assert np.array_equal(render(v), render(v))
    a = render(v, np.random.default_rng(5))
    b = render(v, np.random.default_rng(5))
    assert np.array_equal(a, b) and a.shape == (16, 16, 3) and a.dtype == np.uint8


def test_renders_show_their_colour():
    img = render(Visual("square", "red")).astype(int)
    centre = img[6:10, 6:10].reshape(-1, 3).mean(0)
    assert centre[0] > 150 and centre[1] < 80 and centre[2] < 80
