"""One knowledge refresh, as the steps the Airflow DAG runs (and ``freshen refresh`` /
``make demo`` run in one process):

    plan_batch   approved changes of the ledger + the champion = a batch (files under home/batches)
    stage1       one target value per fact (any subset of the facts: the DAG fans out per fact)
    stage2       the closed-form edit on top of the champion, registered as the candidate
    gate         candidate vs champion, GX thresholds, promote or hold, ledger follows
    promote      any version to champion by hand (rollback), recorded

Steps exchange only ids and paths: a batch is a directory (``plan.json`` and one Stage I
result per fact), a version is its number in the registry.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from common.errors import InvalidInput, read_user_file
from feeds.contract import Fact
from freshen.config import Settings
from freshen.errors import FreshenError
from freshen.results import GateResult, PromoteResult

log = logging.getLogger(__name__)


@dataclass
class Batch:
    dir: Path
    key: str
    parent: int
    facts: list[Fact]
    hparams: dict

    @classmethod
    def read(cls, directory: Path) -> Batch:
        d = json.loads((Path(directory) / "plan.json").read_text())
        return cls(Path(directory), d["key"], d["parent"], [Fact.from_json(f) for f in d["facts"]], d["hparams"])

    def write(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "plan.json").write_text(json.dumps(
            {"key": self.key, "parent": self.parent, "facts": [f.to_json() for f in self.facts],
             "hparams": self.hparams}, indent=1) + "\n")

    def z_path(self, index: int) -> Path:
        return self.dir / "stage1" / f"{index:05d}.safetensors"


def ingest_feeds(settings: Settings, path: Path | None = None, ner: bool = True,
                 feed: str | None = None) -> list[dict]:
    """A feed file, or every new file of a directory (default: the drop directory): contract
    + GX rules, recorded in the ledger; NER too unless ``ner=False`` (then ``tag_new_entities``).
    Feeds trusted by the policy (``FRESHEN_POLICY``) are approved as ``policy:<name>``. Each
    summary names the validation report (GX Data Docs) under ``report``."""
    from editing.model import load_tokenizer
    from feeds.ingest import Policy, ingest_path
    from feeds.ner import NerTagger
    from validation.feed_rules import FeedRules

    path = Path(path) if path else settings.drop_dir
    if path == settings.drop_dir:
        path.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(settings.model)
    rules = FeedRules(settings.gx_dir, tokenizer.model_max_length)
    summaries = ingest_path(settings.open_ledger(), path, rules, tokenizer, feed=feed,
                            ner=NerTagger(settings.ner_model, device=settings.device) if ner else None,
                            policy=Policy.load(Path(settings.policy)) if settings.policy else None)
    return [s.to_json() | {"report": str(rules.docs_index)} for s in summaries]


def request_revert(settings: Settings, key: str, by: str, reason: str) -> dict:
    """Ask for change ``key`` (live in the champion) to be taken back out: a ``revert`` row
    written to a one-line feed file (``home/reverts``) and ingested like any feed, so it is
    approved, applied, gated and audited as any change is. Returns the ingest summary with
    the revert's key."""
    from datetime import UTC, datetime

    if not by or not by.strip() or not reason or not reason.strip():
        raise InvalidInput("revert: --by and --reason are required")
    ledger = settings.open_ledger()
    row = ledger.change(key)
    if row.status != "applied":
        raise InvalidInput(f"revert: {row.key} is {row.status}; only a change live in the champion (applied) can "
                           "be reverted")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    path = settings.home / "reverts" / f"revert-{stamp}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    change_id = f"{row.key}/{stamp}"
    path.write_text(json.dumps({"id": change_id, "kind": "revert", "source": row.source, "ref": f"revert of {row.key}",
                                "observed_at": datetime.now(UTC).isoformat(timespec="seconds")}) + "\n")
    [summary] = ingest_feeds(settings, path, feed="revert")
    revert_key = f"revert:{change_id}"
    if summary["rejections"]:  # the row is written here: a rejection is a bug of freshen's, not the user's
        raise FreshenError(f"revert of {row.key}: the revert row was rejected: {summary['rejections']}")
    ledger.note(revert_key, "requested", by, f"revert of {row.key}: {reason}")
    ledger.note(row.key, "revert_requested", by, f"{revert_key}: {reason}")
    return summary | {"key": revert_key, "reverts": row.key, "status": ledger.change(revert_key).status}


def tag_new_entities(settings: Settings) -> int:
    from feeds.ingest import tag_entities
    from feeds.ner import NerTagger

    return tag_entities(settings.open_ledger(), NerTagger(settings.ner_model, device=settings.device))


def audit_summary(settings: Settings, verdict: GateResult) -> dict:
    """What a run leaves for the UI: champion, the facts it holds now, verdict, grid path."""
    reg = settings.open_registry()
    champion = reg.champion()
    facts = [f"{k}" for _, keys in lineage_facts(reg, champion) for k in keys]
    return {"champion": champion, "champion_facts": facts, "verdict": verdict.status,
            "version": verdict.version, "reasons": verdict.reasons, "grid": verdict.grid}


def init_registry(settings: Settings, by: str = "freshen"):
    reg = settings.open_registry()
    fresh = not reg.exists()
    v = reg.init(settings.model, by=by)
    if fresh:
        settings.open_ledger().version_event(reg.name, v.number, "registered", by,
                                        {"base": v.manifest["base"], "champion": True})
    return v


def plan_batch(settings: Settings, keys: list[str] | None = None, limit: int | None = None) -> Batch | None:
    """The approved changes (or those of ``keys``) on top of the champion; None if none."""
    from registry.versions import batch_key

    reg = settings.open_registry()
    rows = settings.open_ledger().approved_for_editing()
    if keys is not None:
        wanted = set(keys)
        rows = [r for r in rows if r.key in wanted]
    rows = rows[:limit] if limit else rows
    if not rows:
        return None
    parent = reg.champion()
    base = reg.version(parent).manifest["base"]
    hp = hparams_for(settings, base)
    facts = [r.fact() for r in rows]
    key = batch_key(parent, base["hash"], facts, hp.to_json())
    done = reg.find_batch(key)
    if done is not None and reg.version(done).gate == "rejected":
        raise FreshenError(
            f"this exact batch ({len(facts)} changes on v{parent}, same hyperparameters) was edited into "
            f"v{done} and rejected by the gate ({reg.version(done).tags.get('freshen.gate_reasons')}); the same "
            "edit would come out again: change the batch (approve other changes, or set FRESHEN_HPARAMS)")
    batch = Batch(settings.home / "batches" / key, key, parent, facts, hp.to_json())
    batch.write()
    log.info("batch %s: %d facts on top of v%d", key, len(facts), parent)
    return batch


def hparams_for(settings: Settings, base: dict):
    """The editing hyperparameters of a refresh: the file ``FRESHEN_HPARAMS``, else the
    preset of the base model (``base``: a manifest's entry): its family's, with the model's
    own over it where its directory ships one."""
    from editing.hparams import EditHParams
    from editing.model import resolve_local

    return (EditHParams.load(Path(settings.hparams)) if settings.hparams
            else EditHParams.preset(base["family"], resolve_local(base["ref"]), seed=settings.seed))


def _captions(settings: Settings, family: str) -> list[str]:
    """The caption corpus: ToyWorld's own, or the file ``FRESHEN_CAPTIONS`` for a real model."""
    from toyworld.world import World

    if family == "toyworld" and not settings.captions:
        return World.read(settings.world).captions()
    if not settings.captions:
        raise InvalidInput("a real model needs a caption corpus: set FRESHEN_CAPTIONS to a text file, one per line")
    return [c for c in read_user_file(settings.captions, "caption corpus").splitlines() if c.strip()]


def judge_for(settings: Settings, family: str):
    """The evaluation's judge for a family of model: ToyWorld's classifier and world, or CLIP
    zero-shot with the caption corpus and the FID reference images (``validation.evaluate.Judge``)."""
    if family == "toyworld":
        from validation.evaluate import ToyWorldJudge

        return ToyWorldJudge(settings.judge, settings.world, settings.device)
    from validation.clip_judge import ClipJudge

    suite = None
    if settings.gate_probes:  # a benchmark's generality and specificity prompts join the probes
        from feeds.benchmarks import FORMATS, load

        fmt, _, path = settings.gate_probes.partition(":")
        if fmt not in FORMATS or not path:
            raise InvalidInput(f"FRESHEN_GATE_PROBES must be FORMAT:FILE with FORMAT one of {', '.join(FORMATS)}, "
                               f"got {settings.gate_probes!r}")
        suite = load(fmt, Path(path))
    return ClipJudge(settings.clip_judge, _captions(settings, family), settings.fid_reference or None, suite=suite,
                     device=settings.device)


def stage1(settings: Settings, batch_dir: Path, indices: list[int] | None = None) -> list[str]:
    """Stage I for the facts at ``indices`` (all by default) in one batched optimisation;
    one result file per fact. Files already written are kept (a retried task redoes only
    what is missing)."""

    from editing.hparams import EditHParams

    batch = Batch.read(batch_dir)
    indices = list(range(len(batch.facts))) if indices is None else list(indices)
    todo = [i for i in indices if not batch.z_path(i).is_file()]
    if todo:
        reg = settings.open_registry()
        targets(settings, [batch.facts[i] for i in todo], EditHParams.from_json(batch.hparams),
                reg.version(batch.parent).manifest["base"], lambda: reg.base_model(batch.parent),
                [batch.z_path(i) for i in todo])
    return [batch.facts[i].key for i in indices]


def targets(settings: Settings, facts: list[Fact], hp, base: dict, load_base, paths: list[Path]) -> None:
    """Stage I's result for each fact, written to its path in ``paths``: from the cache
    (``home/cache/stage1``, keyed by the base's hash, Stage I's settings and what the fact
    says: a preview's Stage I serves the refresh), else computed for all missing facts in
    one batched optimisation on the base (``load_base()``, loaded only then). Anchored to the
    base: destinations and targets from the unedited model, whatever version the batch
    builds on (docs/method.md "Stage I anchored to the base"); a revert's target is the
    base's own state for its source, nothing to optimise."""
    import hashlib
    import shutil

    import torch
    from safetensors.torch import save_file

    from editing.keys import compute_hs
    from editing.stage1 import compute_zs

    cache = settings.home / "cache" / "stage1"

    def cached(f: Fact) -> Path:
        what = [base["hash"], hp.stage1_settings(), f.source, f.target, f.kind, f.content_hash, f.entities]
        return cache / f"{hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]}.safetensors"

    todo = []
    for f, path in zip(facts, paths, strict=True):
        if cached(f).is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cached(f), path)
        else:
            todo.append((f, path))
    if not todo:
        return
    model = load_base()
    layer = hp.edit_layers(model.n_layers)[-1]
    results = []
    edits = [(f, p) for f, p in todo if f.kind != "revert"]
    reverts = [(f, p) for f, p in todo if f.kind == "revert"]
    if edits:
        s1 = compute_zs(model, [f.request() for f, _ in edits], hp, layer)
        results += [(f, p, {"z": s1.z[j], "h": s1.h[j], "delta": s1.delta[j]},
                     {k: float(v[j]) for k, v in s1.losses.items()}) for j, (f, p) in enumerate(edits)]
    if reverts:
        hs = compute_hs(model, [f.request() for f, _ in reverts], layer, hp.context_templates)
        results += [(f, p, {"z": hs[j], "h": hs[j].clone(), "delta": torch.zeros_like(hs[j])}, {})
                    for j, (f, p) in enumerate(reverts)]
    cache.mkdir(parents=True, exist_ok=True)
    for f, path, tensors, losses in results:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp,
                  metadata={"key": f.key, "losses": json.dumps(losses)})
        shutil.copyfile(tmp, cached(f).with_suffix(".tmp"))
        cached(f).with_suffix(".tmp").rename(cached(f))
        tmp.rename(path)  # a result file is whole or absent


def stage2(settings: Settings, batch_dir: Path, by: str = "freshen") -> int:
    """Stage II on top of the batch's parent, registered as the candidate; the batch's
    changes become ``applied`` to it. Rerunning a registered batch returns its version."""
    import torch
    from safetensors import safe_open

    from editing.hparams import EditHParams

    batch = Batch.read(batch_dir)
    reg, ledger = settings.open_registry(), settings.open_ledger()
    existing = reg.find_batch(batch.key)
    if existing is not None:  # registered before; finish the ledger side if a crash cut it short
        waiting = [f.key for f in batch.facts if ledger.change(f.key).status == "approved"]
        if waiting:
            ledger.mark_applied(waiting, reg.name, existing, reg.version(existing).run_id)
        return existing
    not_approved = [f.key for f in batch.facts if ledger.change(f.key).status != "approved"]
    if not_approved:
        raise FreshenError(f"stage2: {not_approved} are no longer approved (decided again since the batch "
                           "was planned); plan a new batch")
    orphan = reg.orphan_run(batch.key)
    if orphan is None:
        missing = [f.key for i, f in enumerate(batch.facts) if not batch.z_path(i).is_file()]
        if missing:
            raise FreshenError(f"stage2: Stage I results missing for {missing} in {batch.dir}; run stage1 first")
        zs, diag = [], []
        for i, f in enumerate(batch.facts):
            with safe_open(batch.z_path(i), "pt") as fh:
                zs.append(fh.get_tensor("z"))
                diag.append({"key": f.key, **json.loads(fh.metadata()["losses"])})
        t0 = time.time()
        hp = EditHParams.from_json(batch.hparams)
        model, state, kept = on_version(settings, reg, batch.parent, hp, batch.facts)
        edit = write_facts(model, batch.facts, torch.stack(zs), hp, state, kept)
        edit.meta |= {"hparams": batch.hparams, "base_hash": reg.version(batch.parent).manifest["base"]["hash"]}
        version = reg.register_batch(batch.parent, edit, batch.facts, batch.hparams, batch.key, by=by,
                                     extra={"stage1": diag, "stage2_seconds": round(time.time() - t0, 2),
                                            "update_norm": edit.meta.get("update_norm")})
    else:
        version = reg.register_run(orphan)
    v = reg.version(version)
    ledger.mark_applied([f.key for f in batch.facts], reg.name, version, v.run_id)
    ledger.version_event(reg.name, version, "registered", by,
                         {"parent": batch.parent, "facts": [f.key for f in batch.facts], "run_id": v.run_id})
    return version


def on_version(settings: Settings, reg, number: int, hp, facts: list[Fact]):
    """Version ``number``'s model ready for a Stage II of ``facts`` on top of it: (model,
    state, preservation). One load of the base serves C0 and P (they belong to the base:
    computed once per base, cached under home/cache), then the version's chain is replayed on
    the same copy, which becomes the version's model."""
    from editing.api import preservation
    from editing.state import EditState

    model = reg.base_model(number)
    base = reg.version(number).manifest["base"]
    chain = reg.chain(number)
    kept = preservation(model, hp.edit_layers(model.n_layers), _captions(settings, base["family"]), hp,
                        settings.home / "cache", base["hash"], requests=[f.request() for f in facts],
                        live=[s for e in chain for s in e.sources])
    return model, EditState.from_chain(chain, base=model), kept


def write_facts(model, facts: list[Fact], zs, hp, state, kept):
    """Stage II of ``facts`` with their Stage I targets ``zs`` into ``model`` (``on_version``'s
    triple). Reverts: with ``mode`` "consolidate" their sources leave the live set (exact: the
    version never had them); "sequential" writes them like any fact, aiming at the base's own
    state."""

    from editing.api import apply_targets

    requests = [f.request() for f in facts]
    reverting = [f.source for f in facts if f.kind == "revert"]
    if hp.mode == "consolidate" and reverting:
        keep = [i for i, f in enumerate(facts) if f.kind != "revert"]
        return apply_targets(model, [requests[i] for i in keep], zs[keep] if keep else zs[:0], hp,
                             state.dropping(reverting), kept)
    return apply_targets(model, requests, zs, hp, state, kept)


def gate(settings: Settings, version: int, by: str = "gate") -> GateResult:
    """Evaluate ``version`` against the champion and the unedited base; promote it if the GX
    suite passes.

    Crash-safe in three steps, each repeatable: the verdict is recorded in the ledger (the
    intent) before anything moves; then the aliases and the ledger's statuses follow it; the
    version's ``gate`` tag is written last. A gate cut short between the first and the last
    step (a worker killed, a retry) takes the recorded verdict again without re-evaluating and
    finishes the moves; a version whose gate never ran keeps the tag ``pending`` and is gated
    by the next refresh (``gate_pending``)."""
    reg, ledger = settings.open_registry(), settings.open_ledger()
    v = reg.version(version)
    if v.gate in ("passed", "rejected"):
        reasons = v.tags.get("freshen.gate_reasons", "")
        return GateResult(v.gate, reg.champion(), version, reasons="" if reasons == "-" else reasons, already=True)
    verdict = recorded_verdict(ledger, reg.name, version)
    if verdict is None:
        verdict = judge_version(settings, reg, v, reg.champion())
        ledger.version_event(reg.name, version, f"gate_{verdict['status']}", by, verdict)
    return finish_gate(reg, ledger, v, verdict, by)


def recorded_verdict(ledger, model: str, version: int) -> dict | None:
    """The gate verdict the ledger holds for ``version`` (its last ``gate_*`` event), if any."""
    events = [e for e in ledger.version_events(model, version) if e.event in ("gate_passed", "gate_rejected")]
    return events[-1].detail | {"status": events[-1].event.removeprefix("gate_")} if events else None


def judge_version(settings: Settings, reg, v, champion: int) -> dict:
    """The gate's evaluation of version ``v`` against ``champion`` (and the base): the verdict
    with its table, written under out/versions/vN and logged to the version's run."""
    from validation.evaluate import FactCase, evaluate
    from validation.gate import Gate, GateConfig, metrics_table

    version = v.number
    cfg = GateConfig.load(settings.gate)
    facts = [FactCase.of(f) for f in v.facts]
    judge = judge_for(settings, v.manifest["base"]["family"])
    probes = judge.probes(facts, n_unrelated=cfg.unrelated_probes, fid_seeds=cfg.fid_seeds, seed=settings.seed)
    # the unedited base as well (cumulative drift), unless the champion is the base itself
    base = reg.base_model(champion) if reg.version(champion).parent is not None else None
    ev = evaluate(reg.load(version), reg.load(champion), facts, judge, probes, fact_seeds=cfg.fact_seeds,
                  probe_seeds=cfg.probe_seeds, seed=settings.seed, num_inference_steps=settings.num_inference_steps,
                  guidance_scale=settings.guidance_scale, base=base)
    table = metrics_table(ev.candidate, ev.champion, ev.base)
    verdict = Gate(settings.gx_dir, cfg).judge(table, f"{reg.name}-v{version}")
    out = settings.out_dir / "versions" / f"v{version}"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "gate_table.csv", index=False)
    report = {"version": version, "champion_before": champion, **verdict.to_json(),
              "per_fact": ev.per_fact, "seeds": ev.seeds, "seconds": ev.seconds}
    (out / "gate.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    grid = before_after_grid(out / "before_after.png", ev, v.facts, champion, version)
    reg.log_artifacts(version, out / "gate.json", "gate")
    reg.log_artifacts(version, out / "gate_table.csv", "gate")
    if verdict.docs_page:
        reg.log_artifacts(version, Path(verdict.docs_page), "gate/data_docs")
    reg.log_artifacts(version, grid, "grid")
    return {"status": verdict.status, "reasons": verdict.reasons(), "table": verdict.table, "failed": verdict.failed,
            "docs_page": verdict.docs_page, "champion": champion, "grid": str(grid), "gate_dir": str(out)}


def finish_gate(reg, ledger, v, verdict: dict, by: str) -> GateResult:
    """What a recorded verdict moves, each step repeatable: the candidate alias goes, a passed
    version becomes champion and the ledger follows; the ``gate`` tag last."""
    from registry.versions import CANDIDATE, CHAMPION

    version, champion = v.number, verdict["champion"]
    if reg.alias(CANDIDATE) == version:
        reg.drop_alias(CANDIDATE)
    if verdict["status"] == "passed":
        reg.set_alias(CHAMPION, version)
        ledger.sync_champion(reg.name, lineage_facts(reg, version), [], by, "gate passed")
        if not any(e.event == "promoted" for e in ledger.version_events(reg.name, version)):
            ledger.version_event(reg.name, version, "promoted", by, {"from": champion, "reason": "gate passed"})
    else:
        ledger.sync_champion(reg.name, [], [(version, [f.key for f in v.facts])], by,
                             f"gate rejected: {verdict['reasons']}")
    reg.tag(version, gate=verdict["status"], gate_reasons=verdict["reasons"][:4000] or "-",
            **{f"metric.{r['metric']}": f"{r['candidate']:.4f}" for r in verdict["table"]})
    return GateResult(verdict["status"], reg.champion(), version, reasons=verdict["reasons"], table=verdict["table"],
                      grid=verdict.get("grid"), docs_page=verdict.get("docs_page"), gate_dir=verdict.get("gate_dir"))


def gate_pending(settings: Settings, by: str = "gate") -> list[GateResult]:
    """Gate every version registered and never gated (a refresh cut short after Stage II), oldest
    first, before a new batch is planned on the champion."""
    reg, ledger = settings.open_registry(), settings.open_ledger()
    if not reg.exists():
        return []
    results = []
    for version in reg.pending():
        v, champion = reg.version(version), reg.champion()
        if v.parent != champion and recorded_verdict(ledger, reg.name, version) is None:
            # built on a version that is no longer the champion: promoting it would drop what
            # came since, so it is rejected unseen and its changes go back to the stewards
            log.warning("v%d was registered on v%s and never gated; v%d is champion now: rejecting it",
                        version, v.parent, champion)
            verdict = {"status": "rejected", "table": [], "failed": [], "docs_page": None, "champion": champion,
                       "reasons": f"never gated, and built on v{v.parent}, no longer the champion (v{champion})"}
            ledger.version_event(reg.name, version, "gate_rejected", by, verdict)
            results.append(finish_gate(reg, ledger, v, verdict, by))
        else:
            log.warning("v%d was registered and never gated: gating it now", version)
            results.append(gate(settings, version, by=by))
    return results


def lineage(reg, version: int) -> list[int]:
    """Versions from the base up to ``version``."""
    return reg.lineage(version)


def lineage_facts(reg, version: int) -> list[tuple[int, list[str]]]:
    return [(n, [f.key for f in reg.version(n).facts]) for n in lineage(reg, version)]


def promote(settings: Settings, version: int, by: str, reason: str) -> PromoteResult:
    """Move the champion to ``version`` by hand (a rollback, or overruling the gate)."""
    from registry.versions import CHAMPION

    if not by or not by.strip() or not reason or not reason.strip():
        raise InvalidInput("promote: --by and --reason are required")
    reg, ledger = settings.open_registry(), settings.open_ledger()
    target = reg.version(version).number
    old = reg.champion()
    old_line, new_line = lineage(reg, old), lineage(reg, target)
    dropped = [(n, [f.key for f in reg.version(n).facts]) for n in old_line if n not in new_line]
    reg.set_alias(CHAMPION, target)
    reg.tag(target, promoted_by=by)
    ledger.version_event(reg.name, target, "promoted", by, {"from": old, "reason": reason, "manual": True})
    ledger.sync_champion(reg.name, lineage_facts(reg, target), dropped, by, f"promoted by hand: {reason}")
    return PromoteResult(target, old, by, reason, [n for n, _ in dropped])


def before_after_grid(path: Path, ev, facts: list[Fact], parent: int, version: int, per: int = 3) -> Path:
    """One row per fact: the champion's images of the source | the candidate's | the
    champion's of the target, each with the judge's label (the first ``per`` seeds)."""
    from freshen.grid import comparison_grid

    fs = ev.seeds["fact_seeds"]
    rows = []
    for i, f in enumerate(facts):
        sl = slice(i * fs, i * fs + per)
        rows.append((f"{f.key}: {f.source} -> {f.destination}",
                     [(ev.images[k][sl], ev.labels[k][sl]) for k in ("champion:source", "candidate:source",
                                                                      "champion:target")]))
    path.parent.mkdir(parents=True, exist_ok=True)
    comparison_grid(rows, [f"before: v{parent}, source", f"after: v{version}, source",
                           f"target (v{parent})"]).save(path)
    return path


def refresh(settings: Settings, by: str = "freshen", limit: int | None = None) -> GateResult:
    """plan -> Stage I -> Stage II + register -> gate, in one process. Nothing approved: no-op."""
    init_registry(settings)
    gate_pending(settings)
    batch = plan_batch(settings, limit=limit)
    if batch is None:
        return GateResult("nothing to do", settings.open_registry().champion())
    t0 = time.time()
    stage1(settings, batch.dir)
    t1 = time.time()
    version = stage2(settings, batch.dir, by=by)
    t2 = time.time()
    result = gate(settings, version)
    result.seconds = {"stage1": round(t1 - t0, 1), "stage2_register": round(t2 - t1, 1),
                      "gate": round(time.time() - t2, 1)}
    return result
