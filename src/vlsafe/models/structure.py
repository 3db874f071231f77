"""Small model-structure helpers shared by the trainers."""

from __future__ import annotations

from typing import Any

from vlsafe.core.errors import InputError


def decoder_and_head(model: Any) -> tuple[Any, Any]:
    """``(decoder, lm_head)`` of a causal LM or VLM (peft wrappers unwrapped).

    Losses run the decoder, keep only the positions they need, and apply the head to those alone
    (full-vocabulary logits over every position are the main memory cost of training).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    decoder = getattr(base, "model", None)
    if head is None or decoder is None:
        raise InputError(
            f"{type(base).__name__} has no `.model` decoder and output embeddings: not a causal LM"
        )
    return decoder, head
