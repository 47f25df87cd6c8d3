"""`Memory`: the public API of the memory layer (Mem0-compatible names and shapes).

`add` turns messages into lasting memories with one LLM call (facts, updates, deletions, entities and
relations decided together) and stores them in Milvus (text + vectors), Kuzu (entities + relations) and the
history database; `search` brings the relevant ones back with no LLM call. Everything is keyed by user id.

Every write is a plan journaled in the history database before any store is touched and marked done after;
a plan left open by a crash (kill -9, power loss) is replayed when the data directory is next opened, and one
that cannot be replayed is set aside with a one-line warning instead of stopping the directory from opening.
The model call of `add` runs without the user's lock, so a slow or hanging endpoint never holds up the user's
other writes (a verbatim save, a delete); if the user's memories changed meanwhile, the decision is taken
again against what is there now.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel

from memory import pipeline, transfer
from memory.concurrency import running_beside
from memory.config import MemoryConfig
from memory.embeddings import cores_for, cosine_range, embed, make_embedder, same_entity_cosine
from memory.errors import InputError, LLMNotConfiguredError, NotFoundError, StoreError, one_line
from memory.filters import check_encodable, check_id, combine, expiring, metadata_filter, scope_filter
from memory.graph_store import Entity, KuzuGraphStore, names_user
from memory.history import History
from memory.llm import ask_structured, make_chat_model
from memory.locking import DataDirLock
from memory.records import EXPIRY_KEY, MemoryRecord, Relation, iso, normalize_text, now_ms, text_hash, to_ms
from memory.search import DEFAULT_RECIPE, SearchRecipe, fuse, mentioned_entities, rank_relations
from memory.vector_store import MAX_TEXT_BYTES, MilvusVectorStore
from prompts import extract

log = logging.getLogger(__name__)

MAX_CONVERSATION_CHARS = 50_000
RELATED_MEMORIES = 10
RELATED_RELATIONS = 30
# Graph reads done beside a ranking: entities and relations.
GraphPart = tuple[list[Entity], list[Relation]]
QUERY_VECTORS_KEPT = 64


class Memory:
    """Long-term, per-user memory on Milvus, Kuzu and SQLite. Safe to share between threads."""

    def __init__(self, config: MemoryConfig | None = None, *, llm: BaseChatModel | None = None,
                 embedder: Embeddings | None = None, recipe: SearchRecipe = DEFAULT_RECIPE) -> None:
        """Open (or create) the stores. With no arguments: embedded defaults and the LLM from the environment."""
        self.config = config or MemoryConfig.from_env()
        self.embedder = embedder or make_embedder(self.config.embedder)
        self.recipe = recipe.for_embedder(cosine_range(self.embedder))
        self.llm = llm if llm is not None else (make_chat_model(self.config.llm) if self.config.llm else None)
        self._closed = True
        self._commit_lock = threading.Lock()  # one plan applied at a time; close() waits for the one in flight
        self._lock = DataDirLock(self.config.data_path)
        try:
            self.vectors = MilvusVectorStore(self.config.milvus_uri, dims=self.config.embedder.embedding_dims,
                                             collection=self.config.vector_store.collection_name,
                                             token=self.config.vector_store.token,
                                             db_name=self.config.vector_store.db_name,
                                             is_server=self.config.milvus_is_server)
            self.graph = KuzuGraphStore(self.config.kuzu_path, same_entity_cosine=same_entity_cosine(self.embedder))
            self.history_db = History(self.config.history_path)
        except BaseException:
            self._close_opened()
            raise
        self._user_locks: dict[str, threading.RLock] = defaultdict(threading.RLock)
        self._versions: dict[str, int] = defaultdict(int)  # commits per user, to notice a stale extraction
        # the last verbatim turn per (user, agent, run) and the user's version then: the next turn's context
        self._last_turns: dict[tuple[str, str, str], tuple[int, MemoryRecord]] = {}
        self._query_vectors: OrderedDict[str, np.ndarray] = OrderedDict()  # see _query_vector
        self._workers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="memory-search")  # see _rank
        self._guard = threading.Lock()
        self._expiries: dict[str, int] = {}  # the earliest expiration date of each user's memories (epoch ms)
        self._closed = False
        try:
            self._replay_journal()
            for record in self.vectors.list(expiring(), "", None):
                self._note_expiry(record.user_id, record.expires_at)
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_config(cls, config: dict[str, Any], **kwargs: Any) -> Memory:
        """Build from a Mem0-style config dict (the seeds' dict works unchanged)."""
        return cls(MemoryConfig.from_dict(config), **kwargs)

    # -- writing ------------------------------------------------------------------------------------------
    def add(self, messages: str | dict[str, str] | list[dict[str, str]], *, user_id: str,
            agent_id: str | None = None, run_id: str | None = None, metadata: dict[str, Any] | None = None,
            infer: bool = True, timestamp: datetime | str | None = None,
            expiration_date: date | datetime | str | None = None) -> dict[str, Any]:
        """Remember what matters in `messages` for this user.

        With `infer=True` one LLM call extracts facts and decides ADD/UPDATE/DELETE against the related
        memories, plus entities and relations for the graph; each extracted memory keeps
        `metadata["source_ids"]`, the ids of the messages it came from (a message's optional "id" key, else its
        1-based position). With `infer=False` each message is stored verbatim, no LLM involved.
        With `expiration_date` (a date: to the end of that day, UTC; or a moment) the memories this call stores
        are forgotten once it has passed, as `delete` forgets.
        Returns `{"results": [{id, memory, event}], "relations": {...}}`.
        """
        self._check_open()
        user_id = check_id(user_id, "user_id", required=True)
        agent_id, run_id = check_id(agent_id, "agent_id"), check_id(run_id, "run_id")
        turns = _normalise_messages(messages)
        metadata = _check_metadata(metadata)
        try:
            when = to_ms(timestamp)
        except (TypeError, ValueError) as exc:
            raise InputError(f"timestamp must be a datetime or an ISO 8601 string: {exc}") from None
        if expiration_date is not None:
            metadata[EXPIRY_KEY] = _expiry_ms(expiration_date)
        if not turns:
            return {"results": [], "relations": {"added": [], "invalidated": []}}
        self._forget_expired(user_id)
        created = now_ms()
        template = MemoryRecord(id="", user_id=user_id, text="", agent_id=agent_id, run_id=run_id,
                                metadata=metadata, created_at=created, updated_at=created, event_time=when)
        if not infer:
            with self._user_lock(user_id):
                return self._add_verbatim(turns, template)
        return self._add_inferred(turns, template, _conversation_day(timestamp, when))

    def _add_verbatim(self, turns: list[dict[str, str]], template: MemoryRecord) -> dict[str, Any]:
        for turn in turns:
            if len(turn["content"].encode()) > MAX_TEXT_BYTES:
                raise InputError(f"a message of {len(turn['content'])} characters is too long to store verbatim "
                                 f"(limit {MAX_TEXT_BYTES} bytes); split it or use infer=True")
        plan = pipeline.new_plan(template.user_id, "user", template.created_at)
        # Context embedding: each turn is embedded after the memory before it in its episode when another voice said
        # that one (stored text unchanged; see SearchRecipe.embedding_texts).
        # The last verbatim turn of each user/agent/run is kept here and trusted while the user has had no other
        # write since and it still exists (nothing deleted or reset is embedded again); else the store is asked.
        scope = (template.user_id, template.agent_id, template.run_id)
        last_turns = self._last_turns
        previous: list[MemoryRecord] = []
        if self.recipe.context_embedding:
            cached = last_turns.get(scope)
            if (cached and cached[0] == self._versions[template.user_id]
                    and cached[1].event_time <= template.event_time and self.vectors.get([cached[1].id])):
                previous = [cached[1]]
            else:
                previous = self.vectors.list(self.recipe.predecessor_filter(template), template.user_id, None)
        voiced = [(t["content"], self.recipe.voice(template.metadata, t["role"])) for t in turns]
        vectors = embed(self.embedder, self.recipe.embedding_texts(voiced, previous, template.event_time))
        results = []
        for index, (turn, vector) in enumerate(zip(turns, vectors, strict=True)):
            meta = dict(template.metadata)
            meta.setdefault("role", turn["role"])
            # The turns of one call keep their order: a millisecond apart (episodes are ordered by created_at).
            record = MemoryRecord(**{**template.__dict__, "id": str(uuid.uuid4()), "text": turn["content"],
                                     "metadata": meta, "hash": text_hash(turn["content"]),
                                     "created_at": template.created_at + index,
                                     "updated_at": template.updated_at + index})
            pipeline.add_upsert(plan, record, vector, "ADD", None)
            results.append({"id": record.id, "memory": record.text, "event": "ADD"})
        self._commit(plan)
        with self._guard:
            last_turns.pop(scope, None)
            last_turns[scope] = (self._versions[template.user_id], record)
            while len(last_turns) > 4096:  # scopes least recently written to go first
                last_turns.pop(next(iter(last_turns)))
        return {"results": results, "relations": {"added": [], "invalidated": []}}

    def _add_inferred(self, turns: list[dict[str, str]], template: MemoryRecord, day: str) -> dict[str, Any]:
        if self.llm is None:
            raise LLMNotConfiguredError("no language model is configured for memory extraction: set OPENAI_API_KEY "
                                        "(and OPENAI_BASE_URL / LLM_MODEL), or call add(..., infer=False)")
        conversation = extract.conversation(turns)  # numbered: the answer's `sources` refer to the numbers
        if len(conversation) > MAX_CONVERSATION_CHARS:
            raise InputError(f"the conversation is {len(conversation)} characters; the limit for one add is "
                             f"{MAX_CONVERSATION_CHARS}")
        user_text = "\n".join(t["content"] for t in turns if t["role"] == "user") or conversation
        user_id = template.user_id
        lock = self._user_lock(user_id)
        with lock:
            seen = self._versions[user_id]
            context = self._extraction_context(user_text, template)
        # the model call holds no lock: a slow endpoint does not hold up this user's other writes
        result = self._extract(context, conversation, day)
        with lock:
            if self._versions[user_id] != seen:
                # the user's memories changed meanwhile: decide again against what is there now, under the lock
                context = self._extraction_context(user_text, template)
                result = self._extract(context, conversation, day)
            return self._apply_extraction(result, context, template, turns)

    def _extraction_context(self, user_text: str, template: MemoryRecord) -> dict[str, Any]:
        """The memories and relations the model is shown for this conversation."""
        scope = scope_filter(template.user_id, template.agent_id, template.run_id)
        ranked, (entities, shown_relations) = self._rank_beside(
            lambda: self._extraction_graph(user_text, template.user_id), user_text[:4000], scope, template.user_id,
            RELATED_MEMORIES, graph_evidence=False)
        return {"scope": scope, "shown": [r for r, _ in ranked], "relations": shown_relations,
                "known_names": {entity.norm for entity in entities}}

    def _extraction_graph(self, user_text: str, user_id: str) -> GraphPart:
        """All the user's entities, and the current relations of those the text names (of any, if it names none)."""
        entities = self.graph.entities(user_id)
        mentioned = mentioned_entities(user_text, entities, "user")
        return entities, self.graph.relations(user_id, [e.id for e in mentioned] or None, limit=RELATED_RELATIONS)

    def _extract(self, context: dict[str, Any], conversation: str, day: str) -> Any:
        """The one model call of an `add`: decisions about the shown memories and relations."""
        shown, shown_relations = context["shown"], context["relations"]
        relation_lines = [f"{r.source if r.source_type != 'user' else 'USER'} -{r.relationship}-> "
                          f"{r.destination if r.destination_type != 'user' else 'USER'}" for r in shown_relations]
        system = extract.render(day, [m.text for m in shown], relation_lines)
        return ask_structured(self.llm, system, f"NEW CONVERSATION:\n{conversation}",
                              lambda raw: extract.parse(raw, len(shown), len(shown_relations)))

    def _apply_extraction(self, result: Any, context: dict[str, Any], template: MemoryRecord,
                          turns: list[dict[str, str]]) -> dict[str, Any]:
        """Plan, journal and apply the model's decisions; every memory written keeps the ids of the messages it
        came from in `metadata["source_ids"]` (merged with the old ones on UPDATE)."""
        shown, shown_relations = context["shown"], context["relations"]
        vectors, existing_hashes = self._embed_answer(result.memories, context["known_names"], template)
        plan = pipeline.new_plan(template.user_id, "llm", now_ms())
        results = pipeline.plan_extraction(plan, result, shown, shown_relations, template, vectors, existing_hashes)
        _attach_sources(plan, result, turns)
        self._commit(plan)
        invalidated = [r.to_result() for r in shown_relations if r.id in set(plan["invalidate"])]

        def shown_name(name: str) -> str:
            return template.user_id if names_user(name) else name

        added = [{"source": shown_name(r["source"]), "relationship": r["relationship"],
                  "destination": shown_name(r["destination"])} for r in plan["relations"]]
        return {"results": results, "relations": {"added": added, "invalidated": invalidated}}

    def _embed_answer(self, operations: list[Any], known_names: set[str],
                      template: MemoryRecord) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """The embeddings of the memory texts and new entity names of the model's `operations`, and which of those
        texts the user's memories (of the template's scope) already hold, by fingerprint (see `plan_extraction`)."""
        texts = [op.text.strip() for op in operations if op.text and op.event != "DELETE"]
        ask = (template.user_id, [text_hash(t) for t in texts], template.agent_id, template.run_id)
        if self.vectors.fingerprints_kept(template.user_id):
            # answered from memory (Milvus Lite): a fact already remembered is not embedded, nor are its names
            existing = self.vectors.known_hashes(*ask)
            fresh = [op for op in operations
                     if not (op.event == "ADD" and text_hash((op.text or "").strip()) in existing)]
            return self._embed_operations(fresh, known_names), existing
        with running_beside(self._workers, self.vectors.known_hashes, *ask) as hashes:
            vectors = self._embed_operations(operations, known_names)
        return vectors, hashes.result()

    def _embed_operations(self, operations: list[Any], known_names: set[str]) -> dict[str, np.ndarray]:
        """Each memory text and new entity name of `operations` with its embedding, on the cores free for it."""
        texts = [op.text.strip() for op in operations if op.text and op.event != "DELETE"]
        # an entity's vector only serves to match a new name to a node under another name: the user and names
        # the graph already holds resolve by name alone (`KuzuGraphStore.resolve_entity`)
        names = [name.strip() for op in operations for rel in op.relations for name in (rel.source, rel.destination)
                 if not names_user(name) and normalize_text(name) not in known_names]
        unique = list(dict.fromkeys([*texts, *names]))
        if not unique:
            return {}
        return dict(zip(unique, embed(self.embedder, unique), strict=True))

    def update(self, memory_id: str, text: str) -> dict[str, Any]:
        """Replace a memory's text (by the user's hand; the old text stays in its history)."""
        self._check_open()
        if not isinstance(text, str) or not text.strip():
            raise InputError("the new text must be a non-empty string")
        check_encodable(text, "the new text")
        old = self._record(memory_id)
        with self._user_lock(old.user_id):
            plan = pipeline.new_plan(old.user_id, "user", now_ms())
            record = MemoryRecord(**{**old.__dict__, "text": text.strip(), "hash": text_hash(text),
                                     "updated_at": plan["time"]})
            pipeline.add_upsert(plan, record, embed(self.embedder, [record.text])[0], "UPDATE", old.text)
            self._commit(plan)
        return {"id": memory_id, "memory": record.text, "event": "UPDATE", "previous_memory": old.text}

    def delete(self, memory_id: str) -> dict[str, str]:
        """Erase one memory: from Milvus, from the graph (relations only it supported) and from history."""
        self._check_open()
        record = self._record(memory_id)
        with self._user_lock(record.user_id):
            plan = pipeline.new_plan(record.user_id, "user", now_ms())
            plan["forget"].append(memory_id)
            self._commit(plan)
        return {"message": f"memory {memory_id} deleted"}

    def delete_all(self, *, user_id: str) -> dict[str, Any]:
        """Erase everything remembered about one user (vectors, graph, history), from the stores' files too:
        nothing of the user's texts is left on disk in Milvus Lite, Kuzu or the history database. Other users
        are untouched. Journaled like every write: a crash half-way finishes the erasure at the next start."""
        self._check_open()
        user_id = check_id(user_id, "user_id", required=True)
        with self._user_lock(user_id):
            count = self._commit(pipeline.new_erasure(user_id, now_ms()))
        return {"message": f"deleted {count} memories of user {user_id}", "deleted": count}

    def reset(self) -> None:
        """Erase every user's memories, graph and history."""
        self._check_open()
        with self._guard, self._commit_lock:
            self.vectors.reset()
            self.graph.reset()
            self.history_db.reset()
            self._versions.clear()
            self._expiries.clear()

    # -- reading ------------------------------------------------------------------------------------------
    def search(self, query: str, *, user_id: str, agent_id: str | None = None, run_id: str | None = None,
               limit: int = 10, filters: dict[str, Any] | None = None,
               threshold: float | None = None) -> dict[str, Any]:
        """The user's memories most relevant to `query` (dense + keyword + graph, recency-aware, no LLM call),
        and the user's graph relations about the entities the query mentions."""
        self._check_open()
        user_id = check_id(user_id, "user_id", required=True)
        agent_id, run_id = check_id(agent_id, "agent_id"), check_id(run_id, "run_id")
        if not isinstance(query, str):
            raise InputError("query must be a string")
        check_encodable(query, "query")
        limit = max(1, min(int(limit), 1000))
        expr = combine(scope_filter(user_id, agent_id, run_id), metadata_filter(filters))
        query = query.strip()[:4000]
        if not query:
            return {"results": [], "relations": []}
        self._forget_expired(user_id)
        ranked, (mentioned, relations) = self._rank_beside(lambda: self._graph_context(query, user_id), query, expr,
                                                           user_id, limit, graph_evidence=True)
        now = now_ms()
        ranked = [(r, s) for r, s in ranked if (threshold is None or s >= threshold) and not r.expired(now)]
        return {"results": [r.to_result(s) for r, s in ranked],
                "relations": [r.to_result() for r in rank_relations(relations, query, mentioned, limit)]}

    def warm_up(self, user_id: str) -> None:
        """Make the user's first search and first add as quick as the next ones: one search (the engine's channel,
        the embedder's first call, the graph's statements, the user's entities), and the user's text fingerprints
        read ahead where the vector store keeps them (~0.1-0.2 s at 10,000 memories, otherwise in the first add)."""
        self.search("hello", user_id=user_id, limit=1)
        self.vectors.keep_fingerprints(check_id(user_id, "user_id", required=True))

    def _graph_context(self, query: str, user_id: str) -> GraphPart:
        """The user's entities that the query names, and their current relations."""
        mentioned = mentioned_entities(query, self.graph.entities(user_id), "user")
        relations = self.graph.relations(user_id, [e.id for e in mentioned], limit=200) if mentioned else []
        return mentioned, relations

    def _rank_beside(self, graph_part: Callable[[], GraphPart], query: str, expr: str, user_id: str, limit: int, *,
                     graph_evidence: bool) -> tuple[list[tuple[MemoryRecord, float]], GraphPart]:
        """`_rank`, with the graph reads `graph_part` in a worker meanwhile (while the query is embedded); their
        relations count as graph evidence when `graph_evidence`. Returns the ranking and the graph part's result."""
        # asked before the graph worker starts, which takes a core
        cores = cores_for(self.embedder, [query], query=True)
        with running_beside(self._workers, graph_part) as graph:
            ranked = self._rank(query, expr, user_id, limit, graph if graph_evidence else None, cores=cores)
        return ranked, graph.result()

    def _rank(self, query: str, expr: str, user_id: str, limit: int,
              graph: Future[GraphPart] | None = None,
              cores: int = 1) -> list[tuple[MemoryRecord, float]]:
        """The user's best memories for `query`, embedded on `cores` cores; memories linked to the entities it
        names (`graph`, when given) count as graph evidence."""
        recipe, now = self.recipe, now_ms()
        pool = max(recipe.candidates, limit)
        # The keyword search needs no vector. With the embedder on one core it runs in a worker meanwhile (the
        # embedder's C code releases the GIL); an embedder on both cores goes first, and the keyword search then
        # runs beside the dense one (measured on LOCOMO questions: p50 30 -> 21 ms, p95 42 -> 31).
        vector = self._query_vector(query, cores) if cores > 1 else None
        with running_beside(self._workers, self.vectors.search_keyword, query, expr, user_id, pool) as keyword_hits:
            if vector is None:
                vector = self._query_vector(query)
            dense = self.vectors.search_dense(vector, expr, user_id, pool)
        keyword = keyword_hits.result()
        graph_ids = {m for r in graph.result()[1] for m in r.memory_ids} if graph else set()
        ranked = fuse(dense, keyword, graph_ids, recipe, now, query=query)
        if not (recipe.uses_episodes and recipe.neighbour_windows and ranked):
            return ranked[:limit]
        # One more query: the episodes around the best candidates, so their true neighbours count and can rank.
        window = recipe.episode_window(r for r, _ in ranked[:recipe.neighbour_windows])
        around = self.vectors.search_dense(vector, combine(expr, window), user_id, recipe.neighbour_rows)
        return fuse(dense, keyword, graph_ids, recipe, now, query=query, around=around)[:limit]

    def _query_vector(self, text: str, cores: int = 1) -> np.ndarray:
        """The query embedding of `text` (on `cores` cores). The last few are kept: an agent turn embeds the
        user's message twice, to recall before the reply and to show the model related memories when it is
        memorized after."""
        with self._guard:
            vector = self._query_vectors.get(text)
            if vector is not None:
                self._query_vectors.move_to_end(text)
                return vector
        vector = embed(self.embedder, [text], query=True, cores=cores)[0]
        with self._guard:
            self._query_vectors[text] = vector
            while len(self._query_vectors) > QUERY_VECTORS_KEPT:
                self._query_vectors.popitem(last=False)
        return vector

    def get(self, memory_id: str) -> dict[str, Any] | None:
        """One memory by id, or None."""
        self._check_open()
        found = self.vectors.get([memory_id]) if isinstance(memory_id, str) and memory_id else []
        if found and found[0].expired(now_ms()):
            self._forget_expired(found[0].user_id)
            return None
        return found[0].to_result() if found else None

    def get_all(self, *, user_id: str, agent_id: str | None = None, run_id: str | None = None, limit: int = 100,
                filters: dict[str, Any] | None = None) -> dict[str, Any]:
        """The user's memories, newest first, and the user's current graph relations."""
        self._check_open()
        user_id = check_id(user_id, "user_id", required=True)
        agent_id, run_id = check_id(agent_id, "agent_id"), check_id(run_id, "run_id")
        expr = combine(scope_filter(user_id, agent_id, run_id), metadata_filter(filters))
        self._forget_expired(user_id)
        now = now_ms()
        records = [r for r in self.vectors.list(expr, user_id, max(1, int(limit))) if not r.expired(now)]
        relations = self.graph.relations(user_id, limit=max(1, int(limit)))
        return {"results": [r.to_result() for r in records], "relations": [r.to_result() for r in relations]}

    def relations(self, *, user_id: str, include_invalid: bool = False, limit: int = 100,
                  as_of: datetime | str | None = None) -> list[dict[str, Any]]:
        """The user's graph relations, newest first; with `include_invalid`, also those no longer true; with
        `as_of` (a datetime or ISO 8601 string), those that were true at that moment ("what did I like in March?")."""
        self._check_open()
        user_id = check_id(user_id, "user_id", required=True)
        moment = None
        if as_of is not None:
            try:
                moment = datetime.fromtimestamp(to_ms(as_of) / 1000, UTC)
            except (TypeError, ValueError) as exc:
                raise InputError(f"as_of must be a datetime or an ISO 8601 string: {exc}") from None
        return [r.to_result() for r in self.graph.relations(user_id, current_only=not include_invalid, limit=limit,
                                                            as_of=moment)]

    def history(self, memory_id: str) -> list[dict[str, Any]]:
        """Every ADD/UPDATE/DELETE of one memory, oldest first."""
        self._check_open()
        return self.history_db.of_memory(memory_id)

    # -- export and restore (see memory.transfer) ------------------------------------------------------------
    def export(self, *, user_id: str) -> dict[str, Any]:
        """Everything remembered about one user as a JSON-ready document: memories with their embeddings, the
        graph's entities and relations (those no longer true included) and the history. `restore` loads it."""
        self._check_open()
        user_id = check_id(user_id, "user_id", required=True)
        self._forget_expired(user_id)
        with self._user_lock(user_id):
            records = self.vectors.list(scope_filter(user_id), user_id, None)
            vectors = self.vectors.vectors([r.id for r in records])
            entities = [(e.name, e.type, e.embedding) for e in self.graph.entities(user_id, vectors=True)
                        if e.type != "user"]
            relations = self.graph.relations(user_id, current_only=False, limit=2**62)
            history = self.history_db.of_user(user_id)
        return transfer.build_export(user_id, records, vectors, entities, relations, history,
                                     embedding_model=transfer.embedder_name(self.embedder), dims=self.vectors.dims,
                                     exported_at=datetime.now(UTC))

    def restore(self, document: str | bytes | dict[str, Any], *, user_id: str | None = None) -> dict[str, int]:
        """Load an `export` document (a dict or its JSON text), for the user it was exported for or for `user_id`.

        A memory the user already has (same text, agent and run) is not stored again, so restoring twice changes
        nothing; the texts are embedded anew when the document comes from another embedder. Returns the counts of
        memories stored, memories the user already had, relations and history rows."""
        self._check_open()
        export = transfer.parse_export(document)
        target = check_id(export.user_id if user_id is None else user_id, "user_id", required=True)
        for memory in export.memories:
            check_id(memory.agent_id or None, "agent_id")
            check_id(memory.run_id or None, "run_id")
            check_encodable(memory.text, "a memory's text")
            _check_metadata(memory.metadata, expiry=True)
            if len(memory.text.encode()) > MAX_TEXT_BYTES:
                raise InputError(f"the export holds a memory of {len(memory.text)} characters, over the limit of "
                                 f"{MAX_TEXT_BYTES} bytes")
        vectors = self._restored_vectors(export, [(m.text, m.vector) for m in export.memories])
        names = [(e.name, e.type) for e in export.entities]
        entity_vectors = self._restored_vectors(export, [(e.name, e.vector) for e in export.entities])
        with self._user_lock(target):
            existing = {(r.hash, r.agent_id, r.run_id): r.id
                        for r in self.vectors.list(scope_filter(target), target, None)}
            history_ids = {row["id"] for row in self.history_db.of_user(target)}
            plans, counts = transfer.restore_plans(export, transfer.IdMap(export.user_id, target), vectors,
                                                   dict(zip(names, entity_vectors, strict=True)), existing,
                                                   history_ids, now_ms())
            for plan in plans:
                self._commit(plan)
        return counts

    def _restored_vectors(self, export: transfer.MemoryExport, items: list[tuple[str, str | None]]) -> np.ndarray:
        """The document's vectors of these (text, packed vector) items if it comes from this embedder and has them
        all, else the texts embedded anew."""
        if (export.embedding_model == transfer.embedder_name(self.embedder)
                and export.embedding_dims == self.vectors.dims):
            vectors = transfer.document_vectors([vector for _, vector in items], export.embedding_dims)
            if vectors is not None:
                return vectors
        if not items:
            return np.zeros((0, self.vectors.dims), dtype=np.float32)
        return embed(self.embedder, [text for text, _ in items])

    # -- plumbing -----------------------------------------------------------------------------------------
    def _record(self, memory_id: str) -> MemoryRecord:
        found = self.vectors.get([memory_id]) if isinstance(memory_id, str) and memory_id else []
        if not found:
            raise NotFoundError(f"no memory with id {memory_id!r}")
        return found[0]

    def _user_lock(self, user_id: str) -> threading.RLock:
        with self._guard:
            return self._user_locks[user_id]

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("this Memory is closed; open a new one")

    def _commit(self, plan: dict[str, Any]) -> int:
        """Journal, apply and close a plan: after a crash the journal replays it at the next start."""
        with self._commit_lock:
            self._check_open()
            self._versions[plan["user_id"]] += 1
            self.history_db.begin(plan["id"], plan["user_id"], plan)
            try:
                count = pipeline.apply_plan(plan, self.vectors, self.graph, self.history_db, fresh=True,
                                             beside=self._workers)
            except Exception as exc:
                # Replayed at once, as the next open would (replaying is idempotent): a store may be back already
                # (the Milvus Lite engine's process died and the failed call started it again).
                try:
                    count = pipeline.apply_plan(plan, self.vectors, self.graph, self.history_db)
                except Exception:
                    raise StoreError(f"a store failed while writing ({one_line(exc)}); the write is journaled and "
                                     "will be completed when the memory is next opened") from exc
            self.history_db.commit(plan["id"])
            for upsert in plan["upserts"]:
                self._note_expiry(plan["user_id"], MemoryRecord(**upsert["record"]).expires_at)
            return count

    def _note_expiry(self, user_id: str, expires_at: int | None) -> None:
        """Remember that one of this user's memories expires at `expires_at` (epoch ms; None: it does not)."""
        if expires_at is not None:
            with self._guard:
                self._expiries[user_id] = min(self._expiries.get(user_id, expires_at), expires_at)

    def _forget_expired(self, user_id: str) -> None:
        """Forget the user's memories whose expiration date has passed, as `delete` does (vectors, the relations
        only they supported, history). Costs one dictionary lookup while none is due."""
        due = self._expiries.get(user_id)
        if due is None or due > now_ms():
            return
        with self._user_lock(user_id):
            now = now_ms()
            expiring_records = self.vectors.list(combine(scope_filter(user_id), expiring()), user_id, None)
            expired = [r.id for r in expiring_records if r.expired(now)]
            if expired:
                plan = pipeline.new_plan(user_id, "expiry", now)
                plan["forget"].extend(expired)
                self._commit(plan)
            later = [r.expires_at for r in expiring_records if not r.expired(now)]
            with self._guard:
                if later:
                    self._expiries[user_id] = min(later)
                else:
                    self._expiries.pop(user_id, None)

    def _replay_journal(self) -> None:
        """Apply the plans a crash left open, oldest first; set aside (with a warning) one that cannot be."""
        for plan_id, raw in self.history_db.pending():
            try:
                plan = json.loads(raw)
                log.warning("replaying an interrupted memory write (%s)", plan_id)
                pipeline.apply_plan(plan, self.vectors, self.graph, self.history_db)
            except Exception as exc:
                self.history_db.set_aside(plan_id, one_line(exc))
                log.warning("an interrupted memory write (%s) could not be replayed and was set aside in table "
                            "journal_failed of %s: %s", plan_id, self.config.history_path, one_line(exc))
                continue
            self.history_db.commit(plan_id)

    def close(self) -> None:
        """Flush and close every store and release the data directory (idempotent). Waits for a write in
        flight; later calls raise `StoreError`."""
        with self._commit_lock:
            if self._closed:
                return
            self._closed = True
        self._close_opened()

    def _close_opened(self) -> None:
        if hasattr(self, "_workers"):
            self._workers.shutdown(wait=True)
        for name in ("vectors", "graph", "history_db"):
            store = getattr(self, name, None)
            if store is not None:
                try:
                    store.close()
                except Exception as exc:  # closing must go on for the other stores
                    log.warning("closing %s failed: %s", name, exc)
        self._lock.release()

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


MAX_MESSAGE_ID_CHARS = 256
MAX_SOURCE_IDS = 100  # per memory: an often-updated memory keeps the ids of its latest sources


def _normalise_messages(messages: Any) -> list[dict[str, str]]:
    """Messages as a list of {role, content, number, id} with non-blank string content.

    `number` is the message's 1-based position in what the caller passed (blank messages are dropped but keep
    their place in the count) and is what the extraction prompt shows; `id` is the message's optional "id" (a
    non-empty string of at most 256 characters, e.g. LOCOMO's "D3:7"), else its number."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    elif isinstance(messages, dict):
        messages = [messages]
    if not isinstance(messages, list):
        raise InputError("messages must be a string, a {'role', 'content'} dict or a list of them")
    turns = []
    for number, message in enumerate(messages, 1):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise InputError("each message must be a dict with a string 'content'")
        role = str(message.get("role") or "user")
        check_encodable(role, "a message role")
        content = message["content"].replace("\x00", "").strip()
        check_encodable(content, "a message")
        message_id = _message_id(message.get("id"), number)
        if content:
            turns.append({"role": role, "content": content, "number": str(number), "id": message_id})
    return turns


def _message_id(value: Any, number: int) -> str:
    """A message's id as given (checked), or its 1-based number when it has none."""
    if value is None:
        return str(number)
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_MESSAGE_ID_CHARS:
        raise InputError(f"a message's 'id' must be a non-empty string of at most {MAX_MESSAGE_ID_CHARS} "
                         f"characters (message {number})")
    check_encodable(value, "a message id")
    return value.strip()


def _attach_sources(plan: dict[str, Any], result: extract.ExtractionResult, turns: list[dict[str, str]]) -> None:
    """Set `metadata["source_ids"]` on every record the plan writes: the ids of the messages its memory names in
    `sources` (numbers not shown to the model are dropped), after the ids it already had (an UPDATE keeps its
    old sources), without repeats and at most `MAX_SOURCE_IDS` (the latest).

    A record is matched to the decisions by its text's hash, as the pipeline writes it, so two decisions with the
    same text pool their sources. A decision the pipeline turned into NONE because an earlier call already stored
    that text writes nothing, so its sources are not recorded."""
    ids = {int(t["number"]): t["id"] for t in turns}
    named: dict[str, list[str]] = {}
    for op in result.memories:
        text = (op.text or "").strip()
        if op.event != "DELETE" and text:
            named.setdefault(text_hash(text), []).extend(ids[n] for n in op.sources if n in ids)
    for upsert in plan["upserts"]:
        record = upsert["record"]
        metadata = record.get("metadata") or {}
        old = metadata.get("source_ids")
        old = [s for s in old if isinstance(s, str)] if isinstance(old, list) else []
        merged = list(dict.fromkeys([*old, *named.get(record["hash"], [])]))
        # a new dict: the record may share its metadata with the memory it replaces or with the call's template
        record["metadata"] = {**metadata, "source_ids": merged[-MAX_SOURCE_IDS:]}


def _check_metadata(metadata: Any, *, expiry: bool = False) -> dict[str, Any]:
    """Metadata checked to be plain JSON with string keys; `EXPIRY_KEY` only where `expiry` (a restored memory)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise InputError("metadata must be a dict with string keys")
    if EXPIRY_KEY in metadata and not expiry:
        raise InputError(f"the metadata key {EXPIRY_KEY!r} is reserved; give add(..., expiration_date=...)")
    try:
        json.dumps(metadata, ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError, UnicodeError) as exc:
        raise InputError(f"metadata must be plain JSON data (strings, numbers, booleans, lists, dicts): "
                         f"{one_line(exc)}") from None
    return dict(metadata)


def _expiry_ms(expiration: date | datetime | str) -> int:
    """An expiration date as epoch ms: a date (or "YYYY-MM-DD") lasts to the end of that day in UTC, a datetime
    (or ISO 8601 string with a time) to that moment; one already past is refused."""
    try:
        if isinstance(expiration, str) and len(expiration.strip()) == 10:
            expiration = date.fromisoformat(expiration.strip())
        if isinstance(expiration, date) and not isinstance(expiration, datetime):
            expiration = datetime.combine(expiration + timedelta(days=1), datetime.min.time(), UTC)
        moment = to_ms(expiration)
    except (TypeError, ValueError) as exc:
        raise InputError(f"expiration_date must be a date, a datetime or an ISO 8601 string: {exc}") from None
    if moment <= now_ms():
        raise InputError(f"expiration_date {iso(moment)} has already passed")
    return moment


def _conversation_day(timestamp: datetime | str | None, ms: int) -> str:
    """The conversation's calendar day for the prompt: in the timestamp's own time zone when it has one (a
    chat at 00:30 in Beijing is on that day there, not on the day before in UTC), else in UTC."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    if isinstance(timestamp, str):
        timestamp = datetime.fromisoformat(timestamp.strip().replace("Z", "+00:00"))
    if isinstance(timestamp, datetime) and timestamp.tzinfo is not None:
        moment = moment.astimezone(timestamp.tzinfo)
    return moment.strftime("%Y-%m-%d (%A)")


__all__ = ["Memory"]
