"""Search recipes as data, and the fusion that turns dense, keyword and graph evidence into one ranking.

No LLM is involved: the query is embedded once, the vector store is asked for its nearest and its BM25 best
rows, the graph for the relations of the entities the query mentions; scores are fused with the recipe's
weights, and a small recency term lets the newer of two equally relevant memories rank first.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from memory.graph_store import USER_ALIASES, Entity
from memory.records import MemoryRecord, Relation, normalize_text

DAY_MS = 86_400_000


@dataclass(frozen=True)
class SearchRecipe:
    """How to rank memories: candidate pool size and the weight of each kind of evidence."""

    candidates: int = 40
    dense_weight: float = 0.5
    keyword_weight: float = 0.5
    graph_weight: float = 0.15
    recency_weight: float = 0.05
    recency_half_life_days: float = 30.0


DEFAULT_RECIPE = SearchRecipe()


def fuse(dense: list[tuple[MemoryRecord, float]], keyword: list[tuple[MemoryRecord, float]],
         graph_memory_ids: set[str], recipe: SearchRecipe, now_ms: int) -> list[tuple[MemoryRecord, float]]:
    """Rank the union of candidates by the recipe's weighted evidence, best first."""
    records: dict[str, MemoryRecord] = {}
    dense_score: dict[str, float] = {}
    keyword_score: dict[str, float] = {}
    for record, score in dense:
        records[record.id] = record
        dense_score[record.id] = max(0.0, score)
    top_keyword = max((score for _, score in keyword), default=0.0)
    for record, score in keyword:
        records.setdefault(record.id, record)
        # BM25 is unbounded: scale by the best hit, damped so one weak match does not look perfect.
        keyword_score[record.id] = (score / top_keyword) * min(1.0, top_keyword / 2.0) if top_keyword else 0.0
    ranked = []
    for memory_id, record in records.items():
        age_days = max(0.0, (now_ms - (record.event_time or record.updated_at)) / DAY_MS)
        recency = math.pow(0.5, age_days / recipe.recency_half_life_days)
        score = (recipe.dense_weight * dense_score.get(memory_id, 0.0)
                 + recipe.keyword_weight * keyword_score.get(memory_id, 0.0)
                 + recipe.graph_weight * (memory_id in graph_memory_ids)
                 + recipe.recency_weight * recency)
        ranked.append((record, score))
    ranked.sort(key=lambda pair: (pair[1], pair[0].updated_at), reverse=True)
    return ranked


def mentioned_entities(query: str, entities: list[Entity], user_node: str | None) -> list[Entity]:
    """The entities a query names (by folded name, also inside Chinese text), and the user for I/me/my/我."""
    folded = normalize_text(query)
    words = set(folded.split())
    found = []
    for entity in entities:
        if entity.type == "user":
            if user_node and (words & USER_ALIASES or "我" in folded):
                found.append(entity)
            continue
        name = entity.norm
        if not name:
            continue
        if re.fullmatch(r"[\w\s]+", name, re.ASCII):
            if re.search(rf"(?<!\w){re.escape(name)}(?!\w)", folded):
                found.append(entity)
        elif name in folded:
            found.append(entity)
    return found


def rank_relations(relations: list[Relation], query: str, mentioned: list[Entity], limit: int) -> list[Relation]:
    """Order relations by how directly they answer the query: named entities first, then word overlap."""
    names = {e.name for e in mentioned if e.type != "user"}
    words = set(normalize_text(query).split())

    def score(relation: Relation) -> float:
        named = (relation.source in names) + (relation.destination in names)
        overlap = len(words & set(relation.relationship.lower().split("_")))
        return 2 * named + overlap

    return sorted(relations, key=score, reverse=True)[:limit]
