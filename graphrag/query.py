"""Queries over an index: local, global, basic and drift search, each returning the context records it used.

Every context is built within a token budget measured with the model's tokenizer; whatever does not fit is left
out whole (never cut mid-record) and counted in `GraphAnswer.details["left_out"]`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from xpullm.answers import AnswerStream
from xpullm.graphrag.calls import LLMCaller
from xpullm.graphrag.config import QueryConfig
from xpullm.graphrag.errors import ConfigError
from xpullm.graphrag.evidence import community_evidence
from xpullm.graphrag.graph_answer import ContextRecord, GraphAnswer, stream_answer
from xpullm.graphrag.jsonfix import parse_json_object
from xpullm.graphrag.loopfree import cut_loops, stop_at_loop
from xpullm.graphrag.prompts import (
    BASIC_ANSWER,
    DRIFT_PRIMER,
    DRIFT_PRIMER_SCHEMA,
    DRIFT_REDUCE,
    GLOBAL_MAP,
    GLOBAL_MAP_SCHEMA,
    GLOBAL_REDUCE,
    LOCAL_ANSWER,
    REFUSAL,
    fill,
)
from xpullm.graphrag.query_text import (
    REFUSES,
    content_words,
    follow_ups,
    grounded_sentences,
    one_line,
    says_nothing,
)
from xpullm.graphrag.tables import TableStore
from xpullm.protocols import EmbeddingModel

__all__ = ["METHODS", "ContextRecord", "GraphAnswer", "QueryEngine"]


METHODS = ("local", "global", "basic", "drift")


class QueryEngine:
    """Runs the four query methods over the tables in a `TableStore`."""

    def __init__(
        self,
        store: TableStore,
        caller: LLMCaller,
        embedder: EmbeddingModel | Callable[[], EmbeddingModel],
        config: QueryConfig,
    ) -> None:
        """embedder: an embedder object, or a zero-argument callable returning one (loaded only when needed)."""
        self.store = store
        self.caller = caller
        self._embedder = embedder
        self.config = config
        self._tables: dict[str, list[dict[str, Any]]] = {}
        self._vectors: dict[str, tuple[list[str], Any]] = {}

    @property
    def embedder(self) -> EmbeddingModel:
        """The embedder; a zero-argument callable is called on first use (global search never needs one)."""
        if not isinstance(self._embedder, EmbeddingModel):
            self._embedder = self._embedder()
        return self._embedder

    def table(self, name: str) -> list[dict[str, Any]]:
        if name not in self._tables:
            self._tables[name] = self.store.read(name)
        return self._tables[name]

    def vectors(self, target: str) -> tuple[list[str], Any]:
        if target not in self._vectors:
            self._vectors[target] = self.store.read_vectors(
                target, self.embedder.model_name, int(self.embedder.dim)
            )
        return self._vectors[target]

    def query(
        self, question: str, method: str = "local", community_level: int | None = None, stream: bool = False
    ) -> GraphAnswer | AnswerStream[GraphAnswer]:
        """Answer `question` with one of METHODS."""
        if method not in METHODS:
            raise ConfigError(f"unknown query method {method!r}; choose one of {', '.join(METHODS)}")
        if not question.strip():
            raise ConfigError("the question is empty; pass the text to answer")
        level = self.config.community_level if community_level is None else community_level
        handler: Callable[..., tuple[GraphAnswer, str, str]] = getattr(self, f"_{method}")
        before = self.caller.stats.totals()
        relevance = self._relevance(question)
        if relevance < self.config.min_relevance:
            # Nothing in the index is about the question: say so instead of letting the model invent an answer.
            answer = GraphAnswer(REFUSAL, method, [], "", {"refused": True, "relevance": relevance})
            prompt, stage = "", ""
        else:
            answer, prompt, stage = handler(question, level)
            answer.details["relevance"] = relevance
        answer.question = question
        if stream and not prompt:
            return stream_answer(answer, iter([answer.text]))
        if stream:
            deltas = stop_at_loop(
                self.caller.stream(prompt, stage=stage, max_new_tokens=self.config.max_new_tokens)
            )
            return stream_answer(answer, self._with_citation(answer, deltas), self._finish)
        if prompt:
            raw = self.caller.generate_one(
                prompt, stage=stage, max_new_tokens=self.config.max_new_tokens
            ).text
            answer.text = self._finish(answer, raw)
        after = self.caller.stats.totals()
        answer.details["usage"] = {
            k: after[k] - before[k] for k in ("llm_calls", "cache_hits", "prompt_tokens", "completion_tokens")
        }
        return answer

    # ----- shared pieces -----

    def _relevance(self, question: str) -> float:
        """How much the index holds about `question`: 1.0 when it names an entity, else the best cosine between
        the question and a text unit."""
        upper = question.upper()
        if any(
            len(e["title"]) > 3 and re.search(rf"\b{re.escape(e['title'])}\b", upper) for e in self._named()
        ):
            return 1.0
        hits = self._similar("text_unit.text", question, 1)
        return hits[0][1] if hits else 0.0

    def _named(self) -> list[dict[str, Any]]:
        """Entities that are names (noun-phrase "concept" entities such as TOWN would match any question)."""
        return [e for e in self.table("entities") if e["type"] != "concept"]

    def _finish(self, answer: GraphAnswer, raw: str) -> str:
        """The final text of a generated answer: cut where it starts to loop, without sentences stating numbers
        no context record holds, refused when nothing is left, and cited. (A stream shows the draft as it comes;
        its answer's text is this final text.)"""
        text = cut_loops(raw)
        if REFUSES.search(text):
            answer.details["refused"] = True
            return text
        text, dropped = grounded_sentences(text, [r.text for r in answer.context], answer.question)
        if dropped:
            answer.details["ungrounded_sentences"] = dropped
        if says_nothing(text):  # nothing left, or only "The answer is:"
            answer.details["refused"] = True
            return REFUSAL
        if not answer.citations_in(text):
            cite = self._citation(answer, text)
            if cite:
                text = f"{text} {cite}"
                answer.details["citation_added"] = True
        return text

    def _with_citation(self, answer: GraphAnswer, deltas: Iterator[str]) -> Iterator[str]:
        """Stream `deltas`, then the citation `_finish` would add (so the streamed text is the final text)."""
        text = ""
        for delta in deltas:
            text += delta
            yield delta
        final = self._finish(answer, text)
        answer.details.pop("citation_added", None)
        cut = cut_loops(text)
        if final.startswith(cut) and len(final) > len(cut) and final[len(cut) :].strip().startswith("[Data:"):
            yield final[len(cut) :]

    def _citation(self, answer: GraphAnswer, text: str) -> str:
        """`[Data: ...]` naming the context records that share the most words with `text` (reports for global)."""
        words = content_words(text)
        kinds = [("report", "Reports", 5)] if answer.method == "global" else [
            ("source", "Sources", 2), ("entity", "Entities", 3), ("report", "Reports", 1),
        ]  # fmt: skip
        parts = []
        for kind, label, k in kinds:
            recs = answer.records(kind)
            if answer.method == "global":
                recs = [r for r in recs if r.id in answer.details.get("cited_reports", [r.id for r in recs])]
            scored = sorted(
                ((len(words & content_words(r.text)), i, r) for i, r in enumerate(recs)),
                key=lambda t: (-t[0], t[1]),
            )
            ids = [r.human_readable_id for n, _, r in scored if n > 0][:k]
            if ids:
                parts.append(f"{label} ({', '.join(str(i) for i in ids)})")
        return f"[Data: {'; '.join(parts)}]" if parts else ""

    def _similar(self, target: str, question: str, k: int) -> list[tuple[str, float]]:
        ids, mat = self.vectors(target)
        if not ids:
            return []
        q = self.embedder.embed_matrix([question], batch_size=1)[0]
        sims = mat @ q / ((mat**2).sum(axis=1) ** 0.5 * float((q**2).sum()) ** 0.5 + 1e-9)
        order = sorted(range(len(ids)), key=lambda i: (-float(sims[i]), ids[i]))[:k]
        return [(ids[i], float(sims[i])) for i in order]

    def _pack(
        self, header: str, rows: list[tuple[ContextRecord, str]], budget: int
    ) -> tuple[str, list[ContextRecord], int]:
        """Add whole rows under `header` while they fit `budget` tokens; returns (text, records kept, left out)."""
        lines, kept, used, left = [header], [], self.caller.count_tokens(header), 0
        for rec, line in rows:
            n = self.caller.count_tokens(line) + 1
            if used + n > budget:
                left += 1
                continue
            lines.append(line)
            kept.append(rec)
            used += n
        return ("\n".join(lines) if kept else ""), kept, left

    def _reports_at(self, level: int) -> list[dict[str, Any]]:
        """Reports of `level`, plus leaf reports of shallower levels (branches that stop before `level`)."""
        reports = self.table("community_reports")
        if not reports:
            return []
        top = min(level, max(r["level"] for r in reports))
        return [r for r in reports if r["level"] == top or (r["level"] < top and not r["children"])]

    # ----- local -----

    def _local_context(self, question: str, level: int) -> tuple[str, list[ContextRecord], dict[str, int]]:
        cfg = self.config
        entities = {e["id"]: e for e in self.table("entities")}
        upper = question.upper()
        mentioned = [e["id"] for e in entities.values() if len(e["title"]) > 2 and e["title"] in upper]
        similar = [i for i, _ in self._similar("entity.description", question, cfg.top_k_entities)]
        chosen = list(dict.fromkeys([*mentioned, *similar]))[: max(cfg.top_k_entities, len(mentioned))]
        chosen_set = set(chosen)
        budget = cfg.max_context_tokens
        sections, records, left = [], [], {}

        reports = self._reports_at(level)
        communities = {c["community"]: c for c in self.table("communities")}
        scored = []
        for r in reports:
            members = (
                set(communities[r["community"]]["entity_ids"]) if r["community"] in communities else set()
            )
            hits = len(members & chosen_set)
            if hits:
                scored.append((-hits, -r["rank"], r["community"], r))
        rep_rows = [
            (
                ContextRecord("report", r["id"], r["community"], r["full_content"]),
                f"{r['community']}|{r['title']}|{one_line(r['full_content'])}",
            )
            for *_, r in sorted(scored, key=lambda t: t[:3])
        ]
        text, kept, left["reports"] = self._pack(
            "-----Reports-----\nid|title|content", rep_rows, int(budget * cfg.local_report_prop)
        )
        sections.append(text)
        records += kept

        ent_rows = [
            (
                ContextRecord("entity", e["id"], e["human_readable_id"], e["description"]),
                f"{e['human_readable_id']}|{e['title']}|{one_line(e['description'])}|{e['degree']}",
            )
            for e in (entities[i] for i in chosen)
        ]
        rel_all = self.table("relationships")
        titles = {entities[i]["title"] for i in chosen}
        inside = [r for r in rel_all if r["source"] in titles and r["target"] in titles]
        outside = [r for r in rel_all if (r["source"] in titles) != (r["target"] in titles)]
        outside.sort(key=lambda r: (-r["combined_degree"], -r["weight"], r["human_readable_id"]))
        inside.sort(key=lambda r: (-r["weight"], r["human_readable_id"]))
        rel_rows = [
            (
                ContextRecord("relationship", r["id"], r["human_readable_id"], r["description"]),
                f"{r['human_readable_id']}|{r['source']}|{r['target']}|{one_line(r['description'])}|{r['weight']:g}",
            )
            for r in [*inside, *outside]
        ]
        graph_budget = int(budget * (1 - cfg.local_text_unit_prop - cfg.local_report_prop))
        text, kept_e, left["entities"] = self._pack(
            "-----Entities-----\nid|entity|description|number of relationships", ent_rows, graph_budget // 2
        )
        sections.append(text)
        used = self.caller.count_tokens(text)
        text, kept_r, left["relationships"] = self._pack(
            "-----Relationships-----\nid|source|target|description|weight", rel_rows, graph_budget - used
        )
        sections.append(text)
        records += kept_e + kept_r

        units = {u["id"]: u for u in self.table("text_units")}
        rel_count = {u: len(units[u]["relationship_ids"]) for u in units}
        unit_ids: list[str] = []
        for i in chosen:  # sources of the best-matching entity first, richest units first within an entity
            for u in sorted(entities[i]["text_unit_ids"], key=lambda u: (-rel_count.get(u, 0), u)):
                if u in units and u not in unit_ids:
                    unit_ids.append(u)
        src_rows = [
            (
                ContextRecord("source", u, units[u]["human_readable_id"], units[u]["text"]),
                f"{units[u]['human_readable_id']}|{one_line(units[u]['text'])}",
            )
            for u in unit_ids
        ]
        text, kept, left["sources"] = self._pack(
            "-----Sources-----\nid|text", src_rows, int(budget * cfg.local_text_unit_prop)
        )
        sections.append(text)
        records += kept
        return "\n\n".join(s for s in sections if s), records, left

    def _local(self, question: str, level: int) -> tuple[GraphAnswer, str, str]:
        context, records, left = self._local_context(question, level)
        prompt = fill(LOCAL_ANSWER, context=context, question=question)
        return GraphAnswer("", "local", records, context, {"left_out": left}), prompt, "query.local"

    # ----- basic -----

    def _basic(self, question: str, level: int) -> tuple[GraphAnswer, str, str]:
        units = {u["id"]: u for u in self.table("text_units")}
        hits = self._similar("text_unit.text", question, self.config.top_k_text_units)
        rows = [
            (
                ContextRecord("source", uid, units[uid]["human_readable_id"], units[uid]["text"], score),
                f"{units[uid]['human_readable_id']}|{one_line(units[uid]['text'])}",
            )
            for uid, score in hits
        ]
        context, records, left = self._pack(
            "-----Sources-----\nid|text", rows, self.config.max_context_tokens
        )
        prompt = fill(BASIC_ANSWER, context=context, question=question)
        return (
            GraphAnswer("", "basic", records, context, {"left_out": {"sources": left}}),
            prompt,
            "query.basic",
        )

    # ----- global -----

    def _global(self, question: str, level: int) -> tuple[GraphAnswer, str, str]:
        cfg = self.config
        reports = sorted(self._reports_at(level), key=lambda r: (-r["rank"], r["community"]))
        batches: list[list[tuple[ContextRecord, str]]] = [[]]
        used = 0
        for r in reports:
            line = f"{r['community']}|{r['title']}|{r['rank']:g}|{one_line(r['full_content'])}"
            n = self.caller.count_tokens(line)
            if batches[-1] and used + n > cfg.global_map_max_tokens:
                batches.append([])
                used = 0
            batches[-1].append((ContextRecord("report", r["id"], r["community"], r["full_content"]), line))
            used += n
        batches = [b for b in batches if b]
        header = "id|title|rank|content"
        prompts = [
            fill(GLOBAL_MAP, context="\n".join([header, *(line for _, line in b)]), question=question)
            for b in batches
        ]
        answers = self.caller.generate(
            prompts,
            stage="query.global_map",
            max_new_tokens=cfg.global_map_new_tokens,
            json_schema=GLOBAL_MAP_SCHEMA,
        )
        points: list[tuple[float, int, str]] = []
        invalid = 0
        cited: list[str] = []
        for b_index, ans in enumerate(answers):
            data, _ = parse_json_object(ans.text)
            raw = data.get("points") if data is not None else None
            if not isinstance(raw, list):
                invalid += 1
                self.caller.stats.count("query.global_map_invalid_json")
                continue
            shown = {rec.human_readable_id: rec.id for rec, _ in batches[b_index]}
            for p in raw:
                desc = cut_loops(str(p.get("description", ""))) if isinstance(p, dict) else ""
                if not desc:
                    continue
                try:
                    score = float(p.get("score", 0))
                except (TypeError, ValueError):
                    score = 0.0
                # A point cites the reports it came from; ids the batch did not show are dropped.
                ids = [int(i) for i in p.get("reports", []) if isinstance(i, int) and i in shown]
                if score > 0 and ids:
                    cited += [shown[i] for i in ids]
                    if not GraphAnswer.citations_in(desc):
                        desc += f" [Data: Reports ({', '.join(str(i) for i in ids)})]"
                    points.append((score, b_index, desc))
        records = [rec for b in batches for rec, _ in b]
        details: dict[str, Any] = {"map_calls": len(prompts), "map_invalid": invalid, "points": len(points)}
        answer = GraphAnswer("", "global", records, "", details)
        if not points:
            # A small model often finds no point at all (and writes reports that say little): the sentences of the
            # communities' source text closest to the question stand in for its points, cited with their reports.
            shown = {rec.human_readable_id: rec.id for rec in records}
            found = community_evidence(
                question,
                reports,
                self.table("communities"),
                self.table("entities"),
                self.table("text_units"),
                self.embedder,
                cfg.global_evidence_sentences,
                cfg.min_relevance,
            )
            for ev in found:
                ids = [i for i in ev.reports if i in shown]
                if ids:
                    points.append(
                        (ev.score * 100, 0, f"{ev.sentence} [Data: Reports ({', '.join(map(str, ids))})]")
                    )
                    cited += [shown[i] for i in ids]
            details["points_from_sources"] = len(points)
        if not points:
            answer.text = REFUSAL
            answer.details["refused"] = True
            return answer, "", "query.global_reduce"
        answer.details["cited_reports"] = list(dict.fromkeys(cited))
        points.sort(key=lambda p: (-p[0], p[1]))
        rows = [
            (
                ContextRecord("point", f"point-{i}", i, desc, score),
                f"----Analyst point {i}----\nImportance: {score:g}\n{desc}",
            )
            for i, (score, _, desc) in enumerate(points)
        ]
        context, kept, left = self._pack("", rows, cfg.max_context_tokens)
        if "points_from_sources" in details:
            # Source sentences stand in for a small model's points: the best one goes last, next to the question
            # (the packaged 135M model restates the last point it read, whatever its importance).
            order = {rec.id: k for k, rec in enumerate(kept)}
            context = "\n".join(line for rec, line in sorted(rows, key=lambda r: -order.get(r[0].id, -1))
                                 if rec.id in order)  # fmt: skip
        answer.context = records + kept
        answer.context_text = context
        answer.details["left_out"] = {"points": left}
        return answer, fill(GLOBAL_REDUCE, context=context.strip(), question=question), "query.global_reduce"

    # ----- drift -----

    def _drift(self, question: str, level: int) -> tuple[GraphAnswer, str, str]:
        cfg = self.config
        reports = {r["id"]: r for r in self.table("community_reports")}
        hits = self._similar("community.full_content", question, cfg.drift_primer_reports)
        rows = [
            (
                ContextRecord("report", rid, reports[rid]["community"], reports[rid]["full_content"], score),
                f"{reports[rid]['community']}|{reports[rid]['title']}|{one_line(reports[rid]['full_content'])}",
            )
            for rid, score in hits
        ]
        context, records, _ = self._pack("id|title|content", rows, cfg.max_context_tokens)
        primer_prompt = fill(DRIFT_PRIMER, n=cfg.drift_follow_ups, context=context, question=question)
        primer = self.caller.generate_one(
            primer_prompt,
            stage="query.drift_primer",
            max_new_tokens=cfg.max_new_tokens,
            json_schema=DRIFT_PRIMER_SCHEMA,
        )
        data, _ = parse_json_object(primer.text)
        if data is None or not isinstance(data.get("follow_up_queries", []), list):
            self.caller.stats.count("query.drift_primer_invalid_json")
            intermediate, asked = cut_loops(primer.text), []
        else:
            intermediate = cut_loops(str(data.get("intermediate_answer", "")))
            asked = [str(q) for q in data.get("follow_up_queries", [])]
        follow = follow_ups(asked, question)
        self.caller.stats.count("query.drift_follow_ups_rejected", len(asked) - len(follow))
        follow = (follow or [question])[: cfg.drift_follow_ups]
        sub_answers = []
        for q in follow:
            # A follow-up's answer only feeds the reduce step: the final answer is checked against the question.
            sub, sub_prompt, _ = self._local(q, level)
            raw = self.caller.generate_one(
                sub_prompt, stage="query.drift_local", max_new_tokens=cfg.max_new_tokens
            )
            sub.text = self._finish(sub, raw.text)
            sub_answers.append((q, sub))
            records += [r for r in sub.context if r not in records]
        follow_text = "\n\n".join(f"Q: {q}\nA: {a.text}" for q, a in sub_answers)
        details = {
            "primer": intermediate,
            "follow_ups": [{"query": q, "answer": a.text} for q, a in sub_answers],
        }
        answer = GraphAnswer("", "drift", records, context, details)
        prompt = fill(DRIFT_REDUCE, primer=intermediate, follow_ups=follow_text, question=question)
        return answer, prompt, "query.drift_reduce"
