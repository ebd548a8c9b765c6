"""The Gemma chat template, rendered in Python rather than Jinja.

    <bos><start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n{model}<end_of_turn>\n
    ...<start_of_turn>model\n

`assistant` is written as `model`. Message text is stripped of surrounding whitespace, as the
templates' `| trim` does. Gemma has no system turn: leading `system`/`developer` messages are
folded into the first user turn as `system + "\n\n" + user` — Gemma 3's own rule, which we apply
to Gemma 1 and 2 as well (their templates refuse a system message; refusing would break every
OpenAI client that sends one). Several leading system messages are joined with "\n\n".
After them, roles must alternate user/assistant starting with user; anything else is a
`TemplateError` with a message saying what is wrong.

`render_chat` gives the prompt as text; `render_chat_segments` gives the same text as segments
marked template or content, so that the tokenizer can encode message content as plain text: a
user who types `<start_of_turn>` in a message gets those characters, not a forged turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gemma_server.errors import TemplateError

_SYSTEM_ROLES = ("system", "developer")
_TURN_ROLES = {"user": "user", "assistant": "model", "model": "model"}


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str | Sequence[str]  # a string, or text parts (each trimmed, then joined)


def render_chat(messages: Sequence[ChatMessage], add_generation_prompt: bool = True) -> str:
    return "".join(text for text, _ in render_chat_segments(messages, add_generation_prompt))


def render_chat_segments(
    messages: Sequence[ChatMessage], add_generation_prompt: bool = True
) -> list[tuple[str, bool]]:
    """The rendered prompt as (text, is_content) pieces, in order."""
    if not messages:
        raise TemplateError("messages must contain at least one message")
    system_parts: list[str] = []
    index = 0
    while index < len(messages) and messages[index].role in _SYSTEM_ROLES:
        system_parts.append(_text(messages[index], trim=False))
        index += 1
    turns = messages[index:]
    if not turns:
        raise TemplateError("messages must contain a user message after the system message")
    out: list[tuple[str, bool]] = [("<bos>", False)]
    for n, message in enumerate(turns):
        role = _TURN_ROLES.get(message.role)
        if role is None:
            where = "only at the start" if message.role in _SYSTEM_ROLES else "not supported"
            raise TemplateError(
                f"messages[{index + n}]: role {message.role!r} is {where}; "
                "roles after the system prompt must be user and assistant"
            )
        expected = "user" if n % 2 == 0 else "model"
        if role != expected:
            raise TemplateError(
                f"messages[{index + n}]: conversation roles must alternate "
                "user/assistant/user/assistant/... starting with user"
            )
        text = _text(message, trim=True)
        if n == 0 and system_parts:
            text = "\n\n".join(system_parts) + "\n\n" + text
        out += [(f"<start_of_turn>{role}\n", False), (text, True), ("<end_of_turn>\n", False)]
    if add_generation_prompt:
        out.append(("<start_of_turn>model\n", False))
    return out


def _text(message: ChatMessage, trim: bool) -> str:
    content = message.content
    if isinstance(content, str):
        return content.strip() if trim else content
    return "".join(part.strip() if trim else part for part in content)
