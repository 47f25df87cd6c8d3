"""Bilingual recall check: one user's life facts in Chinese, English and both, asked about in either language.

About forty memories of one user (with distractors on near topics: a sister's badminton, a mother's allergy, a
brother who also "lives in" a city) are stored verbatim with `add(infer=False)` on real Milvus Lite and Kuzu with
the default embedder (multilingual-e5-small) and BM25 over the jieba analyzer. Each question of the table must
bring its memory back FIRST in `search(limit=5)`: Chinese questions about Chinese facts, Chinese questions about
English facts, English questions about Chinese facts, mixed-language questions, and questions that share no word
with their fact. The set was written before it was run and was not tuned to pass; the questions that fail today
(22 of 36 rank first, 28 in the top 3, when this file was written) are kept as strict xfails with the rank they
reach and why, so that a fix shows up as an XPASS to be unmarked. Most failures are Chinese questions about
English facts, where e5 prefers any Chinese memory to the English one.

Each fact is told on its own day (a user tells their life over many conversations), so no two facts fall into
one episode: the episode signals (context embedding at ingest, neighbour and episode scores) then play no part,
and the check measures the language handling only. The stores are filled once per module.

With the query-side correction of e5's language bias and the keyword evidence discounted by coverage and script
(memory.language_bias, memory.search.keyword_evidence), 29 of the 36 rank first (22 before).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import make_memory

from memory import Memory
from memory.filters import scope_filter

USER = "li_wei"
FIRST_DAY = datetime(2025, 1, 6, 20, 0, tzinfo=UTC)

SPIDER_MAN = "我的朋友彼得是蜘蛛侠"
PEANUTS = "我对花生过敏"
HIKING = "我喜欢徒步旅行，每个月都会去爬一次山"
NO_BADMINTON = "我不喜欢打羽毛球，觉得太累了"
DOG = "我养了一只叫豆豆的柯基犬"
COFFEE = "我每天早上都喝一杯美式咖啡"
BIRTHDAY = "我的生日是十月三号"
GUITAR = "我正在学弹吉他"
HOME = "我住在上海浦东"
UNIVERSITY = "我大学读的是浙江大学计算机系"
DAUGHTER = "我女儿今年五岁，在上幼儿园"
ROOMMATE = "我的大学室友阿杰现在是一名数据工程师"
SISTER = "My sister 小雨 lives in 杭州"
JOB = "I work at 阿里巴巴 as a data engineer"
CAR = "I drive a blue Tesla Model 3"
FOOD = "My favorite food is my mom's 红烧肉"
JAPANESE = "I'm learning Japanese for a trip to Kyoto next spring"
SURGERY = "My dad had knee surgery last March"
RUNNING = "I run 5 km every Saturday morning"
HORROR = "I can't stand horror movies"
BEST_FRIEND = "My best friend Tom is a dentist in Boston"
TOKYO = "我下周要去 Tokyo 出差"
MACBOOK = "我的 MacBook 是公司配的"
BAND = "我最喜欢的乐队是 Coldplay"
COSTCO = "周末我常去 Costco 买菜"

MEMORIES = [
    # Chinese
    HIKING, NO_BADMINTON, SPIDER_MAN, PEANUTS, DOG, COFFEE, BIRTHDAY, GUITAR, HOME, UNIVERSITY, DAUGHTER, ROOMMATE,
    # English, with Chinese names and places
    SISTER, JOB, CAR, FOOD, JAPANESE, SURGERY, RUNNING, HORROR, BEST_FRIEND,
    # Chinese with English words
    TOKYO, MACBOOK, BAND, COSTCO,
    # distractors on near topics
    "我妹妹小雨喜欢打羽毛球",
    "我的羽毛球拍是去年买的",
    "我喜欢打乒乓球",
    "I played badminton in high school",
    "我妈妈对海鲜过敏",
    "我儿子最喜欢的超级英雄是钢铁侠",
    "去年在黄山徒步的时候我扭伤了脚",
    "My brother 大伟 lives in 北京",
    "My wife works at 腾讯 as a product manager",
    "我爸爸喜欢钓鱼",
    "我不喝茶，只喝咖啡",
    "Tom's birthday is in July",
    "我的猫叫咪咪，已经十岁了",
]


def fails(rank: str, cause: str) -> pytest.MarkDecorator:
    """A question answered below first place today: `rank` is where its memory lands in the top 5."""
    return pytest.mark.xfail(strict=True, reason=f"recall gap: the memory ranks {rank} today; {cause}")


# Even with e5's language offset taken out of the query (memory.language_bias), other English memories of work and
# family stay closer on cosine than the English fact, and BM25 cannot see it.
E5_NEAR_MISS = "the query vector loses e5's Chinese bias, but other English memories stay closer on cosine"


QUESTIONS = [
    # Chinese questions, Chinese facts
    pytest.param("谁是蜘蛛侠", SPIDER_MAN, id="zh-zh-spider-man"),
    pytest.param("我对什么过敏", PEANUTS, id="zh-zh-allergy"),
    pytest.param("我喜欢什么户外活动", HIKING, id="zh-zh-outdoors"),
    pytest.param("我讨厌哪项运动", NO_BADMINTON, id="zh-zh-disliked-sport"),
    pytest.param("我的狗叫什么名字", DOG, id="zh-zh-dog"),
    pytest.param("我几号过生日", BIRTHDAY, id="zh-zh-birthday"),
    pytest.param("我在哪里上的大学", UNIVERSITY, id="zh-zh-university"),
    pytest.param("我女儿多大了", DAUGHTER, id="zh-zh-daughter"),
    pytest.param("我在学什么乐器", GUITAR, id="zh-zh-instrument"),
    pytest.param("我家在哪个城市", HOME, id="zh-zh-home",
                 marks=fails("6", "without e5's bias toward Chinese, the English \"My sister/brother ... lives in"
                             " 杭州/北京\" answer \"which city\" better on cosine; BM25 finds no word in common")),
    # Chinese questions, English facts
    pytest.param("我妹妹住在哪里", SISTER, id="zh-en-sister"),
    pytest.param("我在哪家公司上班", JOB, id="zh-en-employer",
                 marks=fails("2", "the wife's job (腾讯, an employer too) is nearer on cosine")),
    pytest.param("我开什么车", CAR, id="zh-en-car",
                 marks=fails("6", E5_NEAR_MISS)),
    pytest.param("我为什么学日语", JAPANESE, id="zh-en-japanese"),
    pytest.param("我爸爸做过什么手术", SURGERY, id="zh-en-surgery"),
    pytest.param("我最好的朋友是做什么工作的", BEST_FRIEND, id="zh-en-best-friend",
                 marks=fails("4", E5_NEAR_MISS)),
    pytest.param("我喜欢看恐怖片吗", HORROR, id="zh-en-horror"),
    pytest.param("我最爱吃什么菜", FOOD, id="zh-en-food"),
    # English questions, Chinese facts
    pytest.param("Who is Spider-Man?", SPIDER_MAN, id="en-zh-spider-man"),
    pytest.param("What am I allergic to?", PEANUTS, id="en-zh-allergy"),
    pytest.param("What is my dog's name?", DOG, id="en-zh-dog"),
    pytest.param("When is my birthday?", BIRTHDAY, id="en-zh-birthday"),
    pytest.param("Which university did I go to?", UNIVERSITY, id="en-zh-university"),
    pytest.param("Do I like badminton?", NO_BADMINTON, id="en-zh-badminton",
                 marks=fails("4", "the English distractor I played badminton wins on cosine and BM25")),
    pytest.param("What instrument am I learning?", GUITAR, id="en-zh-instrument"),
    pytest.param("What do I drink every morning?", COFFEE, id="en-zh-coffee"),
    # English questions sharing no word with their fact
    pytest.param("Where does my sister live?", SISTER, id="en-en-sister"),
    pytest.param("What is my job?", JOB, id="en-en-job",
                 marks=fails("2", "e5 puts the wife's job first (0.849 vs 0.843) and BM25 finds no word in common")),
    pytest.param("Where do I buy groceries on weekends?", COSTCO, id="en-mixed-groceries"),
    # mixed-language questions
    pytest.param("小雨住在哪个城市", SISTER, id="mixed-xiaoyu-city"),
    pytest.param("我在阿里巴巴做什么工作", JOB, id="mixed-alibaba-role"),
    pytest.param("Tom 是做什么的", BEST_FRIEND, id="mixed-tom",
                 marks=fails("2", "cosine ranks the fact third; BM25 on Tom prefers the shorter \"Tom's birthday\"")),
    pytest.param("我的 MacBook 是谁给的", MACBOOK, id="mixed-macbook"),
    pytest.param("我什么时候去 Tokyo", TOKYO, id="mixed-tokyo"),
    pytest.param("我最喜欢哪个 band", BAND, id="mixed-band"),
    pytest.param("What did 彼得 turn out to be?", SPIDER_MAN, id="mixed-peter"),
]


@pytest.fixture(scope="module")
def memory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Memory]:
    """One Memory on real stores holding the user's facts, each told on its own day, oldest first."""
    data_dir: Path = tmp_path_factory.mktemp("bilingual") / "data"
    memory = make_memory(data_dir)
    try:
        for day, text in enumerate(MEMORIES):
            memory.add(text, user_id=USER, infer=False, timestamp=FIRST_DAY + timedelta(days=day))
        yield memory
    finally:
        memory.close()


def keyword_hits(memory: Memory, query: str, limit: int = 5) -> list[str]:
    """The texts BM25 alone finds for `query` among the user's memories, best first."""
    return [record.text for record, _ in memory.vectors.search_keyword(query, scope_filter(USER), USER, limit)]


def test_every_memory_is_stored_once(memory: Memory) -> None:
    """The fixture stored each fact verbatim, once, so that a missing result is a ranking miss and not a lost write."""
    stored = [r["memory"] for r in memory.get_all(user_id=USER, limit=1000)["results"]]
    assert sorted(stored) == sorted(MEMORIES)
    assert len(set(MEMORIES)) == len(MEMORIES)


@pytest.mark.parametrize(("question", "expected"), QUESTIONS)
def test_the_right_memory_ranks_first(memory: Memory, question: str, expected: str) -> None:
    """The memory that answers the question comes first of the five results, whatever the languages."""
    assert expected in MEMORIES
    found = [r["memory"] for r in memory.search(question, user_id=USER, limit=5)["results"]]
    rank = found.index(expected) + 1 if expected in found else None
    assert rank == 1, f"{question!r}: {expected!r} ranks {rank or 'below 5'}; top 3: {found[:3]}"


def test_keyword_search_tokenises_chinese(memory: Memory) -> None:
    """BM25 on 羽毛球 finds every memory with that word (also inside 羽毛球拍) and none without it, not even the
    English one about badminton."""
    with_word = {text for text in MEMORIES if "羽毛球" in text}
    assert len(with_word) == 3
    hits = keyword_hits(memory, "羽毛球")
    assert set(hits) == with_word
    assert len(hits) == len(with_word)


def test_keyword_search_finds_part_of_a_word_jieba_splits(memory: Memory) -> None:
    """数据工程师 is indexed as 数据 + 工程师, so a question about an 工程师 finds the roommate who is a 数据工程师,
    and the whole word finds it too; the English "data engineer" memory has neither token."""
    assert keyword_hits(memory, "我哪个同学是工程师") == [ROOMMATE]
    assert keyword_hits(memory, "工程师") == [ROOMMATE]
    assert keyword_hits(memory, "数据工程师") == [ROOMMATE]
