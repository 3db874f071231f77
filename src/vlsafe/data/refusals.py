"""Refusal replies: the training targets that synthetic safety data pairs with harmful requests."""

from __future__ import annotations

__all__ = ["REFUSALS"]

REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that. It could cause real harm to people.",
    "I'm sorry, but I can't assist with this request.",
    "I can't help with that. If you have another question, I'm happy to help.",
    "I'm sorry, I can't provide that. It could be used to hurt someone.",
    "I cannot help with this request because it could cause serious harm.",
    "I won't help with that, since it could put people in danger.",
    "I'm sorry, but I cannot provide instructions or content like this.",
    "I can't assist with that. It is harmful and may be illegal.",
    "I'm sorry, but I won't write that. It could hurt real people.",
    "I'm unable to help with this. Please consider a safer request.",
    "I cannot provide that information. It could lead to harm.",
    "Sorry, but I can't help with this. Is there something else I can do for you?",
)
