"""Edit measurement in ToyWorld: probes, scores and FID in the judge's feature space."""

import numpy as np

from toyworld.world import Visual
from validation.toyworld_eval import KINDS, Probe, clean_renders, fid, probes_for, score


def test_probes_cover_every_kind(world):
    f = next(f for f in world.facts if f.relation == "logo")
    probes = probes_for(world, {f.id: Visual("ring", "white")}, n_unrelated=10)
    kinds = {p.kind for p in probes}
    assert kinds == set(KINDS)
    assert Probe(f.prompt, "efficacy", f.id, Visual("ring", "white")) in probes
    assert all(p.expected == Visual("ring", "white") for p in probes if p.kind == "generality")
    entity_alone = [p for p in probes if p.kind == "specificity_entity"]
    assert [p.prompt for p in entity_alone] == [f.entity]
    assert not any(f.entity in p.prompt for p in probes if p.kind == "specificity_unrelated")


def test_score_counts_per_kind():
    v, w = Visual("ring", "white"), Visual("square", "red")
    probes = [Probe("a", "efficacy", "x", v), Probe("b", "specificity_entity", "y", w)]
    out = score(probes, [v, w, w, w], seeds=2)  # efficacy 1 of 2, entity 2 of 2
    assert out == {"efficacy": 0.5, "specificity_entity": 1.0, "specificity": 1.0}


def test_fid_in_judge_space(world, judge):
    visuals = [v for _, v in world.attribute_prompts()]
    a = clean_renders(visuals, 6, seed=1)
    b = clean_renders(visuals, 6, seed=2)
    shifted = clean_renders([Visual(v.shape, "red") for v in visuals], 6, seed=3)
    same, different = fid(judge, a, b), fid(judge, a, shifted)
    assert np.isfinite(same) and same < 0.25 * different


def test_gate_probes_do_not_depend_on_the_hash_seed(world):
    """The gate's probe set (and so the seeds of its images) is the same in every process:
    it once followed a set of entity names, whose order changes with PYTHONHASHSEED."""
    import json
    import os
    import subprocess
    import sys

    one_each = {f.entity: f for f in world.facts if f.relation != "self"}  # one fact per entity
    facts = list(one_each.values())[:12]
    cases = [[f"k{i}", f.prompt, "a red circle", [f.entity]] for i, f in enumerate(facts)]
    code = ("import json, sys; from toyworld.paths import DATA_DIR, JUDGE_DIR; "
            "from validation.evaluate import FactCase, ToyWorldJudge; "
            "cases = [FactCase(*c) for c in json.loads(sys.argv[1])]; "
            "p = ToyWorldJudge(JUDGE_DIR, DATA_DIR).probes(cases, fid_seeds=0); "
            "print(json.dumps([p.same_entity, p.unrelated]))")
    runs = [subprocess.run([sys.executable, "-c", code, json.dumps(cases)], capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2", "3")]
    assert runs[0] == runs[1] == runs[2]
    same, _ = json.loads(runs[0])
    assert same[:len(facts)] == [f.entity for f in facts]  # the facts' entities, in the facts' order
