"""Run a scenario end to end against a live index and measure it.

Stages (each timed in ``stage_seconds``, each with a progress bar):

``data``      load and split the data by image (:mod:`sandbox.data`);
``index``     build the experiment collection from the knowledge base (reused when it already
              exists with the same content), or open ``rag.collection`` (live: needs ``allow_live``);
``clean``     every test query through the real pipeline: top-k hits, the reader's answer, the
              generator's cited answer;
``attack``    build the poisons (M3Att or a baseline) from the attacker's pools only;
``attacked``  inject the poisons reversibly (:class:`~sandbox.injection.ReversibleInjection`), ask
              every test query again, remove them, verify the content fingerprint;
``bound``     the unconstrained upper bound: free embedding vectors fitted on the attacker's
              reference pool for the same retrieval objective, scored exactly as the pipeline
              would score a poison whose image embedding they were (:func:`bound_asr`);
``sweep``     the same at further poison rates (ASR and bound only);
``defenses``  each defense fitted on clean data at its false-rejection rate, then the clean and the
              attacked runs again with it switched on.

The same seed gives the same numbers (the data split, k-means, PGD and the bootstrap are seeded).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from heterag import HeteragError, Hit, InvalidInputError, Pipeline, content_fingerprint

from .attacks.m3att import AttackInputs, PoisonSet, build_m3att, build_query_copy
from .attacks.objectives import neighbour_thresholds
from .attacks.upper_bound import fit_free_vectors
from .data import Query, ScenarioData, load_scenario_data
from .experiment import Stages, notify, open_index, package_versions, retrieval_settings, show_progress
from .injection import ReversibleInjection, RunLock, SandboxBusyError, new_run_id
from .metrics import hit_at_k, mean_ci, metric, normalised_drop, paired_ci
from .scenario import Scenario

log = logging.getLogger(__name__)


@dataclass
class QueryResult:
    hits: list[Hit]
    answer: str
    correct: bool
    cited: list[str] = field(default_factory=list)  # doc ids the generator cited
    dropped: list[str] = field(default_factory=list)  # chunk ids hit filters dropped

    def poisoned(self, poison_ids: set[str]) -> list[bool]:
        return [h.doc_id in poison_ids for h in self.hits]


def ask_all(pipe: Pipeline, data: ScenarioData, k: int, desc: str, *, cite: set[str] | None = None,
            where: dict[str, Any] | None = None) -> list[QueryResult]:
    """Every test query through the pipeline (and its hit filters): hits and the reader's answer; and,
    where a hit belongs to a document in ``cite`` (the poisons), the sources the generator cites (it can
    only cite what it was given, so other queries need no generation to know it cites no poison)."""
    out = []
    for q in tqdm(data.queries, desc=desc, unit="q", disable=not show_progress(), leave=False):
        res = pipe.search(q.text, k=k, image=q.image, where=where)
        hits = list(res.hits)
        answer = data.task.read(q.text, hits)
        cited: list[str] = []
        if cite and any(h.doc_id in cite for h in hits):
            ans = pipe.generator.generate(q.text or "", hits, image=q.image)
            cited = [c.doc_id for c in ans.citations]
        out.append(QueryResult(hits, answer, answer == q.gold, cited, [d.hit.chunk_id for d in res.dropped]))
    return out


# --------------------------------------------------------------------------- upper bound


def query_vectors(pipe: Pipeline, queries: Sequence[Query]) -> dict[str, np.ndarray]:
    """Per-signal query vectors (rows per query; zero rows where a query lacks the signal)."""
    enc = pipe.image_encoder
    img = enc.encode_images([q.image for q in queries], progress=False)
    texts = [q.text or "" for q in queries]
    has_text = np.array([bool(t.strip()) for t in texts])
    out = {"image": img, "has_text": has_text}
    if has_text.any():
        idx = np.flatnonzero(has_text)
        tv = np.zeros((len(queries), pipe.encoder.dim), dtype=np.float32)
        cv = np.zeros((len(queries), enc.dim), dtype=np.float32)
        tv[idx] = np.stack([pipe.encoder.encode_query(texts[i]) for i in idx])
        cv[idx] = enc.encode_texts([texts[i] for i in idx])
        out["text"], out["cross"] = tv, cv
    return out


def fused_scores(pipe: Pipeline, qv: dict[str, np.ndarray], vectors: np.ndarray, text_vectors: list[np.ndarray]) -> np.ndarray:
    """Score (queries, poisons) of poisons with image embeddings ``vectors`` and chunk view vectors
    ``text_vectors[p]`` (rows: chunks) under the pipeline's fusion; a poison's score is its best chunk's."""
    n, p = qv["image"].shape[0], vectors.shape[0]
    out = np.full((n, p), -np.inf, dtype=np.float32)
    img = qv["image"] @ vectors.T
    cross = qv["cross"] @ vectors.T if "cross" in qv else None
    for j in range(p):
        chunks = text_vectors[j] if len(text_vectors[j]) else np.zeros((1, 0), dtype=np.float32)
        for i in range(n):
            best = -np.inf
            for c in range(chunks.shape[0]):
                sims = {"image": float(img[i, j])}
                if qv["has_text"][i]:
                    sims["cross"] = float(cross[i, j])
                    if chunks.shape[1]:
                        sims["text"] = float(qv["text"][i] @ chunks[c])
                best = max(best, pipe.fusion.fuse([sims])[0])
            out[i, j] = best
    return out


def kth_scores(results: Sequence[QueryResult], k: int) -> np.ndarray:
    return np.array([r.hits[k - 1].score if len(r.hits) >= k else -np.inf for r in results], dtype=np.float32)


def density_matched_k(k: int, reference: int, kb: int) -> int:
    """The rank in the reference pool that corresponds to rank ``k`` in a knowledge base of ``kb`` items:
    ``max(1, round(k * reference / kb))`` (a sparser pool's k'-th neighbour is as far as the KB's k-th)."""
    return max(1, int(round(k * reference / max(1, kb))))


def bound_asr(pipe: Pipeline, qv: dict[str, np.ndarray], clean: Sequence[QueryResult], k: int, ref_emb: np.ndarray,
              n: int, text_vectors: list[np.ndarray], *, kb_size: int, seed: int,
              fit_on: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-query coverage (0/1) of ``n`` free unit vectors, scored exactly as poisons with those image
    embeddings and ``text_vectors`` would be; and the vectors.

    The vectors maximise the soft coverage of the attacker's reference pool (init: the k-means proxy
    centroids), where a reference query counts as covered when a vector beats its
    :func:`density_matched_k`-th nearest reference neighbour, the pool's stand-in for the knowledge
    base's k-th hit. ``fit_on`` (test query image vectors and their true k-th knowledge-base
    similarities, ``(vectors, thresholds)``) fits them on the test queries themselves instead: an
    oracle the threat model forbids, reported for scale only.
    """
    from .attacks.clusters import profile_clusters

    init = profile_clusters(ref_emb, n, seed=seed).proxy_centroids if n <= len(ref_emb) else None
    if fit_on is None:
        thresholds = neighbour_thresholds(ref_emb, k=density_matched_k(k, len(ref_emb), kb_size))
        vectors = fit_free_vectors(ref_emb, thresholds, n, init=init, seed=seed)
    else:
        vectors = fit_free_vectors(fit_on[0], fit_on[1], n, init=init, seed=seed)
    tv = [text_vectors[j % len(text_vectors)] for j in range(n)] if text_vectors else [np.zeros((0, 0))] * n
    scores = fused_scores(pipe, qv, vectors, tv)
    return (scores.max(axis=1) > kth_scores(clean, k)).astype(float), vectors


# --------------------------------------------------------------------------- the run


def poison_budget(scn: Scenario, kb_size: int) -> int:
    a = scn.attack
    if a.poison_count is not None:
        return a.poison_count
    rate = a.poison_rate if a.poison_rate is not None else 0.01
    return max(1, int(round(rate * kb_size)))


def _chunk_vectors(pipe: Pipeline, doc_ids: Sequence[str]) -> list[np.ndarray]:
    out = []
    for d in doc_ids:
        recs = pipe.store.get(where={"doc_id": d}, include_vectors=True)
        out.append(np.stack([r.vector for r in recs]) if recs else np.zeros((0, pipe.encoder.dim), dtype=np.float32))
    return out


@dataclass
class AttackRun:
    poisons: PoisonSet
    results: list[QueryResult]
    outcome: Any
    written: list[str]  # poison doc ids that made it into the index (past the guards)
    rejected: int


def attacked_run(pipe: Pipeline, name: str, data: ScenarioData, poisons: PoisonSet, k: int, *, run_id: str,
                 allow_live: bool, run_lock: RunLock | None = None, guards: Sequence[Any] = (), hit_filters: Sequence[Any] = (), desc: str = "attacked",
                 generate: bool = True, where: dict[str, Any] | None = None, keep_vectors: bool = False) -> tuple[AttackRun, list]:
    """Inject ``poisons`` reversibly, ask every test query (the generator runs where a poison was
    retrieved, if ``generate``), remove them; the outcome says whether the index is as before."""
    vecs: list[np.ndarray] = []
    with ReversibleInjection(pipe, name, run_id=run_id, allow_live=allow_live, run_lock=run_lock) as inj, \
            pipe.defended(guards=guards, hit_filters=hit_filters):
        report = inj.inject(poisons.documents)
        written = sorted({str(r.metadata.get("doc_id")) for r in pipe.store.get(where={"sandbox_run": run_id})}
                         | {str(r.metadata.get("doc_id")) for r in pipe.image_store.get(where={"sandbox_run": run_id})})
        if keep_vectors:
            vecs = _chunk_vectors(pipe, [d.id for d in poisons.documents])
        results = ask_all(pipe, data, k, desc, cite=poisons.ids if generate else None, where=where)
    return AttackRun(poisons, results, inj.outcome, written, len(report.rejected)), vecs


def run_scenario(scn: Scenario, *, allow_live: bool = False, run_id: str | None = None) -> dict[str, Any]:
    """Run ``scn``; returns the report (see :func:`sandbox.report.write_report` for the files)."""
    if scn.attack.name == "mrm":  # membership inference: its own stages, the same core
        from .membership import run_membership

        return run_membership(scn, allow_live=allow_live, run_id=run_id)
    t_start = time.perf_counter()
    stages = Stages()
    run_id = run_id or new_run_id()
    np.random.seed(scn.seed)
    import torch

    torch.manual_seed(scn.seed)
    generator = check_early(scn)
    with stages("data"):
        data = load_scenario_data(scn.data, scn.seed, scn.base_dir)
    log.info("data: %s", data.sizes())
    with stages("index"):
        pipe, name = open_index(scn, data, allow_live=allow_live)
    lock = RunLock(name)  # held for the whole run: no other run's poisons can sit in the index meanwhile
    try:
        lock.acquire(run_id)
        return _run_locked(scn, data, pipe, name, lock, generator, stages, run_id, allow_live, t_start)
    finally:
        lock.release()
        pipe.close()


def check_early(scn: Scenario) -> Any:
    """What can be checked before any work: the generator, the defenses' parameters, the text editor,
    the fusion rule. Raises :class:`ScenarioError` naming the key."""
    from heterag import Fusion, HybridFusion, make_generator

    from .defenses import make_defense
    from .editors import make_editor
    from .scenario import ScenarioError

    generator = None
    if scn.rag.generator.name != "extractive":
        try:
            generator = make_generator(scn.rag.generator.name, **scn.rag.generator.options)
        except (TypeError, HeteragError) as exc:
            raise ScenarioError(f"rag.generator: {exc}") from None
    for i, d in enumerate(scn.defenses):
        try:
            make_defense(d.name, **d.params)
        except HeteragError as exc:
            raise ScenarioError(f"defenses.{i}.params: {exc}") from None
    try:
        make_editor(scn.attack.editor.name, **scn.attack.editor.options)
    except (TypeError, HeteragError) as exc:
        raise ScenarioError(f"attack.editor: {exc}") from None
    try:
        Fusion.parse(scn.rag.fusion)
    except HeteragError as exc:
        raise ScenarioError(f"rag.fusion: {exc}") from None
    try:
        HybridFusion.parse(scn.rag.hybrid)
    except HeteragError as exc:
        raise ScenarioError(f"rag.hybrid: {exc}") from None
    return generator


def _run_locked(scn: Scenario, data: ScenarioData, pipe: Pipeline, name: str, lock: RunLock, generator: Any,
                stages: Stages, run_id: str, allow_live: bool, t_start: float) -> dict[str, Any]:
    from .injection import leftovers
    from .scenario import ScenarioError

    k = scn.rag.top_k
    left = leftovers(pipe, name)
    if left:
        raise SandboxBusyError(f"collection {name!r} still holds what sandbox run(s) {', '.join(left)} injected; run "
                               f"'heterag sandbox clean --collection {name}' first")
    if generator is not None:
        pipe.generator = generator
    live = bool(scn.rag.collection) and (scn.rag.allow_live or allow_live)
    fp_before = content_fingerprint(pipe)
    notify("fingerprint", collection=name, before=fp_before.digest)
    kb_size = pipe.image_store.count() if pipe.image_store is not None else 0
    if scn.attack.name != "none" and kb_size == 0:
        raise InvalidInputError(f"collection {name!r} holds no image items; the image attacks need some")
    if k > max(kb_size, pipe.count()):
        raise ScenarioError(f"rag.top_k ({k}) exceeds the knowledge base ({max(kb_size, pipe.count())} items)")
    n = poison_budget(scn, kb_size) if scn.attack.name in ("m3att", "random") else 0
    if scn.attack.name == "m3att" and scn.attack.access == "white-box":
        from .attacks.pgd import require_gradients

        require_gradients(pipe.image_encoder)
    if scn.attack.name == "m3att" and n > len(data.candidates):
        raise InvalidInputError(f"attack: poison budget {n} is larger than the candidate pool ({len(data.candidates)} images)")
    with stages("clean"):
        clean = ask_all(pipe, data, k, "clean")  # no poisons: nothing to cite
    inputs = AttackInputs(data.reference, data.candidates, data.task)
    sizes = data.sizes()
    if scn.rag.collection:
        sizes["knowledge_base"] = f"the live collection ({kb_size} image items; the data's knowledge-base part is unused)"
    report: dict[str, Any] = {"run_id": run_id, "collection": name, "live": live, "data": sizes,
                              "task": data.task.name, "poison_count": n, "knowledge_base_items": kb_size,
                              "unreadable_items": [{"source": e.source, "reason": e.message} for e in data.unreadable]}
    attack_runs: list[AttackRun] = []
    metrics: dict[str, dict[str, float]] = {}
    B, seed = scn.bootstrap, scn.seed
    correct_clean = np.array([r.correct for r in clean], dtype=float)
    s_rand = data.task.chance_accuracy(data.queries)
    report["chance"] = {"s_rand": s_rand, "answer": data.task.chance_answer, "rule": data.task.chance_rate_source}
    metrics["accuracy_clean"] = mean_ci(correct_clean, B, seed)
    outcomes = []
    cached: list[Any] = []

    def geometry() -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Query vectors and reference-pool image embeddings, computed once for the bound and the sweep."""
        if not cached:
            cached.extend((query_vectors(pipe, data.queries),
                           pipe.image_encoder.encode_images([it.image for it in data.reference], progress=False)))
        return cached[0], cached[1]

    if scn.attack.name != "none":
        with stages("attack"):
            poisons = make_poisons(scn, data, inputs, pipe, n, run_id)
        report["attack"] = {"name": scn.attack.name, "access": scn.attack.access, "objective": scn.attack.objective,
                            "poisons": len(poisons.documents), "seconds": poisons.seconds,
                            "steps_per_second_per_image": poisons.steps_per_second_per_image,
                            "oracle_queries": poisons.oracle_queries,
                            "similarity_to_target_quantised": {"mean": float(np.mean(poisons.similarity)),
                                                               "min": float(np.min(poisons.similarity))},
                            "history": poisons.history[:: max(1, len(poisons.history) // 200)],
                            "text_edits": [[{"strategy": e.strategy, "before": e.before, "after": e.after}
                                            for e in t.edits] for t in poisons.texts[:20]], **poisons.info}
        with stages("attacked"):
            run, pvecs = attacked_run(pipe, name, data, poisons, k, run_id=run_id, allow_live=live, keep_vectors=True,
                                      run_lock=lock)
        outcomes.append(run.outcome)
        attack_runs.append(run)
        per_query = add_attack_metrics(metrics, "", clean, run, kb_size, s_rand, B, seed, k)
        report["poison_count"] = len(poisons.documents)
        report["per_query"] = per_query
        if "asr_bound@k" in scn.metrics and scn.attack.name in ("m3att", "random"):
            with stages("bound"):
                qv, ref_emb = geometry()
                covered, _ = bound_asr(pipe, qv, clean, k, ref_emb, n, pvecs, kb_size=kb_size, seed=seed)
                image_only = ~qv["has_text"]
                if image_only.all():  # the oracle needs the k-th similarity in one space: image-only queries
                    oracle, _ = bound_asr(pipe, qv, clean, k, ref_emb, n, pvecs, kb_size=kb_size, seed=seed,
                                          fit_on=(qv["image"], kth_scores(clean, k)))
                    metrics[f"asr_oracle_bound@{k}"] = mean_ci(oracle, B, seed)
            metrics[f"asr_bound@{k}"] = mean_ci(covered, B, seed)
            asr = metrics[f"asr@{k}"]["value"]
            bound = metrics[f"asr_bound@{k}"]["value"]
            report["bound_ratio"] = asr / bound if bound > 0 else float("nan")
        sweep = sweep_counts(scn, kb_size)
        if sweep and scn.attack.name in ("m3att", "random"):
            with stages("sweep"):
                report["sweep"] = run_sweep(scn, data, inputs, pipe, name, clean, sweep, run_id, live, k, outcomes, lock,
                                            kb_size, *geometry())
    if scn.defenses:
        with stages("defenses"):
            report["defenses"] = run_defenses(scn, data, pipe, name, clean, attack_runs[0] if attack_runs else None,
                                              metrics, run_id, live, k, s_rand, outcomes, lock, kb_size)
    fp_after = content_fingerprint(pipe)
    metrics = {m: v for m, v in metrics.items() if _wanted(m, scn.metrics, k)}
    report.update({
        "scenario": scn.model_dump(mode="json", by_alias=True),
        **retrieval_settings(pipe),
        "seed": scn.seed,
        "versions": package_versions(),
        "fingerprint_before": fp_before.digest,
        "fingerprint_after": fp_after.digest,
        "fingerprint_explained": [o.explained for o in outcomes if o is not None and o.explained],
        "injections": [{"run_id": o.run_id, "identical": o.identical, "clean": o.clean, "injected": o.documents_injected,
                        "removed": o.documents_removed} for o in outcomes if o is not None],
        "metrics": metrics,
        "stage_seconds": stages.seconds,
        "wall_seconds": time.perf_counter() - t_start,
    })
    return report


def _wanted(name: str, wanted: Sequence[str], k: int) -> bool:
    base = name.split("[")[0].replace(f"@{k}", "@k")
    return base in wanted or base.startswith("rejected_clean") or (base == "asr_oracle_bound@k" and "asr_bound@k" in wanted)


def make_poisons(scn: Scenario, data: ScenarioData, inputs: AttackInputs, pipe: Pipeline, n: int, run_id: str) -> PoisonSet:
    a = scn.attack
    if a.name == "query_copy":
        return build_query_copy(data.test, data.task, [], a.editor.name, run_id=run_id)
    return build_m3att(a, inputs, pipe.image_encoder, n, seed=scn.seed, run_id=run_id, random_baseline=a.name == "random",
                       progress=show_progress())


def add_attack_metrics(metrics: dict, suffix: str, clean: Sequence[QueryResult], run: AttackRun, kb_size: int,
                       s_rand: float, B: int, seed: int, k: int) -> dict[str, list]:
    ids = run.poisons.ids
    flags = [r.poisoned(ids) for r in run.results]
    hit = hit_at_k(flags)
    per_q = [float(len({h.doc_id for h in r.hits if h.doc_id in ids})) for r in run.results]
    correct_att = np.array([r.correct for r in run.results], dtype=float)
    correct_clean = np.array([r.correct for r in clean], dtype=float)
    mis = np.array([float(any(c in ids for c in r.cited)) for r in run.results])
    metrics[f"asr@{k}{suffix}"] = mean_ci(hit, B, seed)
    metrics[f"accuracy_attacked{suffix}"] = mean_ci(correct_att, B, seed)
    if not suffix:
        metrics[f"poisoned_per_query@{k}"] = mean_ci(per_q, B, seed)
        metrics["accuracy_drop_normalised"] = paired_ci([correct_clean, correct_att], normalised_drop(s_rand), B, seed)
        metrics["misinformation_rate"] = mean_ci(mis, B, seed)
        metrics["poison_rate"] = metric(len(run.written) / max(1, len(run.written) + kb_size))
    return {"asr_hit": hit.tolist(), "correct_clean": correct_clean.tolist(), "correct_attacked": correct_att.tolist()}


def sweep_counts(scn: Scenario, kb_size: int) -> list[int]:
    counts = [max(1, int(round(r * kb_size))) for r in scn.attack.sweep_rates] + list(scn.attack.sweep_counts)
    return sorted(set(counts))


def run_sweep(scn: Scenario, data: ScenarioData, inputs: AttackInputs, pipe: Pipeline, name: str, clean: list[QueryResult],
              counts: list[int], run_id: str, live: bool, k: int, outcomes: list, lock: RunLock,
              kb_size: int, qv: dict[str, np.ndarray], ref_emb: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for c in counts:
        if c > len(data.candidates) or c > len(data.reference):
            log.warning("sweep: %d poisons exceed the candidate or reference pool; skipped", c)
            continue
        sub = f"{run_id}-n{c}"
        poisons = make_poisons(scn, data, inputs, pipe, c, sub)
        run, pvecs = attacked_run(pipe, name, data, poisons, k, run_id=sub, allow_live=live, desc=f"sweep n={c}",
                                  generate=False, keep_vectors=True, run_lock=lock)
        outcomes.append(run.outcome)
        hit = hit_at_k([r.poisoned(poisons.ids) for r in run.results])
        covered, _ = bound_asr(pipe, qv, clean, k, ref_emb, c, pvecs, kb_size=kb_size, seed=scn.seed)
        asr, bound = mean_ci(hit, scn.bootstrap, scn.seed), mean_ci(covered, scn.bootstrap, scn.seed)
        rows.append({"poisons": c, "poison_rate": c / (c + kb_size), f"asr@{k}": asr,
                     f"asr_bound@{k}": bound, "ratio": asr["value"] / bound["value"] if bound["value"] > 0 else float("nan"),
                     "optimise_seconds": poisons.seconds.get("optimise", 0.0)})
    return rows


def run_defenses(scn: Scenario, data: ScenarioData, pipe: Pipeline, name: str, clean: list[QueryResult],
                 base: AttackRun | None, metrics: dict, run_id: str, live: bool, k: int, s_rand: float,
                 outcomes: list, lock: RunLock, kb_size: int) -> list[dict[str, Any]]:
    from .defenses import DefenseContext, Probe, make_defense, probes_from_kb

    rng = np.random.default_rng([scn.seed, 5])
    kb = data.knowledge_base
    pick = rng.choice(len(kb), min(scn.defense_probes, len(kb)), replace=False)
    probes = [Probe(None, kb[i].image, kb[i].id) for i in sorted(pick)]
    if data.task.name == "vqa_closed":
        probes = [Probe(next((qa.question for qa in kb[i].qa), None), kb[i].image, kb[i].id) for i in sorted(pick)]
    if scn.rag.collection:  # a live collection: its own items are the clean probes
        probes = probes_from_kb(pipe, scn.defense_probes, seed=scn.seed, text=False)
    B, seed = scn.bootstrap, scn.seed
    rows = []
    for d in scn.defenses:
        t0 = time.perf_counter()
        defense = make_defense(d.name, **d.params)
        ctx = DefenseContext(pipe, probes, false_rejection=d.false_rejection, k=k, seed=seed)
        fit = defense.fit(ctx)
        fit_seconds = time.perf_counter() - t0
        plug = defense.plug()
        guards, filters = ([plug], []) if defense.stage == "ingest" else ([], [plug])
        tag = f"[defense={d.name}]"
        row: dict[str, Any] = {"name": d.name, "stage": defense.stage, "params": d.params, "false_rejection": d.false_rejection,
                               "fit": {"statistic": fit.statistic, "threshold": fit.threshold, "direction": fit.direction,
                                       "clean_rejection_on_fit_data": fit.clean_rejection, "n": fit.n}}
        where = None
        if defense.stage == "ingest":
            # a guard in production would have refused these clean items at ingest: leave them out
            refused = defense.rejected_ids(ctx) if hasattr(defense, "rejected_ids") else []
            rejected_clean = len(refused) / max(1, kb_size)
            row["clean_items_refused"] = len(refused)
            where = {"doc_id": {"$nin": refused}} if refused else None
            clean_d = ask_all(pipe, data, k, f"clean {tag}", where=where) if refused else clean
        else:
            with pipe.defended(hit_filters=filters):
                clean_d = ask_all(pipe, data, k, f"clean {tag}")
            topk = sum(len(r.hits) for r in clean)
            orig = [{h.chunk_id for h in r.hits} for r in clean]
            wrongly = sum(len(set(rd.dropped) & o) for rd, o in zip(clean_d, orig, strict=True))
            rejected_clean = wrongly / max(1, topk)
        correct_clean_d = np.array([r.correct for r in clean_d], dtype=float)
        metrics[f"accuracy_clean{tag}"] = mean_ci(correct_clean_d, B, seed)
        metrics[f"rejected_clean{tag}"] = metric(rejected_clean)
        if base is not None:
            run, _ = attacked_run(pipe, name, data, base.poisons, k, run_id=f"{run_id}-{d.name}", allow_live=live,
                                  guards=guards, hit_filters=filters, desc=f"attacked {tag}", generate=False, where=where,
                                  run_lock=lock)
            outcomes.append(run.outcome)
            hit = hit_at_k([r.poisoned(base.poisons.ids) for r in run.results])
            metrics[f"asr@{k}{tag}"] = mean_ci(hit, B, seed)
            metrics[f"accuracy_attacked{tag}"] = mean_ci([r.correct for r in run.results], B, seed)
            row["poisons_rejected_at_ingest"] = run.rejected
        row["seconds"] = {"fit": fit_seconds, "total": time.perf_counter() - t0}
        rows.append(row)
    return rows

