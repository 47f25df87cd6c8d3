"""The search signals of the default recipe: keyword forms, speaker boost, episode neighbours and prior, context
embedding at ingest, and scores that keep `threshold` meaningful.

The fusion tests run on hand-made records (no stores); the rest on real Milvus Lite and Kuzu with the local
embedder, as `Memory` is used.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import make_memory
from langchain_core.embeddings import Embeddings

from memory import Memory, MemoryConfig, SearchRecipe
from memory.embeddings import shared_local_embedder
from memory.filters import scope_filter
from memory.keywords import _STOP_SET, _jieba, analysed_terms, keyword_text
from memory.records import MemoryRecord
from memory.search import DEFAULT_RECIPE, fuse, keyword_evidence, names_in

HOUR_MS = 3_600_000
T0 = 1_700_000_000_000
SIGNALS_OFF = dataclasses.replace(DEFAULT_RECIPE, speaker_weight=0.0, neighbour_weight=0.0, episode_weight=0.0)


def record(memory_id: str, text: str = "", *, at: int = T0, run_id: str = "", **metadata: Any) -> MemoryRecord:
    """A memory of user u, said at `at` (epoch ms)."""
    return MemoryRecord(id=memory_id, user_id="u", text=text or memory_id, run_id=run_id, metadata=metadata,
                        created_at=at, updated_at=at, event_time=at)


def order(ranked: list[tuple[MemoryRecord, float]]) -> list[str]:
    """The ids of a ranking, best first."""
    return [r.id for r, _ in ranked]


def texts(found: dict[str, Any]) -> list[str]:
    """The memory texts of a search answer, in order."""
    return [r["memory"] for r in found["results"]]


# -- keyword search ----------------------------------------------------------------------------------------
def test_keyword_search_matches_other_forms_of_a_word_in_english_only(data_dir: Path) -> None:
    memory = make_memory(data_dir)
    try:
        texts_ = ["Melanie painted a sunset over the lake last summer", "Caroline studies psychology at night",
                  "We stopped at the bakery for bread", "The kids adopted a puppy named Oscar",
                  "我喜欢打羽毛球", "My brother works as a carpenter"]
        for text in texts_:
            memory.add(text, user_id="u", infer=False)
        def keyword_hits(query: str) -> list[str]:
            return [r.text for r, _ in memory.vectors.search_keyword(query, scope_filter("u"), "u", 3)]
        assert keyword_hits("Who paints?")[0] == texts_[0]
        assert keyword_hits("what is she studying")[0] == texts_[1]
        assert keyword_hits("Where do we stop?")[0] == texts_[2]
        assert keyword_hits("adoption")[0] == texts_[3]
        assert keyword_hits("羽毛球")[0] == texts_[4]
        assert keyword_hits("What did the kids do?")[0] == texts_[3]
        assert keyword_hits("what is it") == [], "stop words, stemmed or not, match nothing"
        stored = memory.get_all(user_id="u")["results"]
        assert {r["memory"] for r in stored} == set(texts_), "the stored text is not the stemmed one"
    finally:
        memory.close()


# -- fusion -------------------------------------------------------------------------------------------------
def test_a_keyword_hit_counts_by_the_share_of_the_query_keywords_it_contains() -> None:
    records = {r.id: r for r in (record("all", "Melanie painted the lake at sunset"), record("one", "Melanie ran"),
                                 record("zh", "我喜欢打乒乓球"))}
    dense_norm = {"all": 1.0, "one": 0.5, "zh": 0.0}
    by_coverage = dataclasses.replace(DEFAULT_RECIPE, script_rows=0)
    found = keyword_evidence("What did Melanie paint at the lake?", records, dense_norm, {"all": 1.0, "one": 1.0},
                             by_coverage)
    assert found == pytest.approx({"all": 1.0, "one": 1 / 3}), "melanie/paint/lake, stemmed as BM25 sees them"
    chinese = keyword_evidence("我喜欢什么户外活动", records, dense_norm, {"zh": 1.0}, by_coverage)
    assert 0 < chinese["zh"] < 0.5, "喜欢 is one of the question's terms (户外, 活动, ...)"
    off = dataclasses.replace(by_coverage, keyword_coverage=False)
    assert keyword_evidence("Melanie", records, dense_norm, {"one": 0.4}, off) == {"one": 0.4}


def test_a_question_without_han_counts_only_its_words_and_numbers_and_leaves_jieba_unloaded() -> None:
    script = """
import sys
from memory.search import DEFAULT_RECIPE, keyword_evidence
from memory.records import MemoryRecord
hit = MemoryRecord(id="a", user_id="u", text="Gina is behind 100 people at the café... really")
found = keyword_evidence("Gina -- 100% behind you at the café...?", {"a": hit}, {"a": 1.0}, {"a": 1.0},
                         DEFAULT_RECIPE)
print(found["a"], "jieba" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    share, jieba_loaded = out.stdout.split()
    assert float(share) == pytest.approx(1.0), "gina, 100, behind, caf and é found: punctuation runs are not terms"
    assert jieba_loaded == "False", "a chat without Chinese does not load jieba's dictionary (~70 MB, ~1 s)"


def test_terms_of_text_without_han_are_jiebas_own() -> None:
    for text in ["What sign did Melanie see at the café?", "Grüße aus München, naïve résumé", "Привет, мир",
                 "東京に行きました", "I went to 北京 last week"]:
        jieba_terms = {t.strip().lower() for t in _jieba().cut_for_search(keyword_text(text))} - _STOP_SET - {""}
        assert analysed_terms(text) == {t for t in jieba_terms if t.isalnum() or not t.isascii()}, text


def test_keyword_evidence_shrinks_when_the_nearest_memories_are_in_another_script() -> None:
    english = [record(f"en{i}", text) for i, text in enumerate(["My sister lives in Boston", "I live in Shanghai",
                                                                "My brother lives in Beijing", "I drive a car"])]
    chinese = [record(f"zh{i}", text) for i, text in enumerate(["我妹妹住在杭州", "我住在上海", "我哥哥住在北京",
                                                                "我开车"])]
    records = {r.id: r for r in english + chinese}
    recipe = dataclasses.replace(DEFAULT_RECIPE, keyword_coverage=False, script_rows=4)
    nearest_english = {r.id: 1.0 - i / 10 for i, r in enumerate(english + chinese)}
    nearest_chinese = {r.id: 1.0 - i / 10 for i, r in enumerate(chinese + english)}
    hits = {"zh0": 1.0}
    assert keyword_evidence("我妹妹住在哪里", records, nearest_english, hits, recipe) == {"zh0": 0.0}, \
        "BM25 cannot see the English memories the dense side found nearest: its hit does not decide alone"
    assert keyword_evidence("我妹妹住在哪里", records, nearest_chinese, hits, recipe) == {"zh0": 1.0}
    assert keyword_evidence("Where does my sister live?", records, nearest_english, {"en0": 0.7}, recipe) == \
        {"en0": 0.7}, "an English query among English memories is unchanged"


def test_a_memory_gains_from_its_neighbours_only_within_its_episode() -> None:
    question = record("question", at=T0)
    answer = record("answer", at=T0 + 60_000)
    later = record("two hours later", at=T0 + 2 * HOUR_MS)
    other_run = record("other run", at=T0 + 30_000, run_id="r2")
    keyword = [(question, 6.0)]
    dense = [(question, 0.6), (answer, 0.3), (later, 0.3), (other_run, 0.3)]
    ranked = fuse(dense, keyword, set(), DEFAULT_RECIPE, T0, query="q")
    assert order(ranked)[:2] == ["question", "answer"]
    score = dict((r.id, s) for r, s in ranked)
    assert score["answer"] > score["two hours later"] == pytest.approx(score["other run"])
    plain = dict((r.id, s) for r, s in fuse(dense, keyword, set(), SIGNALS_OFF, T0, query="q"))
    assert plain["answer"] == pytest.approx(plain["two hours later"])


def test_neighbours_fetched_around_the_candidates_can_rank() -> None:
    question = record("question", at=T0)
    reply = record("reply", at=T0 + 1)  # matched nothing: only fetched from the question's episode
    far = record("far", at=T0 + 5 * HOUR_MS)
    ranked = fuse([(question, 0.6), (far, 0.5)], [(question, 6.0)], set(), DEFAULT_RECIPE, T0, query="q",
                  around=[(reply, 0.1)])
    assert order(ranked) == ["question", "reply", "far"]


def test_a_memory_whose_speaker_the_query_names_is_boosted() -> None:
    by_caroline = record("c", "I went to the support group", speaker="Caroline")
    by_melanie = record("m", "I went to the support group", speaker="Melanie")
    hits = [(by_melanie, 0.5), (by_caroline, 0.5)]
    speaker_only = dataclasses.replace(SIGNALS_OFF, speaker_weight=0.2)
    for query, first in (("Where did Caroline go?", "c"), ("Where did Melanie go?", "m")):
        assert order(fuse(hits, [], set(), speaker_only, T0, query=query))[0] == first
    assert names_in("Did Carol go?", {"caroline", "carol"}) == {"carol"}
    assert names_in("彼得是谁", {"彼得"}) == {"彼得"}


def test_a_memory_linked_in_the_graph_to_a_named_entity_is_boosted() -> None:
    a, b = record("a", at=T0), record("b", at=T0 + 3 * HOUR_MS)
    assert order(fuse([(a, 0.5), (b, 0.5)], [], {"b"}, DEFAULT_RECIPE, T0, query="q"))[0] == "b"


def test_the_best_score_is_the_absolute_strength_of_the_match() -> None:
    recipe = dataclasses.replace(DEFAULT_RECIPE, recency_weight=0.0)
    strong, weak = record("strong", at=T0), record("weak", at=T0 + 3 * HOUR_MS)
    dense, keyword = recipe.dense_weight, recipe.keyword_weight
    ranked = fuse([(strong, 0.5), (weak, 0.2)], [(strong, 4.0)], set(), recipe, T0, query="q")
    assert ranked[0][1] == pytest.approx(dense * 0.5 + keyword * 1.0)
    faint = fuse([(strong, 0.12), (weak, 0.1)], [], set(), recipe, T0, query="q")
    assert faint[0][1] == pytest.approx(dense * 0.12) and faint[0][1] < 0.15
    one_shared_word = fuse([(strong, 0.1), (weak, 0.05)], [(strong, 4.0)], set(), recipe, T0, query="q")
    assert one_shared_word[0][1] == pytest.approx(dense * 0.1), "BM25 counts only as far as the meaning is close"
    # an embedder whose cosines run from 0.78 (unrelated) to 0.88 (related) is put on the same scale
    e5_like = recipe.for_embedder((0.78, 0.88))
    assert fuse([(strong, 0.88)], [], set(), e5_like, T0)[0][1] == pytest.approx(dense * 0.4)
    assert fuse([(strong, 0.78)], [(strong, 4.0)], set(), e5_like, T0)[0][1] == pytest.approx(dense * 0.1)


def test_an_inconsistent_recipe_is_refused() -> None:
    with pytest.raises(ValueError, match="normalisation"):
        SearchRecipe(normalisation="zscore")
    with pytest.raises(ValueError, match="related_cosine"):
        SearchRecipe(unrelated_cosine=0.5, related_cosine=0.4)


# -- on the real stores ---------------------------------------------------------------------------------------
class RecordingEmbedder(Embeddings):
    """The local embedder, through the generic interface, remembering every text it was asked to embed."""

    dims = 512

    def __init__(self) -> None:
        self.seen: list[str] = []

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed and record."""
        self.seen.extend(texts)
        return shared_local_embedder().embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        """Embed one text and record it."""
        return self.embed_documents([text])[0]


@pytest.fixture
def recording() -> RecordingEmbedder:
    """A fresh recording embedder."""
    return RecordingEmbedder()


@pytest.fixture
def mem(data_dir: Path, recording: RecordingEmbedder) -> Iterator[Memory]:
    """A Memory on fresh stores whose embedder records what it embeds; no LLM."""
    cfg = MemoryConfig.from_env({})
    cfg.data_dir = str(data_dir)
    memory = Memory(cfg, embedder=recording)
    yield memory
    memory.close()


def test_a_turn_is_embedded_after_the_previous_memory_of_its_episode(mem: Memory,
                                                                      recording: RecordingEmbedder) -> None:
    start = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)

    def say(who: str, text: str, minutes: float, **scope: str) -> None:
        mem.add(text, user_id=scope.pop("user_id", "u"), infer=False, metadata={"speaker": who},
                timestamp=start + timedelta(minutes=minutes), **scope)

    say("Caroline", "I went to the support group.", 0)
    say("Melanie", "How was it?", 2)
    say("Bob", "hello", 3, user_id="someone else")
    mem.add([{"role": "user", "content": "Powerful."}, {"role": "assistant", "content": "Glad to hear!"}],
            user_id="u", infer=False, timestamp=start + timedelta(minutes=4))
    say("Caroline", "A new day.", 180)
    say("Melanie", "In another run.", 181, run_id="r2")
    assert recording.seen == ["I went to the support group.",
                              "I went to the support group.\nHow was it?",
                              "hello",
                              "How was it?\nPowerful.",  # the role "user" is another voice than Melanie
                              "Powerful.\nGlad to hear!",
                              "A new day.",  # more than an hour after: a new episode
                              "In another run."]
    stored = mem.get_all(user_id="u", limit=100)["results"]
    assert sorted(r["memory"] for r in stored) == sorted(["I went to the support group.", "How was it?",
                                                          "Powerful.", "Glad to hear!", "A new day.",
                                                          "In another run."]), "stored texts are unchanged"
    batch = sorted((r for r in stored if r["memory"] in {"Powerful.", "Glad to hear!"}),
                   key=lambda r: r["created_at"])
    assert [r["memory"] for r in batch] == ["Powerful.", "Glad to hear!"], "one call keeps its order"


def test_facts_stored_one_after_another_by_one_voice_are_embedded_alone(mem: Memory,
                                                                        recording: RecordingEmbedder) -> None:
    """A list of facts stored verbatim in a row (no speaker, all role "user") is not glued together."""
    facts = ["I like hiking.", "My sister lives in Hangzhou.", "我对花生过敏"]
    for fact in facts:
        mem.add(fact, user_id="u", infer=False)
    mem.add([{"role": "user", "content": "I drive a Tesla."}, {"role": "user", "content": "I play the guitar."}],
            user_id="u", infer=False)
    assert recording.seen == [*facts, "I drive a Tesla.", "I play the guitar."]


def test_context_embedding_can_be_turned_off(data_dir: Path, recording: RecordingEmbedder) -> None:
    cfg = MemoryConfig.from_env({})
    cfg.data_dir = str(data_dir)
    with Memory(cfg, embedder=recording, recipe=SearchRecipe(context_embedding=False)) as memory:
        memory.add([{"role": "user", "content": "one"}, {"role": "user", "content": "two"}], user_id="u",
                   infer=False)
    assert recording.seen == ["one", "two"]


CONVERSATION = [
    "Caroline: Have you read anything good lately?",
    "Melanie: Yes! 'Charlotte's Web' - it reminded me of my childhood.",
    "Caroline: Oh I loved that one as a kid.",
    "Melanie: How is the new job going?",
    "Caroline: Busy, but the team is great.",
]
OTHER_DAY = [
    "Melanie: We went camping at the lake last weekend.",
    "Caroline: Sounds lovely, did the kids like it?",
    "Melanie: They loved roasting marshmallows.",
    "Caroline: I started a pottery class on Tuesdays.",
]


@pytest.mark.parametrize("windows", [0, 10], ids=["neighbours among candidates", "neighbours fetched"])
def test_a_reply_is_found_through_the_turn_it_answers(data_dir: Path, windows: int) -> None:
    memory = make_memory(data_dir)
    memory.recipe = dataclasses.replace(memory.recipe, neighbour_windows=windows)
    try:
        day = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
        for number, session in enumerate((CONVERSATION, OTHER_DAY)):
            for text in session:
                memory.add(text, user_id="u", infer=False, timestamp=day + timedelta(days=3 * number),
                           metadata={"speaker": text.split(":")[0]})
        reply = CONVERSATION[1]
        found = texts(memory.search("What has Melanie been reading?", user_id="u", limit=3))
        assert reply in found
        unrelated = memory.search("How do I renew a passport in Norway?", user_id="u", threshold=0.15)
        assert unrelated["results"] == [], "an unrelated question recalls nothing above the agent's threshold"
        relevant = memory.search("What did Melanie do at the lake?", user_id="u", threshold=0.15)
        assert texts(relevant)[0] == OTHER_DAY[0]
    finally:
        memory.close()


def test_a_deleted_or_reset_turn_is_never_embedded_again(mem: Memory, recording: RecordingEmbedder) -> None:
    start = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)

    def say(who: str, text: str, minutes: int) -> dict[str, Any]:
        return mem.add(text, user_id="u", infer=False, metadata={"speaker": who},
                       timestamp=start + timedelta(minutes=minutes))

    say("Ann", "first", 0)
    second = say("Ben", "second", 1)
    mem.delete(second["results"][0]["id"])
    say("Ben", "third", 2)
    mem.delete_all(user_id="u")
    say("Ann", "fourth", 3)
    mem.reset()
    say("Ben", "fifth", 4)
    assert recording.seen == ["first", "first\nsecond", "first\nthird", "fourth", "fifth"]
