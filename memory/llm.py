"""The language model behind extraction: any OpenAI-compatible endpoint through LangChain's `ChatOpenAI`,
and the one structured call per `add`, retried once with the validation error shown to the model."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from memory.config import LLMConfig
from memory.errors import ExtractionError, LLMError, one_line

T = TypeVar("T")


def make_chat_model(config: LLMConfig, *, streaming: bool = False) -> BaseChatModel:
    """A chat model for an OpenAI-compatible endpoint (OpenAI, DashScope/Qwen, vLLM, Ollama...)."""
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model=config.model, temperature=config.temperature, max_tokens=config.max_tokens,
                      api_key=config.api_key, base_url=config.base_url, timeout=config.timeout,
                      max_retries=config.max_retries, streaming=streaming)


def ask_structured(model: BaseChatModel, system: str, user: str, parse: Callable[[str], T]) -> T:
    """Ask once; if the answer does not parse or validate, ask once more showing the error; then give up.

    Every failure ends as an `LLMError` (endpoint) or `ExtractionError` (answer) with a one-line message.
    """
    messages: list[BaseMessage] = [SystemMessage(system), HumanMessage(user)]
    for attempt in (1, 2):
        try:
            reply = model.invoke(messages)
        except Exception as exc:  # connection, timeout, HTTP status, SDK decode errors
            raise LLMError(f"the language model failed: {one_line(exc)}") from exc
        raw = reply.content if isinstance(reply.content, str) else str(reply.content)
        try:
            return parse(raw)
        except ValueError as exc:
            if attempt == 2:
                raise ExtractionError(f"the language model's answer was invalid twice: {exc}") from exc
            messages += [AIMessage(raw), HumanMessage(f"Your answer was invalid: {exc}. "
                                                      "Answer again with only the corrected JSON object.")]
    raise AssertionError("unreachable")
