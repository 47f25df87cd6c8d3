"""The chat model used when no language model is configured: it answers from the recalled memories only.

It reads the same system prompt a real model gets, so what it says is exactly what recall put there. A new
user on a fresh machine sees memory work in their first minute, with no API key.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult


class OfflineChatModel(BaseChatModel):
    """Answers by listing the memories recalled into its system prompt."""

    # It reads no message but the system prompt, so recall must wait for the previous turns' (quick, verbatim)
    # writes: the conversation window does not show them to this model (`agent.nodes.make_recall`).
    reads_conversation: ClassVar[bool] = False

    @property
    def _llm_type(self) -> str:
        return "offline-recall"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        system = next((m.content for m in messages if isinstance(m, SystemMessage)), "")
        recalled = recalled_notes(str(system))
        if recalled:
            text = "(offline) Here is what I remember that may help:\n" + "\n".join(f"- {n}" for n in recalled)
        else:
            text = "(offline) I don't remember anything about that yet, but I'll remember what you told me."
        return ChatResult(generations=[ChatGeneration(message=AIMessage(text))])


def recalled_notes(system_prompt: str) -> list[str]:
    """The memory texts quoted inside the prompt's <memories> block."""
    block = re.search(r"<memories>\n(.*?)\n</memories>", system_prompt, re.DOTALL)
    if not block:
        return []
    notes = []
    for line in block.group(1).splitlines():
        quoted = re.match(r'- (".*")(?: \(.*\))?$', line)
        if quoted:
            try:
                notes.append(json.loads(quoted.group(1)))
            except json.JSONDecodeError:
                continue
    return notes
