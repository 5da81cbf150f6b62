"""Requests to a provider, as the server makes them from a conversation."""

from __future__ import annotations

from providers.events import ChatRequest, Message


def chat(prompt: str, *earlier: str, system: str | None = None) -> ChatRequest:
    """A request for ``prompt``; ``earlier`` alternates user and assistant texts."""
    messages = [Message("system", system)] if system else []
    roles = ("user", "assistant")
    messages += [Message(roles[n % 2], text) for n, text in enumerate(earlier)]
    return ChatRequest((*messages, Message("user", prompt)))
