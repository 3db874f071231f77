"""Inference with retrieval: the TGA prompt at generation time, for direct use and for evaluation samples.

Both helpers write the first user turn with :func:`vlsafe.data.retrieval.retrieval_prompt`, the function
the training encoder uses, so training and inference prompts are the same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlsafe.core.errors import InputError
from vlsafe.data.retrieval import Retriever, retrieval_prompt
from vlsafe.models.bundle import ModelBundle
from vlsafe.models.inputs import build_inputs
from vlsafe.models.inputs_types import BatchInputs


def _retrieve_all(
    queries: Sequence[str], retriever: Retriever | None, retrieved: Sequence[str | None] | None
) -> list[str | None]:
    if retrieved is not None:
        if len(retrieved) != len(queries):
            raise InputError(f"{len(retrieved)} retrieved texts for {len(queries)} instructions")
        return list(retrieved)
    if retriever is None:
        raise InputError("give either a retriever or the retrieved texts")
    return [next(iter(retriever.retrieve(q, k=1)), None) for q in queries]


def build_retrieval_inputs(
    bundle: ModelBundle,
    instructions: Sequence[str],
    images: Sequence[Any] | None,
    retriever: Retriever | None = None,
    retrieved: Sequence[str | None] | None = None,
    queries: Sequence[str] | None = None,
) -> BatchInputs:
    """:func:`vlsafe.models.build_inputs` for ``"Retrieved Text: {retrieved}. {instruction}"`` prompts.

    Args:
        bundle: the model.
        instructions: the user instructions.
        images: one image per instruction (``None``: text-only prompts).
        retriever: used when ``retrieved`` is not given; queried with ``queries`` (default: the instructions).
        retrieved: precomputed retrieved texts.
        queries: retrieval queries aligned with ``instructions``.
    """
    found = _retrieve_all(list(queries or instructions), retriever, retrieved)
    texts = [retrieval_prompt(i, r) for i, r in zip(instructions, found, strict=True)]
    variant = "image" if images is not None else "text"
    return build_inputs(bundle, texts, variant, images=images)


@torch.inference_mode()
def generate_with_retrieval(
    bundle: ModelBundle,
    instructions: Sequence[str],
    images: Sequence[Any] | None = None,
    retriever: Retriever | None = None,
    retrieved: Sequence[str | None] | None = None,
    max_new_tokens: int = 64,
    **generate_kwargs: Any,
) -> list[str]:
    """Greedy (by default) generation with retrieval prompts; returns the decoded replies."""
    batch = build_retrieval_inputs(bundle, instructions, images, retriever, retrieved).to(bundle.device)
    kwargs = {"do_sample": False, **generate_kwargs}
    out = bundle.model.generate(**batch.inputs, max_new_tokens=max_new_tokens, **kwargs)  # type: ignore[operator]
    new = out[:, batch.input_ids.shape[1] :]
    return [bundle.tokenizer.decode(row, skip_special_tokens=True) for row in new]


def with_retrieval(samples: Sequence[Any], retriever: Retriever, query: str = "text") -> list[Any]:
    """Copies of evaluation :class:`vlsafe.evals.Sample` objects whose ``text`` is the retrieval prompt
    (``metadata["retrieved"]`` keeps the retrieved text); ``query`` is ``text`` or ``caption``."""
    out = []
    for s in samples:
        q = s.caption if query == "caption" and s.caption else s.text
        r = next(iter(retriever.retrieve(q, k=1)), None)
        meta = {**s.metadata, "retrieved": r, "instruction": s.text}
        out.append(s.model_copy(update={"text": retrieval_prompt(s.text, r), "metadata": meta}))
    return out
