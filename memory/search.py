"""Search recipes as data, and the fusion that turns dense, keyword, graph and conversation evidence into one ranking.

No LLM is involved: the query is embedded once, the vector store is asked for its nearest and its BM25 best
rows (Milvus' own BM25 function over stemmed text, see `memory.keywords`), the
graph for the relations of the entities the query mentions. Each candidate's relevance is its dense and BM25
scores, min-max normalised over the candidates and weighted; a memory's BM25 counts in proportion to the share of
the query's keywords it contains, and the keyword weight shrinks when the nearest memories are written in another
script than the query (BM25 cannot match a Chinese question to an English memory, so its silence there says
nothing and its hits elsewhere must not decide alone). Then conversation structure is added: a
memory said by (or about) a person the query names gains a boost, a memory gains a fraction of the relevance
of the memories just before and after it in its episode (an answer usually follows the question that names
the topic), and every memory gains a fraction of its episode's best score. A small recency term lets the
newer of two equally relevant memories rank first.

Episodes: a user's memories of one agent and run, ordered by (event_time, created_at); two consecutive ones
belong to the same episode when their event times are at most `episode_gap_minutes` apart. By default the
neighbours are looked for among the candidates only (the memories just before and after in the candidates'
own order); `neighbour_windows` fetches the episodes around the best candidates for exact neighbours, at the
price of one more query. At ingest, a turn stored verbatim is embedded together with the turn before it in its
episode (`context_embedding`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import lru_cache

from memory.filters import combine, literal, scope_filter
from memory.graph_store import USER_ALIASES, Entity
from memory.keywords import analysed_terms, matched_share
from memory.language_bias import cjk_share
from memory.records import MemoryRecord, Relation, normalize_text

DAY_MS = 86_400_000
# The cosine scale that scores are expressed on (unrelated, related: the USE model's); an embedder's cosines are
# mapped onto it, so one `threshold` means the same with every embedder.
REFERENCE_COSINES = (0.1, 0.4)
MINUTE_MS = 60_000
# A name of ASCII words (matched as whole words); any other (Chinese) is matched as a substring.
_ASCII_WORDS = re.compile(r"[\w\s]+", re.ASCII)
NORMALISATIONS = ("minmax", "damped")


@dataclass(frozen=True)
class SearchRecipe:
    """How to rank memories: candidate pools, the weight of each kind of evidence, and how turns are indexed.

    Every weight is on the scale of one memory's fused relevance (0..1), so a weight of 0 turns a signal off.
    """

    candidates: int = 40  # rows asked of each retriever (dense, BM25)
    dense_weight: float = 0.5
    keyword_weight: float = 0.5
    # "minmax": each retriever's scores rescaled over the candidate pool (BM25 from 0, cosine from the pool's
    # weakest); "damped": cosine as is and BM25 over the best hit, damped so one weak match does not look perfect.
    normalisation: str = "minmax"
    # Scale a memory's normalised BM25 by the share of the query's keywords it contains: one common word shared
    # with the query ("like", 喜欢) is not a full keyword match.
    keyword_coverage: bool = True
    # Scale the keyword weight by how far the dense retriever's nearest `script_rows` memories are written in the
    # query's script (Chinese or Latin): BM25 cannot see a match across scripts. 0 turns this off.
    script_rows: int = 10
    # A memory whose metadata names a person (these keys) that the query names too.
    speaker_weight: float = 0.2
    speaker_keys: tuple[str, ...] = ("speaker", "author", "person")
    # A memory linked in the graph to an entity the query names.
    graph_weight: float = 0.15
    neighbour_weight: float = 0.3  # times the relevance of the memories just before and after, same episode
    episode_weight: float = 0.2  # times the best score in the memory's episode
    episode_gap_minutes: float = 60.0
    # Fetch the episodes around the best `neighbour_windows` candidates (one more query) so that a memory next
    # to a strong one can be found even when it matched nothing itself; 0 smooths within the candidates only.
    # On LOCOMO dev 10 windows add 1.3 points of R@10 (not on every conversation) for a third query to Milvus
    # (+10-20 ms), which breaks the 50 ms p95 budget: off by default.
    neighbour_windows: int = 0
    neighbour_rows: int = 60  # at most this many rows fetched for those windows (the nearest by cosine)
    # At ingest (infer=False), embed each turn together with the previous memory of its episode when another
    # voice said it (a reply to a question); the stored text is unchanged. A reply such as "Yes, last Tuesday!"
    # is then found by what it answers, while facts stored one after another by the same voice stay apart.
    context_embedding: bool = True
    recency_weight: float = 0.05
    recency_half_life_days: float = 30.0
    # Cosines of the embedder for unrelated and for clearly related texts; they calibrate the scores that
    # `threshold` compares to (see `match_strength`). None: the embedder's own (`Memory` fills them in).
    unrelated_cosine: float | None = None
    related_cosine: float | None = None

    def __post_init__(self) -> None:
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {NORMALISATIONS}, not {self.normalisation!r}")
        low, high = self.cosine_range
        if not high > low:
            raise ValueError("related_cosine must be above unrelated_cosine")

    @property
    def cosine_range(self) -> tuple[float, float]:
        """(unrelated, related) cosines, the reference scale's where the recipe does not say."""
        low, high = REFERENCE_COSINES
        return (low if self.unrelated_cosine is None else self.unrelated_cosine,
                high if self.related_cosine is None else self.related_cosine)

    def for_embedder(self, cosines: tuple[float, float]) -> SearchRecipe:
        """This recipe with the embedder's (unrelated, related) cosines where it leaves them open."""
        low, high = cosines
        return replace(self, unrelated_cosine=low if self.unrelated_cosine is None else self.unrelated_cosine,
                       related_cosine=high if self.related_cosine is None else self.related_cosine)

    @property
    def episode_gap_ms(self) -> int:
        """The largest gap between consecutive memories of one episode, in milliseconds."""
        return int(self.episode_gap_minutes * MINUTE_MS)

    @property
    def uses_episodes(self) -> bool:
        """True when ranking looks at a memory's neighbours in its episode."""
        return bool(self.neighbour_weight or self.episode_weight)

    def episode_window(self, records: Iterable[MemoryRecord]) -> str:
        """A filter for the memories within one episode gap of these memories' event times (merged windows)."""
        gap = self.episode_gap_ms
        merged: list[list[int]] = []
        for low, high in sorted((_when(r) - gap, _when(r) + gap) for r in records):
            if merged and low <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], high)
            else:
                merged.append([low, high])
        return " or ".join(f"(event_time >= {low} and event_time <= {high})" for low, high in merged)

    def predecessor_filter(self, record: MemoryRecord) -> str:
        """A filter for the memories that may precede `record` in its episode (same user, agent and run)."""
        return combine(scope_filter(record.user_id), f"agent_id == {literal(record.agent_id)}",
                       f"run_id == {literal(record.run_id)}",
                       f"event_time >= {record.event_time - self.episode_gap_ms} and event_time <= {record.event_time}")

    def voice(self, metadata: dict, role: str) -> str:
        """Who said a turn: the person its metadata names (`speaker_keys`), else its role."""
        for key in self.speaker_keys:
            value = metadata.get(key)
            if isinstance(value, str) and value.strip():
                return _folded(value)
        return role

    def embedding_texts(self, turns: list[tuple[str, str]], previous: Iterable[MemoryRecord], when: int) -> list[str]:
        """What to embed for consecutive turns, (text, voice) pairs said at `when` (epoch ms): with
        `context_embedding`, each turn after the turn before it when another voice said that one; the first turn's
        predecessor is the latest of `previous` at most one episode gap earlier."""
        if not self.context_embedding:
            return [text for text, _ in turns]
        earlier = episode_order(r for r in previous if 0 <= when - _when(r) <= self.episode_gap_ms)
        before = (earlier[-1].text, self.voice(earlier[-1].metadata, earlier[-1].metadata.get("role", "user"))) \
            if earlier else None
        out = []
        for text, voice in turns:
            out.append(f"{before[0]}\n{text}" if before and before[1] != voice else text)
            before = (text, voice)
        return out


DEFAULT_RECIPE = SearchRecipe()


# -- fusion --------------------------------------------------------------------------------------------------
def _episode_key(record: MemoryRecord) -> tuple[str, str, str]:
    return (record.user_id, record.agent_id, record.run_id)


def _when(record: MemoryRecord) -> int:
    return record.event_time or record.created_at


def episode_order(records: Iterable[MemoryRecord]) -> list[MemoryRecord]:
    """Memories grouped by user/agent/run, each group in conversation order (event_time, then created_at)."""
    return sorted(records, key=lambda r: (_episode_key(r), _when(r), r.created_at, r.id))


def episode_links(ordered: list[MemoryRecord], gap_ms: int) -> list[bool]:
    """For each memory of an `episode_order` list: does it continue the episode of the one before it?"""
    return [i > 0 and _episode_key(ordered[i - 1]) == _episode_key(r) and _when(r) - _when(ordered[i - 1]) <= gap_ms
            for i, r in enumerate(ordered)]


def names_in(query: str, names: Iterable[str]) -> set[str]:
    """The names (already `normalize_text`-folded) that the folded query contains as whole words."""
    folded = f" {normalize_text(query)} "
    found = set()
    for name in names:
        if not name:
            continue
        if _ASCII_WORDS.fullmatch(name):
            if f" {name} " in folded:
                found.add(name)
        elif name in folded:  # Chinese names: no spaces between words
            found.add(name)
    return found


@lru_cache(maxsize=4096)
def _folded(name: str) -> str:
    return normalize_text(name)


def _people(record: MemoryRecord, keys: tuple[str, ...]) -> set[str]:
    people = set()
    for key in keys:
        value = record.metadata.get(key)
        if isinstance(value, str) and value.strip():
            people.add(_folded(value))
    return people


def _normalised(dense: dict[str, float], keyword: dict[str, float], dense_pool: set[str],
                recipe: SearchRecipe) -> tuple[dict[str, float], dict[str, float]]:
    """Dense and BM25 scores on 0..1, by the recipe's normalisation (`dense_pool`: the dense retriever's hits)."""
    top_keyword = max(keyword.values(), default=0.0)
    if recipe.normalisation == "damped":
        damping = min(1.0, top_keyword / 2.0)
        return ({k: max(0.0, v) for k, v in dense.items()},
                {k: v / top_keyword * damping for k, v in keyword.items()} if top_keyword else {})
    # Rows outside the dense pool scored lower than its weakest member: the weakest is the floor, so 0.
    pooled = [v for k, v in dense.items() if k in dense_pool]
    low, high = min(pooled, default=0.0), max(pooled, default=0.0)
    span = high - low
    dense_norm = {k: (min(1.0, max(0.0, (v - low) / span)) if span > 0 else 1.0) for k, v in dense.items()}
    return dense_norm, ({k: v / top_keyword for k, v in keyword.items()} if top_keyword else {})


def _script_overlap(first: float, second: float) -> float:
    """The chance that a term of one text and a term of another share a script, from their Chinese shares."""
    return first * second + (1.0 - first) * (1.0 - second)


def keyword_evidence(query: str, records: dict[str, MemoryRecord], dense_norm: dict[str, float],
                     keyword_norm: dict[str, float], recipe: SearchRecipe) -> dict[str, float]:
    """Normalised BM25 scores discounted by keyword coverage and script visibility (see `SearchRecipe`)."""
    if not keyword_norm:
        return keyword_norm
    visible = 1.0
    if recipe.script_rows:
        nearest = sorted(dense_norm, key=dense_norm.__getitem__, reverse=True)[:recipe.script_rows]
        if nearest:
            share = cjk_share(query)
            visible = sum(_script_overlap(share, cjk_share(records[i].text)) for i in nearest) / len(nearest)
    terms = analysed_terms(query) if recipe.keyword_coverage else frozenset()
    if not terms:
        return {i: score * visible for i, score in keyword_norm.items()}
    return {i: score * visible * matched_share(terms, records[i].text) for i, score in keyword_norm.items()}


def match_strength(cosine: float, bm25: float, recipe: SearchRecipe) -> float:
    """How well one memory matches the query on an absolute 0..1 scale: what the best result's score says.

    BM25 (damped: a score of 2 is a full match) counts only as far as the memory is also close in meaning,
    so a question sharing one word with an unrelated memory does not look like a match.
    """
    low, high = recipe.cosine_range
    closeness = (cosine - low) / (high - low)
    reference_low, reference_high = REFERENCE_COSINES
    on_reference_scale = reference_low + closeness * (reference_high - reference_low)
    return (recipe.dense_weight * max(0.0, on_reference_scale)
            + recipe.keyword_weight * min(1.0, bm25 / 2.0) * min(1.0, max(0.0, closeness)))


def fuse(dense: list[tuple[MemoryRecord, float]], keyword: list[tuple[MemoryRecord, float]],
         graph_memory_ids: set[str], recipe: SearchRecipe, now_ms: int, *, query: str = "",
         around: list[tuple[MemoryRecord, float]] | None = None) -> list[tuple[MemoryRecord, float]]:
    """Rank the candidates by the recipe's weighted evidence, best first, with scores for `threshold`.

    `dense` and `keyword` are the retrievers' hits (cosine, BM25); `around` are rows fetched from the
    candidates' episodes with their cosine, which count as neighbours (and may be returned) but bring no
    relevance of their own unless their cosine reaches the dense pool. The score of the best memory is the
    best absolute `match_strength` among the candidates, the others' are in proportion to their rank score, plus
    the recency term: so a `threshold` keeps its meaning across queries.
    """
    records: dict[str, MemoryRecord] = {}
    dense_raw: dict[str, float] = {}
    keyword_raw: dict[str, float] = {}
    for record, score in dense:
        records[record.id] = record
        dense_raw[record.id] = score
    for record, score in keyword:
        records.setdefault(record.id, record)
        keyword_raw[record.id] = max(0.0, score)
    pool = set(records)
    for record, score in around or []:
        records.setdefault(record.id, record)
        dense_raw.setdefault(record.id, score)
    if not records:
        return []
    dense_norm, keyword_norm = _normalised(dense_raw, keyword_raw, {r.id for r, _ in dense}, recipe)
    keyword_norm = keyword_evidence(query, records, dense_norm, keyword_norm, recipe)
    relevance = {i: recipe.dense_weight * dense_norm.get(i, 0.0) + recipe.keyword_weight * keyword_norm.get(i, 0.0)
                 for i in records}
    score = dict(relevance)
    ordered = episode_order(records.values())
    links = episode_links(ordered, recipe.episode_gap_ms)
    if recipe.neighbour_weight:
        for i, record in enumerate(ordered):
            if links[i]:
                before = ordered[i - 1].id
                score[record.id] += recipe.neighbour_weight * relevance[before]
                score[before] += recipe.neighbour_weight * relevance[record.id]
    if recipe.speaker_weight and query:
        people = {i: _people(r, recipe.speaker_keys) for i, r in records.items()}
        named = names_in(query, set().union(*people.values()))
        for i, who in people.items():
            if who & named:
                score[i] += recipe.speaker_weight
    if recipe.graph_weight:
        for i in records.keys() & graph_memory_ids:
            score[i] += recipe.graph_weight
    if recipe.episode_weight:
        start = 0
        for end in range(1, len(ordered) + 1):
            if end == len(ordered) or not links[end]:
                episode = ordered[start:end]
                best = max(score[r.id] for r in episode)
                for r in episode:
                    score[r.id] += recipe.episode_weight * best
                start = end
    top = max(score.values())
    if recipe.normalisation == "minmax":
        floor = min((score for _, score in dense), default=0.0)  # a BM25-only hit is at most this close
        strength = max((match_strength(dense_raw.get(i, floor), keyword_raw.get(i, 0.0), recipe) for i in pool),
                       default=0.0)
        scale = strength / top if top > 0 else 0.0
    else:
        scale = 1.0
    ranked = []
    for memory_id, record in records.items():
        age_days = max(0.0, (now_ms - (record.event_time or record.updated_at)) / DAY_MS)
        recency = math.pow(0.5, age_days / recipe.recency_half_life_days)
        ranked.append((record, scale * score[memory_id] + recipe.recency_weight * recency))
    ranked.sort(key=lambda pair: (pair[1], pair[0].updated_at), reverse=True)
    return ranked


# -- graph ---------------------------------------------------------------------------------------------------
def mentioned_entities(query: str, entities: list[Entity], user_node: str | None) -> list[Entity]:
    """The entities a query names (by folded name, also inside Chinese text), and the user for I/me/my/我.

    One substring test per entity (`names_in`): a regular expression per entity name, as this was, thrashed
    Python's cache of 512 compiled patterns once a user had more entities (2,000 entities: 204 ms a query)."""
    folded = normalize_text(query)
    words = set(folded.split())
    named = names_in(query, {entity.norm for entity in entities if entity.type != "user"})
    found = []
    for entity in entities:
        if entity.type == "user":
            if user_node and (words & USER_ALIASES or "我" in folded):
                found.append(entity)
        elif entity.norm and entity.norm in named:
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
