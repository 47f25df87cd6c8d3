"""Tests for the scripted OpenAI-compatible test server, driven through the real clients the project uses."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator

import openai
import pytest
from fake_openai import FakeOpenAI, Fault, embed_text
from langchain_openai import ChatOpenAI, OpenAIEmbeddings


@pytest.fixture
def srv() -> Iterator[FakeOpenAI]:
    """A running fake server with an empty script."""
    with FakeOpenAI() as server:
        yield server


def _chat(server: FakeOpenAI, **kwargs: object) -> ChatOpenAI:
    params: dict[str, object] = {
        "base_url": server.base_url,
        "api_key": "test",
        "model": "m",
        "max_retries": 0,
    }
    params.update(kwargs)
    return ChatOpenAI(**params)  # type: ignore[arg-type]


def _embeddings(server: FakeOpenAI, dims: int = 128) -> OpenAIEmbeddings:
    return OpenAIEmbeddings(
        base_url=server.base_url,
        api_key="test",  # type: ignore[arg-type]
        model="text-embedding-v3",
        dimensions=dims,
        check_embedding_ctx_length=False,
    )


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


# ---- chat completions -----------------------------------------------------------------------------------


def test_invoke_returns_scripted_reply_and_records_request(srv: FakeOpenAI) -> None:
    srv.push("Hello from the fake model.")
    result = _chat(srv).invoke("hi")
    assert result.content == "Hello from the fake model."
    assert srv.chat_calls == 1
    body = srv.requests[0]
    assert body["model"] == "m"
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert srv.last_messages() == [{"role": "user", "content": "hi"}]
    assert result.response_metadata["model_name"] == "m"
    assert result.usage_metadata is not None and result.usage_metadata["output_tokens"] > 0


def test_replies_are_fifo_then_default_then_500() -> None:
    with FakeOpenAI(["one", "two"], default_reply="fallback") as server:
        llm = _chat(server)
        assert [llm.invoke(str(i)).content for i in range(4)] == ["one", "two", "fallback", "fallback"]
        assert [m[0]["content"] for m in (r["messages"] for r in server.requests)] == ["0", "1", "2", "3"]
    with FakeOpenAI(["only"]) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a"}])
        with pytest.raises(openai.InternalServerError) as exc_info:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "b"}])
        assert exc_info.value.status_code == 500
        assert exc_info.value.body == {
            "message": "no scripted reply left",
            "type": "server_error",
            "param": None,
            "code": None,
        }


def test_stream_yields_several_chunks(srv: FakeOpenAI) -> None:
    text = "Streaming works token by token, hopefully."
    srv.push(text)
    chunks = [c.content for c in _chat(srv).stream("hi")]
    assert len([c for c in chunks if c]) > 1
    assert "".join(chunks) == text  # type: ignore[arg-type]
    assert srv.requests[0]["stream"] is True


def test_stream_with_usage_via_sdk(srv: FakeOpenAI) -> None:
    srv.push("abcdefghijkl")
    client = openai.OpenAI(base_url=srv.base_url, api_key="test", max_retries=0)
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "abcdefghijkl"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


def test_models_endpoint(srv: FakeOpenAI) -> None:
    client = openai.OpenAI(base_url=srv.base_url, api_key="test", max_retries=0)
    models = list(client.models.list())
    assert len(models) == 1


# ---- embeddings -----------------------------------------------------------------------------------------


def test_embeddings_unit_norm_and_similarity(srv: FakeOpenAI) -> None:
    emb = _embeddings(srv)
    a, b, c = emb.embed_documents(["I like badminton", "I like playing badminton", "the stock market fell"])
    for vec in (a, b, c):
        assert len(vec) == 128
        assert math.isclose(math.sqrt(sum(x * x for x in vec)), 1.0, rel_tol=1e-5)
    assert _cos(a, b) > _cos(a, c) + 0.3
    assert emb.embed_query("I like badminton") == pytest.approx(a)
    assert srv.embedding_requests[0]["dimensions"] == 128
    assert srv.embedding_requests[0]["input"] == [
        "I like badminton",
        "I like playing badminton",
        "the stock market fell",
    ]


def test_embeddings_cjk_similarity() -> None:
    a, b, c = (embed_text(t) for t in ("我喜欢打羽毛球", "我很喜欢羽毛球", "股市今天下跌了"))
    assert _cos(a, b) > _cos(a, c) + 0.3


def test_embeddings_float_and_base64_agree(srv: FakeOpenAI) -> None:
    client = openai.OpenAI(base_url=srv.base_url, api_key="test", max_retries=0)
    default = client.embeddings.create(model="e", input="hello world", dimensions=32)
    as_float = client.embeddings.create(
        model="e", input="hello world", dimensions=32, encoding_format="float"
    )
    # The SDK asks for base64 unless told otherwise, and decodes it transparently.
    assert srv.embedding_requests[0]["encoding_format"] == "base64"
    assert srv.embedding_requests[1]["encoding_format"] == "float"
    assert default.data[0].embedding == pytest.approx(as_float.data[0].embedding, abs=1e-6)
    assert as_float.data[0].embedding == pytest.approx(embed_text("hello world", 32))
    assert as_float.model == "e" and as_float.object == "list"


def test_embeddings_token_ids_and_default_dims() -> None:
    with FakeOpenAI(embedding_dims=16) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        result = client.embeddings.create(model="e", input=[[1, 2, 3], [1, 2, 3], [9, 8]])
        vecs = [d.embedding for d in result.data]
        assert [d.index for d in result.data] == [0, 1, 2]
        assert all(len(v) == 16 for v in vecs)
        assert vecs[0] == vecs[1] != vecs[2]


# ---- faults ---------------------------------------------------------------------------------------------


def test_429_with_retry_after_is_retried(srv: FakeOpenAI) -> None:
    srv.push(Fault("status", status=429, retry_after=0.1), "after retry")
    start = time.monotonic()
    assert _chat(srv, max_retries=1).invoke("hi").content == "after retry"
    assert 0.09 <= time.monotonic() - start < 2.0
    assert srv.chat_calls == 2


def test_status_fault_without_retries_raises(srv: FakeOpenAI) -> None:
    srv.push(Fault("status", status=429, retry_after=0.1))
    with pytest.raises(openai.RateLimitError):
        _chat(srv).invoke("hi")


def test_hang_times_out_quickly(srv: FakeOpenAI) -> None:
    srv.push(Fault("hang", seconds=3), "next")
    start = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        _chat(srv, timeout=0.5).invoke("hi")
    assert time.monotonic() - start < 2.0
    assert _chat(srv).invoke("again").content == "next"


def test_hang_then_reply(srv: FakeOpenAI) -> None:
    srv.push(Fault("hang", seconds=0.1, then="late answer"))
    assert _chat(srv).invoke("hi").content == "late answer"


def test_stop_returns_quickly_while_a_handler_hangs() -> None:
    server = FakeOpenAI([Fault("hang", seconds=30)]).start()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            _chat(server, timeout=10).invoke("hi")
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 2
    while server.chat_calls == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    server.stop()
    assert time.monotonic() - start < 0.5
    thread.join(timeout=2)
    assert not thread.is_alive()
    assert errors and isinstance(errors[0], openai.APIConnectionError)


@pytest.mark.parametrize("kind", ["malformed", "truncated"])
@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_malformed_and_truncated_raise(srv: FakeOpenAI, kind: str, stream: bool) -> None:
    srv.push(Fault(kind))
    llm = _chat(srv, timeout=2)
    start = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - whatever the SDK raises; the point is: not a hang
        if stream:
            list(llm.stream("hi"))
        else:
            llm.invoke("hi")
    assert time.monotonic() - start < 1.0


def test_start_is_fast_and_stop_is_idempotent() -> None:
    start = time.monotonic()
    server = FakeOpenAI().start()
    assert time.monotonic() - start < 0.5  # no waiting on anything (another test may share the 2 cores meanwhile)
    assert server.base_url.startswith("http://127.0.0.1:") and server.base_url.endswith("/v1")
    server.stop()
    server.stop()
    with pytest.raises(RuntimeError):
        _ = FakeOpenAI().base_url
    with pytest.raises(ValueError):
        Fault("explode")
