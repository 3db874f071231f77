"""Hook plumbing shared by capture and steering.

Hooks are only ever registered inside context managers and removed in ``finally``. Decoder
layers may return a bare tensor or a tuple whose first element is the hidden state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def hidden_from_output(output: Any) -> torch.Tensor:
    """Return the hidden-state tensor of a decoder layer's output (tensor or tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    raise TypeError(f"cannot find the hidden state in a decoder layer output of type {type(output).__name__}")


def replace_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """Return ``output`` with its hidden-state tensor replaced by ``hidden`` (same container type)."""
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    raise TypeError(f"cannot replace the hidden state in an output of type {type(output).__name__}")


class CallContext:
    """Tracks the attention mask of the current top-level model call.

    A forward pre-hook on the outer model records the 2-D ``attention_mask`` it was called with
    (``generate`` passes the growing mask at every decode step) and how many positions its KV cache already
    holds. Layer hooks use them to leave pad positions alone and to tell prefill from decode steps: a call
    with a non-empty cache and one new position is a decode step (a longer call on a cache continues the
    prompt); without a cache object, hidden length == mask length is a prefill. (``generate`` passes no mask
    for an unpadded batch, so the mask alone cannot tell.)
    """

    def __init__(self) -> None:
        self.attention_mask: torch.Tensor | None = None
        self.cached: int | None = None
        self.calls = 0

    def pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        self.attention_mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        cache: Any = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5 names it ``cache``
        self.cached = int(cache.get_seq_length()) if hasattr(cache, "get_seq_length") else None
        self.calls += 1

    def token_mask(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Boolean ``[B, T]`` mask of real tokens for the positions in ``hidden``, or None (all real)."""
        mask = self.attention_mask
        if mask is None or mask.shape[0] != hidden.shape[0]:
            return None
        t = hidden.shape[1]
        if mask.shape[1] < t:
            return None
        return mask[:, -t:].to(device=hidden.device, dtype=torch.bool)

    def is_prefill(self, hidden: torch.Tensor) -> bool:
        """True when ``hidden`` spans the whole sequence of the current call (no KV cache used)."""
        if self.cached is not None:
            return self.cached == 0 or hidden.shape[1] > 1
        mask = self.attention_mask
        if mask is None:
            return True
        return hidden.shape[1] == mask.shape[1]


@contextmanager
def registered(handles: list[torch.utils.hooks.RemovableHandle]) -> Iterator[None]:
    """Remove every handle in ``handles`` on exit, also when the body raises."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        handles.clear()


def outer_pre_hook(model: nn.Module, ctx: CallContext) -> torch.utils.hooks.RemovableHandle:
    """Register ``ctx.pre_hook`` on the top-level model (keyword arguments included)."""
    return model.register_forward_pre_hook(ctx.pre_hook, with_kwargs=True)
