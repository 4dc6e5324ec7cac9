"""ToyWorld's data: generated from a seed, shipped as files, split into train and held out."""

import numpy as np
import pytest

from toyworld.paths import world_paths
from toyworld.world import CONTEXTS, DEFAULT_SEED, RELATIONS, WORLDS, Visual, World, generate, render


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


@pytest.fixture(scope="module")
def large_world():
    return World.read(world_paths("large").data_dir)


def test_the_large_world_is_what_its_files_say(large_world, tmp_path):
    generate(**WORLDS["large"]).write(tmp_path)
    again = World.read(tmp_path)
    assert again.to_json() == large_world.to_json()
    assert again.ner_heldout == large_world.ner_heldout


def test_the_large_world_is_big_enough_to_edit_a_thousand_times(large_world):
    """1,000+ entities with four facts each, 1,000+ concepts, a reserved fifth, and at least
    4,000 editable facts: a 1,000-edit stream changes at most a quarter of them."""
    size = large_world.size()
    assert size["entities"] >= 1000 and size["concepts"] >= 1000
    assert size["editable_facts"] >= 4000 and 1000 <= size["editable_facts"] / 4
    assert {e.kind for e in large_world.entities} == {"ORG", "LOC", "PER"}
    reserved_entities = {f.entity for f in large_world.relation_facts if f.reserved}
    assert len(reserved_entities) >= 0.15 * size["entities"]
    assert sum(f.reserved for f in large_world.concept_facts) >= 0.15 * size["concepts"]
    # a reserved entity is reserved with all its facts
    assert all(f.reserved for f in large_world.relation_facts if f.entity in reserved_entities)


def test_concepts_are_standalone_nouns_of_their_own(large_world):
    """A concept ("a zorblat") is one invented lower-case word that no name and no other
    concept uses: its keys share no entity with another fact."""
    nouns = [f.prompt.removeprefix("a ") for f in large_world.concept_facts]
    assert len(set(nouns)) == len(nouns) and all(n.isalpha() and n.islower() for n in nouns)
    name_words = {w.lower() for e in large_world.entities for w in e.name.split()}
    assert not set(nouns) & name_words
    assert all(f.entity == "" and f.paraphrases for f in large_world.concept_facts)
    trained = {p for p, _ in large_world.training_prompts()}
    assert not any(p in trained for p, _ in large_world.heldout_fact_prompts(large_world.concept_facts))


def test_the_small_world_has_no_concepts_and_no_reserved_set(world):
    assert world.size()["concepts"] == 0 and not any(f.reserved for f in world.facts)
    assert "reserved" not in world.to_json()["facts"][0]  # its files are as before
