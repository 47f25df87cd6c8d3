"""`Memory.from_config` with the seeds' config dict, end to end over HTTP: the chat model and the embedder are
the real LangChain/OpenAI clients talking to a scripted OpenAI-compatible server on 127.0.0.1
(`fake_openai.FakeOpenAI`); Milvus Lite and Kuzu are real, in a temporary directory. Also: configurations
that must fail at construction with a message saying what to change.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_openai import FakeOpenAI, Fault
from replays_memory import add_op, answer

from memory import ConfigError, LLMError, Memory, MemoryConfig

SEEDS_CONFIG: dict[str, Any] = {
    "llm": {"provider": "openai", "config": {"model": "qwen-plus", "temperature": 0.2, "max_tokens": 2000}},
    "embedder": {"provider": "openai", "config": {"model": "text-embedding-v3", "embedding_dims": 128}},
    "vector_store": {"provider": "milvus", "config": {"collection_name": "mem0_test3", "embedding_model_dims": "128",
                                                      "url": "http://c-xxx.milvus.aliyuncs.com:19530",
                                                      "token": "root:xxx", "db_name": "default"}},
    "graph_store": {"provider": "kuzu", "config": {"db": "./mem0-example.kuzu"}},
    "version": "v1.1",
}


def seeds_config(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """The seeds' dict with only the Milvus URL and the Kuzu path moved into `tmp_path`; `changes` maps
    "section.key" to a new value (None removes the key)."""
    config = copy.deepcopy(SEEDS_CONFIG)
    config["vector_store"]["config"]["url"] = str(tmp_path / "milvus-lite.db")
    config["graph_store"]["config"]["db"] = str(tmp_path / "mem0-example.kuzu")
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        target = config[section]["config"] if key not in ("provider", "config") else config[section]
        if value is None:
            target.pop(key)
        else:
            target[key] = value
    return config


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeOpenAI]:
    """A scripted OpenAI-compatible server, named by OPENAI_BASE_URL as the seeds do with DashScope's URL."""
    with FakeOpenAI(embedding_dims=1536) as srv:
        for name in ("EMBEDDER", "MILVUS_URI", "MILVUS_TOKEN", "MILVUS_DB", "MILVUS_COLLECTION", "LLM_MODEL",
                     "MEMORY_LLM_MODEL"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-xx")
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("MEMORY_DATA_DIR", str(tmp_path / "data"))
        yield srv


def test_the_seeds_config_builds_a_working_memory_over_http(server: FakeOpenAI, tmp_path: Path) -> None:
    with Memory.from_config(seeds_config(tmp_path)) as mem:
        assert mem.config.embedder.embedding_dims == 128 and mem.config.vector_store.embedding_model_dims == 128
        server.push(answer([add_op("Friend Peter is Spider-Man", ("USER", "friend_of", "Peter"),
                                   ("Peter", "is", "Spider-Man"))], {"Peter": "person", "Spider-Man": "person"}))
        added = mem.add("My friend Peter is Spider‑Man", user_id="alice123")
        assert [(r["event"], r["memory"]) for r in added["results"]] == [("ADD", "Friend Peter is Spider-Man")]
        assert server.chat_calls == 1
        request = server.requests[0]
        assert (request["model"], request["temperature"]) == ("qwen-plus", 0.2)
        assert request.get("max_completion_tokens", request.get("max_tokens")) == 2000
        assert "My friend Peter is Spider‑Man" in server.last_messages()[-1]["content"]
        assert server.embedding_requests, "texts are embedded through the endpoint"
        assert all(r["model"] == "text-embedding-v3" and r["dimensions"] == 128 for r in server.embedding_requests)

        embedded = len(server.embedding_requests)
        found = mem.search("Who is Spider‑Man?", user_id="alice123")
        assert found["results"][0]["memory"] == "Friend Peter is Spider-Man"
        assert [(r["source"], r["relationship"], r["destination"]) for r in found["relations"]] == [
            ("Peter", "is", "Spider-Man")]
        assert server.chat_calls == 1, "search makes no chat call"
        assert len(server.embedding_requests) == embedded + 1
    assert (tmp_path / "milvus-lite.db").exists() and (tmp_path / "mem0-example.kuzu").exists()


def test_a_failing_model_endpoint_is_one_clear_error_and_nothing_is_written(server: FakeOpenAI,
                                                                           tmp_path: Path) -> None:
    server.push(Fault("status", status=400))
    with Memory.from_config(seeds_config(tmp_path)) as mem:
        with pytest.raises(LLMError) as raised:
            mem.add("I like green tea", user_id="u")
        assert "language model failed" in str(raised.value) and "\n" not in str(raised.value)
        assert mem.get_all(user_id="u") == {"results": [], "relations": []}


@pytest.mark.parametrize(("changes", "words"), [
    ({"llm.provider": "anthropic"}, ["llm.provider", "'anthropic'", "openai"]),
    ({"vector_store.provider": "qdrant"}, ["vector_store.provider", "milvus"]),
    ({"graph_store.provider": "neo4j"}, ["graph_store.provider", "kuzu"]),
    ({"embedder.provider": "huggingface"}, ["embedder.provider", "local", "openai"]),
    ({"vector_store.uri": "./x.db"}, ["vector_store.config", "uri", "url"]),
    ({"llm.temprature": 0.2}, ["llm.config", "temprature", "temperature"]),
    ({"embedder.embedding_dims": 64}, ["embedding_model_dims=128", "embedding_dims=64"]),
    ({"vector_store.embedding_model_dims": "abc"}, ["embedding_model_dims", "number", "'abc'"]),
], ids=["llm-provider", "vector-provider", "graph-provider", "embedder-provider", "key-uri", "key-typo",
        "dims-disagree", "dims-not-a-number"])
def test_a_wrong_setting_fails_at_construction_saying_what_to_change(server: FakeOpenAI, tmp_path: Path,
                                                                     changes: dict[str, Any],
                                                                     words: list[str]) -> None:
    with pytest.raises(ConfigError) as raised:
        Memory.from_config(seeds_config(tmp_path, **changes))
    message = str(raised.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    assert not (tmp_path / "mem0-example.kuzu").exists(), "nothing was created"


def test_an_unknown_top_level_key_is_refused(server: FakeOpenAI, tmp_path: Path) -> None:
    config = {**seeds_config(tmp_path), "custom_prompt": "..."}
    with pytest.raises(ConfigError, match="custom_prompt"):
        Memory.from_config(config)


def test_a_dimension_that_does_not_match_the_existing_collection_fails(server: FakeOpenAI, tmp_path: Path) -> None:
    with Memory.from_config(seeds_config(tmp_path)) as mem:
        kept = mem.add("Likes green tea", user_id="u", infer=False)["results"][0]["id"]
    wider = seeds_config(tmp_path, **{"embedder.embedding_dims": 256, "vector_store.embedding_model_dims": 256})
    with pytest.raises(ConfigError) as raised:
        Memory.from_config(wider)
    assert "128" in str(raised.value) and "256" in str(raised.value) and "collection_name" in str(raised.value)
    with Memory.from_config(seeds_config(tmp_path)) as mem:  # the failed attempt changed and locked nothing
        assert mem.get(kept)["memory"] == "Likes green tea"
        assert mem.search("tea", user_id="u")["results"][0]["id"] == kept


def test_without_an_api_key_there_is_no_model_and_the_openai_embedder_is_refused(tmp_path: Path) -> None:
    config = seeds_config(tmp_path)
    del config["embedder"]  # the embedded default embedder needs no key
    config["vector_store"]["config"].pop("embedding_model_dims")
    cfg = MemoryConfig.from_dict(config, env={"MEMORY_DATA_DIR": str(tmp_path / "data")})
    assert cfg.llm is None
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        MemoryConfig.from_dict(seeds_config(tmp_path), env={})
