"""The context length of a model, and the error for a prompt that does not fit in it."""

from __future__ import annotations

from typing import Any

from vlsafe.core.errors import InputError

__all__ = ["ContextOverflowError", "context_length"]

_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length(model: Any) -> int | None:
    """The number of positions the model's language model declares (``max_position_embeddings`` of its text
    config), or ``None`` when it declares none."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    get_text = getattr(config, "get_text_config", None)
    candidates = [get_text() if callable(get_text) else None, getattr(config, "text_config", None), config]
    for cfg in candidates:
        if cfg is None:
            continue
        for key in _LENGTH_KEYS:
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


class ContextOverflowError(InputError):
    """Prompts of a batch that, with the tokens to generate, do not fit in the model's context.

    Attributes:
        rows: the rows of the batch that overflow.
        lengths: each overflowing row's prompt length in tokens.
        limit: the model's context length.
        max_new_tokens: the tokens to generate after the prompt.
    """

    def __init__(self, rows: list[int], lengths: list[int], limit: int, max_new_tokens: int) -> None:
        self.rows, self.lengths, self.limit, self.max_new_tokens = rows, lengths, limit, max_new_tokens
        longest = max(lengths)
        super().__init__(
            f"the prompt is {longest} tokens; with max_new_tokens={max_new_tokens} it needs "
            f"{longest + max_new_tokens} positions, more than the model's context of {limit} "
            "(shorten the prompt, lower max_new_tokens, or set truncate_prompts to cut the prompt to fit)"
        )

    def overflow(self, row_index: int = 0) -> int:
        """Tokens by which the ``row_index``-th overflowing prompt must shrink to fit."""
        return self.lengths[row_index] + self.max_new_tokens - self.limit
