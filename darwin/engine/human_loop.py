"""Humans in the loop, for one run: what a review asks, and what its answer changes (the
population as vetoes and pins leave it, the approvals carried out, what approvals give a
candidate's training, how many generations are planned). The rules themselves are pure
functions in darwin.engine.reviews; this part applies them to the run's store."""

from __future__ import annotations

import json
import threading

from darwin.engine import reviews as hitl
from darwin.engine.knowledge import Knowledge
from darwin.engine.run_context import RunContext
from darwin.evaluation import DEFAULT_SOURCE, NO_EXTRAS, Extras
from darwin.memory import GenerationRecord, Member, ReviewRecord, rank_key

_SOURCES: dict = {}  # approved datasets' tokens, by sha256, read once per process
_SOURCES_LOCK = threading.Lock()


class HumanLoop:
    def __init__(self, run: RunContext, knowledge: Knowledge):
        self.run = run
        self.knowledge = knowledge

    def population_ids(self, gen: int) -> list[str]:
        """Generation ``gen``'s population as the next generation starts from it: the
        committed members, less the vetoed, plus the pinned."""
        members = [m.candidate_id for m in self.run.store.generation(gen).population]
        return hitl.amended_population(members, self.run.store.reviews(), gen)

    def amended(self, record: GenerationRecord) -> GenerationRecord:
        """``record`` with the reviews' vetoes and pins applied (best first)."""
        ids = self.population_ids(record.generation)
        if ids == [m.candidate_id for m in record.population]:
            return record
        known = {m.candidate_id: m for m in record.population}
        scored = self.knowledge.scored
        members = [known.get(c) or Member(candidate_id=c, losses=(s := scored(c)).losses,
                                          mfu=s.mfu) for c in ids]
        return record.model_copy(update={"population": sorted(
            members, key=lambda m: rank_key(m.losses, record.min_runs))})

    def pinned(self, gen: int) -> list[str]:
        """The candidates pinned by the reviews held after generations <= ``gen`` (and not
        vetoed since)."""
        pinned, _ = hitl.pins_and_vetoes(self.run.store.reviews(), gen)
        return pinned

    def grants(self, gen: int) -> hitl.Grants:
        return hitl.grants_for(self.run.store.reviews(), gen)

    def extras(self, cid: str) -> Extras:
        """What approvals give candidate ``cid`` (those of reviews before its generation)."""
        record = self.run.store.candidate(cid)
        assert record is not None, cid
        grants = self.grants(record.generation)
        if not grants.sources and not grants.packages and not record.files:
            return NO_EXTRAS
        layer = None
        if grants.packages:
            from darwin.sandbox import PackageRefused, build_layer

            try:  # built when approved; rebuilt here after a resume on another machine
                layer = build_layer(grants.packages, self.run.settings.home / "layers")
            except PackageRefused as e:
                from darwin.errors import UserError

                raise UserError(f"the run's approved packages cannot be installed here: {e}"
                                ) from None
        return Extras(
            sources={name: self._source_tokens(sha) for name, sha in grants.sources.items()},
            packages=layer,
            files={name: self.run.store.code(sha) for name, sha in record.files.items()})

    def _source_tokens(self, sha: str):
        from darwin.evaluation import encode

        with _SOURCES_LOCK:
            if sha not in _SOURCES:
                _SOURCES[sha] = encode(self.run.store.dataset(sha))
            return _SOURCES[sha]

    def extras_key(self, cid: str) -> str:
        """What the training cache must tell apart: the grants and the program's extra files
        (empty without either, so older cache entries stay valid)."""
        record = self.run.store.candidate(cid)
        assert record is not None, cid
        grants = self.grants(record.generation)
        if grants == hitl.Grants() and not record.files:
            return ""
        return json.dumps([grants.key(), sorted(record.files.items())])

    def apply_approvals(self, review: ReviewRecord) -> list[str]:
        """Carry out the approvals of ``review``'s answer (store an approved dataset, install an
        approved package, ...), recording each in ``review.granted``; the problems that leave
        the review paused (a contaminated dataset, a package without a wheel)."""
        from darwin.evaluation import DatasetRefused, check_dataset, source_name
        from darwin.sandbox import PackageRefused, build_layer, check_requirement

        assert review.answer is not None
        asked = {r.id: r for r in review.requests}
        granted: dict[str, dict] = {}
        problems: list[str] = []
        grants = self.grants(review.generation + 1)
        next_gen = review.generation + 1
        for d in review.answer.decisions:
            req = asked.get(d.request)
            if req is None or d.verdict != "approve":
                continue
            value = d.value.strip()
            try:
                if req.kind == "dataset":
                    name = source_name(value)
                    taken = set(grants.sources) | {DEFAULT_SOURCE}
                    base, n = name, 2
                    while name in taken:
                        name, n = f"{base}_{n}", n + 1
                    clean = check_dataset(value, name)
                    sha = self.run.store.put_dataset(clean.text)
                    grants.sources[name] = sha
                    granted[d.request] = {
                        "kind": "dataset", "name": name, "sha256": sha, "file": value,
                        "chars": len(clean.text), "dropped": clean.dropped,
                        "note": f"from generation {next_gen} on, read it with darwin_io."
                                f"get_batch(batch, block, source={name!r}) ({len(clean.text)} "
                                "characters, same vocabulary, within the same token budget)"}
                elif req.kind == "package":
                    requirement = check_requirement(value)
                    # Built now, with what is already approved: what cannot be installed
                    # together is refused while a person is there to hear it.
                    build_layer([*grants.packages, requirement], self.run.settings.home / "layers")
                    grants.packages.append(requirement)
                    granted[d.request] = {
                        "kind": "package", "requirement": requirement,
                        "note": f"{requirement} is importable from generation {next_gen} on"}
                elif req.kind == "file_layout":
                    files = hitl.file_names(value)
                    granted[d.request] = {
                        "kind": "file_layout", "files": files,
                        "note": f"from generation {next_gen} on you may put code in "
                                f"{', '.join(files)} next to train.py (a FILE block per file)"}
                elif req.kind == "budget":
                    granted[d.request] = {"kind": "budget", "budget": value,
                                          "command": self._budget_command(value),
                                          "note": f"a person may start a new run at the {value}"
                                                  " budget; this run keeps its own"}
                else:
                    granted[d.request] = {"kind": req.kind, "note": ""}
            except (DatasetRefused, PackageRefused, ValueError) as e:
                problems.append(f"{d.request}: {e}")
        review.granted = granted
        return problems

    def _budget_command(self, budget: str) -> str:
        """The command that starts a new run at ``budget`` from the current best program
        (written where a person can read it)."""
        best = self.population_ids(self.run.store.head() or 0)[0]
        path = self.run.settings.home / "seeds" / f"{self.run.store.run_id}-{best}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.run.code(best))
        return f"darwin run --budget {budget} --seed-program {path}"

    def planned_generations(self) -> int:
        reviews = self.run.store.reviews()
        if self.run.experiment.continued_after is not None:  # a continuation's plan supersedes
            reviews = [r for r in reviews if r.generation > self.run.experiment.continued_after]
        return hitl.planned_generations(self.run.experiment.generations, reviews)

    def review_due(self, gen: int, policy: hitl.ReviewPolicy) -> ReviewRecord | None:
        """The review to hold after generation ``gen`` (None: none, or already answered)."""
        if self.run.store.review(gen) is not None:
            return None
        reviews = self.run.store.reviews()
        first = self.run.seeds()[0]
        first_runs = {e.candidate_id: e for e in self.run.store.evaluations() if e.seed == first}
        requests = hitl.open_requests(self.run.store.candidates(), first_runs, reviews, gen)
        population = self.population_ids(gen)
        record = self.run.store.generation(gen)
        scored_children = [c for c in record.children if self.knowledge.scored(c).losses]
        flagged = self.flagged_since_last_review(gen, reviews)
        pinnable = population + [c for c in [*scored_children, *flagged] if c not in population]
        return hitl.due(self.run.store.run_id, gen, self.planned_generations(), policy, requests,
                        population, list(dict.fromkeys(pinnable)), flagged)

    def flagged_since_last_review(self, gen: int, reviews: list[ReviewRecord]) -> dict[str, str]:
        """Children of the generations after the last review up to ``gen`` that an integrity
        flag kept out of the population: {id: its first such flag}. Selection never takes them;
        this is where a person sees them (and may pin one)."""
        last = max((r.generation for r in reviews if r.generation < gen), default=0)
        out: dict[str, str] = {}
        for g in range(last + 1, gen + 1):
            record = self.run.store.generation(g)
            for c in record.children if record is not None else []:
                s = self.knowledge.scored(c)
                if s.flagged and s.losses and c not in out:
                    out[c] = s.flagged[0]
        return out
